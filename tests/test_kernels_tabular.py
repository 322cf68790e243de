"""Whole-flow tabular kernels (Glow-1D, MAF) against the float64 folded reference.

Runs the real Triton kernels on CPU through the interpreter: TRITON_INTERPRET must be set before
triton is first imported (triton's own tl.* helpers are @jit functions fixed at its import).
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # CPU: run the kernels through the Triton interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from kernels import _env  # noqa: E402
from nfkd.fold import fold  # noqa: E402

from .kernel_helpers import fresh_seed, kernel_module, max_rel_err, max_scaled_err, tabular_flow  # noqa: E402

T = kernel_module("tabular")  # skips with a fix hint if triton was imported too early

if not _env.is_interpreted(T._glow1d_log_prob_kernel) and not torch.cuda.is_available():
    pytest.skip("triton kernels are compiled but no CUDA device", allow_module_level=True)

DEV = torch.device("cpu") if _env.is_interpreted(T._glow1d_log_prob_kernel) else torch.device("cuda")
BLOCK = 16  # rows per program: B = 19 -> two programs, the second one partial
LP_TOL, SAMPLE_TOL = 1e-4, 1e-4

# (arch, D, options): odd and non-power-of-two widths, both activations, BN, depths, additive
CASES = [
    ("glow1d", 6, {}),
    ("glow1d", 43, {"hidden": 24}),
    ("glow1d", 63, {"steps": 2, "hidden": 32}),
    ("glow1d", 7, {"additive": True}),
    ("maf", 6, {}),
    ("maf", 43, {"hidden": 48, "blocks": 2}),
    ("maf", 63, {"hidden": 64, "blocks": 2, "activation": "tanh", "batch_norm": True, "permutation": "random"}),
    ("maf", 5, {"n_hidden": 1, "batch_norm": True, "permutation": "random"}),
    ("maf", 9, {"n_hidden": 3, "activation": "tanh"}),
]
IDS = [f"{a}-D{d}-" + ("-".join(f"{k}={v}" for k, v in o.items()) or "default") for a, d, o in CASES]

_FLOWS: dict = {}


def _models(arch, dim, opts):
    key = (arch, dim, tuple(sorted(opts.items())))
    if key not in _FLOWS:
        flow = tabular_flow(arch, dim, seed=dim, **dict(opts))
        _FLOWS[key] = (flow, fold(flow, torch.float64), fold(flow, torch.float32).to(DEV))
    return _FLOWS[key]


def _nan(*shape):
    return torch.full(shape, float("nan"), device=DEV)


@pytest.mark.parametrize("batch", [1, 19])
@pytest.mark.parametrize("arch,dim,opts", CASES, ids=IDS)
def test_log_prob_matches_float64(arch, dim, opts, batch):
    flow, ref64, f32 = _models(arch, dim, opts)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    x = flow.normalize.loc + flow.normalize.scale * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = ref64.log_prob(x)
        ref_flow = flow.log_prob(x)
    torch.testing.assert_close(ref, ref_flow, rtol=1e-9, atol=1e-9)  # the reference is the flow
    with _env.poison_outputs():
        got = T.tabular_log_prob(T.pack(f32), x.float().to(DEV), out=_nan(batch), block_b=BLOCK)
    assert torch.isfinite(got).all(), f"unwritten/NaN log p (seed={seed})"
    err = max_rel_err(got.cpu(), ref)
    assert err < LP_TOL, f"{arch} D={dim} B={batch}: rel err {err:.2e} (seed={seed})"


@pytest.mark.parametrize("batch", [1, 19])
@pytest.mark.parametrize("arch,dim,opts", CASES, ids=IDS)
def test_sample_matches_float64(arch, dim, opts, batch):
    if arch == "maf" and dim > 40 and batch > 1:
        batch = 1  # D sequential MADE passes per block: keep interpreted grids tiny
    flow, ref64, f32 = _models(arch, dim, opts)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = ref64.sample(len(z), temperature=0.8, noise=[z])
        ref_flow = flow.sample(batch, temperature=0.8, noise=[z])
    torch.testing.assert_close(ref, ref_flow, rtol=1e-8, atol=1e-8)
    sample = T.maf_sample if arch == "maf" else T.glow1d_sample
    with _env.poison_outputs():
        got = sample(T.pack(f32), z.float().to(DEV), 0.8, out=_nan(batch, dim), block_b=BLOCK)
    assert torch.isfinite(got).all(), f"unwritten/NaN sample (seed={seed})"
    err = max_scaled_err(got.cpu(), ref)
    assert err < SAMPLE_TOL, f"{arch} D={dim} B={batch}: err {err:.2e} (seed={seed})"


@pytest.mark.parametrize("arch", ["glow1d", "maf"])
def test_broadcast_matmul_path_and_strided_input(arch):
    """use_dot=False (broadcast-multiply + sum) and a non-contiguous input give the same numbers."""
    flow, ref64, f32 = _models(arch, 6, {})
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 17, generator=g, dtype=torch.float64).T  # (17, 6), column stride 17
    x = flow.normalize.loc + flow.normalize.scale * x
    assert not x.is_contiguous()
    with torch.no_grad():
        ref = ref64.log_prob(x)
    with _env.poison_outputs():
        got = T.tabular_log_prob(T.pack(f32), x.float().to(DEV), block_b=BLOCK, use_dot=False)
        z = torch.randn(5, 6, generator=g, dtype=torch.float64)
        s = T.tabular_sample(T.pack(f32), z.float().to(DEV), 1.0, block_b=BLOCK, use_dot=False)
    assert max_rel_err(got.cpu(), ref) < LP_TOL, f"seed={seed}"
    assert max_scaled_err(s.cpu(), ref64.sample(len(z), temperature=1.0, noise=[z])) < SAMPLE_TOL, f"seed={seed}"


def test_tensor_temperature_and_pack_is_a_snapshot():
    flow, ref64, f32 = _models("maf", 6, {})
    seed = fresh_seed()
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    temp = torch.tensor([[0.5], [1.0], [1.5]], dtype=torch.float64)
    got = T.maf_sample(T.pack(f32), z.float().to(DEV), temp.float().to(DEV), block_b=BLOCK)
    assert max_scaled_err(got.cpu(), ref64.sample(len(z), temperature=temp, noise=[z])) < SAMPLE_TOL, f"seed={seed}"
    # the packed buffer is a copy taken once (the triton Runner owns it): a later change of the folded
    # module is seen by a new pack only
    f32b = fold(flow, torch.float32).to(DEV)
    before = T.pack(f32b)
    with torch.no_grad():
        f32b.blocks[0].made.net[0].bias.add_(0.5)
    after = T.pack(f32b)
    assert torch.equal(before.buf, T.pack(f32).buf) and not torch.equal(after.buf, before.buf)
    x = flow.normalize.loc + torch.randn(4, 6, dtype=torch.float64)
    with torch.no_grad():
        for p, model in ((after, f32b), (before, f32)):
            got = T.tabular_log_prob(p, x.float().to(DEV), block_b=BLOCK)
            assert max_rel_err(got.cpu(), model.log_prob(x.float().to(DEV)).cpu()) < LP_TOL


def test_unsupported_raises():
    flow, _, _ = _models("glow1d", 6, {})
    wide = tabular_flow("maf", T.MAX_D + 1, hidden=8, blocks=1)
    assert not T.supports(fold(wide, torch.float32))
    with pytest.raises(ValueError):
        T.pack(fold(wide, torch.float32))
    with pytest.raises(ValueError):
        T.maf_sample(T.pack(fold(flow, torch.float32).to(DEV)), torch.zeros(2, 6, device=DEV))


# float16 / bfloat16 inputs: the launchers convert them to float32 on entry (the kernels compute
# and are compiled in float32 only: one input type per checked configuration, see kernels/configs.py)
HALF_CASES = [("glow1d", 6, {}), ("maf", 5, {"n_hidden": 1, "batch_norm": True, "permutation": "random"})]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("arch,dim,opts", HALF_CASES, ids=[f"{a}-D{d}" for a, d, _ in HALF_CASES])
def test_half_precision_inputs(arch, dim, opts, dtype):
    flow, ref64, f32 = _models(arch, dim, opts)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    x = (flow.normalize.loc + flow.normalize.scale * torch.randn(19, dim, generator=g, dtype=torch.float64)).to(dtype)
    z = torch.randn(19, dim, generator=g, dtype=torch.float64).to(dtype)
    with torch.no_grad():  # the reference sees the same rounded values, in float64
        ref_lp, ref_s = ref64.log_prob(x.double()), ref64.sample(len(z), temperature=0.8, noise=[z.double()])
    with _env.poison_outputs():
        lp = T.tabular_log_prob(T.pack(f32), x.to(DEV), block_b=BLOCK)
        s = T.tabular_sample(T.pack(f32), z.to(DEV), 0.8, block_b=BLOCK)
    assert lp.dtype == torch.float32 and s.dtype == torch.float32
    assert max_rel_err(lp.cpu(), ref_lp) < LP_TOL, f"{arch} {dtype} (seed={seed})"
    assert max_scaled_err(s.cpu(), ref_s) < SAMPLE_TOL, f"{arch} {dtype} (seed={seed})"


# IAF: the sampling kernel only (one MADE pass per block); its density stays on the folded PyTorch path
IAF_CASES = [("iaf", 6, {}), ("iaf", 43, {"hidden": 48, "blocks": 2}),
             ("iaf", 9, {"n_hidden": 3, "activation": "tanh", "permutation": "random"}),
             ("iaf", 5, {"n_hidden": 1})]


@pytest.mark.parametrize("batch", [1, 19])
@pytest.mark.parametrize("arch,dim,opts", IAF_CASES, ids=[f"iaf-D{d}-{len(o)}" for _, d, o in IAF_CASES])
def test_iaf_sample_matches_float64(arch, dim, opts, batch):
    flow, ref64, f32 = _models(arch, dim, opts)
    seed = fresh_seed()
    z = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        ref = ref64.sample(batch, temperature=0.8, noise=[z])
    torch.testing.assert_close(ref, flow.sample(batch, temperature=0.8, noise=[z]), rtol=1e-8, atol=1e-8)
    with _env.poison_outputs():
        got = T.iaf_sample(T.pack(f32), z.float().to(DEV), 0.8, out=_nan(batch, dim), block_b=BLOCK)
    assert torch.isfinite(got).all(), f"unwritten/NaN sample (seed={seed})"
    err = max_scaled_err(got.cpu(), ref)
    assert err < SAMPLE_TOL, f"iaf D={dim} B={batch}: err {err:.2e} (seed={seed})"
    assert T.tabular_sample(T.pack(f32), z.float().to(DEV), 0.8, block_b=BLOCK).cpu().equal(got.cpu())


def test_iaf_has_no_density_kernel_and_the_runner_binds_pytorch_at_load():
    from kernels.backend import kernel_ops
    from nfkd import inference

    flow, ref64, f32 = _models("iaf", 6, {})
    assert T.supports(f32, ("sample",)) and not T.supports(f32, ("log_prob",))
    assert kernel_ops(f32) == ["sample"]
    x = flow.normalize.loc + flow.normalize.scale * torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="no Triton density kernel"):
        T.tabular_log_prob(T.pack(f32), x.float().to(DEV))
    runner = inference.load(flow, backend="triton", device=DEV.type)
    assert runner.info()["kernel_ops"] == ["sample"]
    assert max_rel_err(runner.log_prob(x.float()).cpu(), ref64.log_prob(x)) < LP_TOL
    z = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad():
        ref = ref64.sample(5, temperature=0.8, noise=[z])
    assert max_scaled_err(runner.sample(noise=[z.float()], temperature=0.8).cpu(), ref) < SAMPLE_TOL
