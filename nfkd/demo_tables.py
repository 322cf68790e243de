"""The demo report's comparison cells, shared by its tabular, image and deployment sections.

Why one place: every section states a test score as mean ± 2 SE (n rows), compares two models by
their paired difference on the same test rows (``vs_<ref>`` from ``experiment.train_family``),
says "within noise" when |diff| < 2 SE, and gives a share of the teacher-student gap only when
that gap is itself outside its noise.
"""
from __future__ import annotations

from typing import Any

from .metrics.uncertainty import Estimate, fmt_diff, fmt_estimate, gap_share, within_noise

__all__ = ["score", "paired", "score_cell", "paired_cell", "gap_cell", "gap_note", "selection_lines", "headline_lines"]


def score(v: dict[str, Any]) -> Estimate:
    """A model's test score: bits/dim for images, log-likelihood in nats for tables."""
    return Estimate(v["bpd"], v["bpd_2se"], v["n"]) if "bpd" in v else Estimate(v["log_likelihood"], v["ll_2se"], v["n"])


def paired(v: dict[str, Any], ref: str) -> Estimate | None:
    """This model minus ``ref`` on the same test rows (score units), None when not measured."""
    d = v.get("vs_" + ref)
    return None if d is None else Estimate(d["mean"], d["se2"], d["n"])


def score_cell(v: dict[str, Any]) -> str:
    return fmt_estimate(score(v), n=False)


def paired_cell(v: dict[str, Any], ref: str) -> str:
    d = paired(v, ref)
    return "" if d is None else fmt_diff(d)


def _gap(res: dict[str, Any]) -> Estimate | None:
    """Teacher minus the no-KD student, paired, signed so that positive = the teacher is better."""
    d = paired(res.get("teacher", {}), "none")
    if d is None:
        return None
    return Estimate(-d.mean, d.se2, d.n) if "bpd" in res["teacher"] else d


def gap_cell(res: dict[str, Any], name: str) -> str:
    """The share of the teacher–no-KD gap this student closes, or why there is none."""
    gap, d = _gap(res), paired(res[name], "none")
    if name in ("teacher", "none") or gap is None or d is None:
        return ""
    share = gap_share(Estimate(-d.mean if "bpd" in res[name] else d.mean, d.se2, d.n), gap)
    return "gap within noise" if share is None else f"{round(100 * share):d} %"


def gap_note(res: dict[str, Any]) -> str:
    gap = _gap(res)
    if gap is None:
        return ""
    if within_noise(gap):
        return (f"The teacher–no-KD gap ({fmt_diff(gap)}) is within its noise, so no share of it is given.")
    return (f"Gap closed = (student − no-KD) / (teacher − no-KD), the teacher's lead over the no-KD student being "
            f"{fmt_diff(gap)} {'bits/dim' if 'bpd' in res['teacher'] else 'nats'} (paired, 2 SE).")


def selection_lines(res: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """A heading, then '- Teacher: kept step 600 of 2000 — validation NLL rose after step 600 ...' per trained model."""
    out = ["Kept weights (each run keeps the step with its best trimmed validation NLL):", ""]
    for name, v in res.items():
        s = v.get("selection")
        if s:
            out.append(f"- {labels.get(name, name)}: kept step {s['best_step']} of {s['steps']} run "
                       f"({s['planned_steps']} planned) — {s['why']}")
    return out + [""] if len(out) > 2 else []


def headline_lines(res: dict[str, Any], labels: dict[str, str], truth: str | None = None) -> list[str]:
    """The comparisons a reader came for, each a paired difference with its 2 SE."""
    image = "bpd" in res["teacher"]
    unit = "bits/dim (negative = better)" if image else "nats (positive = better)"
    lines = [f"Paired differences on the same test rows, {unit}, ± 2 SE:", ""]
    if paired(res["teacher"], "none") is not None:
        lines.append(f"- teacher − no-KD student: {paired_cell(res['teacher'], 'none')}")
    for name, v in res.items():
        if name not in ("teacher", "none") and paired(v, "none") is not None:
            lines.append(f"- {labels.get(name, name)} − no-KD student: {paired_cell(v, 'none')}; "
                         f"− teacher: {paired_cell(v, 'teacher')}")
    if truth:
        lines.append(f"- true density − teacher (a KL estimate, ≥ 0 in expectation): "
                     f"{fmt_diff(_neg(paired(res['teacher'], truth)))}")
    return lines + [""]


def _neg(e: Estimate | None) -> Estimate:
    return Estimate(float("nan"), float("nan"), 0) if e is None else Estimate(-e.mean, e.se2, e.n)
