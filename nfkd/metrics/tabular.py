"""Sample quality of tabular flows measured without the model's own density.

- ``teacher_score``: the teacher's mean and median log-density of a model's samples (nats per
  sample): how plausible the samples are under the model that was distilled from (reverse-KL's
  cross term). The mean is dominated by the worst few samples (a sample off the teacher's support
  can score -1e20), so tables show the median;
- ``energy_distance``: the squared two-sample energy distance (Székely & Rizzo) between samples
  and held-out data, in units standardized by the training statistics so that no column dominates:
  ``2E|X−Y| − E|X−X'| − E|Y−Y'|``, with U-statistics for the within-sample terms by default
  (unbiased: can be slightly negative for two samples of one distribution); 0 means the same
  distribution. ``unbiased=False`` is the V-statistic, scipy's ``energy_distance`` squared.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..flows import Flow

__all__ = ["energy_distance", "sample_quality", "teacher_score"]


def energy_distance(a: Tensor, b: Tensor, unbiased: bool = True) -> float:
    """Squared energy distance between samples a [n, D] and b [m, D] (float64)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    n, m = len(a), len(b)
    if n < 2 or m < 2:
        raise ValueError("energy distance needs at least 2 rows on each side")
    ab = torch.cdist(a, b).mean()
    aa = torch.cdist(a, a).sum() / (n * (n - 1) if unbiased else n * n)
    bb = torch.cdist(b, b).sum() / (m * (m - 1) if unbiased else m * m)
    return float(2 * ab - aa - bb)


@torch.no_grad()
def teacher_score(teacher: Flow, samples: Tensor, chunk: int = 4096) -> tuple[float, float, int]:
    """(mean and median teacher log-density of the finite samples, count of samples that were not finite)."""
    samples = samples.to(teacher.dtype)
    ok = torch.isfinite(samples).all(1)
    lps = [teacher.log_prob_unchecked(samples[ok][i : i + chunk]).double() for i in range(0, int(ok.sum()), chunk)]
    lp = torch.cat(lps) if lps else torch.empty(0, dtype=torch.float64)
    if not len(lp):
        return float("nan"), float("nan"), int((~ok).sum())
    return float(lp.mean()), float(lp.median()), int((~ok).sum())


@torch.no_grad()
def sample_quality(model: Flow, teacher: Flow, held_out: np.ndarray, loc: np.ndarray, scale: np.ndarray,
                   n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Teacher log-density of n model samples and their energy distance to (at most n) held-out rows."""
    g = torch.Generator().manual_seed(seed)
    model = model.eval()
    xs = model.sample(n, generator=g).double()
    score, median, nonfinite = teacher_score(teacher, xs)
    loc_t, scale_t = torch.as_tensor(loc, dtype=torch.float64), torch.as_tensor(scale, dtype=torch.float64)
    ref = torch.as_tensor(np.asarray(held_out)[:n], dtype=torch.float64)
    fin = xs[torch.isfinite(xs).all(1)]
    ed = energy_distance((fin - loc_t) / scale_t, (ref - loc_t) / scale_t) if len(fin) > 1 else float("nan")
    return {"teacher_ll_of_samples": score, "teacher_ll_of_samples_median": median, "energy_distance": ed, "n_samples": n, "n_reference": len(ref),
            "nonfinite_samples": nonfinite}
