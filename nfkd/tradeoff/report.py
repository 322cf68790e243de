"""The trade-off as a reader sees it: a table, the picks for a few budgets, a quality-vs-latency plot.

Why a plot with a Pareto front: only the pairs on the front are worth deploying; everything else is
slower *and* worse than something on it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ..metrics.uncertainty import Estimate, fmt_diff
from .choose import candidates, fmt_seconds, pareto_front, pick
from .machine import machine_line

__all__ = ["default_budgets", "render_tradeoff_markdown", "plot_caption", "plot_tradeoff", "tradeoff_section"]


def default_budgets(result: dict[str, Any], per: int = 4) -> list[tuple[str, int, float]]:
    """(op, batch, budget s): decades between the fastest and the slowest measured median, per (op, batch),
    the budgets where the answer changes."""
    out = []
    for op in result.get("ops", ("log_prob", "sample")):
        for batch in result["batches"]:
            meds = [c["median_s"] for c in candidates(result, op, batch)]
            if not meds:
                continue
            lo, hi = math.floor(math.log10(min(meds))), math.ceil(math.log10(max(meds)))
            decades = list(range(lo + 1, hi + 1)) or [hi]
            step = max(1, math.ceil(len(decades) / per))
            out += [(op, batch, 10.0 ** k) for k in decades[::step]]
    return out


def _cell(t: dict[str, Any] | None) -> str:
    if not t:
        return "—"
    if "skipped" in t:
        return "skipped"
    return f"{fmt_seconds(t['median_s'])} [{fmt_seconds(t['q1_s'])}–{fmt_seconds(t['q3_s'])}]"


def _ll_text(m: dict[str, Any]) -> str:
    ll = m["log_likelihood"]
    if not math.isfinite(ll):
        return f"{ll} ({m.get('nonfinite', 0)} non-finite rows)"
    return f"{ll:.3f} ± {m['ll_2se']:.3f}"


def _vs_teacher(m: dict[str, Any]) -> str:
    d = m.get("vs_teacher")
    return "" if d is None else fmt_diff(Estimate(d["mean"], d["se2"], d["n"]))


def _agreement_text(row: dict[str, Any]) -> str:
    a = row.get("agreement")
    if not a:
        return ""
    return f"{a['max_abs_diff']:.1e}" + ("" if a["agrees"] else " (disagrees)")


def render_tradeoff_markdown(result: dict[str, Any], budgets: Sequence[tuple[str, int, float]] | None = None,
                             heading: str = "#") -> str:
    """The table (model, params, backend, test LL ± 2 SE, p50 [IQR] per op and batch, agreement), the
    skipped pairs with their reasons, and the pick for each (op, batch, budget seconds)."""
    batches, models = result["batches"], result["models"]
    ops = result.get("ops", ["log_prob", "sample"])
    lines = [f"{heading} Deployment trade-off — {result['dataset']} ({result['dim']}-d, {result['n_test']} test rows)",
             "",
             f"Machine: {machine_line(result['machine'], result['threads'])}. Teacher: **{result['teacher']}**.",
             "",
             f"Test LL: nats per row (higher is better) ± 2 SE over the {result['n_test']} test rows, eager flow in "
             "float64, once per model; '− teacher': the paired difference on the same rows ± 2 SE ('within noise' "
             "when |difference| < 2 SE). Latency: "
             "median [IQR] of single calls, " + result["method"]["timing"] + "; log_prob takes "
             + result["method"]["log_prob"] + "; sample: " + result["method"]["sample"] + ". Agreement: max "
             "|log p − float64 reference| in nats on " + str(next((r["agreement"]["rows"] for r in result["rows"]
                                                                   if r.get("agreement")), 0)) + " test rows.",
             ""]
    head = [f"{op} b={b}" for op in ops for b in batches]
    lines += ["| model | params | backend | test LL | − teacher | " + " | ".join(head) + " | agreement |",
              "|---|---:|---|---:|---:|" + "---:|" * len(head) + "---:|"]
    skipped = []
    for row in result["rows"]:
        m = models[row["model"]]
        if row["status"] != "ok":
            skipped.append(row)
            continue
        cells = [_cell(row["timings"].get(op, {}).get(str(b))) for op in ops for b in batches]
        lines.append(f"| {row['model']} ({m['arch']}) | {m['params']:,} | {row['backend']} | {_ll_text(m)} | "
                     f"{_vs_teacher(m)} | "
                     + " | ".join(cells) + f" | {_agreement_text(row)} |")
    per_call = [(row, op, b, t["skipped"]) for row in result["rows"] for op in ops for b in batches
                if "skipped" in (t := row["timings"].get(op, {}).get(str(b)) or {})]
    if skipped or per_call:
        lines += ["", "Not measured:", ""]
        by_reason: dict[tuple[str, str], list[str]] = {}
        for row in skipped:
            by_reason.setdefault((row["backend"], row["reason"]), []).append(row["model"])
        lines += [f"- {backend} for {', '.join(names)}: {why}" for (backend, why), names in by_reason.items()]
        lines += [f"- {row['model']} on {row['backend']}, {op} at batch {b}: {why}" for row, op, b, why in per_call]
    lines += ["", "Pareto front (no other pair is both faster and better), fastest first:", ""]
    for op in ops:
        for b in batches:
            cands = candidates(result, op, b)
            front = [cands[i] for i in pareto_front([(c["median_s"], c["log_likelihood"]) for c in cands])]
            lines.append(f"- {op} at batch {b}: " + (", ".join(
                f"{c['model']} on {c['backend']} ({fmt_seconds(c['median_s'])}, {c['log_likelihood']:.3f})"
                for c in front) or "nothing measured"))
    budgets = default_budgets(result) if budgets is None else budgets
    if budgets:
        lines += ["", f"{heading}# Which model for a latency budget", "",
                  "| op | batch | budget | pick | why |", "|---|---:|---:|---|---|"]
        for op, batch, budget_s in budgets:
            p = pick(result, budget_s, op, batch)
            choice = f"{p['model']} on {p['backend']}" if p["model"] else "none"
            lines.append(f"| {op} | {batch} | {fmt_seconds(budget_s)} | {choice} | {p['why']} |")
    return "\n".join(lines) + "\n"


def plot_tradeoff(result: dict[str, Any], path: str | Path, op: str = "sample", batch: int = 1) -> list[dict[str, Any]]:
    """Scatter of test LL vs median latency (log x), one labelled marker per pair, the Pareto front drawn.

    Returns the front's pairs (fastest first). Pairs with a non-finite test LL cannot be placed and are
    named in the caption.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = candidates(result, op, batch, agreeing_only=False)
    finite = [c for c in pts if math.isfinite(c["log_likelihood"])]
    off = [f"{c['model']}/{c['backend']}" for c in pts if not math.isfinite(c["log_likelihood"])]
    front_idx = pareto_front([(c["median_s"], c["log_likelihood"]) for c in finite if c["agrees"]])
    agreeing = [c for c in finite if c["agrees"]]
    front = [agreeing[i] for i in front_idx]
    models = list(result["models"])
    backends = list(dict.fromkeys(r["backend"] for r in result["rows"]))
    markers = "osD^vP*Xh<>p"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(8.5, 5))
    for c in finite:
        ax.scatter(c["median_s"], c["log_likelihood"], s=45, color=colors[models.index(c["model"]) % len(colors)],
                   marker=markers[backends.index(c["backend"]) % len(markers)] if c["agrees"] else "x")
    for c in front:  # every point is named by the legends; the front's points also by a label
        ax.annotate(f"{c['model']} / {c['backend']}", (c["median_s"], c["log_likelihood"]), fontsize=7,
                    xytext=(4, -10), textcoords="offset points")
    if front:
        xs = [c["median_s"] for c in front]
        ys = [c["log_likelihood"] for c in front]
        ax.step(xs + [xs[-1] * 3], ys + [ys[-1]], where="post", color="k", lw=1, alpha=0.6)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=colors[i % len(colors)], label=m) for i, m in enumerate(models)]
    handles += [Line2D([], [], ls="", marker=markers[i % len(markers)], color="grey", label=b)
                for i, b in enumerate(backends) if any(c["backend"] == b for c in finite)]
    handles.append(Line2D([], [], color="k", alpha=0.6, label="Pareto front"))
    if any(not c["agrees"] for c in finite):
        handles.append(Line2D([], [], ls="", marker="x", color="grey", label="disagrees with float64"))
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xscale("log")
    ax.set_xlabel(f"{op} median latency at batch {batch} (s, log scale)")
    ax.set_ylabel("test log-likelihood (nats, float64)")
    ax.set_title(f"{result['dataset']}: test LL vs {op} latency at batch {batch}\n"
                 f"{machine_line(result['machine'], result['threads'])}", fontsize=8)
    if off:
        fig.text(0.01, 0.01, "not placed (non-finite test LL): " + ", ".join(off), fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return front


def tradeoff_section(result: dict[str, Any], out_dir: str | Path, op: str = "sample", batch: int | None = None,
                     budgets: Sequence[tuple[str, int, float]] | None = None) -> str:
    """A '## Deployment trade-off' section for a report: the table, the picks, and tradeoff.png written
    into ``out_dir`` (linked relatively)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batch = result["batches"][0] if batch is None else batch
    front = plot_tradeoff(result, out_dir / "tradeoff.png", op, batch)
    return render_tradeoff_markdown(result, budgets, heading="##") + "\n" + plot_caption(op, batch, front)


def plot_caption(op: str, batch: int, front: list[dict[str, Any]]) -> str:
    """The plot's markdown link with what it shows."""
    return (f"Test LL vs {op} latency at batch {batch} (log x), Pareto front drawn: "
            + (", ".join(f"{c['model']} on {c['backend']}" for c in front) or "none") + ".\n\n"
            "![trade-off](tradeoff.png)\n")
