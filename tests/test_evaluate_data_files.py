"""``python -m nfkd evaluate`` names the files it read with their SHA-256 (reproducibility, issue 27),
checked against hashlib on the files themselves."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

import nfkd
from nfkd.__main__ import main as nfkd_main
from nfkd.pipeline import flow_for, get_data


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _evaluate(capsys, *argv: str) -> dict:
    assert nfkd_main(["evaluate", *argv, "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def _saved(data, path: Path, **metadata) -> Path:
    torch.manual_seed(0)
    return nfkd.save(flow_for(data, {"arch": "maf", "blocks": 1, "hidden": 8}), path, metadata=metadata)


def test_a_users_table_is_hashed_and_compared_with_the_trained_on_file(tmp_path, capsys):
    csv = tmp_path / "mine.csv"
    rows = np.random.default_rng(0).normal(size=(120, 3))
    np.savetxt(csv, rows, delimiter=",", header="a,b,c", comments="", fmt="%.17g")
    data = get_data(str(csv))
    ckpt = _saved(data, tmp_path / "model.pt", dataset=str(csv.resolve()), data_file=dict(data.file))
    out = _evaluate(capsys, str(ckpt))
    assert out["data_files"] == [{"path": str(csv.resolve()), "sha256": _sha(csv), "matches_training": True}]
    with csv.open("a") as f:  # the same path, other rows: no longer the file the model was trained on
        f.write("0.5,0.25,-1\n")
    out = _evaluate(capsys, str(ckpt))
    assert out["data_files"] == [{"path": str(csv.resolve()), "sha256": _sha(csv), "matches_training": False}]


def test_a_registered_dataset_lists_its_files_and_an_embedded_one_none(tmp_path, capsys, shared_datasets):
    magic = get_data("magic", shared_datasets)
    out = _evaluate(capsys, str(_saved(magic, tmp_path / "magic.pt", dataset="magic")), "--data-root",
                    str(shared_datasets))
    file = shared_datasets / "magic" / "magic04.data"
    assert out["data_files"] == [{"path": str(file.resolve()), "sha256": _sha(file)}]
    out = _evaluate(capsys, str(_saved(get_data("wine"), tmp_path / "wine.pt", dataset="wine")))
    assert out["data_files"] == []  # bundled with scikit-learn: no file was read
