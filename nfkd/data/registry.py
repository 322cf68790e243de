"""One name -> loader table, so the CLI, the trainer and the tests agree on what each dataset is."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DataError, InputError
from . import embedded, images, tabular
from .images import ImageSplits, split_images
from .layout import MAF_FILES
from .splits import TabularSplits
from .user_files import load_user_table, parse_spec

__all__ = ["default_data_root", "DatasetInfo", "list_datasets", "dataset_info", "load_dataset"]

DATA_ROOT_ENV = "NFKD_DATA_ROOT"


def default_data_root() -> Path:
    """$NFKD_DATA_ROOT, else `shared/datasets` beside the repository checkout, else the cwd.

    The repository and `shared/` are siblings both here and in CI (which clones elsewhere), so
    the path is found relative to this file, not hard-coded.
    """
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    shared = Path(__file__).resolve().parents[3] / "shared" / "datasets"
    return shared if shared.is_dir() else Path.cwd()


@dataclass(frozen=True)
class DatasetInfo:
    """What `data list` shows about one dataset."""

    name: str
    kind: str  # 'tabular' | 'image'
    shape: tuple[int, ...]  # (D,) for tables, (C, H, W) for images
    description: str
    files: tuple[str, ...]  # relative to the data root; () when bundled with scikit-learn
    options: tuple[str, ...] = ()  # extra keyword arguments load_dataset accepts

    @property
    def dim(self) -> int:
        return math.prod(self.shape)


Loader = Callable[..., Any]


def _cifar10(root: Path, seed: int) -> ImageSplits:
    """The official test batch is the test split; validation comes out of the train batches."""
    parts = split_images(images.load_cifar10(root, "train"), seed, val_frac=0.1, test_frac=0.0)
    return ImageSplits("cifar10", parts.train, parts.val, images.load_cifar10(root, "test"))


def _celeba(root: Path, seed: int, size: int = 64, limit: int | None = None) -> ImageSplits:
    return split_images(images.load_celeba(root, size=size, limit=limit), seed)


_MAF_NOTE = "MAF paper preprocessing; fixed published split (seed unused)"

_ENTRIES: list[tuple[DatasetInfo, Loader]] = [
    (DatasetInfo("power", "tabular", (6,), f"UCI household power. {_MAF_NOTE}", MAF_FILES["power"]),
     lambda root, seed: tabular.load_power(root)),
    (DatasetInfo("gas", "tabular", (8,), f"UCI gas sensors (ethylene+CO). {_MAF_NOTE}", MAF_FILES["gas"]),
     lambda root, seed: tabular.load_gas(root)),
    (DatasetInfo("hepmass", "tabular", (21,), f"UCI HEPMASS signal events. {_MAF_NOTE}", MAF_FILES["hepmass"]),
     lambda root, seed: tabular.load_hepmass(root)),
    (DatasetInfo("miniboone", "tabular", (43,), f"UCI MiniBooNE. {_MAF_NOTE}", MAF_FILES["miniboone"]),
     lambda root, seed: tabular.load_miniboone(root)),
    (DatasetInfo("bsds300", "tabular", (63,), f"BSDS300 8x8 image patches. {_MAF_NOTE}", MAF_FILES["bsds300"]),
     lambda root, seed: tabular.load_bsds300(root)),
    (DatasetInfo("magic", "tabular", (10,), "UCI MAGIC gamma telescope, all 19,020 events; seeded split",
                 (embedded.MAGIC_FILE,)),
     lambda root, seed: embedded.load_magic(root, seed)),
    (DatasetInfo("digits", "tabular", (64,), "sklearn digits, pixels 0..16 + U[0,1) noise; seeded split", ()),
     lambda root, seed: embedded.load_digits_table(seed)),
    (DatasetInfo("breast_cancer", "tabular", (30,), "sklearn breast cancer, 569 rows; seeded split", ()),
     lambda root, seed: embedded.load_breast_cancer_table(seed)),
    (DatasetInfo("wine", "tabular", (13,), "sklearn wine, 178 rows; seeded split", ()),
     lambda root, seed: embedded.load_wine_table(seed)),
    (DatasetInfo("cifar10", "image", (3, 32, 32), "CIFAR-10; test = test_batch, val = 10% of train",
                 (f"{images.CIFAR_DIR}/data_batch_1..5", f"{images.CIFAR_DIR}/test_batch")),
     _cifar10),
    (DatasetInfo("celeba", "image", (3, 64, 64), "CelebA aligned, centre crop + resize; seeded split",
                 (f"{images.CELEBA_DIR}/*.jpg",), ("size", "limit")),
     _celeba),
    (DatasetInfo("digits_images", "image", (1, 8, 8), "sklearn digits as 17-level images; seeded split", ()),
     lambda root, seed: split_images(images.load_digits_images(), seed)),
]
_REGISTRY: dict[str, tuple[DatasetInfo, Loader]] = {info.name: (info, fn) for info, fn in _ENTRIES}


def list_datasets() -> list[DatasetInfo]:
    return [info for info, _ in _ENTRIES]


def dataset_info(name: str) -> DatasetInfo:
    """A registered dataset's entry; a user's file (see user_files) is a table of unknown width until read."""
    spec = parse_spec(name)
    if spec is not None:
        return DatasetInfo(spec.text, "tabular", (), "a user's table file", (str(spec.path),))
    return _lookup(name)[0]


def _lookup(name: str) -> tuple[DatasetInfo, Loader]:
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(_REGISTRY)}, or a table file "
                        "(.csv, .parquet, .npy, .npz)")
    return _REGISTRY[key]


def load_dataset(name: str, root: str | Path | None = None, seed: int = 0, **kw: Any) -> TabularSplits | ImageSplits:
    """TabularSplits for tabular names, ImageSplits for image names; root defaults to default_data_root().

    A file path (.csv, .parquet, .npy, .npz; ``PATH:col1,col2`` keeps columns) is read by
    ``user_files.load_user_table`` with the same seeded split as the embedded tables; root is unused.
    """
    spec = parse_spec(name)
    if spec is not None:
        if kw:
            raise InputError(f"a table file takes no dataset option(s) ({', '.join(sorted(kw))})")
        with np.errstate(over="ignore", invalid="ignore"):
            return load_user_table(spec, seed)
    info, loader = _lookup(name)
    unknown = sorted(set(kw) - set(info.options))
    if unknown:
        allowed = ", ".join(info.options) or "none"
        raise InputError(f"dataset {info.name!r} does not take option(s) {', '.join(unknown)} (accepted: {allowed})")
    # Overflow in a loader's statistics is reported as one DataError by the checks in splits.py,
    # not as numpy RuntimeWarnings ahead of it.
    with np.errstate(over="ignore", invalid="ignore"):
        return loader(Path(root) if root is not None else default_data_root(), seed, **kw)
