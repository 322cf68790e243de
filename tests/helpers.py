"""Shared test utilities: random (non-identity) parameters and brute-force references."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def perturb(module: nn.Module, scale: float = 0.2, seed: int = 0) -> nn.Module:
    """Move every parameter off its (often identity) initial value so tests are not trivial."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    for name, b in module.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.3 * torch.randn(b.shape, generator=g, dtype=b.dtype))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
        elif name.endswith("initialized"):
            b.fill_(True)
    return module


def brute_logabsdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of fn at each sample of x, from the full float64 autograd Jacobian."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]

        def flat(v: torch.Tensor) -> torch.Tensor:
            return fn(v.view_as(xi)).reshape(-1)

        jac = torch.autograd.functional.jacobian(flat, xi.reshape(-1))
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)
