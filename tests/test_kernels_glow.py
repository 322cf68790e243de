"""Fused Glow step kernels (one launch per step) against the float64 folded reference.

CPU: the Triton interpreter (TRITON_INTERPRET=1, set before triton's first import).
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from kernels import _env  # noqa: E402
from nfkd.fold import fold  # noqa: E402

from .kernel_helpers import fresh_seed, glow_flow, kernel_module, max_rel_err, max_scaled_err  # noqa: E402

G = kernel_module("glow_step")  # skips with a fix hint if triton was imported too early

INTERP = _env.is_interpreted(G._glow_fwd_kernel)
if not INTERP and not torch.cuda.is_available():
    pytest.skip("triton kernels are compiled but no CUDA device", allow_module_level=True)
DEV = torch.device("cpu") if INTERP else torch.device("cuda")
LP_TOL, SAMPLE_TOL, STEP_TOL = 1e-4, 1e-4, 1e-5


def _rand(g, *shape, memory_format=torch.contiguous_format):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEV).contiguous(memory_format=memory_format)


# ------------------------------------------------------------------------------------ one step
# C = 12: RGB after one squeeze (c_a = 6, broadcast matmul); C = 24 -> c_a = 12 (tl.dot, padded to 16)
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("C,additive", [(12, False), (24, False), (12, True)])
def test_step_forward_and_inverse(C, additive, layout):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    mf = G.LAYOUTS[layout]
    B, H, W = 2, 3, 5  # 15 pixels, BLOCK_P = 8: two pixel blocks, the second partial
    ca = C // 2
    xa, xb = _rand(g, B, ca, H, W, memory_format=mf), _rand(g, B, C - ca, H, W, memory_format=mf)
    hn = _rand(g, B, (C - ca) * (1 if additive else 2), H, W, memory_format=mf)
    w = torch.linalg.qr(torch.randn(C, C, generator=g, dtype=torch.float64))[0] + 0.3 * torch.eye(C, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    w, b = w.to(DEV), b.to(DEV)
    ra, rb, rld = G.step_forward_reference(xa, xb, hn, w, b, additive)
    with _env.poison_outputs():
        oa, ob, ld = G.glow_step_forward(xa.float(), xb.float(), hn.float(), w.float(), b.float(), additive=additive,
                                         block_p=8)
    for got, ref, what in [(oa, ra, "out_a"), (ob, rb, "out_b"), (ld, rld, "logdet")]:
        assert torch.isfinite(got).all(), f"{what} unwritten (seed={seed})"
        assert max_rel_err(got.cpu(), ref.cpu()) < STEP_TOL, f"{what} (seed={seed})"
    # epilogue only (last step of a level): x_a passes through, y_b written
    _, yb_only, _ = G.glow_step_forward(xa.float(), xb.float(), hn.float(), None, None, additive=additive, block_p=8)
    assert max_rel_err(yb_only.cpu(), G.step_forward_reference(xa, xb, hn, None, None, additive)[1].cpu()) < STEP_TOL
    # inverse
    winv = torch.linalg.inv(w)
    binv = -(winv @ b)
    ia, ib = G.step_inverse_reference(ra, rb, hn, winv, binv, additive)
    with _env.poison_outputs():
        ga, gb = G.glow_step_inverse(ra.float(), rb.float(), hn.float(), winv.float(), binv.float(),
                                     additive=additive, block_p=8)
    assert max_rel_err(ga.cpu(), ia.cpu()) < STEP_TOL and max_rel_err(gb.cpu(), ib.cpu()) < STEP_TOL, f"seed={seed}"


# ------------------------------------------------------------------------------- whole flow
MODELS = {
    # 3 channels -> 12 after squeeze (non power of two); 6x6 = 36 pixels at level 0 (BLOCK_P 16: 3 blocks)
    "rgb12": dict(in_shape=(3, 12, 12), levels=2, steps=2, hidden=8),
    "additive": dict(in_shape=(2, 8, 8), levels=3, steps=1, hidden=8, additive=True),
}
_CACHE: dict = {}


def _models(name):
    if name not in _CACHE:
        flow = glow_flow(**MODELS[name], seed=3)
        _CACHE[name] = (flow, fold(flow, torch.float64), fold(flow, torch.float32).to(DEV))
    return _CACHE[name]


CASES = [("rgb12", 1, "nhwc", None), ("rgb12", 3, "nhwc", None), ("rgb12", 2, "nchw", True),
         ("additive", 2, "nhwc", None)]
IDS = [f"{m}-B{b}-{lay}-dot{d}" for m, b, lay, d in CASES]


@pytest.mark.parametrize("name,batch,layout,use_dot", CASES, ids=IDS)
def test_glow_log_prob(name, batch, layout, use_dot):
    flow, ref64, f32 = _models(name)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *flow.event_shape, generator=g, dtype=torch.float64) - 0.5
    with torch.no_grad():
        ref = ref64.log_prob(x)
        torch.testing.assert_close(ref, flow.log_prob(x), rtol=1e-9, atol=1e-8)
    with _env.poison_outputs():
        got = G.glow_log_prob_triton(G.pack(f32, use_dot), x.float().to(DEV), layout=layout, block_p=16)
    assert torch.isfinite(got).all(), f"seed={seed}"
    err = max_rel_err(got.cpu(), ref)
    assert err < LP_TOL, f"{name} B={batch} {layout}: rel err {err:.2e} (seed={seed})"


@pytest.mark.parametrize("name,batch,layout,use_dot", CASES, ids=IDS)
def test_glow_sample(name, batch, layout, use_dot):
    flow, ref64, f32 = _models(name)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    noise = [torch.randn(s, generator=g, dtype=torch.float64) for s in flow.noise_shapes(batch)]
    with torch.no_grad():
        ref = ref64.sample(noise[0].shape[0], temperature=0.7, noise=noise)
        torch.testing.assert_close(ref, flow.sample(batch, temperature=0.7, noise=noise), rtol=1e-8, atol=1e-8)
    out = torch.full((batch, *flow.event_shape), float("nan"), device=DEV)
    with _env.poison_outputs():
        got = G.glow_sample_triton(G.pack(f32, use_dot), [z.float().to(DEV) for z in noise], 0.7, layout=layout,
                                   out=out, block_p=16)
    assert got is out and torch.isfinite(got).all(), f"unwritten output (seed={seed})"
    err = max_scaled_err(got.cpu(), ref)
    assert err < SAMPLE_TOL, f"{name} B={batch} {layout}: err {err:.2e} (seed={seed})"


def test_round_trip_and_checks():
    """sample(log_prob-direction latents) recovers x; wrong dtype/arch are refused."""
    flow, ref64, f32 = _models("rgb12")
    seed = fresh_seed()
    x = torch.rand(1, *flow.event_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.5
    with torch.no_grad():
        latents = ref64.forward(x).latents
    back = G.glow_sample_triton(G.pack(f32), [z.float().to(DEV) for z in latents], 1.0, block_p=16)
    assert max_scaled_err(back.cpu(), x) < SAMPLE_TOL, f"seed={seed}"
    with pytest.raises(ValueError):
        G.pack(ref64.to(DEV))  # float64 folded: kernels are float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_inputs_and_float32_only_model(dtype):
    """Half inputs / noise are converted to float32 on entry (same result as float64 on the rounded
    values); a half-precision *folded model* is refused with one clear error (kernels are float32)."""
    flow, ref64, f32 = _models("rgb12")
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(2, *flow.event_shape, generator=g, dtype=torch.float64) - 0.5).to(dtype)
    noise = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in flow.noise_shapes(2)]
    with torch.no_grad():
        ref_lp, ref_s = ref64.log_prob(x.double()), ref64.sample(len(noise[0]), temperature=0.7, noise=[z.double() for z in noise])
    pk = G.pack(f32)
    lp = G.glow_log_prob_triton(pk, x.to(DEV), block_p=16)
    s = G.glow_sample_triton(pk, [z.to(DEV) for z in noise], 0.7, block_p=16)
    assert max_rel_err(lp.cpu(), ref_lp) < LP_TOL and max_scaled_err(s.cpu(), ref_s) < SAMPLE_TOL, f"seed={seed}"
    half_model = fold(flow, dtype).to(DEV)
    with pytest.raises(ValueError, match=r"run float32: fold\(flow, torch.float32\)"):
        G.pack(half_model)
