"""Real tabular data that needs no download: scikit-learn's bundled sets and UCI MAGIC.

They give every test and demo real (not synthetic) data. Splits follow the MAF rule after a
seeded shuffle: ``perm = np.random.RandomState(seed).permutation(N)``, then test = the last
int(0.1 N) shuffled rows, validation = the last int(0.1 * rest) rows before them, train = the
rest. Values stay in their raw units; the train mean/std come with the result.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
from .layout import MAGIC_SOURCE, check_finite, missing
from .splits import TabularSplits, maf_split_sizes, make_splits, seeded_permutation, tail_split

__all__ = ["load_digits_table", "load_breast_cancer_table", "load_wine_table", "load_magic", "seeded_splits"]

MAGIC_FILE = "magic/magic04.data"
MAGIC_FEATURES = ("fLength", "fWidth", "fSize", "fConc", "fConc1", "fAsym", "fM3Long", "fM3Trans", "fAlpha", "fDist")
MAGIC_CLASSES = frozenset({"g", "h"})


def seeded_splits(name: str, data: np.ndarray, seed: int, source: str) -> TabularSplits:
    """Shuffle rows with RandomState(seed), then the MAF 10 % test / 10 % validation rule."""
    perm, _ = seeded_permutation(data.shape[0], seed)
    _, n_val, n_test = maf_split_sizes(data.shape[0])
    return make_splits(name, *tail_split(data[perm], n_val, n_test), source)


def load_digits_table(seed: int = 0) -> TabularSplits:
    """scikit-learn digits as a 64-d table, dequantized: x = pixel (0..16) + u, u ~ U[0, 1).

    A continuous density on integer data is unbounded without dequantization. The noise comes
    from the same RandomState(seed) that drew the split permutation, drawn right after it, one
    value per (shuffled) row and pixel, so a seed fixes both the split and the noise.
    """
    from sklearn.datasets import load_digits

    pixels = load_digits().data  # float64 [1797, 64], integers 0..16
    perm, rng = seeded_permutation(pixels.shape[0], seed)
    data = pixels[perm] + rng.rand(*pixels.shape)
    _, n_val, n_test = maf_split_sizes(data.shape[0])
    source = f"scikit-learn load_digits, 8x8 pixels 0..16 + U[0,1) noise (seed {seed})"
    return make_splits("digits", *tail_split(data, n_val, n_test), source)


def _sklearn_table(name: str, loader: Callable, seed: int, what: str) -> TabularSplits:
    data = np.asarray(loader().data, dtype=np.float64)
    return seeded_splits(name, data, seed, f"scikit-learn {loader.__name__}: {what} (seed {seed})")


def load_breast_cancer_table(seed: int = 0) -> TabularSplits:
    """Wisconsin diagnostic breast cancer, 569 rows x 30 features (both classes)."""
    from sklearn.datasets import load_breast_cancer

    return _sklearn_table("breast_cancer", load_breast_cancer, seed, "569 x 30, both classes")


def load_wine_table(seed: int = 0) -> TabularSplits:
    """UCI wine recognition, 178 rows x 13 features (all three cultivars)."""
    from sklearn.datasets import load_wine

    return _sklearn_table("wine", load_wine, seed, "178 x 13, all classes")


def read_magic(path: Path) -> np.ndarray:
    """Parse magic04.data: each line 10 numbers and a class letter g/h; returns float64 [N, 10]."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as the UCI text file ({type(exc).__name__}: {exc})") from exc
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != len(MAGIC_FEATURES) + 1:
            raise DataError(
                f"{path}, line {lineno}: expected {len(MAGIC_FEATURES) + 1} comma-separated fields "
                f"({len(MAGIC_FEATURES)} features + class g/h), found {len(fields)}"
            )
        if fields[-1].strip() not in MAGIC_CLASSES:
            raise DataError(f"{path}, line {lineno}: class must be 'g' or 'h', found {fields[-1].strip()!r}")
        try:
            rows.append([float(v) for v in fields[:-1]])
        except ValueError as exc:
            raise DataError(f"{path}, line {lineno}: non-numeric feature ({exc})") from exc
    if not rows:
        raise DataError(f"{path}: no data lines; {MAGIC_SOURCE}")
    data = np.array(rows, dtype=np.float64)
    check_finite(data, path, MAGIC_FEATURES)
    return data


def load_magic(root: str | Path, seed: int = 0) -> TabularSplits:
    """UCI MAGIC gamma telescope, all 19,020 events (gamma and hadron), 10 features."""
    path = Path(root) / MAGIC_FILE
    if not path.is_file():
        raise missing("MAGIC", path, f"Expected layout under the data root {root}:\n  {MAGIC_FILE}\n{MAGIC_SOURCE}")
    data = read_magic(path)
    if data.shape[0] < 20:
        raise DataError(f"{path}: only {data.shape[0]} rows; too few for a 10%/10% split")
    return seeded_splits("magic", data, seed, f"UCI MAGIC gamma telescope, all events (seed {seed}) from {path}")
