"""The one way nfkd draws sampling noise from a seed, and the sample-shape convention of every ``sample``.

``Flow.sample(seed=...)``, every ``nfkd.inference`` Runner and the HTTP service draw unit noise
with ``draw_noise`` (``numpy.random.default_rng(seed)``, float32, level by level), so a flow, each
of its backends and the service give the same samples for a seed (up to float32 round-off between
runtimes). It lives here, below both ``nfkd.flows`` and ``nfkd.inference``, so either may import it.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys
from typing import Sequence

import numpy as np
import torch

from .errors import InputError

__all__ = ["SampleCount", "draw_noise", "sample_shape"]

#: What ``sample``'s ``n`` takes: a count, a torch.distributions sample shape, or None (see each ``sample``).
SampleCount = int | Sequence[int] | torch.Size | None


#: Draws of at least this many values may take numba's bit-identical copy of numpy's normals
#: (``kernels.cpu_noise``, 1.8-3.3x faster); below it numpy's per-call cost is small anyway.
FAST_NOISE_MIN = 1 << 15
#: ``NFKD_NOISE``: "numpy" always draws with numpy, "numba" with numba's copy whenever numba is installed; unset
#: (auto), with numba's copy once the process has imported numba (the numba backend, the server): a torch-only
#: process never pays numba's ~0.5 s import and cache load for a faster draw. The values are the same either way.
NOISE_ENV = "NFKD_NOISE"


def _normals(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """``rng.standard_normal(shape, dtype=float32)``, by numba's exact copy where ``NFKD_NOISE`` allows it."""
    if math.prod(shape) >= FAST_NOISE_MIN:
        mode = os.environ.get(NOISE_ENV, "")
        if mode == "numba" or (mode != "numpy" and "numba" in sys.modules):
            fast = _fast_noise()
            out = fast.standard_normal_f32(rng, shape) if fast is not None else None
            if out is not None:
                return out
    return rng.standard_normal(shape, dtype=np.float32)


@functools.cache
def _fast_noise():
    """kernels.cpu_noise, or None without numba (the optional ``cpu`` extra)."""
    if importlib.util.find_spec("numba") is None:
        return None
    try:
        from kernels import cpu_noise
    except ImportError:  # a numba that cannot compile it: numpy draws the same values
        return None
    return cpu_noise


def draw_noise(noise_shapes: Sequence[Sequence[int]], n: int, seed: int | None) -> list[np.ndarray]:
    """Unit noise per level (shapes without the batch dimension) from ``default_rng(seed)``, float32.

    The values are numpy's, bit for bit, whichever of numpy or ``kernels.cpu_noise`` draws them."""
    rng = np.random.default_rng(seed)
    return [_normals(rng, (n, *s)) for s in noise_shapes]


def sample_shape(n: object) -> tuple[int, ...] | None:
    """A torch.distributions sample shape as a tuple; None when ``n`` is a plain count (or None)."""
    if isinstance(n, (tuple, list, torch.Size)):
        if not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in n):
            raise InputError(f"a sample shape holds positive integers, got {tuple(n)!r}")
        return tuple(n)
    return None
