"""Issue #24, export half: an export folder is data, and nothing it names is read outside it.

Each test is one probe: a graph with external data that would read a file from the server's working
directory, manifest names that point out of the folder (absolute, ``..``, links, a FIFO, a device),
an oversized file, a manifest whose shapes disagree with its graph. Every one must be a single
``ExportError`` line at load time (and ``nfkd serve`` a one-line error, exit 2), never a read of the
outside file, a hang, or a traceback.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from export.graph_checks import external_tensors
from export.manifest import Manifest
from export.runtime import load
from nfkd.errors import ExportError
from nfkd.folder_files import read_member

from .test_serve import REPO, student

SECRET = b"TOP-SECRET-0123456789abcdef"


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(student()[1], folder)
    return folder


def _edit_manifest(folder: Path, **changes) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    for key, value in changes.items():
        target = m
        *path, last = key.split(".")
        for k in path:
            target = target[k]
        target[last] = value
    (folder / "manifest.json").write_text(json.dumps(m))


def _rehash(folder: Path, name: str) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m["graphs"][name]["sha256"] = hashlib.sha256((folder / m["graphs"][name]["file"]).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(m))


def _external(name: str, location: str = "secret.txt", n: int = len(SECRET)) -> TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[n], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", location), ("offset", "0"), ("length", str(n))):
        t.external_data.add(key=k, value=v)
    return t


def _leaking_density_graph(dim: int) -> onnx.ModelProto:
    """log_prob = Cast(Gather(leak, x[:, 0])): row i answers byte x[i, 0] of the external file."""
    nodes = [
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero_t", TensorProto.INT64, [], [0])),
        helper.make_node("Gather", ["x", "zero"], ["col"], axis=1),
        helper.make_node("Cast", ["col"], ["idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["leak", "idx"], ["bytes"], axis=0),
        helper.make_node("Cast", ["bytes"], ["log_prob"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["x"], ["latent"]),
    ]
    graph = helper.make_graph(
        nodes, "leak", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", dim])],
        [helper.make_tensor_value_info("log_prob", TensorProto.FLOAT, ["B"]),
         helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["B", dim])],
        initializer=[_external("leak")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


# --------------------------------------------------------------------------------------------
# Defect 1: external data
# --------------------------------------------------------------------------------------------
def _leaking_folder(tmp_path: Path) -> tuple[Path, Path]:
    """(an export folder whose density graph points at ``secret.txt``, a working folder holding that file)."""
    folder = _copy(tmp_path)
    dim = Manifest.load(folder).dim
    (folder / "density.onnx").write_bytes(_leaking_density_graph(dim).SerializeToString())
    _rehash(folder, "density")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "secret.txt").write_bytes(SECRET)
    return folder, cwd


def test_a_graph_with_external_data_is_refused_not_read_from_the_working_directory(tmp_path, monkeypatch):
    folder, cwd = _leaking_folder(tmp_path)
    monkeypatch.chdir(cwd)
    with pytest.raises(ExportError, match="external data .*secret.txt.*refused") as exc:
        load(folder)  # the old runtime loaded it and answered the file's bytes as log-densities
    assert "\n" not in str(exc.value)


def _placements() -> dict[str, onnx.ModelProto]:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])

    def model(nodes, initializer=(), sparse=(), functions=()) -> onnx.ModelProto:
        g = helper.make_graph(nodes, "g", [x], [y], initializer=list(initializer))
        g.sparse_initializer.extend(sparse)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)], functions=list(functions))

    ident = helper.make_node("Identity", ["x"], ["y"])
    const = helper.make_node("Constant", [], ["c"], value=_external("c_t"))
    branch = helper.make_graph([const, helper.make_node("Identity", ["c"], ["b"])], "branch", [],
                               [helper.make_tensor_value_info("b", TensorProto.UINT8, [len(SECRET)])])
    if_node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    sparse = helper.make_sparse_tensor(_external("sv"), helper.make_tensor("si", TensorProto.INT64, [1], [0]), [4])
    fn = helper.make_function("local", "f", ["a"], ["b"], [const, helper.make_node("Identity", ["a"], ["b"])],
                              [helper.make_opsetid("", 20)])
    return {
        "initializer": model([ident], initializer=[_external("w")]),
        "constant node": model([const, ident]),
        "if subgraph": model([if_node]),
        "sparse initializer": model([ident], sparse=[sparse]),
        "function": model([ident], functions=[fn]),
    }


@pytest.mark.parametrize("where", list(_placements()))
def test_external_data_is_found_wherever_a_tensor_sits(where):
    found = external_tensors(_placements()[where])
    assert found and "secret.txt" in found[0]


# --------------------------------------------------------------------------------------------
# Defect 2: manifest paths and shapes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("file", ["/dev/zero", "/etc/hostname", "../../../README.md", "sub/density.onnx", ".."])
def test_a_manifest_naming_a_file_outside_the_folder_is_refused(tmp_path, file):
    folder = _copy(tmp_path)
    _edit_manifest(folder, **{"graphs.density.file": file})
    with pytest.raises(ExportError, match="not a plain file name inside the export folder") as exc:
        load(folder)
    assert "\n" not in str(exc.value)


def test_a_path_outside_the_folder_with_its_true_hash_is_not_read(tmp_path):
    """The probe's case: ``../../../<repo>/README.md`` with its true SHA-256 (the old code read it,
    then failed deep inside ONNX Runtime with a traceback)."""
    folder = _copy(tmp_path)
    target = REPO / "README.md"
    rel = os.path.relpath(target, folder)
    _edit_manifest(folder, **{"graphs.density.file": rel,
                              "graphs.density.sha256": hashlib.sha256(target.read_bytes()).hexdigest()})
    with pytest.raises(ExportError, match="not a plain file name"):
        load(folder)


def test_a_symlinked_graph_is_refused_even_with_its_true_hash(tmp_path):
    folder = _copy(tmp_path)
    outside = tmp_path / "outside.onnx"
    shutil.move(folder / "density.onnx", outside)
    (folder / "density.onnx").symlink_to(outside)
    with pytest.raises(ExportError, match="is a symbolic link, not a regular file"):
        load(folder)


def test_a_fifo_named_like_a_graph_does_not_hang_the_load(tmp_path):
    folder = _copy(tmp_path)
    (folder / "density.onnx").unlink()
    os.mkfifo(folder / "density.onnx")
    box: dict = {}

    def run() -> None:
        try:
            load(folder)
        except BaseException as exc:  # surfaced below
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():  # the old loader blocked in open() forever; free it before failing
        fd = os.open(folder / "density.onnx", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(10)
        pytest.fail("loading an export folder with a FIFO hung")
    assert isinstance(box.get("error"), ExportError) and "is a FIFO, not a regular file" in str(box["error"])


def test_a_manifest_that_is_a_fifo_or_a_device_is_refused(tmp_path):
    folder = _copy(tmp_path)
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to("/dev/zero")
    with pytest.raises(ExportError, match="symbolic link"):
        Manifest.load(folder)


def test_files_above_the_size_bound_are_refused_before_reading(tmp_path):
    (tmp_path / "big.onnx").write_bytes(b"x" * 1000)
    with pytest.raises(ExportError, match="1000 bytes, above the limit of 999 bytes"):
        read_member(tmp_path, "big.onnx", "density graph", max_bytes=999)
    assert read_member(tmp_path, "big.onnx", "density graph", max_bytes=1000) == b"x" * 1000


@pytest.mark.parametrize("changes, message", [
    ({"event_shape": [6]}, r"'x' has shape \['B', 5\] but event_shape \[6\]"),
    ({"graphs.density.inputs": [{"name": "x", "shape": ["B", 6], "dtype": "float32"}]},
     r"'x' is float32 \['B', 5\] in the graph but float32 \['B', 6\] in the manifest"),
    ({"noise_shapes": [[5], [2]]}, "the sample graph takes 2 inputs but the manifest's noise_shapes has 2 levels"),
    ({"event_shape": "5"}, "event_shape must be a non-empty list of positive integers"),
    ({"max_batch": None}, "max_batch must be a positive integer"),
])
def test_a_manifest_whose_shapes_disagree_with_its_graph_is_one_clear_error(tmp_path, changes, message):
    folder = _copy(tmp_path)
    _edit_manifest(folder, **changes)
    with pytest.raises(ExportError, match=message) as exc:
        load(folder)  # the old runtime loaded it; the first request then failed inside ONNX Runtime
    assert "\n" not in str(exc.value)


def test_nfkd_serve_refuses_the_leaking_folder_in_one_line(tmp_path):
    """The probe's reproduction end to end: ``nfkd serve FOLDER`` run from a folder holding secret.txt."""
    folder, cwd = _leaking_folder(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "nfkd", "serve", str(folder), "--port", "0", "--backend",
                        "onnxruntime", "--device", "cpu"], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert errors and "external data" in errors[-1] and "Traceback" not in r.stderr
