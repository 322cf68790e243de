"""Flow core against independent references: exact inverses, autograd Jacobians, grid integrals."""
from __future__ import annotations

import math
import zlib

import pytest
import torch

from nfkd.errors import InputError
from nfkd.flows import MAF, Glow, Glow1D, initialize_actnorm
from nfkd.flows.layers import (
    MADE,
    ActNorm,
    AffineCoupling,
    BatchNormFlow,
    FixedAffine,
    FlowStep,
    FoldedAffine,
    LUInvertibleLinear,
    Permutation,
    squeeze2d,
    unsqueeze2d,
)

from .helpers import brute_logabsdet, perturb

torch.manual_seed(0)


def layer_cases():
    """(name, layer factory, input shape) for every layer type, tables and images."""
    return [
        ("fixed_affine", lambda: _fixed(5), (5,)),
        ("actnorm_1d", lambda: ActNorm(5), (5,)),
        ("actnorm_2d", lambda: ActNorm(2), (2, 4, 4)),
        ("lu_linear", lambda: LUInvertibleLinear(5), (5,)),
        ("invconv_1x1", lambda: LUInvertibleLinear(4), (4, 3, 3)),
        ("coupling_mlp", lambda: AffineCoupling(5, 8, image=False), (5,)),
        ("coupling_mlp_additive", lambda: AffineCoupling(4, 8, image=False, additive=True), (4,)),
        ("coupling_conv", lambda: AffineCoupling(4, 8, image=True), (4, 3, 3)),
        ("coupling_conv_additive", lambda: AffineCoupling(4, 8, image=True, additive=True), (4, 3, 3)),
        ("flowstep_2d", lambda: FlowStep(4, 8, image=True), (4, 2, 2)),
        ("made", lambda: MADE(6, 16, 2), (6,)),
        ("made_tanh", lambda: MADE(3, 8, 1, activation="tanh"), (3,)),
        ("permutation", lambda: Permutation(torch.tensor([2, 0, 3, 1])), (4,)),
        ("batchnorm_eval", lambda: BatchNormFlow(4), (4,)),
        ("folded_affine_1d", lambda: _folded_affine(5), (5,)),
        ("folded_affine_2d", lambda: _folded_affine(3), (3, 2, 2)),
    ]


def _folded_affine(c: int) -> FoldedAffine:
    g = torch.Generator().manual_seed(c)
    w = torch.randn(c, c, generator=g, dtype=torch.float64) + 2 * torch.eye(c, dtype=torch.float64)
    return FoldedAffine(w, torch.randn(c, generator=g, dtype=torch.float64), torch.linalg.slogdet(w)[1])


def _fixed(d: int) -> FixedAffine:
    layer = FixedAffine(d)
    layer.set(torch.randn(d), torch.rand(d) + 0.5)
    return layer


@pytest.mark.parametrize("name,factory,shape", layer_cases(), ids=[c[0] for c in layer_cases()])
def test_layer_inverse_and_logdet(name, factory, shape):
    seed = zlib.crc32(name.encode()) % 1000  # stable across processes (hash() is salted per process)
    layer = perturb(factory().double(), seed=seed).eval()
    x = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y, logdet = layer(x)
    assert logdet.shape == (3,)
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-10, rtol=0)
    ref = brute_logabsdet(lambda v: layer(v)[0], x)
    torch.testing.assert_close(logdet, ref, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name,factory,shape", layer_cases(), ids=[c[0] for c in layer_cases()])
def test_layer_inverse_float32(name, factory, shape):
    layer = perturb(factory().float(), seed=1).eval()
    x = torch.randn(16, *shape)
    y, _ = layer(x)
    assert (layer.inverse(y) - x).abs().max() < 1e-4


def test_squeeze_roundtrip_and_layout():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).view(2, 3, 4, 4)
    s = squeeze2d(x)
    assert s.shape == (2, 12, 2, 2)
    # Glow's ordering: channel c*4 + 2*dy + dx holds pixel (2i+dy, 2j+dx) of channel c.
    assert s[1, 2 * 4 + 2 * 1 + 0, 1, 0] == x[1, 2, 3, 0]
    torch.testing.assert_close(unsqueeze2d(s), x)


def model_cases():
    return [
        ("glow_2x4x4", lambda: Glow((2, 4, 4), levels=2, steps=2, hidden=8)),
        ("glow_4x8x8", lambda: Glow((4, 8, 8), levels=3, steps=1, hidden=8)),
        ("glow_additive", lambda: Glow((2, 4, 4), levels=1, steps=2, hidden=8, additive=True)),
        ("glow1d_d2", lambda: Glow1D(2, steps=3, hidden=8)),
        ("glow1d_d7", lambda: Glow1D(7, steps=2, hidden=8)),
        ("maf_d5", lambda: MAF(5, blocks=3, hidden=16)),
        ("maf_bn_random", lambda: MAF(6, blocks=2, hidden=12, batch_norm=True, permutation="random")),
        ("maf_d8_tanh", lambda: MAF(8, blocks=2, hidden=16, n_hidden=1, activation="tanh")),
    ]


def _model(factory, seed=0, dtype=torch.float64, scale=0.1):
    torch.manual_seed(seed)  # the constructors' random init: independent of test order
    flow = factory().to(dtype)
    if hasattr(flow, "normalize"):
        flow.normalize.set(torch.randn(flow.dim) * 0.5, torch.rand(flow.dim) + 0.5)
    return perturb(flow, scale=scale, seed=seed).eval()


@pytest.mark.parametrize("name,factory", model_cases(), ids=[c[0] for c in model_cases()])
def test_model_inverse_float64(name, factory):
    flow = _model(factory)
    x = torch.randn(4, *flow.event_shape, dtype=torch.float64) * 0.5
    out = flow(x, taps=True)
    assert [tuple(z.shape) for z in out.latents] == flow.noise_shapes(4)
    assert set(out.taps) == set(flow.tap_names())
    inv = flow.inverse(out.latents, taps=True)
    torch.testing.assert_close(inv.x, x, atol=1e-10, rtol=0)
    # The generating path passes through the same named states.
    for key in flow.tap_names():
        torch.testing.assert_close(inv.taps[key], out.taps[key], atol=1e-10, rtol=0)


@pytest.mark.parametrize("name,factory", model_cases(), ids=[c[0] for c in model_cases()])
def test_model_inverse_float32(name, factory):
    flow = _model(factory, dtype=torch.float32)
    x = torch.randn(32, *flow.event_shape, generator=torch.Generator().manual_seed(1)) * 0.5
    out = flow(x)
    assert (flow.inverse(out.latents).x - x).abs().max() < 1e-4


def test_glow_sampling_from_given_split_noise_roundtrips():
    # Mild weights: a strongly perturbed random Glow maps unit noise to |x| ~ 1e3, ill-conditioned.
    flow = _model(lambda: Glow((2, 8, 8), levels=3, steps=1, hidden=8), scale=0.03)
    noise = flow.sample_noise(3, generator=torch.Generator().manual_seed(0))
    assert len(noise) == 3
    x = flow.sample(3, noise=noise)
    back = flow(x).latents
    for a, b in zip(back, noise):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # Split noise really matters: changing only level-0 noise changes the sample.
    noise2 = [noise[0] + 1.0, noise[1], noise[2]]
    assert (flow.sample(3, noise=noise2) - x).abs().max() > 1e-3


@pytest.mark.parametrize("name,factory", model_cases(), ids=[c[0] for c in model_cases()])
def test_model_logdet_matches_autograd_jacobian(name, factory):
    flow = _model(factory)
    x = torch.randn(2, *flow.event_shape, dtype=torch.float64) * 0.5

    def all_latents(v):
        return torch.cat([z.flatten(1) for z in flow(v).latents], 1)

    torch.testing.assert_close(flow(x).logdet, brute_logabsdet(all_latents, x), atol=1e-8, rtol=1e-8)


def test_log_prob_is_change_of_variables():
    flow = _model(lambda: MAF(3, blocks=2, hidden=8))
    x = torch.randn(5, 3, dtype=torch.float64)
    z = flow(x).latents[0]
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1) + brute_logabsdet(lambda v: flow(v).latents[0], x)
    torch.testing.assert_close(flow.log_prob(x), ref, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("factory", [lambda: Glow1D(2, steps=3, hidden=8), lambda: MAF(2, blocks=3, hidden=8)])
def test_2d_density_integrates_to_one(factory):
    flow = factory().double()
    perturb(flow, scale=0.3, seed=3).eval()
    flow.normalize.set(torch.tensor([0.3, -0.2]), torch.tensor([0.3, 0.4]))  # keep the mass inside the grid
    lim, n = 10.0, 801
    grid = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        dens = flow.log_prob(pts).exp().view(n, n)
    cell = (grid[1] - grid[0]) ** 2
    total = float(dens.sum() * cell)
    assert abs(total - 1.0) < 1e-2, total


@pytest.mark.parametrize("shape", [(6,), (3, 4, 4)])
def test_actnorm_data_dependent_init(shape):
    layer = ActNorm(shape[0])
    x = torch.randn(64, *shape) * 3.0 + 2.0
    layer.train()
    y, _ = layer(x)
    dims = [0] + list(range(2, y.dim()))
    torch.testing.assert_close(y.mean(dims), torch.zeros(shape[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dims, unbiased=False), torch.ones(shape[0]), atol=1e-4, rtol=0)
    # Only the first batch initialises.
    y2, _ = layer(x * 5)
    assert y2.std() > 3


def test_initialize_actnorm_runs_whole_model():
    flow = Glow1D(4, steps=2, hidden=8)
    initialize_actnorm(flow, torch.randn(32, 4))
    assert all(bool(m.initialized) for m in flow.modules() if isinstance(m, ActNorm))


def test_temperature_scales_noise():
    flow = _model(lambda: Glow1D(3, steps=1, hidden=8))
    g = torch.Generator().manual_seed(0)
    noise = flow.sample_noise(4, generator=g)
    cold = flow.sample(4, temperature=0.5, noise=noise)
    torch.testing.assert_close(flow(cold).latents[0], noise[0] * 0.5)


def test_parameter_count_matches_manual():
    flow = MAF(4, blocks=2, hidden=10, n_hidden=2)
    per_made = (4 * 10 + 10) + (10 * 10 + 10) + (10 * 8 + 8)
    assert flow.num_parameters() == 2 * per_made


@pytest.mark.parametrize(
    "bad,msg",
    [
        (torch.randn(3, 4), "expected (batch, 5)"),
        (torch.randint(0, 3, (3, 5)), "floating-point"),
        (torch.tensor([[0.0, float("nan"), 0, 0, 0]]), "NaN or Inf"),
        (torch.zeros(0, 5), "empty batch"),
    ],
)
def test_log_prob_rejects_bad_input(bad, msg):
    flow = MAF(5, blocks=1, hidden=8)
    with pytest.raises(InputError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        flow.log_prob(bad)


def test_sample_rejects_bad_noise():
    flow = Glow((2, 4, 4), levels=2, steps=1, hidden=8)
    with pytest.raises(InputError, match="one per level"):
        flow.sample(2, noise=[torch.randn(2, 16, 1, 1)])


def test_bits_per_dim_uniform_density():
    from nfkd.flows import bits_per_dim

    # A uniform density on [-0.5, 0.5]^D has log p = 0 and costs exactly log2(256) = 8 bits/dim.
    assert float(bits_per_dim(torch.tensor(0.0), dims=12, n_levels=256)) == pytest.approx(8.0)
    assert float(bits_per_dim(torch.tensor(12 * math.log(2.0)), 12, 256)) == pytest.approx(7.0)


@pytest.mark.parametrize("factory", [lambda: Glow1D(4, steps=3, hidden=8), lambda: MAF(4, blocks=4, hidden=8)])
def test_far_outliers_get_finite_low_density(factory):
    flow = _model(factory, dtype=torch.float32, scale=0.3)
    x = torch.tensor([[1e4, -1e4, 3e3, 0.0], [0.1, 0.2, -0.1, 0.0]])
    lp = flow.log_prob(x)
    assert bool(torch.isfinite(lp).all()), lp
    assert lp[0] < lp[1]
