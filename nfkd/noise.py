"""The one way nfkd draws sampling noise from a seed, and the sample-shape convention of every ``sample``.

``Flow.sample(seed=...)``, every ``nfkd.inference`` Runner and the HTTP service draw unit noise
with ``draw_noise`` (``numpy.random.default_rng(seed)``, float32, level by level), so a flow, each
of its backends and the service give the same samples for a seed (up to float32 round-off between
runtimes). It lives here, below both ``nfkd.flows`` and ``nfkd.inference``, so either may import it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .errors import InputError

__all__ = ["SampleCount", "draw_noise", "sample_shape"]

#: What ``sample``'s ``n`` takes: a count, a torch.distributions sample shape, or None (see each ``sample``).
SampleCount = int | Sequence[int] | torch.Size | None


def draw_noise(noise_shapes: Sequence[Sequence[int]], n: int, seed: int | None) -> list[np.ndarray]:
    """Unit noise per level (shapes without the batch dimension) from ``default_rng(seed)``, float32."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *s), dtype=np.float32) for s in noise_shapes]


def sample_shape(n: object) -> tuple[int, ...] | None:
    """A torch.distributions sample shape as a tuple; None when ``n`` is a plain count (or None)."""
    if isinstance(n, (tuple, list, torch.Size)):
        if not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in n):
            raise InputError(f"a sample shape holds positive integers, got {tuple(n)!r}")
        return tuple(n)
    return None
