"""The folded inference form equals the training-time flow (float64 reference)."""
from __future__ import annotations

import pytest
import torch

from nfkd.flows import MAF, Glow, Glow1D
from nfkd.fold import fold

from .helpers import perturb

CASES = [
    ("glow", lambda: Glow((3, 8, 8), levels=2, steps=2, hidden=8)),
    ("glow_additive", lambda: Glow((2, 4, 4), levels=2, steps=1, hidden=8, additive=True)),
    ("glow1d", lambda: Glow1D(7, steps=3, hidden=8)),
    ("maf", lambda: MAF(6, blocks=3, hidden=12)),
    ("maf_bn_tanh", lambda: MAF(5, blocks=2, hidden=12, batch_norm=True, activation="tanh", permutation="random")),
]


def _flow(factory):
    flow = factory().double()
    if hasattr(flow, "normalize"):
        flow.normalize.set(torch.randn(flow.dim), torch.rand(flow.dim) + 0.5)
    return perturb(flow, scale=0.1, seed=7).eval()


@pytest.mark.parametrize("name,factory", CASES, ids=[c[0] for c in CASES])
def test_folded_matches_flow_both_directions(name, factory):
    flow = _flow(factory)
    folded = fold(flow, dtype=torch.float64)
    x = torch.randn(5, *flow.event_shape, dtype=torch.float64) * 0.4
    with torch.no_grad():
        torch.testing.assert_close(folded.log_prob(x), flow.log_prob(x), atol=1e-9, rtol=1e-10)
        noise = flow.sample_noise(5, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(folded.sample(5, 0.7, noise=noise), flow.sample(5, 0.7, noise=noise), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name,factory", CASES, ids=[c[0] for c in CASES])
def test_folded_float32_close(name, factory):
    flow = _flow(factory)
    folded = fold(flow, dtype=torch.float32)
    x = torch.randn(5, *flow.event_shape, dtype=torch.float64) * 0.4
    with torch.no_grad():
        ref = flow.log_prob(x)
        got = folded.log_prob(x.float()).double()
    assert ((got - ref).abs() / ref.abs().clamp_min(1.0)).max() < 1e-4
