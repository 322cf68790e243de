"""The five tabular benchmarks of the MAF paper, preprocessed exactly as its public code does.

Reference: Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation"
(NeurIPS 2017), github.com/gpapamak/maf, ``datasets/{power,gas,hepmass,miniboone,bsds300}.py``.
Published log-likelihoods are only comparable on identical splits and normalizations, so every
step (seeded shuffle, dropped columns, noise, which statistics normalize which split, the
10 % / 10 % rule) is reproduced; the numeric steps run in the same precision as the original
(float64 for POWER/GAS/HEPMASS) and the result is cast to float32 at the end.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .layout import MAF_SOURCE, check_finite, check_table, corrupt, load_npy, require_maf_files
from .safe_pickle import UnsafePickleError, load_numeric_frame
from .splits import TabularSplits, make_splits, require_rows, require_usable_stats, tail_split

__all__ = ["load_power", "load_gas", "load_hepmass", "load_miniboone", "load_bsds300"]

# power/data.npy columns: active power, reactive power, voltage, intensity, 3 sub-meterings, time.
POWER_COLUMNS = 8  # columns 1 (reactive power) and 3 (intensity) are dropped -> 6
GAS_DROPPED = ("Meth", "Eth", "Time")
GAS_SENSORS = 16  # sensor columns left after dropping GAS_DROPPED; correlation removal -> 8
GAS_CORRELATION = 0.98
HEPMASS_TRAIN_COLUMNS = 28  # '# label' + 27 features; repeated-value removal -> 21
HEPMASS_TEST_COLUMNS = 29  # the test file carries one extra trailing column, dropped as in MAF
HEPMASS_MAX_REPEATS = 5
MINIBOONE_COLUMNS = 43
BSDS300_COLUMNS = 63
BSDS300_KEYS = ("train", "validation", "test")


def _float(data: np.ndarray) -> np.ndarray:
    """Keep float32/float64 as stored (the original computes in the file's precision)."""
    return data if np.issubdtype(data.dtype, np.floating) else data.astype(np.float64)


def _require_spread(std: np.ndarray, path: Path) -> None:
    """A constant column would normalize to NaN (0/0), an overflowing std to all zeros: report it."""
    require_usable_stats(np.zeros_like(np.asarray(std, dtype=np.float64)), std, path)


def _maf_tail_split(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MAF's rule: test = last int(0.1 N) rows, validation = last int(0.1 * rest) rows of the rest."""
    n_test = int(0.1 * data.shape[0])
    n_val = int(0.1 * (data.shape[0] - n_test))
    return tail_split(data, n_val, n_test)


def _load_checked_npy(name: str, root: str | Path, columns: int) -> tuple[Path, np.ndarray]:
    """(path, table) of a one-file ``.npy`` benchmark, refused unless it has ``columns`` finite columns
    and enough rows: the checks POWER and MINIBOONE share."""
    (path,) = require_maf_files(name, Path(root))
    data = load_npy(path)
    check_table(data, columns, path)
    check_finite(data, path)
    require_rows(name.upper(), data.shape[0], path)
    return path, data


def load_power(root: str | Path) -> TabularSplits:
    """UCI household electric power (6-d): shuffle (seed 42), drop 2 columns, add uniform noise."""
    path, raw = _load_checked_npy("power", root, POWER_COLUMNS)
    rng = np.random.RandomState(42)
    # rng.shuffle(data) then np.delete(columns 3 and 1): a row shuffle draws the same numbers as
    # rng.permutation(N) (both depend only on N), and it commutes with dropping columns, so a
    # gather does both without a Python-level row-swap loop over 2M rows. The result must be
    # C-ordered like np.delete's: column fancy-indexing returns Fortran order, and numpy's
    # mean/std round differently on it (last-bit differences after normalization).
    data = np.ascontiguousarray(raw[rng.permutation(raw.shape[0])][:, [0, 2, 4, 5, 6, 7]], dtype=np.float64)
    n = data.shape[0]
    voltage_noise = 0.01 * rng.rand(n, 1)  # drawn in the original's order: voltage, gap, sub-meters
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    data[:, 0:1] += gap_noise  # noise columns are (gap, voltage, sm x3, time = 0)
    data[:, 1:2] += voltage_noise
    data[:, 2:5] += sm_noise
    del voltage_noise, gap_noise, sm_noise
    train, val, test = _maf_tail_split(data)
    fit = data[: len(train) + len(val)]  # == np.vstack((train, val)), without the copy
    mu, s = fit.mean(axis=0), fit.std(axis=0)
    _require_spread(s, path)
    data -= mu
    data /= s
    return make_splits("power", train, val, test, f"POWER (MAF preprocessing) from {path}")


def _correlation_survivors(corr: np.ndarray, threshold: float) -> list[int]:
    """MAF's ``get_correlation_numbers`` loop on a precomputed correlation matrix.

    While some column is correlated (> threshold) with another, drop the first such column and
    recount. Pairwise correlations do not change when other columns are dropped, so one
    correlation matrix serves every iteration.
    """
    keep = list(range(corr.shape[0]))
    while True:
        counts = (corr[np.ix_(keep, keep)] > threshold).sum(axis=1)
        over = np.flatnonzero(counts > 1)
        if over.size == 0:
            return keep
        del keep[int(over[0])]


def load_gas(root: str | Path) -> TabularSplits:
    """UCI gas sensors, ethylene + CO (8-d): drop Meth/Eth/Time and near-duplicate sensors."""
    import pandas as pd

    (path,) = require_maf_files("gas", Path(root))
    try:
        with open(path, "rb") as f:
            df = load_numeric_frame(f)  # a pickle: read through an allowlist, never pd.read_pickle
    except UnsafePickleError as exc:
        raise DataError(
            f"{path}: refused to unpickle it: it asks for {exc.module}.{exc.name}, which a pandas DataFrame "
            "of numbers never needs, and loading it could run code; replace it with the standard file. "
            + MAF_SOURCE
        ) from None
    except Exception as exc:
        raise corrupt(path, "a pandas DataFrame pickle", exc) from exc
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{path}: expected a pickled pandas DataFrame, found {type(df).__name__}")
    absent = [c for c in GAS_DROPPED if c not in df.columns]
    if absent:
        raise DataError(
            f"{path}: expected columns {', '.join(GAS_DROPPED)} plus {GAS_SENSORS} sensor columns; "
            f"missing {', '.join(absent)} (found columns {list(df.columns)})"
        )
    df = df.drop(columns=list(GAS_DROPPED))
    if df.shape[1] != GAS_SENSORS:
        raise DataError(
            f"{path}: expected {GAS_SENSORS} sensor columns besides {', '.join(GAS_DROPPED)} "
            f"({GAS_SENSORS + 3} in total), found {df.shape[1]}"
        )
    try:
        values = df.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise corrupt(path, "numeric sensor columns", exc) from exc
    check_finite(values, path, [str(c) for c in df.columns])
    require_rows("GAS", values.shape[0], path)
    del values
    keep = _correlation_survivors(df.corr().to_numpy(), GAS_CORRELATION)
    df = df.iloc[:, keep]
    std = df.std()
    _require_spread(std.to_numpy(), path)
    df = (df - df.mean()) / std  # whole-file statistics (pandas, ddof=1), before splitting
    data = df.to_numpy(dtype=np.float64)
    # GAS's own order: test = last int(0.1 N), then validation = last int(0.1 * rest).
    train, val, test = _maf_tail_split(data)
    return make_splits("gas", train, val, test, f"GAS (MAF preprocessing) from {path}")


def _first_row_fields(path: Path) -> int:
    with open(path, "r", errors="replace") as f:
        f.readline()
        return len(f.readline().rstrip("\r\n").split(","))


def _read_hepmass_csv(path: Path, columns: int, check_rows: bool):
    """pandas read as in MAF (``index_col=False``), plus column-count checks it lacks.

    Short rows would silently become NaN columns; ``check_rows`` catches that in the first
    data row (only for the train file: the test file's trailing column is dropped anyway).
    """
    import pandas as pd

    try:
        df = pd.read_csv(path, index_col=False)
    except Exception as exc:
        raise corrupt(path, "a HEPMASS CSV file", exc) from exc
    if df.shape[1] != columns:
        raise DataError(f"{path}: expected {columns} columns ('# label' first), found {df.shape[1]}")
    if check_rows and len(df) and _first_row_fields(path) != columns:
        raise DataError(
            f"{path}: expected {columns} comma-separated values per row, "
            f"found {_first_row_fields(path)} in the first data row"
        )
    return df


def _numeric(df, path: Path) -> np.ndarray:
    try:
        return df.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise corrupt(path, "numeric CSV columns", exc) from exc


def load_hepmass(root: str | Path) -> TabularSplits:
    """UCI HEPMASS '1000' signal events (21-d): label==1 rows, minus features with repeated values."""
    train_path, test_path = require_maf_files("hepmass", Path(root))
    train_df = _read_hepmass_csv(train_path, HEPMASS_TRAIN_COLUMNS, check_rows=True)
    test_df = _read_hepmass_csv(test_path, HEPMASS_TEST_COLUMNS, check_rows=False)
    # Signal events only (label == 1), then drop the label; the test file also loses its last column.
    train_df = train_df[_numeric(train_df.iloc[:, :1], train_path)[:, 0] == 1].iloc[:, 1:]
    test_df = test_df[_numeric(test_df.iloc[:, :1], test_path)[:, 0] == 1].iloc[:, 1:-1]
    if list(test_df.columns) != list(train_df.columns):
        # The original normalizes with pandas, which aligns on names: mismatches become NaN.
        raise DataError(
            f"{test_path}: feature columns {list(test_df.columns)} do not match "
            f"{train_path}'s {list(train_df.columns)}"
        )
    check_finite(_numeric(train_df, train_path), train_path, list(map(str, train_df.columns)))
    check_finite(_numeric(test_df, test_path), test_path, list(map(str, test_df.columns)))
    require_rows("HEPMASS", len(train_df), train_path)
    mu, s = train_df.mean(), train_df.std()  # pandas, ddof=1, whole train file (validation included)
    _require_spread(s.to_numpy(), train_path)
    train = ((train_df - mu) / s).to_numpy(dtype=np.float64)
    test = ((test_df - mu) / s).to_numpy(dtype=np.float64)
    # MAF's filter counts how often each feature's *smallest* value occurs (the first entry of
    # sorted(Counter(feature).items())) and drops the feature when that count exceeds 5.
    min_counts = (train == train.min(axis=0)).sum(axis=0)
    keep = np.flatnonzero(min_counts <= HEPMASS_MAX_REPEATS)
    train, test = train[:, keep], test[:, keep]
    n_val = int(train.shape[0] * 0.1)
    train, val, _ = tail_split(train, n_val, 0)
    return make_splits("hepmass", train, val, test, f"HEPMASS (MAF preprocessing) from {train_path.parent}")


def load_miniboone(root: str | Path) -> TabularSplits:
    """UCI MiniBooNE particle identification (43-d), already cleaned in the published file."""
    path, data = _load_checked_npy("miniboone", root, MINIBOONE_COLUMNS)
    data = _float(data)
    train, val, test = _maf_tail_split(data)
    fit = data[: len(train) + len(val)]  # == np.vstack((train, val))
    mu, s = fit.mean(axis=0), fit.std(axis=0)
    _require_spread(s, path)
    train, val, test = ((x - mu) / s for x in (train, val, test))
    return make_splits("miniboone", train, val, test, f"MINIBOONE (MAF preprocessing) from {path}")


def load_bsds300(root: str | Path) -> TabularSplits:
    """BSDS300 8x8 patches (63-d: the last pixel is implied), splits as stored in the hdf5 file."""
    import h5py

    (path,) = require_maf_files("bsds300", Path(root))
    splits = []
    try:
        with h5py.File(path, "r") as f:
            for key in BSDS300_KEYS:
                if key not in f:
                    raise DataError(f"{path}: expected hdf5 datasets {', '.join(BSDS300_KEYS)}; '{key}' is missing")
                dset = f[key]
                if len(dset.shape) != 2 or dset.shape[1] != BSDS300_COLUMNS:
                    raise DataError(f"{path}: '{key}' should be [N, {BSDS300_COLUMNS}], found shape {dset.shape}")
                splits.append(np.asarray(dset[()], dtype=np.float32))
    except DataError:
        raise
    except Exception as exc:  # h5py raises OSError for non-hdf5 files, KeyError/TypeError for odd content
        raise corrupt(path, "an hdf5 file", exc) from exc
    for key, arr in zip(BSDS300_KEYS, splits):
        check_table(arr, BSDS300_COLUMNS, path)
        check_finite(arr, path, None)
        if arr.shape[0] == 0:
            raise DataError(f"{path}: '{key}' is empty")
    return make_splits("bsds300", *splits, f"BSDS300 (MAF hdf5 splits) from {path}")
