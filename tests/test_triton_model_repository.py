"""export.triton_model_repository: the Triton model repository matches the export's manifest AND the ONNX graphs.

config.pbtxt is parsed with the module's small protobuf-text parser (the Triton ModelConfig proto is
not installed here); the parser itself is checked on hand-written Triton-style text. Names, dtypes
and shapes are cross-checked against ``onnx.load`` of the copied graphs, and ONNX Runtime is fed
tensors of exactly the shapes Triton would send (implicit batch dimension for the density model,
full shapes for the sample model).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import triton_model_repository
from export.manifest import Manifest, sha256_bytes, sha256_file
from export.triton_model_repository import main, parse_pbtxt, to_pbtxt, write_repository
from nfkd.errors import ExportError, InputError

from .test_serve import CACHE, DIM, student

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


def _config(folder: Path) -> dict:
    return parse_pbtxt((folder / "config.pbtxt").read_text())


def _graph_io(path: Path) -> dict[str, tuple[str, list]]:
    """name -> (Triton dtype, shape with dynamic dims as None), straight from the ONNX graph."""
    g = onnx.load(str(path)).graph
    out = {}
    for v in list(g.input) + list(g.output):
        tt = v.type.tensor_type
        out[v.name] = (ONNX_TO_TRITON[tt.elem_type],
                       [None if d.dim_param else d.dim_value for d in tt.shape.dim])
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    _, folder = student()
    out = tmp_path_factory.mktemp("repo")
    res = write_repository(folder, out)
    return folder, out, res


def test_layout_and_files(repo):
    folder, out, res = repo
    m = Manifest.load(folder)
    assert res["models"] == {"density": "student_density", "sample": "student_sample"}
    assert sorted(p.name for p in out.iterdir()) == ["student_density", "student_sample"]
    for graph, name in res["models"].items():
        model_dir = out / name
        assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "nfkd_manifest.json"]
        assert [p.name for p in (model_dir / "1").iterdir()] == ["model.onnx"]
        assert sha256_file(model_dir / "1" / "model.onnx") == m.graphs[graph]["sha256"]  # the gated graph, unchanged
        assert json.loads((model_dir / "nfkd_manifest.json").read_text()) == m.to_dict()
        cfg = _config(model_dir)
        assert cfg["name"] == name and cfg["platform"] == "onnxruntime_onnx"
        assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]


def test_density_config_matches_manifest_and_graph(repo):
    folder, out, _ = repo
    m = Manifest.load(folder)
    cfg = _config(out / "student_density")
    assert cfg["max_batch_size"] == 4096
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [256, 1024, 4096], "max_queue_delay_microseconds": 2000}
    spec = {t["name"]: t for t in m.graphs["density"]["inputs"] + m.graphs["density"]["outputs"]}
    io = _graph_io(out / "student_density" / "1" / "model.onnx")
    entries = cfg["input"] + cfg["output"]
    assert [e["name"] for e in cfg["input"]] == ["x"] and [e["name"] for e in cfg["output"]] == ["log_prob", "latent"]
    assert {e["name"] for e in entries} == set(spec) == set(io)
    for e in entries:
        dtype, gshape = io[e["name"]]
        assert e["data_type"] == dtype == "TYPE_FP32" and spec[e["name"]]["dtype"] == "float32"
        # batched model: Triton's full shape is [-1] + dims (after reshape, if any) == the graph's shape
        model_dims = e["reshape"]["shape"] if "reshape" in e else e["dims"]
        assert gshape[0] is None and spec[e["name"]]["shape"][0] == "B"  # dynamic batch dim in the graph
        assert model_dims == gshape[1:] == spec[e["name"]]["shape"][1:]
    lp = next(e for e in cfg["output"] if e["name"] == "log_prob")
    assert lp["dims"] == [1] and lp["reshape"] == {"shape": []}  # [B] in the graph; Triton forbids empty dims
    assert next(e for e in cfg["input"] if e["name"] == "x")["dims"] == [DIM]


def test_sample_config_matches_manifest_and_graph(repo):
    folder, out, _ = repo
    m = Manifest.load(folder)
    cfg = _config(out / "student_sample")
    io = _graph_io(out / "student_sample" / "1" / "model.onnx")
    # The reason for max_batch_size 0: the graph's temperature has no batch dimension.
    assert io["temperature"][1] == [1] and m.graphs["sample"]["inputs"][-1] == {"name": "temperature", "shape": [1],
                                                                                 "dtype": "float32"}
    assert cfg["max_batch_size"] == 0 and "dynamic_batching" not in cfg
    assert [e["name"] for e in cfg["input"]] == [f"noise_{i}" for i in range(len(m.noise_shapes))] + ["temperature"]
    assert [e["name"] for e in cfg["output"]] == ["x"]
    for e in cfg["input"] + cfg["output"]:
        dtype, gshape = io[e["name"]]
        assert e["data_type"] == dtype == "TYPE_FP32"
        assert e["dims"] == [-1 if d is None else d for d in gshape]  # full shapes, -1 = rows
    assert next(e for e in cfg["input"] if e["name"] == "temperature")["dims"] == [1]


def _triton_shape(entry: dict, batched: bool, batch: int) -> list[int]:
    dims = entry["reshape"]["shape"] if "reshape" in entry else entry["dims"]
    full = ([batch] if batched else []) + list(dims)
    return [batch if d == -1 else d for d in full]


def test_graphs_run_with_the_shapes_triton_sends(repo):
    """Feed ONNX Runtime what Triton would feed the model per config; outputs come back as the config says."""
    _, out, _ = repo
    rng = np.random.default_rng(0)
    for name in ("student_density", "student_sample"):
        cfg = _config(out / name)
        batched = cfg["max_batch_size"] > 0
        sess = ort.InferenceSession(str(out / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        feeds = {}
        for e in cfg["input"]:
            shape = _triton_shape(e, batched, 7)
            feeds[e["name"]] = (np.full(shape, 0.8, np.float32) if e["name"] == "temperature"
                                else rng.standard_normal(shape).astype(np.float32))
        outs = sess.run([e["name"] for e in cfg["output"]], feeds)
        for e, o in zip(cfg["output"], outs):
            assert list(o.shape) == _triton_shape(e, batched, 7), (name, e["name"], o.shape)
            assert np.isfinite(o).all()


def test_repository_models_compute_the_students_values(repo):
    """Values, not only shapes: what Triton would run equals the eager float64 student (export tolerance)."""
    import torch

    import nfkd
    from export.parity import TOLERANCE

    tol = TOLERANCE["float32"]
    _, out, _ = repo
    flow = nfkd.load(student()[0]).double()
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((7, DIM)) * 2).astype(np.float32)
    dens = ort.InferenceSession(str(out / "student_density" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    lp = dens.run(["log_prob"], {"x": x})[0].astype(np.float64)
    with torch.no_grad():
        ref = flow.log_prob(torch.from_numpy(x).double()).numpy()
    assert (np.abs(lp - ref) / np.maximum(1.0, np.abs(ref))).max() <= tol["log_prob_rel"]
    samp = ort.InferenceSession(str(out / "student_sample" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    noise = rng.standard_normal((7, DIM)).astype(np.float32)
    xs = samp.run(["x"], {"noise_0": noise, "temperature": np.array([0.8], np.float32)})[0].astype(np.float64)
    with torch.no_grad():
        xs_ref = flow.sample(7, temperature=0.8, noise=[torch.from_numpy(noise).double()]).numpy()
    assert (np.abs(xs - xs_ref) <= tol["sample_abs"] + tol["sample_rel"] * np.abs(xs_ref)).all()


def test_module_cross_check_agrees(repo):
    _, out, res = repo
    for name in res["models"].values():
        cfg = _config(out / name)
        assert triton_model_repository.check_config_against_onnx(cfg, triton_model_repository.onnx_io(out / name / "1" / "model.onnx")) == []
        bad = json.loads(json.dumps(cfg))
        bad["input"][0]["dims"] = [DIM + 1]
        bad["output"][0]["data_type"] = "TYPE_FP16"
        problems = triton_model_repository.check_config_against_onnx(bad, triton_model_repository.onnx_io(out / name / "1" / "model.onnx"))
        assert len(problems) == 2


def test_options_cpu_instances_batch_and_name(tmp_path):
    _, folder = student()
    res = write_repository(folder, tmp_path, name="my model!", max_batch=100_000, cpu=True, instances=2,
                           preferred_batch=[64, 512], queue_delay_us=500)
    assert res["models"]["density"] == "my_model_density"
    d, s = _config(tmp_path / "my_model_density"), _config(tmp_path / "my_model_sample")
    assert d["max_batch_size"] == Manifest.load(folder).max_batch == 65536  # capped by the export
    assert d["dynamic_batching"] == {"preferred_batch_size": [64, 512], "max_queue_delay_microseconds": 500}
    assert d["instance_group"] == s["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    res = write_repository(folder, tmp_path, name="my model!", max_batch=100)  # rewritten in place
    assert _config(tmp_path / "my_model_density")["dynamic_batching"]["preferred_batch_size"] == [100]
    with pytest.raises(InputError, match=r"preferred batch sizes \[200\] must lie in \[1, max_batch=100\]"):
        write_repository(folder, tmp_path, max_batch=100, preferred_batch=[200])
    with pytest.raises(ExportError, match="no TensorRT engines"):
        write_repository(folder, tmp_path, platform="tensorrt")


def _with_fake_engines(folder: Path, dest: Path, profile: dict) -> Path:
    """A copy of the export with stand-in plan files recorded in the manifest (no TensorRT here)."""
    shutil.copytree(folder, dest)
    m = Manifest.load(dest)
    engines = {}
    for graph in ("density", "sample"):
        data = f"fake {graph} plan".encode()
        (dest / f"{graph}.plan").write_bytes(data)
        engines[graph] = {"file": f"{graph}.plan", "sha256": sha256_bytes(data)}
    m.engines = {**engines, "fp16": False, "profile": profile, "tensorrt": "10.x", "device": "test"}
    m.save(dest)
    return dest


def test_tensorrt_plans_when_the_export_has_engines(tmp_path):
    _, folder = student()
    trt_export = _with_fake_engines(folder, tmp_path / "export", {"min": 1, "opt": 256, "max": 2048})
    res = write_repository(trt_export, tmp_path / "repo")
    assert res["platform"] == "tensorrt_plan"
    for graph, name in res["models"].items():
        model_dir = tmp_path / "repo" / name
        assert [p.name for p in (model_dir / "1").iterdir()] == ["model.plan"]
        assert (model_dir / "1" / "model.plan").read_bytes() == f"fake {graph} plan".encode()
        cfg = _config(model_dir)
        assert cfg["platform"] == "tensorrt_plan" and cfg["instance_group"][0]["kind"] == "KIND_GPU"
    d = _config(tmp_path / "repo" / "student_density")
    assert d["max_batch_size"] == 2048 and d["dynamic_batching"]["preferred_batch_size"] == [256, 1024, 2048]
    assert _config(tmp_path / "repo" / "student_sample")["max_batch_size"] == 0
    # --cpu: plans cannot run there -> ONNX models; --platform onnx likewise
    assert write_repository(trt_export, tmp_path / "cpu", cpu=True)["platform"] == "onnxruntime_onnx"
    assert write_repository(trt_export, tmp_path / "onnx", platform="onnx")["platform"] == "onnxruntime_onnx"
    with pytest.raises(InputError, match="GPU only"):
        write_repository(trt_export, tmp_path / "x", platform="tensorrt", cpu=True)
    bad = _with_fake_engines(folder, tmp_path / "export-min8", {"min": 8, "opt": 256, "max": 2048})
    with pytest.raises(ExportError, match="profile starts at batch 8"):
        write_repository(bad, tmp_path / "y")


def test_tampered_or_incomplete_exports_are_refused(tmp_path):
    _, folder = student()
    copy = tmp_path / "export"
    shutil.copytree(folder, copy)
    with open(copy / "sample.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportError, match="does not match the SHA-256"):
        write_repository(copy, tmp_path / "repo")
    (copy / "sample.onnx").unlink()
    with pytest.raises(ExportError, match="missing"):
        write_repository(copy, tmp_path / "repo")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_multi_level_image_manifest():
    """An image flow (several noise levels, CHW events): dims from the manifest, generically."""
    m = Manifest.from_dict({
        "format": "nfkd-export", "arch": "glow", "config": {}, "event_shape": [3, 8, 8],
        "noise_shapes": [[6, 4, 4], [12, 2, 2]], "latent_layout": [], "dim": 192, "max_batch": 512, "opset": 20,
        "fp16": False, "maf_sampling": None, "source": {}, "parity": {}, "tolerance": {}, "versions": {},
        "created_utc": "", "graphs": {
            "density": {"file": "density.onnx", "sha256": "0" * 64,
                        "inputs": [{"name": "x", "shape": ["B", 3, 8, 8], "dtype": "float32"}],
                        "outputs": [{"name": "log_prob", "shape": ["B"], "dtype": "float32"},
                                    {"name": "latent", "shape": ["B", 192], "dtype": "float32"}]},
            "sample": {"file": "sample.onnx", "sha256": "0" * 64,
                       "inputs": [{"name": "noise_0", "shape": ["B", 6, 4, 4], "dtype": "float32"},
                                  {"name": "noise_1", "shape": ["B", 12, 2, 2], "dtype": "float32"},
                                  {"name": "temperature", "shape": [1], "dtype": "float32"}],
                       "outputs": [{"name": "x", "shape": ["B", 3, 8, 8], "dtype": "float32"}]},
        },
    })
    d = parse_pbtxt(to_pbtxt(triton_model_repository.density_config(m, "g_density", "onnxruntime_onnx", 512, [512], 100,
                                                        "KIND_GPU", 1)))
    assert d["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [3, 8, 8]}]
    assert d["output"][1] == {"name": "latent", "data_type": "TYPE_FP32", "dims": [192]}
    s = parse_pbtxt(to_pbtxt(triton_model_repository.sample_config(m, "g_sample", "onnxruntime_onnx", "KIND_GPU", 1)))
    assert [e["dims"] for e in s["input"]] == [[-1, 6, 4, 4], [-1, 12, 2, 2], [1]]
    assert s["output"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 3, 8, 8]}]


def test_parser_reads_triton_style_text():
    text = """
    # a comment
    name: "resnet"   platform: "tensorrt_plan"
    max_batch_size: 8
    input { name: "input0" data_type: TYPE_FP32 dims: 16 dims: 4 }
    input { name: "in\\"1" data_type: TYPE_INT32 dims: [ -1 ] reshape: { shape: [ ] } }
    output [ { name: "out" data_type: TYPE_FP16 dims: [ 4, 4 ] } ]
    dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
    instance_group [ { count: 2 kind: KIND_CPU } ]
    parameters { key: "x" value: { string_value: "1.5e-3" } }
    optimization { cuda { graphs: true } }
    """
    cfg = parse_pbtxt(text)
    assert cfg["name"] == "resnet" and cfg["max_batch_size"] == 8
    assert cfg["input"][0] == {"name": "input0", "data_type": "TYPE_FP32", "dims": [16, 4]}
    assert cfg["input"][1]["name"] == 'in"1' and cfg["input"][1]["reshape"] == {"shape": []}
    assert cfg["output"] == [{"name": "out", "data_type": "TYPE_FP16", "dims": [4, 4]}]
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert cfg["optimization"] == {"cuda": {"graphs": True}}
    for broken in ('name: "x', "input { name: 1", "dims: [ 1, 2"):
        with pytest.raises(ValueError):
            parse_pbtxt(broken)


def test_cli(tmp_path, capsys):
    ckpt, _ = student()
    out = tmp_path / "model_repository"
    # from the checkpoint: the cached export of test_serve is reused (same cache), no new export
    assert main([str(ckpt), "-o", str(out), "--cache-dir", str(CACHE), "--cpu", "--max-batch", "512"]) == 0
    text = capsys.readouterr().out
    assert "wrote student_density and student_sample" in text and "tritonserver --model-repository=" in text
    assert _config(out / "student_density")["instance_group"][0]["kind"] == "KIND_CPU"
    assert main([str(tmp_path), "-o", str(out)]) == 1  # a folder without manifest.json
    assert "no manifest.json" in capsys.readouterr().err
