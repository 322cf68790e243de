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


def _folded_case(factory, dtype: torch.dtype):
    """(flow, its fold in ``dtype``, 5 float64 inputs) for the flow-vs-fold comparisons."""
    flow = _flow(factory)
    folded = fold(flow, dtype=dtype)
    return flow, folded, torch.randn(5, *flow.event_shape, dtype=torch.float64) * 0.4


@pytest.mark.parametrize("name,factory", CASES, ids=[c[0] for c in CASES])
def test_folded_matches_flow_both_directions(name, factory):
    flow, folded, x = _folded_case(factory, torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded.log_prob(x), flow.log_prob(x), atol=1e-9, rtol=1e-10)
        noise = flow.sample_noise(5, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(folded.sample(5, temperature=0.7, noise=noise), flow.sample(5, temperature=0.7, noise=noise), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name,factory", CASES, ids=[c[0] for c in CASES])
def test_folded_float32_close(name, factory):
    flow, folded, x = _folded_case(factory, torch.float32)
    with torch.no_grad():
        ref = flow.log_prob(x)
        got = folded.log_prob(x.float()).double()
    assert ((got - ref).abs() / ref.abs().clamp_min(1.0)).max() < 1e-4


@pytest.mark.parametrize("name,factory", CASES, ids=[c[0] for c in CASES])
def test_folded_is_the_same_class_with_only_folded_parts(name, factory):
    """Fold swaps modules: the result is a Flow of the same class, with nothing left to fold."""
    from nfkd.flows.layers import ActNorm, AffineCoupling, BatchNormFlow, LUInvertibleLinear, MaskedLinear, ZeroConv2d
    from nfkd.fold import is_folded

    flow = _flow(factory)
    folded = fold(flow, dtype=torch.float64)
    assert type(folded) is type(flow) and is_folded(folded) and not is_folded(flow)
    leftovers = (ActNorm, LUInvertibleLinear, MaskedLinear, ZeroConv2d, BatchNormFlow)
    assert not [type(m).__name__ for m in folded.modules() if isinstance(m, leftovers)]
    assert all(m.scale_offset == 0 for m in folded.modules() if isinstance(m, AffineCoupling) and not m.additive)
    assert not any(p.requires_grad for p in folded.parameters())
    # the trained flow is untouched
    assert any(isinstance(m, leftovers) for m in flow.modules())


@pytest.mark.parametrize("name,factory", CASES, ids=[c[0] for c in CASES])
def test_constant_logdet_is_the_data_independent_part(name, factory):
    """constant_logdet (what kernels add once) = logdet minus the coupling / MADE / prior terms,
    checked by switching every data-dependent term off: MADE and prior outputs zero, coupling
    scales saturated (sigmoid(50) = 1 to 1e-22), after which the flow's own logdet is that constant."""
    from torch import nn

    from nfkd.flows.layers import AffineCoupling
    from nfkd.fold import constant_logdet

    folded = fold(_flow(factory), dtype=torch.float64)
    with torch.no_grad():
        for m in folded.modules():
            if isinstance(m, nn.Sequential):
                last = [layer for layer in m if isinstance(layer, (nn.Linear, nn.Conv2d))][-1]
                last.weight.zero_()
                last.bias.zero_()
        for m in folded.modules():
            if isinstance(m, AffineCoupling) and not m.additive:
                [layer for layer in m.net if isinstance(layer, (nn.Linear, nn.Conv2d))][-1].bias[m.c_b:] = 50.0
        for prior in getattr(folded, "priors", []):
            prior.net.weight.zero_()
            prior.net.bias.zero_()
        x = torch.randn(3, *folded.event_shape, dtype=torch.float64)
        logdet = folded(x).logdet
    torch.testing.assert_close(logdet, constant_logdet(folded).expand(3), atol=1e-9, rtol=1e-12)
