"""Random non-identity weights for tests, kernels' checks and benchmarks (one shared definition).

Freshly built flows are near-identity (zero-initialised couplings and MADE outputs), which would
make most comparisons trivially pass; this moves every parameter off its initial value.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["perturb"]


@torch.no_grad()
def perturb(module: nn.Module, scale: float = 0.2, seed: int = 0) -> nn.Module:
    """Add scale·N(0,1) to every parameter; give batch-norm realistic running statistics."""
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
