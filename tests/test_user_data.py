"""A user's own table reaches every command through ``--data PATH`` (issue 27, build 1)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nfkd.__main__ import main as nfkd_main
from nfkd.data import load_dataset
from nfkd.data.embedded import seeded_splits
from nfkd.data.user_files import UserTableSplits, parse_spec
from nfkd.errors import NfkdError

REPO = Path(__file__).resolve().parents[1]
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


def _table(n: int = 200, d: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 2.0]])[:d, :d]


def _csv(path: Path, x: np.ndarray, header: str | None = "a,b,c") -> Path:
    np.savetxt(path, x, delimiter=",", header=header or "", comments="", fmt="%.17g")
    return path


def _one_line_error(capsys, spec: str, tmp_path: Path) -> str:
    rc = nfkd_main(["train", "--data", spec, "--arch", "maf", "--steps", "1", "--no-progress", "--device", "cpu",
                    "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "error: " in err and "Traceback" not in err, err
    assert not (tmp_path / "never" / "model.pt").exists()
    return err


# --- reading ---------------------------------------------------------------------------------------------


def test_names_stay_names_and_paths_become_files(tmp_path):
    assert parse_spec("wine") is None and parse_spec("magic") is None
    spec = parse_spec(f"{tmp_path}/t.csv:a, c")
    assert spec.path == tmp_path / "t.csv" and spec.columns == ("a", "c")
    assert parse_spec("t.npy").columns is None


def test_csv_npy_npz_load_equal_with_the_embedded_split_rule(tmp_path):
    x = _table()
    csv = load_dataset(str(_csv(tmp_path / "t.csv", x)), seed=3)
    np.save(tmp_path / "t.npy", x)
    np.savez(tmp_path / "t.npz", data=x, other=x[:2])  # several arrays: the one named 'data'
    np.savez(tmp_path / "one.npz", x)  # one array: whatever its name
    ref = seeded_splits("ref", x, 3, "reference")  # the rule the bundled tables use
    for spec in ("t.npy", "t.npz", "one.npz"):
        other = load_dataset(str(tmp_path / spec), seed=3)
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(getattr(other, split), getattr(csv, split))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(csv, split), getattr(ref, split))
    assert csv.sizes == (162, 18, 20) and isinstance(csv, UserTableSplits)
    assert csv.file["sha256"] == hashlib.sha256((tmp_path / "t.csv").read_bytes()).hexdigest()
    assert csv.file["columns"] == ["a", "b", "c"] and csv.file["seed"] == 3


def test_header_detection_and_column_selection(tmp_path):
    x = _table()
    with_header = load_dataset(str(_csv(tmp_path / "h.csv", x)) + ":c,a")
    no_header = load_dataset(str(_csv(tmp_path / "n.csv", x, header=None)) + ":2,0")
    np.save(tmp_path / "t.npy", x)
    by_index = load_dataset(str(tmp_path / "t.npy") + ":2,0")
    ref = seeded_splits("ref", x[:, [2, 0]], 0, "reference")
    for ds in (with_header, no_header, by_index):
        assert ds.dim == 2
        np.testing.assert_array_equal(ds.train, ref.train)
    assert with_header.file["columns"] == ["c", "a"] and no_header.file["columns"] == ["2", "0"]


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow not installed")
def test_parquet_loads_equal_to_the_csv(tmp_path):
    import pandas as pd

    x = _table()
    pd.DataFrame(x, columns=["a", "b", "c"]).assign(label="z").to_parquet(tmp_path / "t.parquet")
    pq = load_dataset(str(tmp_path / "t.parquet") + ":a,b,c")
    csv = load_dataset(str(_csv(tmp_path / "t.csv", x)))
    np.testing.assert_array_equal(pq.train, csv.train)
    with pytest.raises(NfkdError, match="non-numeric column.*'label'"):
        load_dataset(str(tmp_path / "t.parquet"))


@pytest.mark.skipif(HAS_PYARROW, reason="pyarrow installed: parquet is read")
def test_parquet_without_pyarrow_is_one_line_naming_the_package(tmp_path, capsys):
    (tmp_path / "t.parquet").write_bytes(b"PAR1" + b"\0" * 16 + b"PAR1")
    err = _one_line_error(capsys, str(tmp_path / "t.parquet"), tmp_path)
    assert "pyarrow" in err and "pip install pyarrow" in err


# --- bad files: one line each, naming what and where ------------------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """case -> (spec, a fragment the one line must contain)."""
    x = _table()
    cases: dict[str, tuple[str, str]] = {"missing": (str(tmp_path / "nope.csv"), "not found")}
    lines = ["a,b,name,c"] + [f"{r[0]},{r[1]},row{i},{r[2]}" for i, r in enumerate(x)]
    (tmp_path / "text.csv").write_text("\n".join(lines) + "\n")
    cases["non-numeric"] = (str(tmp_path / "text.csv"), "non-numeric column(s) 'name' (line 2: 'row0')")
    nan = x.copy()
    nan[7, 1] = np.nan
    cases["nan"] = (str(_csv(tmp_path / "nan.csv", nan)), "line 9, column 'b' is nan")
    inf = x.copy()
    inf[4, 2] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    cases["inf"] = (str(tmp_path / "inf.npy"), "row 4, column '2' is inf")
    cases["too-few-rows"] = (str(_csv(tmp_path / "few.csv", x[:10])), "10 rows; at least 20")
    const = x.copy()
    const[:, 1] = 3.0
    cases["constant"] = (str(_csv(tmp_path / "const.csv", const)), "constant column(s) 'b' (always 3)")
    (tmp_path / "t.txt").write_text("1,2\n")
    cases["extension"] = (str(tmp_path / "t.txt"), "unknown file type '.txt'")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    cases["corrupt-npy"] = (str(tmp_path / "bad.npy"), "cannot read it as .npy")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 garbage")
    cases["corrupt-npz"] = (str(tmp_path / "bad.npz"), "cannot read it as .npz")
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)) * 4)
    cases["binary-csv"] = (str(tmp_path / "bin.csv"), "cannot read it as CSV")
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5,6\n7,8,9,10\n" * 10)
    cases["ragged-csv"] = (str(tmp_path / "ragged.csv"), "cannot read it as CSV")
    (tmp_path / "empty.csv").write_text("")
    cases["empty"] = (str(tmp_path / "empty.csv"), "empty")
    (tmp_path / "hole.csv").write_text("a,b\n" + "1,2\n" * 5 + "3,\n" + "5,6\n" * 20)
    cases["missing-value"] = (str(tmp_path / "hole.csv"), "line 7, column 'b' is empty")
    cases["unknown-column"] = (str(_csv(tmp_path / "t.csv", x)) + ":a,zz", "no column 'zz'")
    np.save(tmp_path / "flat.npy", x[:, 0])
    cases["1-d"] = (str(tmp_path / "flat.npy"), "x[:, None]")
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]] * 30, dtype=object))
    cases["pickled"] = (str(tmp_path / "obj.npy"), "cannot read it as .npy")
    np.savez(tmp_path / "many.npz", x=x, y=x)
    cases["npz-ambiguous"] = (str(tmp_path / "many.npz"), "name the table 'data'")
    return cases


def test_every_bad_file_is_one_clear_line(tmp_path, capsys):
    for case, (spec, fragment) in _bad_files(tmp_path).items():
        err = _one_line_error(capsys, spec, tmp_path)
        assert fragment in err, (case, err)


def test_data_check_reads_a_file(tmp_path, capsys):
    assert nfkd_main(["data", "check", str(_csv(tmp_path / "t.csv", _table())) + ":b,c"]) == 0
    out = capsys.readouterr().out
    assert "dim 2" in out and "162" in out


def test_unknown_name_mentions_files(tmp_path, capsys):
    assert "table file" in _one_line_error(capsys, "no_such_dataset", tmp_path)


# --- the three commands -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_csv_trains_distills_and_exports_in_three_commands(tmp_path):
    """The README's "Your own data" commands, run as a user would (fresh processes, relative path)."""
    _csv(tmp_path / "mydata.csv", _table(300))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    small = ["--steps", "20", "--eval-every", "10", "--steps-arch", "1", "--hidden", "8", "--no-progress",
             "--device", "cpu", "--threads", "1"]

    def run(*argv: str) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path, env=env,
                             timeout=400)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    train = run("-m", "nfkd", "train", "--data", "mydata.csv", "--arch", "maf", "--out", "teacher", *small)
    report = json.loads(train.stdout)
    assert report["test"]["n"] == 30 and np.isfinite(report["test"]["log_likelihood"])
    assert "test log-likelihood" in train.stderr.strip().splitlines()[-1]
    run("-m", "nfkd", "distill", "--teacher", "teacher/model.pt", "--data", "mydata.csv", "--out", "student", *small)
    run("-m", "export.onnx", "student/model.pt", "-o", "onnx")
    again = json.loads(run("-m", "nfkd", "evaluate", "teacher/model.pt").stdout)  # the file named in the metadata
    assert again["n"] == 30 and again["log_likelihood"] == pytest.approx(report["test"]["log_likelihood"], abs=1e-5)
    assert [(f["sha256"], f["matches_training"]) for f in again["data_files"]] == [
        (hashlib.sha256((tmp_path / "mydata.csv").read_bytes()).hexdigest(), True)]
    assert {p.name for p in (tmp_path / "onnx").iterdir()} >= {"density.onnx", "sample.onnx", "manifest.json"}

    from nfkd.checkpoint import load_checkpoint

    meta = load_checkpoint(tmp_path / "student" / "model.pt").metadata
    assert meta["split_sizes"] == [243, 27, 30]
    assert meta["data_file"]["sha256"] == hashlib.sha256((tmp_path / "mydata.csv").read_bytes()).hexdigest()
    assert meta["dataset"] == str((tmp_path / "mydata.csv").resolve())
