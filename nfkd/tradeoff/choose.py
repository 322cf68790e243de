"""Read a measured trade-off: the Pareto front, and the best model for a latency budget.

Why: "which model on which backend" is the highest test log-likelihood whose latency fits the
budget; the Pareto front is the set of pairs no other pair beats on both at once.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..errors import InputError

__all__ = ["candidates", "fmt_seconds", "pareto_front", "pick"]


def fmt_seconds(s: float) -> str:
    """5 ns / 1.2 µs / 3.4 ms / 1.2 s: latency in the unit that reads."""
    if not math.isfinite(s):
        return str(s)
    if s < 1e-6:
        return f"{s * 1e9:.3g} ns"
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def _ll(result: dict[str, Any], model: str) -> float:
    v = result["models"][model]["log_likelihood"]
    return v if isinstance(v, (int, float)) and not math.isnan(v) else -math.inf


def candidates(result: dict[str, Any], op: str, batch: int, agreeing_only: bool = True) -> list[dict[str, Any]]:
    """The measured pairs for (op, batch): model, backend, test LL, median and IQR seconds, agreement."""
    if op not in ("log_prob", "sample"):
        raise InputError(f"op must be 'log_prob' or 'sample', got {op!r}")
    out = []
    for row in result["rows"]:
        t = row.get("timings", {}).get(op, {}).get(str(batch))
        if row.get("status") != "ok" or not t or "median_s" not in t:
            continue
        agrees = row.get("agreement", {}).get("agrees", True)
        if agreeing_only and not agrees:
            continue
        out.append({"model": row["model"], "backend": row["backend"], "log_likelihood": _ll(result, row["model"]),
                    "median_s": t["median_s"], "q1_s": t.get("q1_s"), "q3_s": t.get("q3_s"), "agrees": agrees})
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, LL) points no other point beats (latency <= and LL >=, one strictly),
    fastest first. Equal points: the first one given stands for them."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pick(result: dict[str, Any], budget_s: float, op: str = "sample", batch: int = 1) -> dict[str, Any]:
    """The highest-test-LL (model, backend) whose median ``op`` latency at ``batch`` meets ``budget_s``.

    Returns {model, backend, median_s, log_likelihood, teacher_meets, why}; model and backend are
    None when nothing meets the budget (``why`` names the fastest pair). Pairs whose log_prob
    disagrees with the float64 reference are not candidates.
    """
    if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not budget_s > 0 \
            or not math.isfinite(budget_s):
        raise InputError(f"the latency budget must be a positive number of seconds, got {budget_s!r}")
    budget = fmt_seconds(budget_s)
    what = f"{op} at batch {batch}"
    base = {"budget_s": float(budget_s), "op": op, "batch": batch, "model": None, "backend": None,
            "median_s": None, "log_likelihood": None, "teacher_meets": False}
    cands = candidates(result, op, batch)
    if not cands:
        return {**base, "why": f"no model/backend pair was measured for {what} (or none agrees with the float64 "
                               f"reference), so none can be recommended"}
    teacher = result.get("teacher")
    meet = [c for c in cands if c["median_s"] <= budget_s]
    if not meet:
        fast = min(cands, key=lambda c: c["median_s"])
        return {**base, "why": f"nothing meets {budget} for {what}: the fastest is {fast['model']} on "
                               f"{fast['backend']} at {fmt_seconds(fast['median_s'])}; relax the budget or "
                               f"train a smaller student"}
    best = max(meet, key=lambda c: (c["log_likelihood"], -c["median_s"]))
    t_meet = sorted((c for c in meet if c["model"] == teacher), key=lambda c: c["median_s"])
    out = {**base, "model": best["model"], "backend": best["backend"], "median_s": best["median_s"],
           "log_likelihood": best["log_likelihood"], "teacher_meets": bool(t_meet)}
    took = f"{fmt_seconds(best['median_s'])} median"
    if best["model"] == teacher:
        out["why"] = (f"the teacher on {best['backend']} meets {budget} for {what} ({took}): no student needed "
                      f"(test LL {best['log_likelihood']:.3f})")
    elif t_meet:
        out["why"] = (f"{best['model']} on {best['backend']} ({took}) has the highest test LL under {budget} "
                      f"({best['log_likelihood']:.3f}); the teacher also meets it on {t_meet[0]['backend']} "
                      f"({fmt_seconds(t_meet[0]['median_s'])}) with a test LL no higher ({_ll(result, teacher):.3f})")
    else:
        t_all = sorted((c for c in cands if c["model"] == teacher), key=lambda c: c["median_s"])
        teacher_txt = (f"the teacher's fastest is {t_all[0]['backend']} at {fmt_seconds(t_all[0]['median_s'])}, "
                       f"over the budget" if t_all else "the teacher was not measured")
        out["why"] = (f"{best['model']} on {best['backend']} ({took}) has the highest test LL "
                      f"({best['log_likelihood']:.3f}) of the {len(meet)} pairs that meet {budget} for {what}; "
                      f"{teacher_txt}")
    return out
