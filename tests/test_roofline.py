"""bench.roofline: the analytic FLOP count equals torch's own FLOP counter on the folded model."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.roofline import copy_bandwidth_gbs, matmul_peak_gflops, model_flops, useful_flops
from nfkd.flows import MAF, Glow, Glow1D
from nfkd.fold import fold
from nfkd.testing import perturb

CASES = {
    "glow1d": lambda: Glow1D(6, steps=3, hidden=16),
    "maf": lambda: MAF(5, blocks=2, hidden=12),
    "glow": lambda: Glow((2, 4, 4), levels=2, steps=2, hidden=8),
}


@pytest.mark.parametrize("arch", CASES)
@pytest.mark.parametrize("direction", ["density", "sample"])
def test_model_flops_match_torch_flop_counter(arch, direction):
    folded = fold(CASES[arch]().eval(), torch.float32)
    batch = 3
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        if direction == "density":
            folded.log_prob_unchecked(torch.randn(batch, *folded.event_shape))
        else:
            folded.inverse([torch.randn(s) for s in folded.noise_shapes(batch)])
    assert model_flops(folded, batch, direction) == counter.get_total_flops()


@pytest.mark.parametrize("arch", CASES)
@pytest.mark.parametrize("direction", ["density", "sample"])
def test_useful_flops_count_the_nonzero_weights(arch, direction):
    """Independent count: 2 x the non-zero weights of every dense layer (a MADE's masked weights are
    zero after perturbing every parameter), per pass; Glow convolutions and LU mixing are dense."""
    flow = CASES[arch]()
    perturb(flow, scale=0.1, seed=0)
    folded = fold(flow.eval(), torch.float64)
    dense, useful = model_flops(folded, 3, direction), useful_flops(folded, 3, direction)
    if arch != "maf":
        assert useful == dense
        return
    passes = folded.dim if direction == "sample" else 1
    nonzero = sum(int((m.weight * getattr(m, "mask", 1) != 0).sum()) for m in folded.modules()
                  if isinstance(m, torch.nn.Linear))
    mixing = dense // 3 - passes * sum(2 * m.weight.numel() for m in folded.modules() if isinstance(m, torch.nn.Linear))
    assert useful == 3 * (mixing + passes * 2 * nonzero)
    assert useful < 0.75 * dense


def test_machine_limits_are_positive_and_finite():
    assert 0 < matmul_peak_gflops(1, n=128, repeats=3) < 1e5
    assert 0 < copy_bandwidth_gbs(1, nbytes=1 << 20, repeats=3) < 1e5
