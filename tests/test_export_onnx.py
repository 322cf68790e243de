"""ONNX export: both graphs match the eager float64 flow at batch 1, 7 and 4096; the gate refuses tampering.

Exports are slow-ish (torch.export + onnxscript, seconds each), so each case is exported once per
session (``exported``, gate at its default batches 1, 7, 128) and shared with test_export_check.py
and test_export_runtime.py; the batch-4096 parity is checked here, independently of the gate.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import nfkd
from export import onnx as export_onnx_mod
from export.manifest import Manifest, sha256_file
from export.onnx import export_onnx, main
from nfkd.errors import ExportError
from nfkd.flows import IAF, MAF, Glow, Glow1D

from .helpers import perturb

BATCHES = (1, 7, 4096)
GATE_BATCHES = [1, 7, 128]

# name -> (factory, perturb scale, export kwargs). Scales keep the inverse well-conditioned.
CASES = {
    "glow": (lambda: Glow((3, 8, 8), levels=2, steps=2, hidden=16), 0.03, {}),
    "glow1d": (lambda: Glow1D(7, steps=3, hidden=16), 0.1, {"cli": True}),
    "maf_bn": (lambda: MAF(8, blocks=2, hidden=32, batch_norm=True), 0.1, {}),
    "maf_unrolled": (
        lambda: MAF(5, blocks=2, hidden=16, activation="tanh", permutation="random"), 0.1,
        {"maf_sampling": "unrolled"},
    ),
    "iaf": (lambda: IAF(6, blocks=2, hidden=16), 0.1, {}),
}

_ROOT = Path(tempfile.mkdtemp(prefix="nfkd-export-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def make_flow(name: str) -> nfkd.Flow:
    factory, scale, _ = CASES[name]
    torch.manual_seed(0)
    flow = factory()
    if hasattr(flow, "normalize"):  # non-trivial data normalization, folded into the graphs
        g = torch.Generator().manual_seed(1)
        flow.normalize.set(3 * torch.randn(flow.dim, generator=g), torch.rand(flow.dim, generator=g) * 2 + 0.5)
    return perturb(flow, scale=scale, seed=3).eval()


def checkpoint(name: str, folder: Path = _ROOT) -> Path:
    path = folder / f"{name}.pt"
    if not path.exists():
        nfkd.save(make_flow(name), path, metadata={"dataset": "test"})
    return path


@functools.lru_cache(maxsize=None)
def exported(name: str) -> tuple[nfkd.Flow, Path, Manifest]:
    """(flow as loaded from its checkpoint, export folder, manifest), exported once per session."""
    ckpt = checkpoint(name)
    out = _ROOT / f"{name}-export"
    kwargs = dict(CASES[name][2])
    if kwargs.pop("cli", False):
        assert main([str(ckpt), "-o", str(out)]) == 0
        manifest = Manifest.load(out)
    else:
        manifest = export_onnx(ckpt, out, **kwargs)
    return nfkd.load(ckpt).double(), out, manifest


def _inputs(flow, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    if len(flow.event_shape) == 1:  # data units: around the normalization's loc / scale
        x = flow.normalize.loc + flow.normalize.scale * torch.randn(batch, flow.dim, generator=g, dtype=torch.float64)
    else:
        x = torch.rand(batch, *flow.event_shape, generator=g, dtype=torch.float64) - 0.5
    noise = [torch.randn(s, generator=g, dtype=torch.float64) for s in flow.noise_shapes(batch)]
    return x.float().double(), [z.float().double() for z in noise]


@pytest.mark.parametrize("name", list(CASES))
def test_manifest_describes_the_graphs(name):
    flow, out, m = exported(name)
    assert m.arch == flow.arch and m.event_shape == list(flow.event_shape) and m.dim == flow.dim
    assert m.source["sha256"] == nfkd.load_checkpoint(out.parent / f"{name}.pt").sha256
    assert m.parity["passed"] and m.parity["batches"] == GATE_BATCHES
    assert m.parity["log_prob_max_rel_err"] <= m.tolerance["log_prob_rel"] == 1e-4
    assert m.tolerance["sample_abs"] == m.tolerance["sample_rel"] == 1e-3 and not m.fp16
    assert m.opset >= 13 and m.versions["nfkd"] == nfkd.__version__
    assert m.maf_sampling == ({"maf_bn": "loop", "maf_unrolled": "unrolled", "iaf": "loop"}.get(name))
    dens, samp = m.graphs["density"], m.graphs["sample"]
    assert dens["inputs"] == [{"name": "x", "shape": ["B", *flow.event_shape], "dtype": "float32"}]
    assert [o["name"] for o in dens["outputs"]] == ["log_prob", "latent"]
    assert dens["outputs"][1]["shape"] == ["B", flow.dim]
    levels = len(flow.noise_shapes(1))
    assert [i["name"] for i in samp["inputs"]] == [f"noise_{i}" for i in range(levels)] + ["temperature"]
    assert [i["shape"] for i in samp["inputs"][:-1]] == [["B", *s[1:]] for s in flow.noise_shapes(1)]
    assert sum(layer["size"] for layer in m.latent_layout) == flow.dim
    for g in (dens, samp):
        assert sha256_file(out / g["file"]) == g["sha256"]
        assert g["tensorrt_check"] == []
    assert sorted(p.name for p in out.iterdir()) == ["density.onnx", "manifest.json", "sample.onnx"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp folders


@pytest.mark.parametrize("name", list(CASES))
def test_graphs_have_one_dynamic_batch_dimension(name):
    flow, out, _ = exported(name)
    for f in ("density.onnx", "sample.onnx"):
        g = onnx.load(str(out / f)).graph
        for v in list(g.input) + list(g.output):
            dims = v.type.tensor_type.shape.dim
            if v.name == "temperature":
                assert [d.dim_value for d in dims] == [1]
                continue
            assert dims[0].dim_param == "B", (f, v.name)
            assert all(d.dim_value > 0 for d in dims[1:]), (f, v.name)
            assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("name", list(CASES))
def test_onnxruntime_matches_eager_float64_both_directions(name):
    """Independent of the gate: fresh inputs, ORT CPU vs flow.log_prob / flow(x) / flow.sample(noise=...)."""
    flow, out, m = exported(name)
    dens = ort.InferenceSession(str(out / "density.onnx"), providers=["CPUExecutionProvider"])
    samp = ort.InferenceSession(str(out / "sample.onnx"), providers=["CPUExecutionProvider"])
    for b in BATCHES:
        x, noise = _inputs(flow, b, seed=100 + b)
        with torch.no_grad():
            lp_ref = flow.log_prob(x).numpy()
            lat_ref = torch.cat([z.flatten(1) for z in flow(x).latents], 1).numpy()
            xs_ref = flow.sample(b, temperature=0.7, noise=noise).numpy()
        lp, lat = dens.run(None, {"x": x.float().numpy()})
        assert lp.shape == (b,) and lat.shape == (b, flow.dim)
        assert (np.abs(lp - lp_ref) / np.maximum(1, np.abs(lp_ref))).max() <= 1e-4
        np.testing.assert_allclose(lat, lat_ref, rtol=1e-3, atol=1e-3)
        feeds = {f"noise_{i}": z.float().numpy() for i, z in enumerate(noise)}
        feeds["temperature"] = np.array([0.7], np.float32)
        (xs,) = samp.run(None, feeds)
        assert xs.shape == (b, *flow.event_shape)
        np.testing.assert_allclose(xs, xs_ref, rtol=1e-3, atol=1e-3)


def test_maf_loop_graph_uses_an_onnx_loop_and_unrolled_does_not():
    ops = lambda name: {n.op_type for n in onnx.load(str(exported(name)[1] / "sample.onnx")).graph.node}  # noqa: E731
    assert "Loop" in ops("maf_bn")
    assert "Loop" not in ops("maf_unrolled")


def test_iaf_sampling_graph_has_no_loop_and_its_density_graph_does():
    flow, out, m = exported("iaf")
    ops = lambda f: {n.op_type for n in onnx.load(str(out / f)).graph.node}  # noqa: E731
    assert "Loop" not in ops("sample.onnx")  # one MADE pass per block
    assert "Loop" in ops("density.onnx")  # D sequential passes per block, as one ONNX Loop each
    assert m.arch == "iaf" and m.maf_sampling == "loop" and m.parity["passed"]


def test_fp16_export_reports_measured_accuracy(tmp_path):
    m = export_onnx(checkpoint("glow1d"), tmp_path / "fp16", fp16=True, parity_batches=(1, 7, 256))
    assert m.fp16 and m.parity["passed"]
    assert m.tolerance["precision"] == "float16 graph, float32 inputs/outputs"
    assert m.tolerance["log_prob_rel"] == 1e-2 and m.tolerance["sample_abs"] == 5e-2
    assert 0 < m.parity["log_prob_max_rel_err"] <= 1e-2 and 0 < m.parity["sample_max_abs_err"] <= 5e-2
    g = onnx.load(str(tmp_path / "fp16" / "density.onnx"))
    assert g.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 boundary
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in g.graph.initializer)  # half weights inside


_GRAPHS: dict = {}


@pytest.fixture
def reuse_graphs(monkeypatch):
    """Trace each (checkpoint, options) once: the tests below re-export the same glow1d checkpoint."""
    original = export_onnx_mod.build_graphs

    def memo(flow, **kwargs):
        state = b"".join(v.numpy().tobytes() for v in flow.state_dict().values())
        key = (flow.arch, repr(flow.config), hash(state), repr(sorted(kwargs.items())))
        if key not in _GRAPHS:
            _GRAPHS[key] = original(flow, **kwargs)
        models, mode, notes = _GRAPHS[key]
        return {k: onnx.ModelProto.FromString(m.SerializeToString()) for k, m in models.items()}, mode, list(notes)

    monkeypatch.setattr(export_onnx_mod, "build_graphs", memo)


def _tamper(monkeypatch, graph_file: str):
    """Make _save_graph perturb the largest weight of one graph after writing it, before the gate."""
    original = export_onnx_mod._save_graph

    def save_then_tamper(model, path):
        original(model, path)
        if Path(path).name != graph_file:
            return
        m = onnx.load(str(path))
        init = max((i for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT),
                   key=lambda i: np.prod(i.dims))
        arr = onnx.numpy_helper.to_array(init).copy()
        arr.flat[0] += 0.5
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        onnx.save_model(m, str(path))

    monkeypatch.setattr(export_onnx_mod, "_save_graph", save_then_tamper)


def test_gate_refuses_tampered_density_graph_and_leaves_nothing(tmp_path, monkeypatch, capsys, reuse_graphs):
    ckpt = checkpoint("glow1d", tmp_path)
    out = tmp_path / "exports" / "student"
    _tamper(monkeypatch, "density.onnx")
    assert main([str(ckpt), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: parity gate failed") and "log_prob relative error" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert list((tmp_path / "exports").iterdir()) == []  # no temp folder either


def test_gate_refuses_tampered_sample_graph_and_keeps_previous_export(tmp_path, monkeypatch, reuse_graphs):
    _, good, _ = exported("glow1d")
    out = tmp_path / "student-export"
    shutil.copytree(good, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _tamper(monkeypatch, "sample.onnx")
    with pytest.raises(ExportError, match="parity gate failed.*sample error"):
        export_onnx(checkpoint("glow1d", tmp_path), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_reexport_replaces_files_and_drops_stale_engines(tmp_path, reuse_graphs):
    _, good, m = exported("glow1d")
    out = tmp_path / "e"
    shutil.copytree(good, out)
    (out / "density.plan").write_bytes(b"old engine")
    (out / "notes.txt").write_text("mine")
    m2 = export_onnx(checkpoint("glow1d"), out, parity_batches=(1, 7))
    assert not (out / "density.plan").exists() and (out / "notes.txt").read_text() == "mine"
    assert Manifest.load(out).graphs["density"]["sha256"] == m2.graphs["density"]["sha256"]
    assert m2.source == m.source


def test_bad_arguments_are_export_errors(tmp_path):
    ckpt = checkpoint("glow1d", tmp_path)
    with pytest.raises(ExportError, match="maf_sampling"):
        export_onnx(ckpt, tmp_path / "x", maf_sampling="fast")
    with pytest.raises(ExportError, match="parity batches"):
        export_onnx(ckpt, tmp_path / "x", max_batch=8, parity_batches=(1, 16))
    assert not (tmp_path / "x").exists()
    assert main([str(tmp_path / "missing.pt"), "-o", str(tmp_path / "y")]) == 1


def _steep_glow1d() -> nfkd.Flow:
    """A Glow-1D whose coupling scales saturate far from the data (s << -88): where log(sigmoid(s))
    underflows to -inf in float32 unless it is written in a stable form."""
    flow = make_flow("glow1d")
    with torch.no_grad():
        for step in flow.steps:
            last = step.coupling.net[-1]
            last.weight[step.coupling.c_b:] = 20.0 * torch.randn_like(last.weight[step.coupling.c_b:])
    return flow.eval()


def test_far_out_log_density_stays_finite_in_onnxruntime():
    """Issue #19.11: eager is finite on far-out rows, so the exported density must be finite there too."""
    from export import parity

    flow = _steep_glow1d()
    models, _, _ = export_onnx_mod.build_graphs(flow)
    density, _ = export_onnx_mod.ort_runners(
        models["density"].SerializeToString(), models["sample"].SerializeToString(), 1
    )
    x, _ = parity.held_out_inputs(parity._reference_flow(flow), 64, 5)
    far = parity.far_out_inputs(x)
    scales = []
    hooks = [st.coupling.net[-1].register_forward_hook(lambda m, i, o, c=st.coupling: scales.append(o[:, c.c_b:]))
             for st in flow.steps]
    with torch.no_grad():
        ref = flow.double().log_prob(torch.from_numpy(far.astype(np.float64))).numpy()
    for h in hooks:
        h.remove()
    assert np.isfinite(ref).all()
    # really far out: some coupling scale is where float32 sigmoid underflows, so log(sigmoid) = -inf
    assert min(float(s.min()) for s in scales) + 2.0 < -104
    got = np.asarray(density(far)[0], np.float64)
    assert np.isfinite(got).all(), f"{(~np.isfinite(got)).sum()} of {len(got)} rows non-finite in ONNX Runtime"
    np.testing.assert_allclose(got, ref, rtol=1e-3)


def test_parity_gate_refuses_nonfinite_far_out_density():
    """The gate itself checks far-out rows: a graph that is exact on the data but -inf far away fails."""
    from export import parity

    flow = make_flow("glow1d")
    ref = parity._reference_flow(flow)

    def density(x):
        with torch.no_grad():
            out = ref(torch.from_numpy(np.asarray(x, np.float64)))
            lp = (sum(nfkd.flows.standard_normal_logpdf(z) for z in out.latents) + out.logdet).numpy()
            lat = torch.cat([z.flatten(1) for z in out.latents], 1).numpy()
        far = np.abs(x).max(1) > np.abs(ref.normalize.loc.numpy()).max() + 15 * ref.normalize.scale.numpy().max()
        return np.where(far, -np.inf, lp), lat

    def sample(noise, t):
        with torch.no_grad():
            z = [torch.from_numpy(np.asarray(v, np.float64)) for v in noise]
            return ref.sample(len(z[0]), temperature=t, noise=z).numpy()

    res = parity.measure(flow, density, sample, parity.tolerance_for(False), batches=(7,))
    assert res["far_out_nonfinite"] > 0 and not res["passed"]
    with pytest.raises(ExportError, match="far-out rows"):
        parity.check_parity(flow, density, sample, batches=(7,))
