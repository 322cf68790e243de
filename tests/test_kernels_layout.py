"""The tabular kernels' weight layout (kernels/layout.py): pack -> unpack round trip, and the kernels'
compile-time offsets read from the same description.

The reference is the folded module itself: every tensor unpacked from the buffer must equal the
folded flow's own tensor (cast to float32, exactly), in the module's coordinates (MAF permutations
undone), and the buffer must be exactly the concatenation of the described records.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from kernels import layout  # noqa: E402
from nfkd.flows.base import LOG_2PI  # noqa: E402
from nfkd.fold import constant_logdet, fold, linear_layers  # noqa: E402

from .kernel_helpers import kernel_module, tabular_flow  # noqa: E402

T = kernel_module("tabular")


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().cpu().float()


def _same(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.equal(got, _f32(ref)), f"{what}: values differ (max {float((got - _f32(ref)).abs().max()):.3g})"


@pytest.mark.parametrize("dim,opts", [(6, {}), (7, {"additive": True}), (21, {"steps": 3, "hidden": 40})])
def test_glow1d_pack_unpack_round_trip(dim, opts):
    folded = fold(tabular_flow("glow1d", dim, seed=dim, **opts), torch.float64)
    p = T.pack(folded)
    rec = layout.glow1d_step_fields(p.DP, p.HP)
    assert p.buf.numel() == layout.glow1d_header_size(p.DP) + len(folded.steps) * layout.size(rec)
    got = T.unpack(p)
    assert got["const"] == pytest.approx(float(constant_logdet(folded)) - 0.5 * dim * LOG_2PI, rel=1e-6)
    for k, (st, g) in enumerate(zip(folded.steps, got["steps"], strict=True)):
        _same(g["mix"][0], st.mix.weight, f"step {k} mix weight")
        _same(g["mix"][1], st.mix.bias, f"step {k} mix bias")
        _same(g["mix_inv"][0], st.mix.weight_inv, f"step {k} inverse mix weight")
        _same(g["mix_inv"][1], st.mix.bias_inv, f"step {k} inverse mix bias")
        ref_layers = linear_layers(st.coupling.net)
        for j, ((w, b), (rw, rb)) in enumerate(zip(g["net"], ref_layers, strict=True)):
            _same(w, rw, f"step {k} coupling layer {j} weight")
            _same(b, rb, f"step {k} coupling layer {j} bias")


@pytest.mark.parametrize("dim,opts", [
    (6, {}),
    (9, {"n_hidden": 3, "activation": "tanh", "permutation": "random"}),
    (13, {"blocks": 3, "batch_norm": True, "permutation": "random", "hidden": 20}),
])
def test_maf_pack_unpack_round_trip(dim, opts):
    folded = fold(tabular_flow("maf", dim, seed=dim, **opts), torch.float64)
    p = T.pack(folded)
    assert p.buf.numel() == layout.size(layout.maf_header_fields(p.DP)) \
        + len(folded.blocks) * layout.maf_block_size(p.DP, p.HP, p.NH)
    got = T.unpack(p)
    assert got["const"] == pytest.approx(float(constant_logdet(folded)) - 0.5 * dim * LOG_2PI, rel=1e-6)
    _same(got["loc"], folded.normalize.loc, "normalize loc")
    _same(got["scale"], folded.normalize.scale, "normalize scale")
    for k, (blk, g) in enumerate(zip(folded.blocks, got["blocks"], strict=True)):
        for j, ((w, b), (rw, rb)) in enumerate(zip(g["made"], linear_layers(blk.made.net), strict=True)):
            _same(w, rw, f"block {k} MADE layer {j} weight")
            _same(b, rb, f"block {k} MADE layer {j} bias")
        if blk.bn is not None:
            torch.testing.assert_close(g["post_scale"].double(), 1.0 / blk.bn.scale.double().cpu(), rtol=1e-6, atol=0)
            torch.testing.assert_close(g["post_shift"].double(), -blk.bn.loc.double().cpu() / blk.bn.scale.double().cpu(),
                                       rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(g["post_scale"], torch.ones(dim)) and torch.equal(g["post_shift"], torch.zeros(dim))
        assert g["alpha_clamp"] == pytest.approx(float(blk.made.alpha_clamp))


def test_kernel_offsets_come_from_the_layout():
    """The kernels' compile-time offsets are the layout's (called in host code here, as Triton does)."""
    DP, HP = 32, 64
    g = layout.offsets(layout.glow1d_step_fields(DP, HP))
    for name in ("WT", "B", "WIT", "BI", "W0", "B0", "W1", "B1", "W2S", "B2S", "W2C", "B2C", "SIZE"):
        assert T._g1d(name, DP, HP) == g[name]
    # the records are contiguous and non-overlapping
    for fields in (layout.glow1d_step_fields(DP, HP), layout.maf_head_fields(DP, HP),
                   layout.maf_hidden_fields(HP), layout.maf_tail_fields(DP, HP), layout.maf_header_fields(DP)):
        o = layout.offsets(fields)
        starts = [o[n] for n, _ in fields]
        assert starts == sorted(starts) and o["SIZE"] == layout.size(fields)
        assert all(starts[i] + fields[i][1] == (starts[i + 1] if i + 1 < len(fields) else o["SIZE"])
                   for i in range(len(fields)))
    assert T._maf_tail("CL", DP, HP) == layout.offsets(layout.maf_tail_fields(DP, HP))["CL"]
