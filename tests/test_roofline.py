"""bench.roofline: the analytic FLOP count equals torch's own FLOP counter on the folded model."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.roofline import copy_bandwidth_gbs, matmul_peak_gflops, model_flops
from nfkd.flows import MAF, Glow, Glow1D
from nfkd.fold import fold

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


def test_machine_limits_are_positive_and_finite():
    assert 0 < matmul_peak_gflops(1, n=128, repeats=3) < 1e5
    assert 0 < copy_bandwidth_gbs(1, nbytes=1 << 20, repeats=3) < 1e5
