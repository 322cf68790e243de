"""The inference form: a trained flow folded into constants for ONNX, TensorRT and Triton kernels.

Folding (done once, in float64, then cast):
- data normalization and ActNorm are folded into the LU linear / 1x1 conv: ``y = x @ W.T + b``;
  ``W^-1`` and the inverse bias are precomputed (inverse / slogdet never reach a graph);
- every constant log-determinant (normalization, ActNorm, LU, top prior, batch-norm in eval)
  is summed into one ``logdet_const``;
- Glow's coupling offset (+2 before the sigmoid) and ZeroConv's ``exp(3*logs)`` are folded into
  the last layer's weights; MADE masks are multiplied into the weights.

The folded modules use only export-friendly ops (matmul/conv, elementwise, slicing, concat) and
are the single reference that ONNX export, TensorRT and the kernels are checked against.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flows import MAF, Flow, Glow, Glow1D
from .flows.base import LOG_2PI
from .flows.layers import FlowStep, MaskedLinear, ZeroConv2d

D64 = torch.float64


def _buf(module: nn.Module, name: str, value: Tensor) -> None:
    module.register_buffer(name, value.detach().to(D64).clone())


def _step_affine(step: FlowStep, pre_scale: Tensor | None = None, pre_shift: Tensor | None = None):
    """W' and b' of ActNorm followed by the LU mix, optionally after u = x * pre_scale + pre_shift."""
    an, mix = step.actnorm, step.mix
    s = an.log_scale.detach().to(D64).exp()
    w = mix.weight().detach().to(D64) @ torch.diag(s)  # W diag(s)
    b = w @ an.bias.detach().to(D64)
    if pre_scale is not None:
        b = b + w @ pre_shift
        w = w @ torch.diag(pre_scale)
    return w, b


def _linear_layers(net: nn.Sequential) -> list[tuple[Tensor, Tensor]]:
    out = []
    for m in net:
        if isinstance(m, MaskedLinear):
            out.append(((m.weight * m.mask).detach().to(D64), m.bias.detach().to(D64)))
        elif isinstance(m, nn.Linear):
            out.append((m.weight.detach().to(D64), m.bias.detach().to(D64)))
        elif isinstance(m, nn.Conv2d):
            out.append((m.weight.detach().to(D64), m.bias.detach().to(D64)))
        elif isinstance(m, ZeroConv2d):
            g = torch.exp(m.logs.detach().to(D64) * m.logscale_factor)
            out.append((m.conv.weight.detach().to(D64) * g.view(-1, 1, 1, 1), m.conv.bias.detach().to(D64) * g))
    return out


def _coupling_last_offset(layers: list[tuple[Tensor, Tensor]], c_b: int, additive: bool) -> None:
    if not additive:  # fold the +2 of sigmoid(s + 2) into the bias of the scale rows
        w, b = layers[-1]
        b = b.clone()
        b[c_b:] += 2.0
        layers[-1] = (w, b)


class FoldedCoupling(nn.Module):
    """Coupling net as plain weights: relu(L1) -> relu(L2) -> L3 with the +2 already in L3's bias."""

    def __init__(self, layers: list[tuple[Tensor, Tensor]], c_a: int, additive: bool, image: bool) -> None:
        super().__init__()
        self.c_a, self.additive, self.image = c_a, additive, image
        for i, (w, b) in enumerate(layers):
            _buf(self, f"w{i}", w)
            _buf(self, f"b{i}", b)
        self.n_layers = len(layers)

    def net(self, x_a: Tensor) -> Tensor:
        h = x_a
        for i in range(self.n_layers):
            w, b = getattr(self, f"w{i}"), getattr(self, f"b{i}")
            if self.image:
                h = F.conv2d(h, w, b, padding=w.shape[-1] // 2)
            else:
                h = F.linear(h, w, b)
            if i < self.n_layers - 1:
                h = torch.relu(h)
        return h

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, : self.c_a], x[:, self.c_a :]
        h = self.net(x_a)
        if self.additive:
            return torch.cat([x_a, x_b + h], 1), x.new_zeros(x.shape[0])
        c_b = x_b.shape[1]
        shift, s = h[:, :c_b], h[:, c_b:]
        return torch.cat([x_a, (x_b + shift) * torch.sigmoid(s)], 1), F.logsigmoid(s).flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        y_a, y_b = y[:, : self.c_a], y[:, self.c_a :]
        h = self.net(y_a)
        if self.additive:
            return torch.cat([y_a, y_b - h], 1)
        c_b = y_b.shape[1]
        shift, s = h[:, :c_b], h[:, c_b:]
        return torch.cat([y_a, y_b / torch.sigmoid(s) - shift], 1)


class FoldedStep(nn.Module):
    """One Glow step: affine y = W x + b (ActNorm + LU folded, per pixel on images), then coupling."""

    def __init__(self, w: Tensor, b: Tensor, coupling: FoldedCoupling) -> None:
        super().__init__()
        _buf(self, "weight", w)
        _buf(self, "bias", b)
        w_inv = torch.linalg.inv(w.to(D64))
        _buf(self, "weight_inv", w_inv)
        _buf(self, "bias_inv", -(w_inv @ b.to(D64)))
        self.coupling = coupling

    @staticmethod
    def affine(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        if x.dim() == 2:
            return F.linear(x, w, b)
        return F.conv2d(x, w.view(*w.shape, 1, 1), b)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.coupling(self.affine(x, self.weight, self.bias))

    def inverse(self, y: Tensor) -> Tensor:
        return self.affine(self.coupling.inverse(y), self.weight_inv, self.bias_inv)


class FoldedFlow(nn.Module):
    """Common API: ``forward(x) -> (latents, logdet)``, ``log_prob(x)``, ``inverse(noise)``."""

    arch: str = ""
    event_shape: tuple[int, ...] = ()

    def log_prob(self, x: Tensor) -> Tensor:
        latents, logdet = self.forward(x)
        lp = logdet
        for z in latents:
            lp = lp - 0.5 * (z * z).flatten(1).sum(1) - 0.5 * z[0].numel() * LOG_2PI
        return lp

    def sample(self, noise: Sequence[Tensor], temperature: float | Tensor = 1.0) -> Tensor:
        return self.inverse([z * temperature for z in noise])


class FoldedGlow1D(FoldedFlow):
    arch = "glow1d"

    def __init__(self, flow: Glow1D) -> None:
        super().__init__()
        self.event_shape = flow.event_shape
        inv_scale = 1.0 / flow.normalize.scale.detach().to(D64)
        shift = -flow.normalize.loc.detach().to(D64) * inv_scale
        steps, const = [], float(torch.log(inv_scale).sum())
        for i, step in enumerate(flow.steps):
            w, b = _step_affine(step, inv_scale, shift) if i == 0 else _step_affine(step)
            const += float(step.actnorm.log_scale.detach().to(D64).sum() + step.mix.log_s.detach().to(D64).sum())
            c = step.coupling
            layers = _linear_layers(c.net)
            _coupling_last_offset(layers, c.c_b, c.additive)
            steps.append(FoldedStep(w, b, FoldedCoupling(layers, c.c_a, c.additive, image=False)))
        self.steps = nn.ModuleList(steps)
        _buf(self, "logdet_const", torch.tensor(const, dtype=D64))

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        logdet = self.logdet_const.expand(x.shape[0])
        for step in self.steps:
            x, ld = step(x)
            logdet = logdet + ld
        return [x], logdet

    def inverse(self, noise: Sequence[Tensor]) -> Tensor:
        h = noise[0]
        for step in reversed(self.steps):
            h = step.inverse(h)
        return h


class FoldedMADE(nn.Module):
    def __init__(self, made, post_scale: Tensor, post_shift: Tensor, perm: Tensor) -> None:
        super().__init__()
        layers = _linear_layers(made.net)
        for i, (w, b) in enumerate(layers):
            _buf(self, f"w{i}", w)
            _buf(self, f"b{i}", b)
        self.n_layers = len(layers)
        self.dim, self.alpha_clamp, self.tanh = made.dim, float(made.alpha_clamp), made.activation == "tanh"
        _buf(self, "post_scale", post_scale)  # eval batch-norm as y = u * a + c (identity without BN)
        _buf(self, "post_shift", post_shift)
        self.register_buffer("perm", perm.clone())
        self.register_buffer("inv_perm", torch.argsort(perm))

    def mu_alpha(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x
        for i in range(self.n_layers):
            h = F.linear(h, getattr(self, f"w{i}"), getattr(self, f"b{i}"))
            if i < self.n_layers - 1:
                h = torch.tanh(h) if self.tanh else torch.relu(h)
        c = self.alpha_clamp
        return h[:, : self.dim], c * torch.tanh(h[:, self.dim :] / c)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, alpha = self.mu_alpha(x)
        u = (x - mu) * torch.exp(-alpha)
        return (u * self.post_scale + self.post_shift)[:, self.perm], -alpha.sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        u = (y[:, self.inv_perm] - self.post_shift) / self.post_scale
        x = torch.zeros_like(u)
        for _ in range(self.dim):
            mu, alpha = self.mu_alpha(x)
            x = u * torch.exp(alpha) + mu
        return x


class FoldedMAF(FoldedFlow):
    arch = "maf"

    def __init__(self, flow: MAF) -> None:
        super().__init__()
        self.event_shape = flow.event_shape
        scale = flow.normalize.scale.detach().to(D64)
        _buf(self, "loc", flow.normalize.loc)
        _buf(self, "inv_scale", 1.0 / scale)
        const = -float(torch.log(scale).sum())
        blocks = []
        for blk in flow.blocks:
            d = flow.dim
            a, c = torch.ones(d, dtype=D64), torch.zeros(d, dtype=D64)
            if blk.bn is not None:
                bn = blk.bn
                a = torch.exp(bn.log_gamma.detach().to(D64)) / torch.sqrt(bn.running_var.to(D64) + bn.eps)
                c = bn.beta.detach().to(D64) - bn.running_mean.to(D64) * a
                const += float(torch.log(a).sum())
            blocks.append(FoldedMADE(blk.made, a, c, blk.perm.perm))
        self.blocks = nn.ModuleList(blocks)
        _buf(self, "logdet_const", torch.tensor(const, dtype=D64))

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        h = (x - self.loc) * self.inv_scale
        logdet = self.logdet_const.expand(x.shape[0])
        for blk in self.blocks:
            h, ld = blk(h)
            logdet = logdet + ld
        return [h], logdet

    def inverse(self, noise: Sequence[Tensor]) -> Tensor:
        h = noise[0]
        for blk in reversed(self.blocks):
            h = blk.inverse(h)
        return h / self.inv_scale + self.loc


class FoldedGlow(FoldedFlow):
    arch = "glow"

    def __init__(self, flow: Glow) -> None:
        super().__init__()
        from .flows.layers import squeeze2d, unsqueeze2d  # noqa: F401  (documented dependency)

        self.event_shape = flow.event_shape
        const = 0.0
        levels = []
        c, h, w = flow.event_shape
        for lvl, steps in enumerate(flow.levels):
            c, h, w = c * 4, h // 2, w // 2
            folded = []
            for step in steps:
                wt, b = _step_affine(step)
                const += float(step.actnorm.log_scale.detach().to(D64).sum() + step.mix.log_s.detach().to(D64).sum()) * h * w
                cp = step.coupling
                layers = _linear_layers(cp.net)
                _coupling_last_offset(layers, cp.c_b, cp.additive)
                folded.append(FoldedStep(wt, b, FoldedCoupling(layers, cp.c_a, cp.additive, image=True)))
            levels.append(nn.ModuleList(folded))
            if lvl < len(flow.levels) - 1:
                c = c // 2
        self.levels = nn.ModuleList(levels)
        self.priors = nn.ModuleList()
        for prior in flow.priors:
            m = nn.Module()
            (pw, pb), = _linear_layers(nn.Sequential(prior.net))
            _buf(m, "weight", pw)
            _buf(m, "bias", pb)
            self.priors.append(m)
        _buf(self, "top_mean", flow.top_mean)
        _buf(self, "top_inv_std", torch.exp(-flow.top_logs.detach().to(D64)))
        const -= float(flow.top_logs.detach().to(D64).sum())
        _buf(self, "logdet_const", torch.tensor(const, dtype=D64))

    @staticmethod
    def _prior(m: nn.Module, z1: Tensor) -> tuple[Tensor, Tensor]:
        hh = F.conv2d(z1, m.weight, m.bias, padding=1)
        k = hh.shape[1] // 2
        return hh[:, :k], hh[:, k:]

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        from .flows.layers import squeeze2d

        logdet = self.logdet_const.expand(x.shape[0])
        latents = []
        h = x
        for lvl, steps in enumerate(self.levels):
            h = squeeze2d(h)
            for step in steps:
                h, ld = step(h)
                logdet = logdet + ld
            if lvl < len(self.levels) - 1:
                keep = h.shape[1] // 2
                z1, z2 = h[:, :keep], h[:, keep:]
                mean, logs = self._prior(self.priors[lvl], z1)
                latents.append((z2 - mean) * torch.exp(-logs))
                logdet = logdet - logs.flatten(1).sum(1)
                h = z1
        latents.append((h - self.top_mean) * self.top_inv_std)
        return latents, logdet

    def inverse(self, noise: Sequence[Tensor]) -> Tensor:
        from .flows.layers import unsqueeze2d

        h = noise[-1] / self.top_inv_std + self.top_mean
        for lvl in reversed(range(len(self.levels))):
            if lvl < len(self.levels) - 1:
                mean, logs = self._prior(self.priors[lvl], h)
                h = torch.cat([h, noise[lvl] * torch.exp(logs) + mean], 1)
            for step in reversed(self.levels[lvl]):
                h = step.inverse(h)
            h = unsqueeze2d(h)
        return h


def fold(flow: Flow, dtype: torch.dtype = torch.float32) -> FoldedFlow:
    """Fold a trained flow (eval mode) into its inference form, computed in float64, cast to dtype."""
    builders = {"glow": FoldedGlow, "glow1d": FoldedGlow1D, "maf": FoldedMAF}
    if flow.arch not in builders:
        raise ValueError(f"cannot fold architecture {flow.arch!r}")
    with torch.no_grad():
        folded = builders[flow.arch](flow.eval())
    return folded.to(dtype).eval()


__all__ = ["FoldedFlow", "FoldedGlow", "FoldedGlow1D", "FoldedMAF", "FoldedStep", "FoldedCoupling", "fold", "math"]
