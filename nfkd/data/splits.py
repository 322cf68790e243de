"""The common result type of every tabular loader, and the split rules they share.

Every loader hands the trainer the same thing: float32 train/val/test arrays plus the train
split's per-feature mean/std, which the trainer writes into a flow's fixed input normalization.
Keeping the statistics on the result (rather than recomputing them later) guarantees they come
from the train split only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError

__all__ = ["TabularSplits", "maf_split_sizes", "tail_split", "require_rows", "seeded_permutation",
    "train_stats", "require_usable_stats", "make_splits"]

#: Rows per chunk when computing statistics, so that a 1.3M x 63 table needs no float64 copy.
_STAT_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True, eq=False)
class TabularSplits:
    """A tabular dataset split three ways; arrays are float32 [N, D], C-contiguous."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    mean: np.ndarray  # float64 [D], train split only
    std: np.ndarray  # float64 [D], train split only (population std, ddof=0)
    source: str

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(train, val, test) row counts."""
        return (len(self.train), len(self.val), len(self.test))


def maf_split_sizes(n: int) -> tuple[int, int, int]:
    """The MAF paper's rule: test = int(0.1 N), validation = int(0.1 * rest), train = the remainder.

    Returns (n_train, n_val, n_test). The test rows are the *last* n_test rows and the validation
    rows the last n_val rows before them (see :func:`tail_split`).
    """
    n_test = int(0.1 * n)
    n_val = int(0.1 * (n - n_test))
    return n - n_test - n_val, n_val, n_test


def tail_split(data: np.ndarray, n_val: int, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) views: test = last n_test rows, val = the n_val rows before them.

    Positional indices rather than ``data[-k:]`` so that k = 0 gives an empty split, not all rows.
    """
    n = data.shape[0]
    a, b = n - n_test - n_val, n - n_test
    return data[:a], data[a:b], data[b:]


def require_rows(name: str, n: int, path: object, minimum: int = 20) -> None:
    """Refuse tables too small for the 10 % / 10 % rule to give non-empty splits."""
    if n < minimum:
        raise DataError(
            f"{name}: {path} has {n} usable rows; at least {minimum} are needed so that the "
            "10% test / 10% validation split leaves every split non-empty"
        )


def seeded_permutation(n: int, seed: int) -> tuple[np.ndarray, np.random.RandomState]:
    """Permutation from ``np.random.RandomState(seed)``; the generator is returned for further draws."""
    rng = np.random.RandomState(seed)
    return rng.permutation(n), rng


def train_stats(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float64 mean and population std, in row chunks (no full float64 copy)."""
    n, d = train.shape
    if n == 0:
        raise DataError("cannot compute statistics of an empty train split")
    total = np.zeros(d, dtype=np.float64)
    for start in range(0, n, _STAT_CHUNK_ROWS):
        total += train[start:start + _STAT_CHUNK_ROWS].sum(axis=0, dtype=np.float64)
    mean = total / n
    sq = np.zeros(d, dtype=np.float64)
    for start in range(0, n, _STAT_CHUNK_ROWS):
        centred = train[start:start + _STAT_CHUNK_ROWS].astype(np.float64) - mean
        sq += np.einsum("ij,ij->j", centred, centred)
    return mean, np.sqrt(sq / n)


def require_usable_stats(mean: np.ndarray, std: np.ndarray, where: object) -> None:
    """Statistics the flow can normalize with: finite, and a non-zero spread in every column.

    An overflowing std (values near 1e300) would normalize every value to 0, a zero std (a
    constant column) would divide by zero: either way training "succeeds" on garbage.
    """
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std)))
    if bad.size:
        raise DataError(
            f"{where}: the mean/std of column(s) {bad[:10].tolist()} are not finite (mean {mean[bad[0]]:.4g}, "
            f"std {std[bad[0]]:.4g}): the values are too large to normalize in floating point; rescale "
            "the data (e.g. to unit scale) before training"
        )
    flat = np.flatnonzero(std == 0)
    if flat.size:
        raise DataError(
            f"{where}: column(s) {flat[:10].tolist()} are constant (std 0), so normalizing them divides by "
            "zero; drop those columns or check that the file is the standard one"
        )


def _require_float32_range(name: str, arrays: list[np.ndarray], source: str) -> None:
    """After the float32 cast, |x| > 3.4e38 has become Inf: say where (row chunks, no full mask)."""
    for split, x in zip(("train", "val", "test"), arrays):
        for start in range(0, len(x), _STAT_CHUNK_ROWS):
            bad = ~np.isfinite(x[start:start + _STAT_CHUNK_ROWS])
            if bad.any():
                row, col = np.argwhere(bad)[0]
                raise DataError(
                    f"{name} ({source}): {split} row {start + row}, column {col} is beyond float32's range "
                    "(|x| > 3.4e38) or not finite; the flows compute in float32: rescale the data"
                )


def make_splits(name: str, train: np.ndarray, val: np.ndarray, test: np.ndarray, source: str) -> TabularSplits:
    """Cast to float32 C-contiguous (no copy when already so) and attach the train statistics.

    Values that overflow float32 and statistics the flow cannot normalize with are refused here,
    so that ``data check`` and training say so instead of training on zeros or NaN.
    """
    with np.errstate(over="ignore"):  # overflow to Inf is reported just below, with its place
        arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in (train, val, test)]
    _require_float32_range(name, arrays, source)
    mean, std = train_stats(arrays[0])
    require_usable_stats(mean, std, f"{name} ({source}), train split")
    return TabularSplits(name, arrays[0], arrays[1], arrays[2], mean, std, source)
