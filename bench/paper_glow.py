"""The paper's own tabular Glow (``vklyukin/nf_distillation``, ``models/flows.py`` and ``models/layers.py`` at
commit 6251556), re-implemented minimally as a timing peer: the same modules and the same arithmetic per call.

What is kept, line for line in effect: per ``FlowStep`` (``is_1d=True``): ``ActNorm1d`` (``x + bias``, then
``x * exp(logs)``, log-det ``sum(logs)``), ``InvertibleConv1x1`` with ``LU_decomposed=True`` (the weight
``P (L * mask + I) (U * mask^T + diag(sign_s exp(log_s)))`` rebuilt on every call, as the paper's code does;
``z = x @ W``), the affine coupling on the ``split`` halves with ``get_block_1d``'s net (Linear-ReLU x 4,
Linear-Tanh, Linear) whose output is split ``cross`` (shift = even, scale = odd columns),
``sigmoid(scale + 2)``, ``z2 = (z2 + shift) * scale``; the prior with ``learn_top=False`` (zero mean and
log-std: ``gaussian_likelihood``). Sampling runs the steps in reverse with ``torch.inverse`` of the LU factors,
as ``reverse_flow`` does. Left out: image (2-D) paths, conditioning, ActNorm's data-dependent init (the bias /
log-scale are set to small random values instead: timing does not depend on them).
Sizes: the paper's configs ``conf/student/*.yaml`` (K = 3, hidden 16) and ``conf/teacher/*.yaml`` (K = 5, 32).
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PaperGlow1D"]


class _InvConvLU(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        w_init = torch.linalg.qr(torch.randn(c, c))[0]
        p, lower, upper = torch.lu_unpack(*torch.linalg.lu_factor(w_init))
        s = torch.diag(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("l_mask", torch.tril(torch.ones(c, c), -1))
        self.register_buffer("eye", torch.eye(c))
        self.lower, self.log_s, self.upper = nn.Parameter(lower), nn.Parameter(torch.log(s.abs())), \
            nn.Parameter(torch.triu(upper, 1))

    def weight(self, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        lower = self.lower * self.l_mask + self.eye
        u = self.upper * self.l_mask.transpose(0, 1).contiguous()
        u = u + torch.diag(self.sign_s * torch.exp(self.log_s))
        if reverse:
            return torch.inverse(u) @ (torch.inverse(lower) @ torch.inverse(self.p)), torch.sum(self.log_s)
        return self.p @ (lower @ u), torch.sum(self.log_s)


class _Step(nn.Module):
    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.bias, self.logs = nn.Parameter(0.1 * torch.randn(1, c)), nn.Parameter(0.1 * torch.randn(1, c))
        self.invconv = _InvConvLU(c)
        layers: list[nn.Module] = [nn.Linear(c // 2, hidden), nn.ReLU()]
        for act in (nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.Tanh()):
            layers += [nn.Linear(hidden, hidden), act]
        self.block = nn.Sequential(*layers, nn.Linear(hidden, (c - c // 2) * 2))
        for m in self.block:  # the paper's last layer starts at zero; random here so the work is non-trivial
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.3 / math.sqrt(m.in_features))

    def forward(self, x: torch.Tensor, logdet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = (x + self.bias) * torch.exp(self.logs)
        logdet = logdet + torch.sum(self.logs)
        w, dlogdet = self.invconv.weight(False)
        z, logdet = z @ w, logdet + dlogdet
        c = z.size(1)
        z1, z2 = z[:, : c // 2], z[:, c // 2:]
        h = self.block(z1)
        shift, scale = h[:, 0::2], h[:, 1::2]
        scale = torch.sigmoid(scale + 2.0)
        z2 = (z2 + shift) * scale
        return torch.cat((z1, z2), dim=1), torch.sum(torch.log(scale), dim=[1]) + logdet

    def reverse(self, z: torch.Tensor) -> torch.Tensor:
        c = z.size(1)
        z1, z2 = z[:, : c // 2], z[:, c // 2:]
        h = self.block(z1)
        shift, scale = h[:, 0::2], h[:, 1::2]
        z2 = z2 / torch.sigmoid(scale + 2.0) - shift
        w, _ = self.invconv.weight(True)
        z = torch.cat((z1, z2), dim=1) @ w
        return z * torch.exp(-self.logs) - self.bias


class PaperGlow1D(nn.Module):
    """``Glow(image_shape=[dim], hidden_channels=hidden, K=steps, L=1, flow_permutation='invconv',
    flow_coupling='affine', LU_decomposed=True, learn_top=False, is_1d=True)`` of the paper's code."""

    def __init__(self, dim: int, steps: int, hidden: int) -> None:
        super().__init__()
        self.dim = dim
        self.steps = nn.ModuleList(_Step(dim, hidden) for _ in range(steps))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's ``objective`` (its 1-D ``bpd`` is ``-objective``): log-det plus the unit Gaussian prior."""
        z, logdet = x, torch.zeros(x.shape[0], dtype=x.dtype)
        for step in self.steps:
            z, logdet = step(z, logdet)
        return logdet + torch.sum(-0.5 * (z**2 + math.log(2 * math.pi)), dim=1)

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        z = torch.normal(torch.zeros(n, self.dim), torch.full((n, self.dim), temperature))
        for step in reversed(self.steps):
            z = step.reverse(z)
        return z
