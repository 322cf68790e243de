"""Moving images between integer levels and the continuous space a flow models.

A flow is a density on R^D; images are discrete. Uniform dequantization, x = (k + u) / L - 0.5
with u ~ U[0, 1), turns level k of L into a continuous point in [-0.5, 0.5), and the flow's
log-likelihood of x lower-bounds the discrete log-likelihood of k. ``quantize`` is the inverse
used on sampled images. (Bits-per-dim conversion lives with the metrics, not here.)
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["dequantize", "quantize", "reduce_bits"]

_BELOW_HALF = float(np.nextafter(np.float32(0.5), np.float32(0.0)))


def _check_levels(n_levels: int) -> None:
    if not isinstance(n_levels, (int, np.integer)) or n_levels < 2:
        raise InputError(f"n_levels must be an integer >= 2, got {n_levels!r}")


def _as_tensor(images: Tensor | np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images


def dequantize(images: Tensor | np.ndarray, n_levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Integer levels k in [0, n_levels) -> float32 (k + U[0,1)) / n_levels - 0.5, in [-0.5, 0.5).

    float32 rounding can push the top level's value up to exactly 0.5; it is clamped to the
    largest float32 below 0.5 so the documented half-open range holds.
    """
    _check_levels(n_levels)
    k = _as_tensor(images)
    if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
        raise InputError(f"dequantize expects integer levels (e.g. uint8), got dtype {k.dtype}")
    if k.numel() and (int(k.min()) < 0 or int(k.max()) >= n_levels):
        raise InputError(f"levels must lie in [0, {n_levels - 1}], found [{int(k.min())}, {int(k.max())}]")
    u = torch.rand(k.shape, generator=generator, device=k.device, dtype=torch.float32)
    x = (k.to(torch.float32) + u) / n_levels - 0.5
    return x.clamp_(max=_BELOW_HALF)


def quantize(x: Tensor, n_levels: int) -> Tensor:
    """Inverse of :func:`dequantize`: clamp(floor((x + 0.5) * n_levels), 0, n_levels - 1).

    Returns uint8 when n_levels <= 256 (images), int64 otherwise.
    """
    _check_levels(n_levels)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise InputError("quantize expects a floating-point torch.Tensor")
    if not bool(torch.isfinite(x).all()):
        raise InputError("quantize got NaN or Inf values; the sampler diverged")
    k = torch.floor((x.to(torch.float64) + 0.5) * n_levels).clamp_(0, n_levels - 1)
    return k.to(torch.uint8 if n_levels <= 256 else torch.int64)


def reduce_bits(images: Tensor | np.ndarray, n_bits: int) -> Tensor | np.ndarray:
    """Glow's n-bit reduction of 8-bit images: floor(x / 2**(8 - n_bits)); keeps type and dtype.

    The result has 2**n_bits levels (e.g. 5 bits -> 32 levels for Glow's CelebA-HQ setting).
    """
    if not isinstance(n_bits, (int, np.integer)) or not 1 <= n_bits <= 8:
        raise InputError(f"n_bits must be an integer in 1..8, got {n_bits!r}")
    is_uint8 = images.dtype == (torch.uint8 if isinstance(images, Tensor) else np.uint8)
    if not is_uint8:
        raise InputError(f"reduce_bits expects uint8 images, got dtype {images.dtype}")
    return images >> (8 - n_bits)
