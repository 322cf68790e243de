"""The demo's default table: a synthetic 10-d density whose exact log-density is known.

Why synthetic (issue 27): the embedded real tables are small (breast cancer: 56 test rows, ±2 SE
about 9 nats), so the demo's comparisons drowned in noise. Here 30,000 rows give 3,000 test rows,
every model is compared on the same rows (paired differences), and the true density's own test
log-likelihood is the exact upper bound a model's *expected* test LL can reach (KL >= 0).

The density: five independent 2-d blocks, each a ring of six equal Gaussians (radius 2, std 0.35,
the ring of block b turned by b * 10 degrees), then one fixed invertible linear map x = A z + c
that mixes every block into every feature. log p(x) = sum_b log p_ring(z_b) - log |det A| with
z = A^-1 (x - c). Multimodal and correlated: a big flow fits it better than a small one, so the
teacher-student gap is real. The rows come from a fixed generator (the distribution and the
30,000 rows never change); the split seed only shuffles them (the embedded tables' rule).
"""
from __future__ import annotations

import math

import numpy as np

from .data.embedded import seeded_splits
from .data.splits import TabularSplits

__all__ = ["SYNTHETIC", "RingMixture", "load_synthetic"]

SYNTHETIC = "rings10"
_ROWS = 30_000
_GENERATOR_SEED = 20261207


class RingMixture:
    """``blocks`` 2-d rings of ``k`` Gaussians, mixed by a fixed linear map; exact sampling and log-density."""

    def __init__(self, blocks: int = 5, k: int = 6, radius: float = 2.0, std: float = 0.35, seed: int = _GENERATOR_SEED):
        rng = np.random.RandomState(seed)
        self.blocks, self.k, self.std = blocks, k, std
        angles = 2 * math.pi * np.arange(k) / k
        self.means = np.stack([radius * np.stack([np.cos(angles + b * math.pi / 18), np.sin(angles + b * math.pi / 18)], 1)
                               for b in range(blocks)])  # [blocks, k, 2]
        dim = 2 * blocks
        q, _ = np.linalg.qr(rng.randn(dim, dim))
        self.A = q @ np.diag(np.exp(rng.uniform(-0.7, 0.7, dim))) @ np.linalg.qr(rng.randn(dim, dim))[0]
        self.c = rng.randn(dim) * 3.0
        self.A_inv = np.linalg.inv(self.A)
        self.log_abs_det = float(np.linalg.slogdet(self.A)[1])

    @property
    def dim(self) -> int:
        return 2 * self.blocks

    def sample(self, n: int, seed: int) -> np.ndarray:
        """n rows, float64 [n, dim]."""
        rng = np.random.RandomState(seed)
        comp = rng.randint(self.k, size=(n, self.blocks))
        z = self.means[np.arange(self.blocks), comp] + self.std * rng.randn(n, self.blocks, 2)
        return z.reshape(n, -1) @ self.A.T + self.c

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Exact log-density (nats) of each row of x [n, dim], float64."""
        z = ((np.asarray(x, np.float64) - self.c) @ self.A_inv.T).reshape(len(x), self.blocks, 1, 2)
        sq = ((z - self.means[None]) ** 2).sum(-1)  # [n, blocks, k]
        comp = -sq / (2 * self.std ** 2) - math.log(2 * math.pi * self.std ** 2) - math.log(self.k)
        top = comp.max(-1, keepdims=True)
        ring = (top[..., 0] + np.log(np.exp(comp - top).sum(-1)))  # logsumexp over the k components
        return ring.sum(-1) - self.log_abs_det


def load_synthetic(seed: int = 0) -> tuple[TabularSplits, RingMixture]:
    """(the seeded 80/10/10 split of the fixed 30,000 rows, the density that drew them)."""
    density = RingMixture()
    rows = density.sample(_ROWS, _GENERATOR_SEED + 1)
    source = (f"synthetic: {density.blocks} rings of {density.k} Gaussians mixed by a fixed linear map, "
              f"{_ROWS} rows, exact density known (split seed {seed})")
    return seeded_splits(SYNTHETIC, rows, seed, source), density
