"""``image_metrics``: FID per sampling temperature and FID of eq.-16 interpolations, as JSON-ready dicts."""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from ..data.images import ImageSplits
from ..errors import InputError
from ..flows import Flow
from ..progress import phase
from .fid import DEFAULT_PREPROCESSING, FeatureStats, InceptionFeatures, fid_from_stats, reference_stats
from .sampling import DEFAULT_ALPHAS, interpolation_images, sample_images

__all__ = ["image_metrics"]
INTERPOLATION_FORMULA = "z = m * ((1-a)|f(u)| + a|f(v)|) / |m|, m = (1-a) f(u) + a f(v) (eq. 16)"


def _temperature_key(t: float) -> str:
    return str(float(t))


def image_metrics(
    flow: Flow,
    data: Any,
    fid_n: int,
    temperatures: Sequence[float] = (1.0,),
    interpolation: bool = False,
    device: str | torch.device = "cpu",
    inception: str | os.PathLike | None = None,
    split: str = "test",
    n_reference: int | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seed: int = 0,
    batch_size: int = 50,
    progress: bool = True,
    use_cache: bool = True,
    extractor: InceptionFeatures | None = None,
    preprocessing: str = DEFAULT_PREPROCESSING,
) -> dict[str, Any]:
    """FID of ``fid_n`` samples per temperature (and of ``fid_n`` eq.-16 interpolants) vs a split.

    The reference is a seeded subset of ``n_reference`` (default ``fid_n``) images of ``split``,
    its statistics cached (see :func:`nfkd.metrics.fid.reference_stats`). Interpolation pairs are
    drawn from the same split. Returns

        {"fid": {"<T>": {"fid", "n_samples", "n_reference", "nonfinite"}, ...},
         "interpolation_fid": {"fid", "n_samples", "n_reference", "n_pairs", "alphas", "nonfinite", "formula"},
         "fid_reference": {"dataset", "split", "n", "seed"},
         "inception": {"path", "sha256", "preprocessing"}}

    (``interpolation_fid`` only with ``interpolation=True``).
    """
    _check_inputs(flow, data, fid_n, split)
    part = getattr(data, split)
    n_levels = int(part.n_levels)
    flow = flow.to(device).eval()
    ext = extractor or InceptionFeatures(inception, device=device, batch_size=batch_size, progress=progress,
                                         preprocessing=preprocessing)
    n_ref = int(n_reference) if n_reference is not None else int(fid_n)
    ref = reference_stats(ext, part.images, n_levels, data.name, split, n=n_ref, seed=seed, use_cache=use_cache)
    out: dict[str, Any] = {
        "fid": {},
        "fid_reference": {"dataset": data.name, "split": split, "n": ref.n, "seed": seed},
        "inception": ext.describe(),
    }
    for t in temperatures:
        out["fid"][_temperature_key(t)] = _temperature_fid(flow, ext, ref, int(fid_n), float(t), n_levels, seed)
    if interpolation:
        out["interpolation_fid"] = _interpolation_fid(flow, ext, ref, part.images, int(fid_n), n_levels, alphas,
                                                      seed, split)
    return out


def _check_inputs(flow: Flow, data: Any, fid_n: int, split: str) -> None:
    """One clear error for tabular data, a vector flow, mismatched shapes, too few samples or a bad split."""
    if not isinstance(data, ImageSplits):
        name = getattr(data, "name", type(data).__name__)
        raise InputError(f"FID and interpolation need image data; dataset {name!r} is tabular")
    if len(flow.event_shape) != 3:
        raise InputError(f"FID needs an image flow; {flow.arch} models vectors of shape {flow.event_shape}")
    if tuple(flow.event_shape) != tuple(data.shape):
        raise InputError(f"the flow models images {tuple(flow.event_shape)}, but {data.name} has {tuple(data.shape)}")
    if int(fid_n) < 2:
        raise InputError(f"FID needs at least 2 samples, got {fid_n}")
    if split not in ("train", "val", "test"):
        raise InputError(f"split must be train, val or test, got {split!r}")


def _temperature_fid(flow: Flow, ext: InceptionFeatures, ref: FeatureStats, n: int, t: float, n_levels: int,
                     seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)  # the same unit noise at every temperature
    with phase(f"fid: sampling {n} images at T={t:g}"):
        images, bad = sample_images(flow, n, t, n_levels, generator=g, return_nonfinite=True)
    stats = FeatureStats.from_features(ext(images, n_levels, desc=f"inception T={t:g}"))
    return {**fid_from_stats(stats, ref), "nonfinite": bad}


def _interpolation_fid(flow: Flow, ext: InceptionFeatures, ref: FeatureStats, images: Any, n: int, n_levels: int,
                       alphas: Sequence[float], seed: int, split: str) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed + 1)
    with phase(f"fid: decoding {n} eq.-16 interpolants"):
        decoded, info = interpolation_images(flow, images, n, n_levels, alphas, generator=g, return_info=True)
    stats = FeatureStats.from_features(ext(decoded, n_levels, desc="inception interpolation"))
    return {**fid_from_stats(stats, ref), **info, "split": split, "formula": INTERPOLATION_FORMULA}
