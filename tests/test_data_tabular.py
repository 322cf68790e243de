"""MAF tabular loaders against the MAF preprocessing written out plainly, on small real-format files.

Each test writes files in the on-disk formats of the published archive (npy, pandas pickle, CSV
with the HEPMASS header, hdf5) and recomputes the expected splits step by step with numpy, in
the order of github.com/gpapamak/maf datasets/*.py, without calling the loader's helpers.
"""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from nfkd.data import load_bsds300, load_dataset, load_gas, load_hepmass, load_miniboone, load_power
from nfkd.errors import DataError


def _check_result(ds, train, val, test, exact: bool = False) -> None:
    for got, want in ((ds.train, train), (ds.val, val), (ds.test, test)):
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert got.shape == want.shape
        if exact:
            np.testing.assert_array_equal(got, want.astype(np.float32))
        else:
            np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-5, atol=1e-6)
    t64 = ds.train.astype(np.float64)
    assert ds.mean.dtype == np.float64 and ds.std.dtype == np.float64
    np.testing.assert_allclose(ds.mean, t64.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds.std, t64.std(axis=0), rtol=1e-12, atol=1e-12)
    assert ds.dim == train.shape[1]


def _maf_reference_split(data: np.ndarray, standardize: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MAF code's tail split and train+val standardisation, written as it is there (the reference)."""
    N_test = int(0.1 * data.shape[0])
    test = data[-N_test:]
    data = data[0:-N_test]
    N_validate = int(0.1 * data.shape[0])
    val = data[-N_validate:]
    train = data[0:-N_validate]
    if not standardize:  # GAS standardises before the split
        return train, val, test
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return (train - mu) / s, (val - mu) / s, (test - mu) / s


# ---------------------------------------------------------------------------------- POWER

def _write_power(root: Path, raw: np.ndarray) -> Path:
    (root / "power").mkdir(parents=True, exist_ok=True)
    np.save(root / "power" / "data.npy", raw)
    return root / "power" / "data.npy"


def _power_raw(n: int = 5037) -> np.ndarray:
    """Standardized-looking columns like the published file's; a few thousand rows so that float
    reductions would expose any difference in summation order (e.g. a Fortran-ordered copy)."""
    rng = np.random.RandomState(7)
    raw = rng.randn(n, 8)  # active/reactive power, voltage, intensity, 3 sub-meterings, time of day
    raw[:, 4:7] = np.round(raw[:, 4:7] * 3)  # integer sub-meter readings, as in the real file
    return raw


def test_power_matches_maf_preprocessing(tmp_path):
    raw = _power_raw()
    _write_power(tmp_path, raw)

    rng = np.random.RandomState(42)
    data = raw.copy()
    rng.shuffle(data)
    N = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(N, 1)
    gap_noise = 0.001 * rng.rand(N, 1)
    sm_noise = rng.rand(N, 3)
    time_noise = np.zeros((N, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    train, val, test = _maf_reference_split(data)

    ds = load_power(tmp_path)
    assert ds.name == "power" and ds.dim == 6
    assert ds.sizes == (4081, 453, 503)
    _check_result(ds, train, val, test, exact=True)


# ------------------------------------------------------------------------------------ GAS

def _gas_frame(n: int = 480, sensors: int = 16) -> pd.DataFrame:
    rng = np.random.RandomState(3)
    x = rng.randn(n, sensors) * 2.0 + 10.0
    # Near-duplicates the correlation loop must remove, and decoys it must keep.
    x[:, 8] = x[:, 0] + 0.01 * rng.randn(n)  # corr ~ 0.99999 with s0
    x[:, 9] = 2.0 * x[:, 0] + 0.02 * rng.randn(n)  # ... and with s8
    x[:, 10] = x[:, 3] + 0.1 * rng.randn(n)  # corr ~ 0.999 with s3
    x[:, 11] = -x[:, 5]  # corr -1: not > 0.98, kept
    x[:, 12] = x[:, 1] + 0.7 * rng.randn(n)  # corr ~ 0.94: kept
    names = [f"S{i + 1}" for i in range(sensors)]
    df = pd.DataFrame(x, columns=names)
    df.insert(0, "Eth", rng.rand(n) * 20)
    df.insert(0, "Meth", rng.rand(n) * 200)
    df.insert(0, "Time", np.arange(n) * 0.01)
    return df


def _write_gas(root: Path, df: pd.DataFrame) -> Path:
    (root / "gas").mkdir(parents=True, exist_ok=True)
    path = root / "gas" / "ethylene_CO.pickle"
    df.to_pickle(path)
    return path


def test_gas_matches_maf_preprocessing(tmp_path):
    df = _gas_frame()
    _write_gas(tmp_path, df)

    x = df.drop(columns=["Meth", "Eth", "Time"]).to_numpy()
    cols = list(range(x.shape[1]))
    while True:
        B = (np.corrcoef(x[:, cols], rowvar=False) > 0.98).sum(axis=1)
        if not np.any(B > 1):
            break
        del cols[np.where(B > 1)[0][0]]
    assert cols == [1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]  # s0, s8 (dups of s9) and s3 gone
    y = x[:, cols]
    y = (y - y.mean(axis=0)) / y.std(axis=0, ddof=1)
    train, val, test = _maf_reference_split(y, standardize=False)

    ds = load_gas(tmp_path)
    assert ds.dim == 13 and ds.sizes == (389, 43, 48)
    _check_result(ds, train, val, test)


def test_gas_wrong_columns_and_corrupt(tmp_path):
    df = _gas_frame().drop(columns=["S16"])
    _write_gas(tmp_path, df)
    with pytest.raises(DataError, match=r"expected 16 sensor columns.*found 15"):
        load_gas(tmp_path)
    _write_gas(tmp_path, _gas_frame().drop(columns=["Meth"]))
    with pytest.raises(DataError, match="missing Meth"):
        load_gas(tmp_path)
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="ethylene_CO.pickle.*pandas DataFrame pickle"):
        load_gas(tmp_path)


def test_gas_nan_names_file_and_column(tmp_path):
    df = _gas_frame()
    df.loc[17, "S4"] = np.nan
    path = _write_gas(tmp_path, df)
    with pytest.raises(DataError) as exc:
        load_gas(tmp_path)
    assert str(path) in str(exc.value) and "NaN" in str(exc.value) and "'S4'" in str(exc.value)


# -------------------------------------------------------------------------------- HEPMASS

HEP_FEATURES = [f"f{i}" for i in range(27)]


def _hepmass_arrays(n_train: int = 700, n_test: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """[label, f0..f26] for train; [label, f0..f26, mass] for test."""
    rng = np.random.RandomState(11)

    def block(n: int) -> np.ndarray:
        labels = (rng.rand(n) < 0.5).astype(np.float64)
        x = rng.randn(n, 27)
        x[:, 5] = rng.randint(0, 4, n)  # number of jets: discrete -> removed
        x[:, 9] = rng.randint(0, 2, n)  # b-tag: discrete -> removed
        x[:, 20][rng.rand(n) < 0.2] = 5.0  # repeated *largest* value: MAF only counts the smallest -> kept
        sig = np.flatnonzero(labels == 1)
        x[sig[:5], 22] = -10.0  # smallest value 5 times among signal rows -> kept (limit is > 5)
        x[sig[:6], 23] = -10.0  # 6 times -> removed
        x[np.flatnonzero(labels == 0)[:50], 24] = -20.0  # repeats only in background rows -> kept
        return np.column_stack([labels, x])

    return block(n_train), np.column_stack([block(n_test), np.full(n_test, 1000.0)])


def _write_csv(path: Path, header: list[str], rows: np.ndarray) -> None:
    lines = [",".join(header)] + [",".join(f"{v:.17g}" for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def _write_hepmass(root: Path, train: np.ndarray, test: np.ndarray) -> tuple[Path, Path]:
    d = root / "hepmass"
    d.mkdir(parents=True, exist_ok=True)
    _write_csv(d / "1000_train.csv", ["# label"] + HEP_FEATURES, train)
    _write_csv(d / "1000_test.csv", ["# label"] + HEP_FEATURES + ["mass"], test)
    return d / "1000_train.csv", d / "1000_test.csv"


def test_hepmass_matches_maf_preprocessing(tmp_path):
    train_raw, test_raw = _hepmass_arrays()
    _write_hepmass(tmp_path, train_raw, test_raw)

    tr = train_raw[train_raw[:, 0] == 1][:, 1:]
    te = test_raw[test_raw[:, 0] == 1][:, 1:]
    te = te[:, :-1]  # MAF: "Because the data set is messed up!"
    mu, s = tr.mean(axis=0), tr.std(axis=0, ddof=1)
    tr, te = (tr - mu) / s, (te - mu) / s
    features_to_remove = []
    for i, feature in enumerate(tr.T):
        c = Counter(feature)
        max_count = np.array([v for k, v in sorted(c.items())])[0]
        if max_count > 5:
            features_to_remove.append(i)
    assert features_to_remove == [5, 9, 23]
    keep = [i for i in range(tr.shape[1]) if i not in features_to_remove]
    tr, te = tr[:, keep], te[:, keep]
    N_validate = int(tr.shape[0] * 0.1)
    val = tr[-N_validate:]
    train = tr[0:-N_validate]

    ds = load_hepmass(tmp_path)
    assert ds.dim == 24
    assert ds.sizes == (len(train), len(val), len(te))
    _check_result(ds, train, val, te)


def test_hepmass_errors(tmp_path):
    train_raw, test_raw = _hepmass_arrays(200, 100)
    _write_hepmass(tmp_path, train_raw, test_raw)
    (tmp_path / "hepmass" / "1000_test.csv").unlink()
    with pytest.raises(DataError, match=r"hepmass/1000_test.csv(.|\n)*1161203"):
        load_hepmass(tmp_path)

    train_path, _ = _write_hepmass(tmp_path, train_raw[:, :-1], test_raw)
    with pytest.raises(DataError, match=r"1000_train.csv: expected 28 comma-separated values per row, found 27"):
        load_hepmass(tmp_path)
    _write_csv(train_path, ["# label"] + HEP_FEATURES[:-1], train_raw[:, :-1])
    with pytest.raises(DataError, match=r"1000_train.csv: expected 28 columns \('# label' first\), found 27"):
        load_hepmass(tmp_path)
    _write_csv(tmp_path / "hepmass" / "1000_test.csv", ["# label"] + HEP_FEATURES, test_raw[:, :-1])
    _write_csv(train_path, ["# label"] + HEP_FEATURES, train_raw)
    with pytest.raises(DataError, match=r"1000_test.csv: expected 29 columns.*found 28"):
        load_hepmass(tmp_path)
    _write_hepmass(tmp_path, train_raw, test_raw)
    load_hepmass(tmp_path)  # and back to a good pair

    bad = train_raw.copy()
    bad[np.flatnonzero(bad[:, 0] == 1)[3], 7] = np.nan
    train_path, _ = _write_hepmass(tmp_path, bad, test_raw)
    with pytest.raises(DataError, match=r"1000_train.csv: contains NaN(.|\n)*'f6'"):
        load_hepmass(tmp_path)


# ------------------------------------------------------------------------------ MINIBOONE

def _write_npy(root: Path, sub: str, arr: np.ndarray) -> Path:
    (root / sub).mkdir(parents=True, exist_ok=True)
    np.save(root / sub / "data.npy", arr)
    return root / sub / "data.npy"


def test_miniboone_matches_maf_preprocessing(tmp_path):
    raw = np.random.RandomState(5).standard_gamma(2.0, size=(611, 43)) * np.linspace(1, 50, 43)
    _write_npy(tmp_path, "miniboone", raw)

    ds = load_miniboone(tmp_path)
    assert ds.dim == 43 and ds.sizes == (495, 55, 61)
    _check_result(ds, *_maf_reference_split(raw), exact=True)


def test_miniboone_wrong_column_count(tmp_path):
    _write_npy(tmp_path, "miniboone", np.zeros((100, 40)))
    with pytest.raises(DataError, match=r"data.npy: expected 43 columns, found 40"):
        load_miniboone(tmp_path)


# -------------------------------------------------------------------------------- BSDS300

def _write_bsds(root: Path, splits: dict[str, np.ndarray]) -> Path:
    (root / "BSDS300").mkdir(parents=True, exist_ok=True)
    path = root / "BSDS300" / "BSDS300.hdf5"
    with h5py.File(path, "w") as f:
        for key, arr in splits.items():
            f.create_dataset(key, data=arr)
    return path


def test_bsds300_reads_stored_splits(tmp_path):
    rng = np.random.RandomState(9)
    splits = {k: rng.rand(n, 63) - 0.5 for k, n in (("train", 300), ("validation", 40), ("test", 50))}
    _write_bsds(tmp_path, splits)
    ds = load_bsds300(tmp_path)
    assert ds.dim == 63 and ds.sizes == (300, 40, 50)
    _check_result(ds, splits["train"], splits["validation"], splits["test"], exact=True)


def test_bsds300_errors(tmp_path):
    path = _write_bsds(tmp_path, {"train": np.zeros((10, 63)), "test": np.zeros((10, 63))})
    with pytest.raises(DataError, match="'validation' is missing"):
        load_bsds300(tmp_path)
    _write_bsds(tmp_path, {k: np.zeros((10, 64)) for k in ("train", "validation", "test")})
    with pytest.raises(DataError, match=r"'train' should be \[N, 63\], found shape \(10, 64\)"):
        load_bsds300(tmp_path)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError, match="BSDS300.hdf5: cannot read it as an hdf5 file"):
        load_bsds300(tmp_path)


# ------------------------------------------------------------------------ shared failures

def test_missing_file_gives_layout_and_source(tmp_path):
    with pytest.raises(DataError) as exc:
        load_power(tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / "power" / "data.npy") in msg
    for rel in ("power/data.npy", "gas/ethylene_CO.pickle", "hepmass/1000_train.csv", "miniboone/data.npy",
                "BSDS300/BSDS300.hdf5"):
        assert rel in msg
    assert "Zenodo" in msg and "1161203" in msg


def test_power_nan_and_corrupt(tmp_path):
    raw = _power_raw(200)
    raw[23, 2] = np.nan
    path = _write_power(tmp_path, raw)
    with pytest.raises(DataError, match=r"data.npy: contains NaN or Inf values \(first at data row 23, column 2\)"):
        load_power(tmp_path)
    raw[23, 2] = np.inf
    _write_power(tmp_path, raw)
    with pytest.raises(DataError, match="NaN or Inf"):
        load_power(tmp_path)
    _write_power(tmp_path, raw[:, :7])
    with pytest.raises(DataError, match="expected 8 columns, found 7"):
        load_power(tmp_path)
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError) as exc:
        load_power(tmp_path)
    assert str(path) in str(exc.value) and "corrupt" in str(exc.value)


def test_too_few_rows(tmp_path):
    _write_npy(tmp_path, "miniboone", np.random.rand(8, 43))
    with pytest.raises(DataError, match="8 usable rows"):
        load_miniboone(tmp_path)


def test_registry_dispatches_maf_names(tmp_path):
    _write_npy(tmp_path, "miniboone", np.random.RandomState(0).rand(100, 43))
    ds = load_dataset("MINIBOONE", root=tmp_path)
    assert ds.name == "miniboone" and ds.sizes == (81, 9, 10)


def test_hepmass_test_file_with_empty_trailing_column(tmp_path):
    """Whatever the test file's extra last column holds (mass or nothing), MAF drops it unread."""
    train_raw, test_raw = _hepmass_arrays(300, 120)
    train_path, test_path = _write_hepmass(tmp_path, train_raw, test_raw)
    reference = load_hepmass(tmp_path)
    _write_csv(test_path, ["# label"] + HEP_FEATURES + ["mass"], test_raw[:, :-1])  # rows one value short
    ds = load_hepmass(tmp_path)
    np.testing.assert_array_equal(ds.test, reference.test)


def test_constant_column_is_reported_not_nan(tmp_path):
    raw = np.random.RandomState(1).rand(100, 43)
    raw[:, 17] = 3.0
    _write_npy(tmp_path, "miniboone", raw)
    with pytest.raises(DataError, match=r"column\(s\) \[17\] are constant"):
        load_miniboone(tmp_path)


class _RunsCode:
    """Unpickling this calls os.system: the classic malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_gas_pickle_that_runs_code_is_refused(tmp_path):
    """Issue 19 #1: `data check gas` used pd.read_pickle, so a crafted file ran os.system."""
    import pickle
    import subprocess
    import sys

    marker = tmp_path / "payload_ran"
    probe = tmp_path / "probe_ran"
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.loads({pickle.dumps(_RunsCode(probe))!r})"],
                   check=False)
    assert probe.exists(), "the payload is not live: the test would prove nothing"
    (tmp_path / "gas").mkdir()
    path = tmp_path / "gas" / "ethylene_CO.pickle"
    for payload in (_RunsCode(marker), {"frame": _RunsCode(marker)}):
        for protocol in (2, 5):
            path.write_bytes(pickle.dumps(payload, protocol=protocol))
            with pytest.raises(DataError, match=r"refused to unpickle.*posix\.system|refused to unpickle.*os\.system"):
                load_gas(tmp_path)
            assert not marker.exists()
    # The CLI says it in one line, exit 2, no traceback.
    import io

    from nfkd.data.cli import main

    err = io.StringIO()
    assert main(["check", "gas", "--data-root", str(tmp_path)], out=io.StringIO(), err=err) == 2
    assert "refused to unpickle" in err.getvalue() and not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_gas_genuine_frame_pickle_loads_through_the_allowlist(tmp_path, protocol):
    """A real to_pickle DataFrame (the published file's layout: float columns, string labels) loads
    unchanged through the allowlist, whatever the pickle protocol."""
    from nfkd.data.safe_pickle import load_numeric_frame

    df = _gas_frame()
    path = _write_gas(tmp_path, df)
    df.to_pickle(path, protocol=protocol)
    with open(path, "rb") as f:
        pd.testing.assert_frame_equal(load_numeric_frame(f), df)
    assert load_gas(tmp_path).dim == 13


def test_gas_frame_with_object_column_of_other_types_is_refused(tmp_path):
    """Anything beyond numbers and labels (here a datetime index) is outside the allowlist."""
    df = _gas_frame()
    df.index = pd.date_range("2020-01-01", periods=len(df), freq="s")
    _write_gas(tmp_path, df)
    with pytest.raises(DataError, match="refused to unpickle"):
        load_gas(tmp_path)


def test_overflowing_statistics_are_refused(tmp_path):
    """Issue 19 #10: data x 1e300 overflowed the std, every normalized value became 0, exit 0."""
    raw = _power_raw(400) * 1e300  # finite float64, but its square (the variance) overflows
    with np.errstate(over="ignore"):
        assert np.isfinite(raw).all() and not np.isfinite(raw.std(axis=0)).all()
    _write_power(tmp_path, raw)
    with np.errstate(over="ignore"), pytest.raises(DataError, match=r"power/data.npy: the mean/std of column\(s\) .* not finite.*rescale"):
        load_power(tmp_path)
    import io

    from nfkd.data.cli import main

    err = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI's one line must not come after numpy warnings
        assert main(["check", "power", "--data-root", str(tmp_path)], out=io.StringIO(), err=err) == 2
    assert "not finite" in err.getvalue() and err.getvalue().count("\n") == 1


def test_make_splits_refuses_float32_overflow_and_constant_columns():
    from nfkd.data.splits import make_splits

    rng = np.random.RandomState(0)
    x = rng.randn(50, 3)
    with pytest.raises(DataError, match=r"train row 7, column 1 is beyond float32's range"):
        y = x.copy()
        y[7, 1] = 1e300
        make_splits("toy", y[:40], y[40:45], y[45:], "test data")
    with pytest.raises(DataError, match=r"column\(s\) \[2\] are constant \(std 0\)"):
        y = x.copy()
        y[:, 2] = 4.0
        make_splits("toy", y[:40], y[40:45], y[45:], "test data")
    ok = make_splits("toy", x[:40], x[40:45], x[45:], "test data")
    np.testing.assert_allclose(ok.std, x[:40].astype(np.float32).astype(np.float64).std(axis=0), rtol=1e-12)


@pytest.mark.parametrize("header", [
    {"descr": "<f8", "fortran_order": False, "shape": (2.7, 43)},
    {"descr": "<f8", "fortran_order": False, "shape": (True, 43)},
    {"descr": "<f8", "fortran_order": "yes", "shape": (30, 43)},
])
def test_crafted_npy_header_is_one_data_error(tmp_path, header):
    """Issue 19 #12 for data files: a .npy header np.save never writes is refused, naming the file."""
    import struct

    text = repr(header).encode("latin1")
    text += b" " * ((64 - (10 + len(text) + 1) % 64) % 64) + b"\n"
    rows = int(header["shape"][0])
    (tmp_path / "miniboone").mkdir()
    path = tmp_path / "miniboone" / "data.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text
                     + np.random.RandomState(0).rand(rows, 43).tobytes())
    with pytest.raises(DataError, match=r"miniboone/data.npy: cannot read it as a .npy array"):
        load_miniboone(tmp_path)
