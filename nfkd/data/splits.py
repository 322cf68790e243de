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


def make_splits(name: str, train: np.ndarray, val: np.ndarray, test: np.ndarray, source: str) -> TabularSplits:
    """Cast to float32 C-contiguous (no copy when already so) and attach the train statistics."""
    arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in (train, val, test)]
    mean, std = train_stats(arrays[0])
    return TabularSplits(name, arrays[0], arrays[1], arrays[2], mean, std, source)
