"""Glow for images (multi-scale) and Glow-1D for tables (one level), on the shared flow protocol."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .base import ChainFlow, Flow, FlowOutput, InverseOutput, preset_pair
from .layers import FixedAffine, FlowStep, ZeroConv2d, squeeze2d, unsqueeze2d

__all__ = ["SplitPrior", "Glow", "bits_per_dim", "Glow1D"]


class SplitPrior(nn.Module):
    """Conditional Gaussian prior of the factored-out half at a split: N(mean(z1), exp(logs(z1)))."""

    def __init__(self, keep_ch: int, out_ch: int) -> None:
        super().__init__()
        self.net = ZeroConv2d(keep_ch, 2 * out_ch)
        self.out_ch = out_ch

    def forward(self, z1: Tensor) -> tuple[Tensor, Tensor]:
        h = self.net(z1)
        return h[:, : self.out_ch], h[:, self.out_ch :]


class Glow(Flow):
    """Glow (Kingma & Dhariwal 2018): L levels of [squeeze, K steps, split with learned prior].

    Inputs are dequantized images in [-0.5, 0.5]; ``log_prob`` is the continuous density in nats.
    ``latents[l]`` is the standardized noise of the half factored out at level l (last: the top).

    >>> import torch
    >>> flow = Glow((3, 8, 8), levels=2, steps=2, hidden=16)
    >>> [tuple(s) for s in flow.noise_shapes(1)]   # split noise of level 0, then the top
    [(1, 6, 4, 4), (1, 24, 2, 2)]
    >>> x = torch.rand(2, 3, 8, 8) - 0.5
    >>> bits_per_dim(flow.log_prob(x), flow.dim).shape
    torch.Size([2])
    """

    arch = "glow"
    tabular = False
    presets = {  # the official CIFAR-10 config; CelebA-64 one level more (nfkd.presets says why)
        "glow-cifar10-paper": preset_pair("glow", dict(levels=3, steps=32, hidden=512), dict(levels=3, steps=8, hidden=512)),
        "glow-celeba-paper": preset_pair("glow", dict(levels=4, steps=32, hidden=512), dict(levels=4, steps=8, hidden=512)),
        "glow-cpu": preset_pair("glow", dict(levels=3, steps=4, hidden=64), dict(levels=3, steps=2, hidden=32)),
    }
    default_preset = "glow-cpu"

    def __init__(
        self,
        in_shape: Sequence[int] = (3, 32, 32),
        levels: int = 3,
        steps: int = 8,
        hidden: int = 512,
        additive: bool = False,
        n_levels_data: int = 256,
    ) -> None:
        in_shape = tuple(int(v) for v in in_shape)
        super().__init__(
            in_shape=list(in_shape), levels=levels, steps=steps, hidden=hidden, additive=additive,
            n_levels_data=n_levels_data,
        )
        c, h, w = in_shape
        if h % (2**levels) or w % (2**levels):
            raise ValueError(f"image size {h}x{w} must be divisible by 2**levels = {2**levels}")
        self._in_shape = in_shape
        self.levels = nn.ModuleList()
        self.priors = nn.ModuleList()
        self._noise_shapes: list[tuple[int, int, int]] = []
        for lvl in range(levels):
            c, h, w = c * 4, h // 2, w // 2
            self.levels.append(nn.ModuleList([FlowStep(c, hidden, image=True, additive=additive) for _ in range(steps)]))
            if lvl < levels - 1:
                keep = c // 2
                self.priors.append(SplitPrior(keep, c - keep))
                self._noise_shapes.append((c - keep, h, w))
                c = keep
        self._noise_shapes.append((c, h, w))
        self.top_mean = nn.Parameter(torch.zeros(c, h, w))
        self.top_logs = nn.Parameter(torch.zeros(c, h, w))

    @classmethod
    def for_event(cls, event_shape: Sequence[int], n_levels: int = 256, **config) -> Glow:
        """A Glow for images of ``event_shape`` [C, H, W] quantized to ``n_levels`` levels."""
        return cls(in_shape=list(event_shape), n_levels_data=int(n_levels), **config)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._in_shape

    def noise_shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch, *s) for s in self._noise_shapes]

    def tap_names(self) -> list[str]:
        return [f"level{i}.end" for i in range(len(self.levels))]

    def affine_positions(self, affine: nn.Module) -> int:
        """A step's 1x1 mixing acts on every pixel of its level: h * w positions."""
        c, h, w = self.event_shape
        for steps in self.levels:
            h, w = h // 2, w // 2
            if any(step.mix is affine for step in steps):
                return h * w
        raise ValueError("affine is not part of this Glow")

    def constant_prior_logdet(self) -> Tensor:
        """The top prior's standardization: − sum(top_logs)."""
        return -self.top_logs.detach().to(torch.float64).sum()

    def forward(self, x: Tensor, taps: bool = False) -> FlowOutput:
        logdet = x.new_zeros(x.shape[0])
        latents: list[Tensor] = []
        named: dict[str, Tensor] = {}
        h = x
        for lvl, steps in enumerate(self.levels):
            h = squeeze2d(h)
            for step in steps:
                h, ld = step(h)
                logdet = logdet + ld
            if taps:
                named[f"level{lvl}.end"] = h
            if lvl < len(self.levels) - 1:
                keep = h.shape[1] // 2
                z1, z2 = h[:, :keep], h[:, keep:]
                mean, logs = self.priors[lvl](z1)
                latents.append((z2 - mean) * torch.exp(-logs))
                logdet = logdet - logs.flatten(1).sum(1)
                h = z1
        latents.append((h - self.top_mean) * torch.exp(-self.top_logs))
        logdet = logdet - self.top_logs.sum()
        return FlowOutput(latents, logdet, named)

    def inverse(self, noise: Sequence[Tensor], taps: bool = False) -> InverseOutput:
        named: dict[str, Tensor] = {}
        h = noise[-1] * torch.exp(self.top_logs) + self.top_mean
        for lvl in reversed(range(len(self.levels))):
            if lvl < len(self.levels) - 1:
                mean, logs = self.priors[lvl](h)
                h = torch.cat([h, noise[lvl] * torch.exp(logs) + mean], 1)
            if taps:
                named[f"level{lvl}.end"] = h
            for step in reversed(self.levels[lvl]):
                h = step.inverse(h)
            h = unsqueeze2d(h)
        return InverseOutput(h, named)


def bits_per_dim(log_prob: Tensor, dims: int, n_levels: int = 256) -> Tensor:
    """Discrete bits/dim of a continuous density on [-0.5, 0.5] with bins of width 1/n_levels."""
    return (-log_prob + dims * math.log(n_levels)) / (dims * math.log(2.0))


class Glow1D(ChainFlow):
    """The paper's tabular Glow: fixed input normalization, then K x [ActNorm, LU linear, coupling].

    >>> import torch
    >>> flow = Glow1D(dim=6, steps=3, hidden=16)
    >>> flow.normalize.set(torch.zeros(6), torch.full((6,), 2.0))   # the training split's statistics
    >>> flow.log_prob(torch.randn(4, 6)).shape, flow.tap_names()
    (torch.Size([4]), ['block0', 'block1', 'block2'])
    """

    arch = "glow1d"
    presets = {  # the paper's Table 2 sizes (glow1d-paper), the official code's config, and a CPU size
        "glow1d-paper": preset_pair("glow1d", dict(steps=5, hidden=64, depth=5), dict(steps=3, hidden=32, depth=5)),
        "glow1d-official": preset_pair("glow1d", dict(steps=5, hidden=32, depth=5), dict(steps=3, hidden=16, depth=5)),
        "glow1d-cpu": preset_pair("glow1d", dict(steps=8, hidden=64), dict(steps=2, hidden=16)),
    }
    default_preset = "glow1d-cpu"
    min_dim = 2  # its couplings split the features in two halves
    fold_normalize_into_first_step = True  # nothing reads x itself before the first step's affine

    def __init__(self, dim: int, steps: int = 5, hidden: int = 32, additive: bool = False, depth: int = 2) -> None:
        config = dict(dim=dim, steps=steps, hidden=hidden, additive=additive)
        if depth != 2:  # only non-default depths are stored, so older checkpoints keep their config
            config["depth"] = depth
        super().__init__(**config)
        if dim < 2:
            raise ValueError("Glow1D needs at least 2 features for its coupling layers")
        self._dim = dim
        self.normalize = FixedAffine(dim)
        self.steps = nn.ModuleList(
            [FlowStep(dim, hidden, image=False, additive=additive, depth=depth) for _ in range(steps)]
        )

    def chain(self) -> nn.ModuleList:
        return self.steps
