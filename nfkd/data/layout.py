"""Where each dataset's files live under a data root, and the checks every reader shares.

A missing or malformed file should produce one message that says what was expected, where,
and where to get it: users hit these errors before anything else in the toolkit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError

__all__ = ["maf_layout_text", "missing", "require_maf_files", "corrupt", "load_npy", "check_table",
    "check_finite"]

MAF_ZENODO = "https://zenodo.org/record/1161203"

#: The MAF paper's preprocessed files, relative to the data root (the archive's extracted `data/`).
MAF_FILES: dict[str, tuple[str, ...]] = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}

MAF_SOURCE = (
    "The standard files are the preprocessed data of the MAF paper (Papamakarios et al. 2017), "
    f"published on Zenodo, record 1161203 ({MAF_ZENODO}, data.tar.gz): extract it and point "
    "--data-root (or NFKD_DATA_ROOT) at the extracted 'data' folder."
)

MAGIC_SOURCE = (
    "magic04.data is the UCI MAGIC Gamma Telescope file "
    "(https://archive.ics.uci.edu/dataset/159/magic+gamma+telescope): 19,020 lines of "
    "10 comma-separated numbers and a class letter g/h."
)
CIFAR_SOURCE = (
    "Use the official CIFAR-10 'python version' (https://www.cs.toronto.edu/~kriz/cifar.html, "
    "cifar-10-python.tar.gz) extracted so that cifar10/cifar-10-batches-py/ holds data_batch_1..5 "
    "and test_batch."
)
CELEBA_SOURCE = (
    "Use CelebA's aligned images (img_align_celeba.zip from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) extracted so that "
    "celeba/img_align_celeba/ holds 000001.jpg, 000002.jpg, ..."
)


def maf_layout_text(root: Path) -> str:
    lines = "\n".join(f"  {rel}" for files in MAF_FILES.values() for rel in files)
    return f"Expected layout under the data root {root}:\n{lines}\n{MAF_SOURCE}"


def missing(name: str, path: Path, layout: str) -> DataError:
    """The one error for a dataset file that is not there."""
    return DataError(f"{name}: file not found: {path}\n{layout}")


def require_maf_files(name: str, root: Path) -> list[Path]:
    """Paths of a MAF dataset's files, or a DataError giving the whole expected layout."""
    paths = [Path(root) / rel for rel in MAF_FILES[name]]
    for path in paths:
        if not path.is_file():
            raise missing(name.upper(), path, maf_layout_text(Path(root)))
    return paths


def corrupt(path: Path, what: str, exc: BaseException | None = None) -> DataError:
    detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return DataError(f"{path}: cannot read it as {what}{detail}; the file is corrupt or not the standard file")


def load_npy(path: Path) -> np.ndarray:
    """np.load with the failure turned into a DataError naming the file (no pickles allowed)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError depending on the damage
        raise corrupt(path, "a .npy array", exc) from exc
    if not isinstance(arr, np.ndarray):
        raise corrupt(path, "a single .npy array")
    return arr


def check_table(arr: np.ndarray, columns: int, path: Path, what: str = "columns") -> None:
    """A 2-D numeric table with the expected column count."""
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D table with {columns} {what}, found an array of shape {arr.shape}")
    if arr.shape[1] != columns:
        raise DataError(f"{path}: expected {columns} {what}, found {arr.shape[1]} (array shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{path}: expected numeric values, found dtype {arr.dtype}")


def check_finite(arr: np.ndarray, path: Path, columns: Sequence[str] | None = None) -> None:
    """NaN/Inf anywhere in a file means it is corrupt: say where the first one is."""
    if not np.issubdtype(arr.dtype, np.floating):
        return
    step = 1 << 16
    for start in range(0, arr.shape[0], step):
        bad = ~np.isfinite(arr[start:start + step])
        if bad.any():
            row, col = np.argwhere(bad)[0]
            name = f" ('{columns[col]}')" if columns is not None else ""
            raise DataError(
                f"{path}: contains NaN or Inf values (first at data row {start + row}, column {col}{name}); "
                "the file is corrupt or not the standard preprocessed file"
            )
