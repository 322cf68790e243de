"""nfkd.inference: every available backend equals eager (float64 reference) in both directions.

Reference: the eager flow in float64 on the same float32 inputs / the same unit noise. Tolerances
are the export gate's float32 ones (export.parity.TOLERANCE), so a backend is held to exactly
what an export must meet.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import nfkd
from export.parity import TOLERANCE
from nfkd import inference
from nfkd.errors import InputError
from nfkd.flows import IAF, MAF, Glow, Glow1D

from .helpers import perturb

TOL = TOLERANCE["float32"]
FLOWS = {
    "glow": lambda: Glow((2, 4, 4), levels=2, steps=2, hidden=8),
    "glow1d": lambda: Glow1D(5, steps=3, hidden=12),
    "maf": lambda: MAF(4, blocks=2, hidden=12, batch_norm=True),
    "iaf": lambda: IAF(4, blocks=2, hidden=12),
}
_MADE: dict[str, nfkd.Flow] = {}


def make(arch: str) -> nfkd.Flow:
    if arch not in _MADE:
        torch.manual_seed(0)
        flow = FLOWS[arch]()
        if hasattr(flow, "normalize"):
            g = torch.Generator().manual_seed(1)
            flow.normalize.set(2 * torch.randn(flow.dim, generator=g), torch.rand(flow.dim, generator=g) + 0.5)
        _MADE[arch] = perturb(flow, scale=0.05 if arch == "glow" else 0.1, seed=2).eval()
    return _MADE[arch]


def data(flow: nfkd.Flow, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if flow.arch == "glow":
        return torch.rand(n, *flow.event_shape, generator=g) - 0.5
    return flow.normalize.loc + flow.normalize.scale * torch.randn(n, flow.dim, generator=g)


AVAILABLE = [b.name for b in inference.backends() if b.available and "cpu" in b.devices]
CASES = [(arch, name) for arch in FLOWS for name in AVAILABLE if inference.BACKENDS[name].runs(arch)]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


@pytest.mark.parametrize("arch,backend", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_backend_matches_eager_float64(arch, backend, cache_dir):
    flow = make(arch)
    ref = copy.deepcopy(flow).double()
    runner = inference.load(flow, backend=backend, device="cpu", cache_dir=cache_dir)
    assert runner.backend == backend
    # batch 1 and an odd batch; torch.compile specializes batch 1 (a second compile, ~a minute on 2 cores),
    # so the compiled backend is checked at the odd batch only
    for n in ((7,) if backend == "compile" else (1, 7)):
        x = data(flow, n, seed=n)
        with torch.no_grad():
            want = ref.log_prob(x.double())
        got = torch.as_tensor(runner.log_prob(x)).double()
        err = ((got - want).abs() / want.abs().clamp_min(1.0)).max().item()
        assert err <= TOL["log_prob_rel"], f"{backend} log_prob rel err {err:.3g}"
        # the same seed is the same unit noise on every backend
        noise = inference.draw_noise(runner.noise_shapes, n, seed=10 + n)
        with torch.no_grad():
            xs_ref = ref.sample(n, temperature=0.8, noise=[torch.from_numpy(z).double() for z in noise])
        xs = runner.sample(n, temperature=0.8, seed=10 + n).double()
        bound = TOL["sample_abs"] + TOL["sample_rel"] * xs_ref.abs()
        assert ((xs - xs_ref).abs() <= bound).all(), f"{backend} sample err {(xs - xs_ref).abs().max():.3g}"


def test_numpy_in_numpy_out_and_tensor_in_tensor_out():
    runner = inference.load(make("maf"), backend="folded")
    x = data(make("maf"), 3, seed=0)
    out_np = runner.log_prob(x.numpy())
    out_t = runner.log_prob(x)
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
    np.testing.assert_array_equal(out_np, out_t.numpy())
    noise = inference.draw_noise(runner.noise_shapes, 2, seed=0)
    assert isinstance(runner.sample(noise=noise), np.ndarray)
    torch.testing.assert_close(torch.from_numpy(runner.sample(noise=noise)), runner.sample(2, seed=0))


def test_load_from_checkpoint_and_export_folder(tmp_path, cache_dir):
    flow = make("glow1d")
    path = nfkd.save(flow, tmp_path / "student.pt")
    a = inference.load(path, backend="eager")
    b = inference.load(str(path), backend="onnxruntime", cache_dir=cache_dir)
    assert a.info()["checkpoint_sha256"] == b.info()["checkpoint_sha256"] != ""
    folder = b.folder
    c = inference.load(folder, backend="onnxruntime")
    x = data(flow, 4, seed=3)
    np.testing.assert_allclose(c.log_prob(x.numpy()), a.log_prob(x.numpy()), rtol=1e-4)
    assert inference.load(folder).backend == "onnxruntime"  # auto on an export folder: an export runtime
    with pytest.raises(InputError, match="needs the checkpoint file"):
        inference.load(folder, backend="folded")


def test_auto_follows_the_recorded_ranking(monkeypatch):
    monkeypatch.setattr(inference, "ranking", lambda device, arch: ["tensorrt", "folded", "eager"])
    runner = inference.load(make("maf"))
    assert runner.backend == "folded"  # tensorrt is unavailable on this machine: skipped with its reason


def test_backends_say_why_not():
    names = [b.name for b in inference.backends()]
    assert names == ["eager", "folded", "compile", "onnxruntime", "tensorrt", "triton", "numba"]
    for b in inference.backends():
        assert b.reason, b
    if not torch.cuda.is_available():
        trt = inference.status("tensorrt")
        assert not trt.available and ("TensorRT" in trt.reason or "CUDA" in trt.reason)
        with pytest.raises(InputError, match="not available here"):
            inference.load(make("maf"), backend="tensorrt", device="cpu")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"backend": "nope"}, "unknown backend"),
        ({"device": "tpu"}, "device must be"),
        ({"threads": 0}, "threads must be"),
    ],
)
def test_bad_load_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        inference.load(make("maf"), **kwargs)


def test_bad_model_argument(tmp_path):
    with pytest.raises(InputError, match="not found"):
        inference.load(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="without manifest.json"):
        inference.load(tmp_path)
    with pytest.raises(InputError, match="must be an nfkd Flow"):
        inference.load(42)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda r: r.log_prob(np.zeros((2, 3), np.float32)), "features per row"),
        (lambda r: r.log_prob(np.array([[np.nan] * 4], np.float32)), "NaN or Inf"),
        (lambda r: r.log_prob(np.zeros((2, 4), np.int64)), "floating-point"),
        (lambda r: r.sample(0), "positive integer"),
        (lambda r: r.sample(2, temperature=float("inf")), "temperature"),
        (lambda r: r.sample(2, seed=-1), "seed"),
        (lambda r: r.sample(), "pass n"),
        (lambda r: r.sample(3, noise=[np.zeros((2, 4), np.float32)]), "n = 3 but the noise has 2 rows"),
    ],
)
def test_bad_input_one_clear_error(call, match):
    runner = inference.load(make("maf"), backend="folded")
    with pytest.raises(InputError, match=match):
        call(runner)


def test_threads_are_pinned_in_the_calling_thread():
    """torch's thread count is per OS thread: a runner sets it where the call runs (issue #19.5)."""
    import threading

    runner = inference.load(make("maf"), backend="eager", threads=1)
    seen = []

    def work():
        torch.set_num_threads(2)
        runner.log_prob(data(make("maf"), 2, seed=0))
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [1]


def test_numba_backend_says_how_to_install(monkeypatch):
    """Without numba, nfkd still imports and the numba backend says why it is unavailable (issue #14)."""
    from nfkd.inference import registry

    real = registry.has_module
    monkeypatch.setattr(registry, "has_module", lambda m: False if m == "numba" else real(m))
    st = inference.status("numba")
    assert not st.available and "pip install 'nfkd[cpu]'" in st.reason
    with pytest.raises(InputError, match="not available here"):
        inference.load(make("maf"), backend="numba")


# --- the registry is the only list of backends ------------------------------------------------------
@pytest.fixture
def toy_backend():
    """Registers tests/toy_backend.py: the one line a new backend adds to registry.BACKENDS."""
    from nfkd.inference import registry

    registry.register(registry.BackendSpec("toy", "tests.toy_backend:load", "tests.toy_backend:probe",
                                           "eager PyTorch under another name", devices=("cpu",),
                                           aliases=("toy-alias",), label="Toy"))
    yield "toy"
    registry.unregister("toy")


def test_a_registered_backend_reaches_load_serve_bench_and_ranking(toy_backend, tmp_path):
    from bench import ranking, suite
    from nfkd.cli.serve import build_parser
    from nfkd.serving.loading import load_model

    assert toy_backend in [b.name for b in inference.backends()] and inference.status("toy").available
    flow = make("maf")
    x = torch.randn(5, flow.dim, dtype=torch.float64)
    with torch.no_grad():
        ref = copy.deepcopy(flow).double().log_prob(x)
    for name in ("toy", "toy-alias"):  # an alias names the same backend
        runner = inference.load(flow, backend=name, device="cpu")
        assert runner.backend == "toy" and type(runner).__module__ == "tests.toy_backend"
        assert float((runner.log_prob(x.float()).double() - ref).abs().max()) < 1e-3
    assert build_parser().parse_args(["m.pt", "--backend", "toy-alias"]).backend == "toy-alias"
    ckpt = nfkd.save(flow, tmp_path / "maf.pt")
    assert load_model(ckpt, "toy").backend == "toy"  # the service, through the registry
    assert "toy" in suite.nfkd_backends() and "toy" in suite.default_backends(full=False)
    assert {c.backend for c in suite.cases(suite.QUICK, "density") if c.arch == "maf"} >= {"toy", "eager"}
    rows = [{"backend": b, "arch": "maf", "direction": "density", "dim": "6", "batch": "1", "median_s": t}
            for b, t in (("toy", "0.5"), ("eager", "1.0"), ("not-a-backend", "0.1"))]
    assert ranking.rank(rows) == {"maf": ["toy", "eager"]}


def test_register_refuses_a_taken_name_or_a_bad_spec(toy_backend):
    from nfkd.inference import registry

    with pytest.raises(ValueError, match="taken"):
        registry.register(registry.BackendSpec("eager2", "a:b", "a:c", "x", aliases=("torch",)))
    with pytest.raises(ValueError, match="module:function"):
        registry.register(registry.BackendSpec("other", "no-colon", "a:c", "x"))
    with pytest.raises(InputError, match="unknown backend 'nope'"):
        registry.canonical("nope")
