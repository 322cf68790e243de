"""How sure a reported number is: mean ± 2 SE, paired differences, "within noise", IQR, machine load.

Why one module: every report (demo, experiment tables, trade-off, bench) states its uncertainty the
same way, so a reader can compare them. Conventions:

- a test LL is ``mean ± 2 SE (n rows)``, SE = sample std (ddof=1) / sqrt(n);
- two models on the *same* test rows are compared by the per-row differences (paired): their mean
  ± 2 SE of those differences, far tighter than the two separate error bars; a difference is
  "within noise" when |mean| < 2 SE;
- a share of a gap ("gap closed") is only given when the gap itself is outside its noise;
- timings are median [Q1–Q3] (IQR) of single calls: a spread that one slow call cannot blow up;
- a machine is "loaded" when its 1-minute load average, less the run's own threads, exceeds half
  its logical CPUs (the timings then mostly measure the other work).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["Estimate", "mean_2se", "paired_diff", "within_noise", "gap_share", "fmt_estimate", "fmt_diff",
           "spread", "fmt_spread_ms", "machine_load", "is_loaded", "load_note"]


@dataclass(frozen=True)
class Estimate:
    """A mean with twice its standard error over n values (se2 is nan when n < 2 or a value is not finite)."""

    mean: float
    se2: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "se2": self.se2, "n": self.n}


def mean_2se(values: Sequence[float] | np.ndarray) -> Estimate:
    """Mean ± 2 SE (ddof=1) of values; the SE is nan when any value is not finite or n < 2."""
    v = np.asarray(values, dtype=np.float64).ravel()
    n = len(v)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    mean = float(v.mean())
    if n < 2 or not np.isfinite(v).all():
        return Estimate(mean, math.nan, n)
    return Estimate(mean, float(2 * v.std(ddof=1) / math.sqrt(n)), n)


def paired_diff(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Estimate:
    """Mean ± 2 SE of the per-row differences a - b (the same rows under two models)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same rows: {len(a)} vs {len(b)}")
    with np.errstate(invalid="ignore"):
        return mean_2se(a - b)


def within_noise(e: Estimate) -> bool:
    """|mean| < 2 SE, a zero difference (two identical models), or no SE at all (nothing can be claimed)."""
    return not (math.isfinite(e.se2) and math.isfinite(e.mean) and e.mean != 0 and abs(e.mean) >= e.se2)


def gap_share(part: Estimate, gap: Estimate) -> float | None:
    """part / gap (e.g. the share of the teacher-student gap a method closes); None when the gap is within noise."""
    if within_noise(gap) or gap.mean == 0:
        return None
    return part.mean / gap.mean


def _num(v: float, digits: int) -> str:
    return f"{v:.{digits}f}" if math.isfinite(v) and abs(v) < 1e6 else f"{v:.2g}"


def fmt_estimate(e: Estimate, digits: int = 3, n: bool = True) -> str:
    """'1.234 ± 0.056 (n=3000)'."""
    se = _num(e.se2, digits) if math.isfinite(e.se2) else "n/a"
    return f"{_num(e.mean, digits)} ± {se}" + (f" (n={e.n})" if n else "")


def fmt_diff(e: Estimate, digits: int = 3) -> str:
    """'+0.123 ± 0.045', with ' (within noise)' when |diff| < 2 SE."""
    mean = f"{e.mean:+.{digits}f}" if math.isfinite(e.mean) else f"{e.mean}"
    se = f"{e.se2:.{digits}f}" if math.isfinite(e.se2) else "n/a"
    return f"{mean} ± {se}" + (" (within noise)" if within_noise(e) else "")


def spread(times: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles and IQR of single-call times in seconds (numpy's linear percentiles)."""
    t = np.asarray(times, dtype=np.float64)
    if not len(t):
        raise ValueError("no timings")
    q1, med, q3 = (float(v) for v in np.percentile(t, [25, 50, 75]))
    return {"median_s": med, "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1, "calls": int(len(t))}


def fmt_spread_ms(s: dict[str, Any], digits: int = 2) -> str:
    """'12.34 [11.90–13.10]' in ms."""
    return f"{1e3 * s['median_s']:.{digits}f} [{1e3 * s['q1_s']:.{digits}f}–{1e3 * s['q3_s']:.{digits}f}]"


def machine_load() -> float | None:
    """The 1-minute load average, None where the OS has none."""
    try:
        import os

        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def is_loaded(load: float | None, cpus: int | None, own_threads: int = 0) -> bool:
    """Whether other work held over half the CPUs (the run's own threads subtracted); False when unknown."""
    if load is None or not cpus:
        return False
    return load - own_threads > 0.5 * cpus


def load_note(start: float | None, end: float | None, cpus: int | None, threads: int, busy_before: int = 0) -> str:
    """'load average 0.4 at start / 2.1 at end on 2 CPUs', with a warning when the machine was loaded.

    At the end the run's own threads still count in the average; at the start, ``busy_before``: the
    threads this process itself kept busy just before (the demo times right after training, and the
    1-minute average still remembers that work — it is not other work).
    """
    def f(v: float | None) -> str:
        return "?" if v is None else f"{v:.1f}"

    text = f"load average {f(start)} at start / {f(end)} at end on {cpus or '?'} logical CPUs"
    if is_loaded(start, cpus, busy_before) or is_loaded(end, cpus, threads):
        text += " — **the machine was loaded: timings measure shared CPUs, compare only within this run**"
    return text
