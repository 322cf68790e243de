"""Sample grids: several flows (teacher, KD student, no-KD student) decoded from the SAME noise.

Layout of the PNG (all sizes in pixels, s = ``scale``):
    one panel per flow, left to right in the dict's order, ``gap`` apart;
    a panel is rows x cols images of (H s) x (W s), with ``pad`` around and between them;
    a label strip of ``LABEL_HEIGHT`` on top names each panel (``labels=False`` drops it).
So width = P * panel_w + (P - 1) * gap with panel_w = cols * W s + (cols + 1) * pad, and
height = label_h + rows * H s + (rows + 1) * pad. :func:`grid_size` returns exactly that.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..flows import Flow
from .fid import levels_to_uint8
from .sampling import checked_alphas, decode_images, decode_interpolations

__all__ = ["LABEL_HEIGHT", "grid_size", "interpolation_grid", "sample_grid", "save_panels", "tile_images"]

LABEL_HEIGHT = 14
BACKGROUND = 255


def _cols(n: int, cols: int | None) -> int:
    return int(cols) if cols else max(1, math.ceil(math.sqrt(n)))


def tile_images(images: Tensor | np.ndarray, cols: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """uint8 [N, 3, H, W] -> one uint8 [rows * H s + (rows+1) pad, cols * W s + (cols+1) pad, 3] image."""
    x = images.numpy() if isinstance(images, Tensor) else np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"tile_images expects uint8 [N, 3, H, W], got {x.dtype} {x.shape}")
    n, _, h, w = x.shape
    if scale > 1:
        x = x.repeat(scale, 2).repeat(scale, 3)
        h, w = h * scale, w * scale
    cols = _cols(n, cols)
    rows = math.ceil(n / cols)
    out = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), BACKGROUND, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        out[top : top + h, left : left + w] = x[i].transpose(1, 2, 0)
    return out


def grid_size(
    n_flows: int, n: int, image_hw: Sequence[int], cols: int | None = None, pad: int = 2, gap: int = 8,
    scale: int = 1, labels: bool = True,
) -> tuple[int, int]:
    """(width, height) of the PNG :func:`sample_grid` writes."""
    h, w = int(image_hw[0]) * scale, int(image_hw[1]) * scale
    cols = _cols(n, cols)
    rows = math.ceil(n / cols)
    panel_w, panel_h = cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad
    return n_flows * panel_w + (n_flows - 1) * gap, panel_h + (LABEL_HEIGHT if labels else 0)


@torch.no_grad()
def sample_grid(
    flows: Mapping[str, Flow],
    path: str | os.PathLike,
    noise: Sequence[Tensor] | None = None,
    temperature: float = 0.7,
    n: int = 16,
    n_levels: int = 256,
    cols: int | None = None,
    generator: torch.Generator | None = None,
    pad: int = 2,
    gap: int = 8,
    scale: int = 1,
    labels: bool = True,
) -> Path:
    """Decode the same unit noise (scaled by ``temperature``) with every flow; save the grids side by side.

    ``noise``: per-level unit noise (batch = number of images); drawn from ``generator`` with the
    first flow's noise shapes when None. Every flow must take those shapes (same image size and
    number of levels). Returns the PNG's path.
    """
    if not flows:
        raise InputError("sample_grid needs at least one flow")
    names = list(flows)
    first = flows[names[0]]
    if len(first.event_shape) != 3:
        raise InputError("sample grids need image flows")
    if noise is None:
        noise = [torch.randn(s, generator=generator) for s in first.noise_shapes(n)]
    noise = [z.detach().cpu() for z in noise]
    n = noise[0].shape[0]
    panels = []
    for name in names:
        flow = flows[name].eval()
        expected = [tuple(s) for s in flow.noise_shapes(n)]
        if [tuple(z.shape) for z in noise] != expected:
            raise InputError(
                f"flow {name!r} takes noise shapes {expected}, got {[tuple(z.shape) for z in noise]}: "
                "grids compare flows of the same image size and number of levels"
            )
        images, _ = decode_images(flow, noise, temperature, n_levels)
        panels.append(tile_images(levels_to_uint8(images, n_levels), cols, pad, scale))
    return save_panels(panels, [f"{name} (T={temperature:g})" for name in names], path, gap, labels, pad)


def save_panels(
    panels: Sequence[np.ndarray], titles: Sequence[str], path: str | os.PathLike, gap: int = 8,
    labels: bool = True, pad: int = 2,
) -> Path:
    """Equal-size uint8 [H, W, 3] panels left to right, ``gap`` apart, each titled in a label strip."""
    from PIL import Image, ImageDraw

    panel_h, panel_w = panels[0].shape[:2]
    if any(p.shape != panels[0].shape for p in panels):
        raise InputError(f"panels differ in size: {[p.shape for p in panels]}")
    label_h = LABEL_HEIGHT if labels else 0
    width = len(panels) * panel_w + (len(panels) - 1) * gap
    canvas = Image.new("RGB", (width, panel_h + label_h), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    for i, (title, panel) in enumerate(zip(titles, panels)):
        left = i * (panel_w + gap)
        canvas.paste(Image.fromarray(panel), (left, label_h))
        if labels:
            draw.text((left + pad, 1), title, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


@torch.no_grad()
def interpolation_grid(
    flows: Mapping[str, Flow],
    images_u: Tensor | np.ndarray,
    images_v: Tensor | np.ndarray,
    path: str | os.PathLike,
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    n_levels: int = 256,
    pad: int = 2,
    gap: int = 8,
    scale: int = 1,
    labels: bool = True,
) -> Path:
    """Eq.-16 interpolations between pairs (u_i, v_i), one panel per flow: row i = pair i, column = alpha.

    Each flow encodes the pair with its own f, so the panels show how each model's latent space
    interpolates between the same two real images (alpha = 0 and 1 reconstruct u and v).
    """
    u = torch.as_tensor(np.ascontiguousarray(images_u))
    v = torch.as_tensor(np.ascontiguousarray(images_v))
    if u.shape != v.shape or u.dim() != 4 or len(u) == 0:
        raise InputError(f"images_u and images_v must be the same non-empty [N, C, H, W], got {tuple(u.shape)}, {tuple(v.shape)}")
    alphas = checked_alphas(alphas)
    if not flows:
        raise InputError("interpolation_grid needs at least one flow")
    panels = []
    for flow in flows.values():
        flow.eval()
        imgs, _ = decode_interpolations(flow, u, v, alphas, n_levels)
        panels.append(tile_images(levels_to_uint8(imgs, n_levels), len(alphas), pad, scale))
    titles = [f"{name} (alpha {alphas[0]:g}..{alphas[-1]:g})" for name in flows]
    return save_panels(panels, titles, path, gap, labels, pad)
