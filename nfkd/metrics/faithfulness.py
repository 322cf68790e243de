"""How faithful a sampler is to the model it stands in for: the record a pair bundle carries.

A deployed pair answers densities with one model and samples with another; a user must see how far
the samples are from what the density side (or the teacher) believes. Two numbers, both computed
without the sampler's own density:

- the reference model's mean and median log-density of the sampler's samples, next to the same for
  the reference's own samples (the gap is the cross term of reverse KL, in nats per sample);
- the energy distance (``metrics.tabular.energy_distance``, squared, unbiased) between the sampler's
  samples and held-out data when given, else the reference's own samples, in standardized units.

Samples come from ``inference.draw_noise(shapes, n, seed)`` decoded by the float64 flow, so
``PairRunner.sample(n, seed=seed)`` reproduces the sampler's rows (up to float32 round-off); the
reference's own samples use ``seed + 1``.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from ..flows import Flow
from ..inference.runner import draw_noise
from .tabular import energy_distance, teacher_score

__all__ = ["DEFAULT_N", "DEFAULT_SEED", "faithfulness", "flow_samples", "summary_line"]

DEFAULT_N = 4096
DEFAULT_SEED = 0


def _f64(flow: Flow) -> Flow:
    return copy.deepcopy(flow).to("cpu", torch.float64).eval()


@torch.no_grad()
def flow_samples(flow: Flow, n: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """n float64 samples decoded from ``draw_noise(flow's noise shapes, n, seed)`` (what every Runner draws)."""
    shapes = [tuple(s[1:]) for s in flow.noise_shapes(1)]
    noise = [torch.from_numpy(z).double() * temperature for z in draw_noise(shapes, n, seed)]
    return _f64(flow).inverse(noise).x


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _score(reference: Flow, xs: torch.Tensor) -> dict[str, Any]:
    mean, median, nonfinite = teacher_score(reference, xs)
    return {"mean": _finite(mean), "median": _finite(median), "nonfinite_samples": nonfinite}


def faithfulness(sampler: Flow, reference: Flow, data: np.ndarray | None = None, loc: Any = None, scale: Any = None,
                 n: int = DEFAULT_N, seed: int = DEFAULT_SEED, reference_role: str = "density",
                 data_name: str | None = None) -> dict[str, Any]:
    """The faithfulness record of ``sampler`` against ``reference`` (JSON-ready; non-finite values are None).

    ``data``: held-out rows (at most ``n`` are used) to measure the energy distance against; without
    it, ``n`` of the reference's own samples. ``loc`` / ``scale``: the standardization of the energy
    distance (the training split's mean / std); None: raw units.
    """
    ref = _f64(reference)
    xs = flow_samples(sampler, n, seed)
    own = flow_samples(ref, n, seed + 1)
    if data is not None:
        target = torch.as_tensor(np.asarray(data)[:n], dtype=torch.float64)
        against = f"the test split of {data_name}" if data_name else "held-out data"
    else:
        target = own
        against = f"the {reference_role} model's own samples (seed {seed + 1})"
    shift = torch.as_tensor(np.asarray(loc, np.float64) if loc is not None else 0.0, dtype=torch.float64)
    div = torch.as_tensor(np.asarray(scale, np.float64) if scale is not None else 1.0, dtype=torch.float64)

    def finite_rows(t: torch.Tensor) -> torch.Tensor:
        return t[torch.isfinite(t.flatten(1)).all(1)]

    a, b = finite_rows(xs), finite_rows(target)
    ed = energy_distance((a - shift) / div, (b - shift) / div) if len(a) > 1 and len(b) > 1 else float("nan")
    record = {
        "n": int(n), "seed": int(seed), "temperature": 1.0,
        "noise": "numpy.random.default_rng(seed).standard_normal, float32, decoded in float64",
        "reference": {"role": reference_role, "arch": reference.arch},
        "energy_distance": {
            "value": _finite(ed), "against": against, "n_reference": int(len(b)),
            "units": "standardized by the training mean/std" if scale is not None else "the data's units",
            "statistic": "squared energy distance, unbiased U-statistic (0: the same distribution)",
        },
        "reference_log_prob_of_sampler_samples": _score(ref, xs),
        "reference_log_prob_of_own_samples": _score(ref, own),
    }
    record["summary"] = summary_line(record, sampler.arch)
    return record


def _num(v: float | None) -> str:
    return "nan" if v is None else f"{v:.4g}"


def summary_line(record: dict[str, Any], sampler_arch: str = "sampler") -> str:
    """One line: "teacher scores iaf samples at -26.3 mean / -25.1 median vs its own samples at ..."."""
    s, o = record["reference_log_prob_of_sampler_samples"], record["reference_log_prob_of_own_samples"]
    ed = record["energy_distance"]
    return (f"{record['reference']['role']} ({record['reference']['arch']}) scores {sampler_arch} samples at "
            f"{_num(s['mean'])} mean / {_num(s['median'])} median vs its own samples at {_num(o['mean'])} / "
            f"{_num(o['median'])} nats (n = {record['n']}, seed {record['seed']}); energy distance "
            f"{_num(ed['value'])} to {ed['against']}")
