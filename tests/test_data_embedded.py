"""Bundled tables, MAGIC from the shared folder, the registry and the `data` CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

from nfkd.data import (
    DATA_ROOT_ENV,
    default_data_root,
    list_datasets,
    load_breast_cancer_table,
    load_dataset,
    load_digits_table,
    load_magic,
    load_wine_table,
    registry,
)
from nfkd.data.cli import main
from nfkd.errors import DataError, InputError

ROOT = default_data_root()
needs_magic = pytest.mark.skipif(not (ROOT / "magic" / "magic04.data").is_file(), reason=f"no magic/ under {ROOT}")


def _expected_split(data: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spelled out: shuffle with RandomState(seed); test = last 10 %, val = last 10 % of the rest."""
    x = data[np.random.RandomState(seed).permutation(len(data))]
    n_test = int(0.1 * len(x))
    n_val = int(0.1 * (len(x) - n_test))
    n_train = len(x) - n_test - n_val
    return x[:n_train], x[n_train:n_train + n_val], x[n_train + n_val:]


def _check(ds, data: np.ndarray, seed: int) -> None:
    for got, want in zip((ds.train, ds.val, ds.test), _expected_split(data, seed)):
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want.astype(np.float32))
    t64 = ds.train.astype(np.float64)
    np.testing.assert_allclose(ds.mean, t64.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(ds.std, t64.std(axis=0), rtol=1e-12)


@needs_magic
def test_magic_all_rows_and_rule():
    ds = load_magic(ROOT)
    assert ds.dim == 10 and ds.sizes == (15407, 1711, 1902) and sum(ds.sizes) == 19020
    raw = np.loadtxt(ROOT / "magic" / "magic04.data", delimiter=",", usecols=range(10))
    _check(ds, raw, seed=0)
    np.testing.assert_allclose(ds.mean, ds.train.astype(np.float64).mean(0))
    assert not np.allclose(ds.mean, raw.mean(0), rtol=1e-6)  # train only, not the whole file
    other = load_dataset("magic", seed=1)
    assert other.sizes == ds.sizes and not np.array_equal(other.test, ds.test)


def test_magic_bad_files(tmp_path):
    with pytest.raises(DataError, match=r"magic/magic04.data(.|\n)*archive.ics.uci.edu"):
        load_magic(tmp_path)
    (tmp_path / "magic").mkdir()
    path = tmp_path / "magic" / "magic04.data"
    good = "28.7967,16.0021,2.6449,0.3918,0.1982,27.7004,22.011,-8.2027,40.092,81.8828,g\n"
    path.write_text(good * 2 + "1,2,3,4,5,6,7,8,9,10,11,h\n")
    with pytest.raises(DataError, match=r"line 3: expected 11 comma-separated fields .* found 12"):
        load_magic(tmp_path)
    path.write_text(good + "1,2,3,4,5,6,7,8,9,10,x\n")
    with pytest.raises(DataError, match=r"line 2: class must be 'g' or 'h', found 'x'"):
        load_magic(tmp_path)
    path.write_text(good * 30 + "1,2,3,nan,5,6,7,8,9,10,h\n")
    with pytest.raises(DataError, match=r"contains NaN or Inf values \(first at data row 30, column 3 \('fConc'\)\)"):
        load_magic(tmp_path)
    path.write_text(good + "1,2,3,abc,5,6,7,8,9,10,h\n")
    with pytest.raises(DataError, match="line 2: non-numeric feature"):
        load_magic(tmp_path)


def test_digits_table_dequantized():
    ds = load_digits_table(seed=2)
    assert ds.dim == 64 and ds.sizes == (1457, 161, 179)
    pixels = load_digits().data
    perm = np.random.RandomState(2).permutation(len(pixels))
    levels = np.floor(np.concatenate([ds.train, ds.val, ds.test]).astype(np.float64))
    np.testing.assert_array_equal(levels, pixels[perm])  # noise in [0, 1) never crosses a level
    frac = np.concatenate([ds.train, ds.val, ds.test]) - levels
    assert 0.45 < frac.mean() < 0.55 and ds.train.max() < 17
    np.testing.assert_array_equal(load_digits_table(seed=2).train, ds.train)


@pytest.mark.parametrize(
    "loader, sk, dim, sizes",
    [
        (load_breast_cancer_table, load_breast_cancer, 30, (462, 51, 56)),
        (load_wine_table, load_wine, 13, (145, 16, 17)),
    ],
)
def test_sklearn_tables(loader, sk, dim, sizes):
    ds = loader(seed=5)
    assert ds.dim == dim and ds.sizes == sizes
    _check(ds, sk().data, seed=5)


def test_registry():
    infos = {i.name: i for i in list_datasets()}
    assert set(infos) == {"power", "gas", "hepmass", "miniboone", "bsds300", "magic", "digits", "breast_cancer",
                          "wine", "cifar10", "celeba", "digits_images"}
    assert {n: infos[n].dim for n in ("power", "gas", "hepmass", "miniboone", "bsds300")} == {
        "power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}
    assert infos["cifar10"].kind == "image" and infos["cifar10"].shape == (3, 32, 32)
    assert infos["hepmass"].files == ("hepmass/1000_train.csv", "hepmass/1000_test.csv")
    with pytest.raises(DataError, match=r"unknown dataset 'mnist'; valid names: power, gas, .*digits_images"):
        load_dataset("mnist")
    with pytest.raises(InputError, match="does not take option"):
        load_dataset("wine", limit=3)
    assert load_dataset("wine", seed=5).sizes == (145, 16, 17)


def test_default_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv(DATA_ROOT_ENV)
    beside_repo = Path(registry.__file__).resolve().parents[3] / "shared" / "datasets"
    assert default_data_root() == (beside_repo if beside_repo.is_dir() else Path.cwd())
    monkeypatch.setenv(DATA_ROOT_ENV, "")  # empty counts as unset
    assert default_data_root() == (beside_repo if beside_repo.is_dir() else Path.cwd())


def test_cli_list_and_check(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "power" in out and "hepmass/1000_train.csv" in out and "digits_images" in out
    assert main(["check", "wine"]) == 0
    out = capsys.readouterr().out
    assert "wine: tabular, dim 13" in out
    for split, n in (("train", 145), ("val", 16), ("test", 17)):
        assert any(line.split()[:2] == [split, str(n)] for line in out.splitlines())


def test_cli_missing_dataset(capsys, tmp_path):
    assert main(["check", "power", "--data-root", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "power/data.npy" in captured.err and "BSDS300/BSDS300.hdf5" in captured.err
    assert "Zenodo" in captured.err and "1161203" in captured.err
    assert main(["check", "nope"]) == 2
    assert "valid names" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2  # argparse usage error, not an exception
