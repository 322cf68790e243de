"""Images from flows: temperature sampling and norm-preserving latent interpolation (eq. 16).

Our flows map an image to a list of per-level *standardized* noise tensors (``FlowOutput.latents``),
so "the latent" f(x) of an image is that list flattened and concatenated per sample:
f(x) in R^D with D = the image's dimension.

Eq. 16 (norm-preserving linear interpolation), for latents f(u), f(v) and alpha in [0, 1]:

    m(alpha) = (1 - alpha) f(u) + alpha f(v)
    z(alpha) = m(alpha) * ((1 - alpha) ||f(u)|| + alpha ||f(v)||) / ||m(alpha)||

i.e. the direction of the linear mix with its norm linearly interpolated between the endpoints'
norms (plain linear mixing shrinks the norm towards the middle, where a Gaussian latent almost
never lies: ||f|| concentrates near sqrt(D)). Norms are Euclidean over all levels together.
z(0) = f(u) and z(1) = f(v) exactly. If m(alpha) = 0 (only for antiparallel endpoints) z = 0.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.quantize import quantize
from ..errors import InputError
from ..flows import Flow

__all__ = [
    "DEFAULT_ALPHAS", "decode_images", "decode_interpolations", "encode_images", "flatten_latents", "images_from_model_space",
    "interpolate_latents",
    "interpolation_images", "sample_images", "unflatten_latents",
]

DEFAULT_ALPHAS = (0.25, 0.5, 0.75)


def _device(flow: Flow) -> torch.device:
    return next(iter(flow.parameters())).device


def _check_image_flow(flow: Flow) -> None:
    if len(flow.event_shape) != 3:
        raise InputError(
            f"{flow.arch} models vectors of shape {flow.event_shape}; image metrics need an image flow (glow)"
        )


def flatten_latents(latents: Sequence[Tensor]) -> Tensor:
    """Per-level latents [B, ...] -> one vector per sample [B, D]."""
    return torch.cat([z.reshape(z.shape[0], -1) for z in latents], 1)


def unflatten_latents(z: Tensor, shapes: Sequence[Sequence[int]]) -> list[Tensor]:
    """Inverse of :func:`flatten_latents` for the given per-level shapes (with batch dim)."""
    sizes = [math.prod(s[1:]) for s in shapes]
    if z.dim() != 2 or z.shape[1] != sum(sizes):
        raise InputError(f"latent vector has shape {tuple(z.shape)}; expected (batch, {sum(sizes)})")
    return [p.reshape(z.shape[0], *s[1:]) for p, s in zip(torch.split(z, sizes, 1), shapes)]


def interpolate_latents(zu: Tensor, zv: Tensor, alpha: float | Tensor) -> Tensor:
    """Eq. 16 on flattened latents [B, D]: direction of the linear mix, norm interpolated linearly.

    ``alpha``: a float or a tensor [B] (one alpha per pair).
    """
    if zu.shape != zv.shape or zu.dim() != 2:
        raise InputError(f"latents must both be [B, D], got {tuple(zu.shape)} and {tuple(zv.shape)}")
    a = torch.as_tensor(alpha, dtype=torch.float64, device=zu.device).reshape(-1, 1)
    if not bool(((a >= 0) & (a <= 1)).all()):
        raise InputError("alpha must lie in [0, 1]")
    a_x = a.to(zu.dtype)
    mix = (1 - a_x) * zu + a_x * zv
    nu = torch.linalg.vector_norm(zu.double(), dim=1, keepdim=True)
    nv = torch.linalg.vector_norm(zv.double(), dim=1, keepdim=True)
    nm = torch.linalg.vector_norm(mix.double(), dim=1, keepdim=True)
    target = (1 - a) * nu + a * nv
    scale = torch.where(nm > 0, target / torch.where(nm > 0, nm, torch.ones_like(nm)), torch.zeros_like(nm))
    return mix * scale.to(zu.dtype)


def images_from_model_space(x: Tensor, n_levels: int) -> tuple[Tensor, int]:
    """Model space -> integer levels (uint8), mapping non-finite samples to mid-grey; returns the count."""
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    n_bad = int(bad.sum())
    if n_bad:
        x = torch.where(bad.view(-1, *([1] * (x.dim() - 1))), torch.zeros_like(x), x)
    return quantize(x.detach().float().cpu(), int(n_levels)), n_bad


@torch.no_grad()
def decode_images(
    flow: Flow, noise: Sequence[Tensor], temperature: float = 1.0, n_levels: int = 256
) -> tuple[Tensor, int]:
    """Decode given unit noise at a temperature -> (uint8 images on the CPU, # non-finite samples)."""
    dev = _device(flow)
    x = flow.sample(noise[0].shape[0], temperature=temperature, noise=[z.to(dev) for z in noise])
    return images_from_model_space(x, n_levels)


@torch.no_grad()
def sample_images(
    flow: Flow,
    n: int,
    temperature: float = 1.0,
    n_levels: int = 256,
    batch: int = 256,
    generator: torch.Generator | None = None,
    return_nonfinite: bool = False,
) -> Tensor | tuple[Tensor, int]:
    """n samples at a temperature as uint8 level images [n, C, H, W] (CPU).

    Noise is drawn on the CPU (from ``generator``, so a seed gives the same images on any device),
    one flat vector per sample (so also for any ``batch`` when the image size is a multiple of 16,
    as torch's CPU normal sampler works in blocks of 16), and scaled by the temperature.
    Samples that diverge (NaN/Inf) become mid-grey and are counted.
    """
    _check_image_flow(flow)
    if n < 1:
        raise InputError(f"n must be positive, got {n}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise InputError(f"temperature must be a finite number >= 0, got {temperature}")
    flow.eval()
    out, bad = [], 0
    for i in range(0, n, batch):
        b = min(batch, n - i)
        shapes = flow.noise_shapes(b)
        flat = torch.randn(b, sum(math.prod(s[1:]) for s in shapes), generator=generator)  # sample-major
        imgs, nb = decode_images(flow, unflatten_latents(flat, shapes), temperature, n_levels)
        out.append(imgs)
        bad += nb
    images = torch.cat(out)
    return (images, bad) if return_nonfinite else images


@torch.no_grad()
def encode_images(flow: Flow, images: Tensor | np.ndarray, n_levels: int = 256) -> list[Tensor]:
    """Integer levels -> per-level latents f(x), at the bin centres (k + 0.5) / L - 0.5 (as evaluate does)."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    x = (x.to(torch.float32) + 0.5) / int(n_levels) - 0.5
    return flow(x.to(_device(flow))).latents


def checked_alphas(alphas: Sequence[float]) -> list[float]:
    """Interpolation weights as floats, refusing an empty list or any value outside [0, 1]."""
    out = [float(a) for a in alphas]
    if not out or any(not 0 <= a <= 1 for a in out):
        raise InputError(f"alphas must be a non-empty list of numbers in [0, 1], got {out}")
    return out


@torch.no_grad()
def decode_interpolations(
    flow: Flow, images_u: Tensor, images_v: Tensor, alphas: Sequence[float], n_levels: int = 256
) -> tuple[Tensor, int]:
    """Eq. 16 between f(u_i) and f(v_i) at every alpha, decoded -> (uint8 [N * len(alphas), C, H, W]
    pair-major and alpha-minor, # non-finite decodes)."""
    lu, lv = encode_images(flow, images_u, n_levels), encode_images(flow, images_v, n_levels)
    shapes = [tuple(z.shape) for z in lu]
    zu, zv = flatten_latents(lu), flatten_latents(lv)
    k = len(alphas)
    a = torch.tensor([float(x) for x in alphas], dtype=torch.float64).repeat(zu.shape[0])
    z = interpolate_latents(zu.repeat_interleave(k, 0), zv.repeat_interleave(k, 0), a)
    noise = unflatten_latents(z, [(z.shape[0], *s[1:]) for s in shapes])
    return images_from_model_space(flow.inverse(noise).x, n_levels)


@torch.no_grad()
def interpolation_images(
    flow: Flow,
    images: Tensor | np.ndarray,
    n: int,
    n_levels: int = 256,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    generator: torch.Generator | None = None,
    batch: int = 128,
    return_info: bool = False,
):
    """n decoded eq.-16 interpolants between random pairs (u, v) of ``images`` (integer levels).

    ceil(n / len(alphas)) pairs of distinct images are drawn (with ``generator``); for each pair
    and each alpha, z(alpha) is decoded with ``flow.inverse`` and quantized; the first n images
    (pair-major, alpha-minor) are returned as uint8 [n, C, H, W]. With ``return_info``, also a dict
    (n_pairs, alphas, nonfinite).
    """
    _check_image_flow(flow)
    alphas = checked_alphas(alphas)
    n_img = len(images)
    if n_img < 2:
        raise InputError("interpolation needs at least 2 images")
    if n < 1:
        raise InputError(f"n must be positive, got {n}")
    flow.eval()
    n_pairs = math.ceil(n / len(alphas))
    u = torch.randint(0, n_img, (n_pairs,), generator=generator)
    v = (u + torch.randint(1, n_img, (n_pairs,), generator=generator)) % n_img  # v != u
    data = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    pairs_per_batch = max(1, batch // len(alphas))
    out, bad = [], 0
    for i in range(0, n_pairs, pairs_per_batch):
        iu, iv = u[i : i + pairs_per_batch], v[i : i + pairs_per_batch]
        imgs, nb = decode_interpolations(flow, data[iu], data[iv], alphas, n_levels)
        out.append(imgs)
        bad += nb
    result = torch.cat(out)[:n]
    if return_info:
        return result, {"n_pairs": n_pairs, "alphas": alphas, "nonfinite": bad}
    return result
