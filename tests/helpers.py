"""Shared test utilities: random (non-identity) parameters and brute-force references."""
from __future__ import annotations

import torch

from nfkd.testing import perturb  # noqa: F401  (re-exported for the tests)


def brute_logabsdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of fn at each sample of x, from the full float64 autograd Jacobian."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]

        def flat(v: torch.Tensor, xi: torch.Tensor = xi) -> torch.Tensor:
            return fn(v.view_as(xi)).reshape(-1)

        jac = torch.autograd.functional.jacobian(flat, xi.reshape(-1))
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)
