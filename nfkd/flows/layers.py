"""Invertible layers. Each ``forward(x)`` returns ``(y, logdet[B])``; ``inverse(y)`` returns x.

Tensors are (B, C) for tables or (B, C, H, W) for images; channel-wise layers act on dim 1 and
count every spatial position in their log-determinant.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["stable_logsigmoid", "Bijection", "FixedAffine", "ActNorm", "LUInvertibleLinear", "FoldedAffine",
    "ZeroConv2d", "zero_linear", "conv_coupling_net", "mlp_coupling_net", "AffineCoupling", "FlowStep",
    "squeeze2d", "unsqueeze2d", "MaskedLinear", "made_degrees", "MADE", "InverseMADE", "Permutation",
    "BatchNormFlow"]


def _spatial(x: Tensor) -> int:
    """Number of positions that share one channel-wise transform (H*W, or 1 for tables)."""
    return math.prod(x.shape[2:]) if x.dim() > 2 else 1


def _view_channels(v: Tensor, x: Tensor) -> Tensor:
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def stable_logsigmoid(s: Tensor) -> Tensor:
    """log sigmoid(s) = min(s, 0) - log1p(exp(-|s|)), finite for every finite s.

    Written with elementary ops so that exported graphs keep it finite too: a runtime that
    lowers ``log(sigmoid(s))`` literally gives -inf once sigmoid underflows (s < ~-88 in float32),
    which is exactly where anomaly scores live.
    """
    return torch.clamp(s, max=0.0) - torch.log1p(torch.exp(-s.abs()))


class Bijection(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FixedAffine(Bijection):
    """Data normalization u = (x - loc) / scale, fixed after fitting on the training split.

    Kept inside the flow so that log_prob, samples, export and serving are in the user's units.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(num_features))
        self.register_buffer("scale", torch.ones(num_features))

    @torch.no_grad()
    def set(self, loc, scale) -> None:
        loc = torch.as_tensor(loc, dtype=self.loc.dtype).reshape(self.loc.shape)
        scale = torch.as_tensor(scale, dtype=self.scale.dtype).reshape(self.scale.shape)
        if not bool(torch.isfinite(loc).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("normalization statistics must be finite with positive scale")
        self.loc.copy_(loc)
        self.scale.copy_(scale)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = (x - _view_channels(self.loc, x)) / _view_channels(self.scale, x)
        logdet = -torch.log(self.scale).sum() * _spatial(x)
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * _view_channels(self.scale, y) + _view_channels(self.loc, y)


class ActNorm(Bijection):
    """Per-channel affine y = (x + bias) * exp(log_scale), initialised from the first batch.

    Data-dependent init (Glow): the first training batch leaves with zero mean and unit variance
    per channel. The trainer calls it once before DDP wrapping so that all ranks agree.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        std = x.std(dim=dims, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = (x + _view_channels(self.bias, x)) * _view_channels(self.log_scale.exp(), x)
        logdet = self.log_scale.sum() * _spatial(x)
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * _view_channels(torch.exp(-self.log_scale), y) - _view_channels(self.bias, y)


class LUInvertibleLinear(Bijection):
    """Invertible channel mixing with W = P L (U + diag(sign * exp(log_s))) (Glow's LU form).

    On tables this is a linear layer; on images it is the invertible 1x1 convolution, whose
    log-determinant is H*W*sum(log|s|).
    """

    def __init__(self, num_channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        c = num_channels
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=generator, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.register_buffer("eye", torch.eye(c))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())

    def weight(self) -> Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    @staticmethod
    def mix_channels(w: Tensor, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return x @ w.T
        return F.conv2d(x, w.view(*w.shape, 1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.mix_channels(self.weight(), x)
        logdet = self.log_s.sum() * _spatial(x)
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        w = self.weight()
        # Invert in float64: a float32 inverse loses ~1e-4 over a deep flow.
        return self.mix_channels(torch.linalg.inv(w.double()).to(w.dtype), y)


class FoldedAffine(Bijection):
    """y = W x + b per position with W^-1 cached and a constant log-det (the folded inference form).

    ``nfkd.fold`` builds one from ActNorm + LU mixing (and, on tables, the input normalization) in
    float64, so the inverse never needs ``torch.linalg.inv`` at run time and exported graphs contain
    only a matmul / 1x1 conv.
    """

    def __init__(self, weight: Tensor, bias: Tensor, logdet_per_position: float | Tensor) -> None:
        super().__init__()
        w = weight.detach().to(torch.float64)
        b = bias.detach().to(torch.float64)
        w_inv = torch.linalg.inv(w)
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)
        self.register_buffer("weight_inv", w_inv)
        self.register_buffer("bias_inv", -(w_inv @ b))
        self.register_buffer("logdet_const", torch.as_tensor(logdet_per_position, dtype=torch.float64).reshape(()))

    @staticmethod
    def _affine(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        if x.dim() == 2:
            return F.linear(x, w, b)
        return F.conv2d(x, w.view(*w.shape, 1, 1), b)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._affine(x, self.weight, self.bias), (self.logdet_const * _spatial(x)).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return self._affine(y, self.weight_inv, self.bias_inv)


class ZeroConv2d(nn.Module):
    """3x3 conv initialised to zero with a learned log-scale (Glow): couplings start near identity."""

    def __init__(self, in_ch: int, out_ch: int, logscale_factor: float = 3.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(out_ch))
        self.logscale_factor = logscale_factor

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(self.logs * self.logscale_factor).view(1, -1, 1, 1)


def zero_linear(in_f: int, out_f: int) -> nn.Linear:
    layer = nn.Linear(in_f, out_f)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def conv_coupling_net(in_ch: int, out_ch: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_ch, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(),
        ZeroConv2d(hidden, out_ch),
    )


def mlp_coupling_net(in_f: int, out_f: int, hidden: int, depth: int = 2) -> nn.Module:
    """``depth`` hidden Linear+ReLU layers, then the zero-initialised output (the paper's code: 5)."""
    if depth < 1:
        raise ValueError(f"coupling depth must be at least 1 hidden layer, got {depth}")
    layers: list[nn.Module] = [nn.Linear(in_f, hidden), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers, zero_linear(hidden, out_f))


class AffineCoupling(Bijection):
    """Glow coupling: x = [x_a, x_b]; y_b = (x_b + shift) * sigmoid(s + 2), y_a = x_a.

    ``additive=True`` keeps only the shift (volume preserving, log-det 0).
    """

    def __init__(self, num_channels: int, hidden: int, image: bool, additive: bool = False, depth: int = 2) -> None:
        super().__init__()
        self.c_a = num_channels // 2
        self.c_b = num_channels - self.c_a
        self.additive = additive
        # The +2 of sigmoid(s + 2) (Glow); folding moves it into the last layer's bias and sets 0.
        self.scale_offset = 2.0
        out = self.c_b if additive else 2 * self.c_b
        if image:
            self.net = conv_coupling_net(self.c_a, out, hidden)
        else:
            self.net = mlp_coupling_net(self.c_a, out, hidden, depth)

    def _shift_scale(self, x_a: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.net(x_a)
        if self.additive:
            return h, None
        shift, s = h[:, : self.c_b], h[:, self.c_b :]
        return shift, (s + self.scale_offset if self.scale_offset else s)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, : self.c_a], x[:, self.c_a :]
        shift, s = self._shift_scale(x_a)
        if s is None:
            return torch.cat([x_a, x_b + shift], 1), x.new_zeros(x.shape[0])
        y_b = (x_b + shift) * torch.sigmoid(s)
        logdet = stable_logsigmoid(s).flatten(1).sum(1)
        return torch.cat([x_a, y_b], 1), logdet

    def inverse(self, y: Tensor) -> Tensor:
        y_a, y_b = y[:, : self.c_a], y[:, self.c_a :]
        shift, s = self._shift_scale(y_a)
        if s is None:
            return torch.cat([y_a, y_b - shift], 1)
        return torch.cat([y_a, y_b / torch.sigmoid(s) - shift], 1)


class FlowStep(Bijection):
    """One Glow step: ActNorm -> invertible 1x1 conv / LU linear -> affine coupling.

    In the folded inference form (``nfkd.fold``) ``actnorm`` is None and ``mix`` is one
    ``FoldedAffine`` holding ActNorm and the mixing together; the same code runs both.
    """

    def __init__(self, num_channels: int, hidden: int, image: bool, additive: bool = False, depth: int = 2) -> None:
        super().__init__()
        self.actnorm = ActNorm(num_channels)
        self.mix = LUInvertibleLinear(num_channels)
        self.coupling = AffineCoupling(num_channels, hidden, image=image, additive=additive, depth=depth)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = 0.0
        if self.actnorm is not None:
            x, logdet = self.actnorm(x)
        x, ld2 = self.mix(x)
        x, ld3 = self.coupling(x)
        return x, logdet + ld2 + ld3

    def inverse(self, y: Tensor) -> Tensor:
        x = self.mix.inverse(self.coupling.inverse(y))
        return x if self.actnorm is None else self.actnorm.inverse(x)


def squeeze2d(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2), Glow's channel ordering."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze2d(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed autoregressive mask (MADE)."""

    def __init__(self, in_f: int, out_f: int, mask: Tensor) -> None:
        super().__init__(in_f, out_f)
        self.register_buffer("mask", mask.float())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def made_degrees(dim: int, hidden: int, n_hidden: int) -> list[Tensor]:
    """Degrees of input, hidden layers (sequential assignment as in the MAF code)."""
    degrees = [torch.arange(1, dim + 1)]
    for _ in range(n_hidden):
        degrees.append(torch.arange(hidden) % max(1, dim - 1) + min(1, dim - 1))
    return degrees


class MADE(Bijection):
    """Gaussian MADE as one MAF block: u = (x - mu(x_<i)) * exp(-alpha(x_<i)).

    Density in one pass; the inverse needs D sequential passes (sampling). The log-scale is
    soft-clamped, alpha = c * tanh(raw / c), so that far outliers get a very low log-density
    instead of an overflow to NaN (c = 8 allows scales up to e^8 per block).
    """

    def __init__(
        self, dim: int, hidden: int, n_hidden: int = 2, activation: str = "relu", alpha_clamp: float = 8.0
    ) -> None:
        super().__init__()
        self.dim = dim
        self.alpha_clamp = alpha_clamp
        deg = made_degrees(dim, hidden, n_hidden)
        layers: list[nn.Module] = []
        for i in range(n_hidden):
            mask = (deg[i + 1][:, None] >= deg[i][None, :]).float()
            layers.append(MaskedLinear(len(deg[i]), hidden, mask))
            layers.append(nn.ReLU() if activation == "relu" else nn.Tanh())
        out_mask = (deg[0][:, None] > deg[-1][None, :]).float()
        out = MaskedLinear(len(deg[-1]), 2 * dim, torch.cat([out_mask, out_mask], 0))
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)
        self.activation = activation
        # "python": D passes unrolled by Python; "graph_loop": one torch.while_loop (what ONNX
        # export needs for a Loop node whose graph does not grow with D). Same arithmetic.
        self.inverse_mode = "python"

    def _mu_alpha(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.net(x)
        alpha = h[:, self.dim :]
        return h[:, : self.dim], self.alpha_clamp * torch.tanh(alpha / self.alpha_clamp)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, alpha = self._mu_alpha(x)
        return (x - mu) * torch.exp(-alpha), -alpha.sum(1)

    def _inverse_pass(self, x: Tensor, u: Tensor) -> Tensor:
        """One sampling pass: after pass i coordinates 0..i are exact (they see only x_<i)."""
        mu, alpha = self._mu_alpha(x)
        return u * torch.exp(alpha) + mu

    def _solve(self, like: Tensor, one_pass, passes: int) -> Tensor:
        """``passes`` autoregressive passes from zeros: after pass i, coordinates 0..i are exact.

        The one loop behind both sequential directions (MAF sampling, IAF density), in either
        ``inverse_mode`` (Python-unrolled, or one ``torch.while_loop`` for an ONNX ``Loop``).
        """
        start = torch.zeros_like(like)
        if passes <= 0:
            return start
        if self.inverse_mode == "graph_loop":
            def cond(i: Tensor, h: Tensor) -> Tensor:
                return i < passes

            def body(i: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
                return i + 1, one_pass(h)

            return torch.while_loop(cond, body, (torch.zeros((), dtype=torch.int64, device=like.device), start))[1]
        h = start
        for _ in range(passes):
            h = one_pass(h)
        return h

    def inverse(self, u: Tensor) -> Tensor:
        return self._solve(u, lambda x: self._inverse_pass(x, u), self.dim)


class InverseMADE(MADE):
    """The same Gaussian MADE used the other way round: one block of an IAF (Kingma et al. 2016).

    Sampling (z -> x) is one pass, x = z * exp(alpha(z_<i)) + mu(z_<i), the MAF's sampling step with
    the conditioner reading the noise instead of the output; the density direction (x -> z) solves
    z = (x - mu(z)) * exp(-alpha(z)) in D sequential passes (exact, triangular). Same parameters,
    masks, clamp and state-dict keys as ``MADE``, so folding, init and export treat it as a MADE.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        def one_pass(z: Tensor) -> Tensor:
            mu, alpha = self._mu_alpha(z)
            return (x - mu) * torch.exp(-alpha)

        z = self._solve(x, one_pass, self.dim - 1)  # the last coordinate comes with alpha below
        mu, alpha = self._mu_alpha(z)
        return (x - mu) * torch.exp(-alpha), -alpha.sum(1)

    def inverse_and_logdet(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """x and log|det dx/dz| from one pass (what probability density distillation needs)."""
        mu, alpha = self._mu_alpha(z)
        return z * torch.exp(alpha) + mu, alpha.sum(1)

    def inverse(self, z: Tensor) -> Tensor:
        return self._inverse_pass(z, z)


class Permutation(Bijection):
    """Fixed feature permutation (order reversal by default) between MAF blocks."""

    def __init__(self, perm: Tensor) -> None:
        super().__init__()
        self.register_buffer("perm", perm.long())
        self.register_buffer("inv_perm", torch.argsort(perm).long())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y[:, self.inv_perm]


class BatchNormFlow(Bijection):
    """MAF's batch-norm layer: batch statistics in training, running averages in eval."""

    def __init__(self, dim: int, momentum: float = 0.05, eps: float = 1e-5) -> None:
        super().__init__()
        self.log_gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.momentum, self.eps = momentum, eps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and x.shape[0] > 1:
            mean, var = x.mean(0), x.var(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean) / torch.sqrt(var + self.eps) * torch.exp(self.log_gamma) + self.beta
        logdet = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum()
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        var = self.running_var + self.eps
        return (y - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(var) + self.running_mean
