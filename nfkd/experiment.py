"""``python -m nfkd experiment``: teacher, no-KD, LKD, ILKD and SKD students, paper Table 1 layout.

Every student gets the same budget (steps, batch, lr, seed); each seed trains its own teacher.
Results are test log-likelihoods (nats, higher is better; bpd for images, lower is better), mean
± std over seeds, with the share of the teacher-student gap that each method closes:
(LL_method − LL_noKD) / (LL_teacher − LL_noKD).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from .distill import KDConfig
from .pipeline import data_metadata, evaluate, flow_for, get_data, train_data
from .presets import resolve
from .train import TrainConfig, train_flow

ROWS = ["teacher", "none", "lkd", "ilkd", "skd"]
LABELS = {"teacher": "Teacher", "none": "Student (no KD)", "lkd": "Student + LKD", "ilkd": "Student + ILKD",
          "skd": "Student + SKD"}


def train_family(data: Any, arch: str, teacher_cfg: TrainConfig, student_cfg: TrainConfig, runs_dir: Path,
                 seed: int, preset: str | None = None, methods: list[str] | None = None, log=print):
    """A teacher, then one student per method (no KD, LKD, ILKD, SKD), each from ``seed`` with one budget.

    Returns (the teacher's TrainResult, {method: student flow}, {name: test evaluation + seconds}).
    """
    td, meta = train_data(data), data_metadata(data)
    torch.manual_seed(seed)
    teacher = flow_for(data, resolve(arch, "teacher", preset))
    t_res = train_flow(teacher, td, teacher_cfg, runs_dir / "teacher", metadata={**meta, "role": "teacher"})
    results: dict[str, Any] = {"teacher": {**evaluate(t_res.flow, data), "seconds": t_res.seconds}}
    log(f"teacher: {_describe(results['teacher'])} ({t_res.seconds:.0f} s)")
    students = {}
    for method in methods or ROWS[1:]:
        torch.manual_seed(seed)
        student = flow_for(data, resolve(arch, "student", preset))
        res = train_flow(student, td, student_cfg, runs_dir / method,
                         teacher=t_res.flow if method != "none" else None, kd=KDConfig(method=method),
                         metadata={**meta, "role": "student", "method": method})
        students[method] = res.flow
        results[method] = {**evaluate(res.flow, data), "seconds": res.seconds, "skd_excluded": res.skd_excluded}
        log(f"{method}: {_describe(results[method])} ({res.seconds:.0f} s)")
    return t_res, students, results


def _describe(r: dict[str, Any]) -> str:
    return f"test bpd {r['bpd']:.4f}" if "bpd" in r else f"test LL {r['log_likelihood']:.4f}"


def run_experiment(data_name: str, arch: str, seeds: int, out: Path, preset: str | None = None,
                   teacher_cfg: TrainConfig | None = None, student_cfg: TrainConfig | None = None,
                   data_root: str | None = None, methods: list[str] | None = None,
                   log=print) -> dict[str, Any]:
    methods = methods or ROWS[1:]
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in ["teacher", *methods]}
    for seed in range(seeds):
        data = get_data(data_name, data_root, seed=seed)
        _, _, results = train_family(data, arch, _with_seed(teacher_cfg or TrainConfig(), seed),
                                     _with_seed(student_cfg or TrainConfig(), seed), out / f"seed{seed}", seed,
                                     preset, methods, log=lambda m, seed=seed: log(f"[seed {seed}] {m}"))
        for name, r in results.items():
            runs[name].append(r)
    summary = summarize(runs)
    result = {"dataset": data_name, "arch": arch, "preset": preset, "seeds": seeds, "runs": runs, "summary": summary}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(markdown_table(result))
    return result


def _with_seed(cfg: TrainConfig, seed: int) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, seed=seed)


def _score(run: dict[str, Any]) -> float:
    return run["bpd"] if "bpd" in run else run["log_likelihood"]


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, rs in runs.items():
        scores = [_score(r) for r in rs]
        out[name] = {
            "mean": statistics.fmean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "params": rs[0]["params"], "seconds": statistics.fmean(r["seconds"] for r in rs), "n": len(scores),
        }
    if "teacher" in out and "none" in out:
        gap = out["teacher"]["mean"] - out["none"]["mean"]
        base = [_score(r) for r in runs["none"]]
        sign = -1.0 if "bpd" in runs["none"][0] else 1.0  # bpd: lower is better
        for name in out:
            out[name]["gap_closed"] = (out[name]["mean"] - out["none"]["mean"]) / gap if gap else float("nan")
            # Paired by seed: each seed's teacher and students share one data split, so the
            # difference removes the split-to-split variance that dominates the plain std.
            deltas = [_score(r) - b for r, b in zip(runs[name], base)]
            out[name]["delta_vs_none"] = statistics.fmean(deltas)
            out[name]["delta_std"] = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
            out[name]["seeds_better_than_none"] = sum(sign * d > 0 for d in deltas)
    return out


def markdown_table(result: dict[str, Any]) -> str:
    s = result["summary"]
    image = any("bpd" in r for r in result["runs"]["teacher"])
    metric = "test bpd (lower is better)" if image else "test log-likelihood, nats (higher is better)"
    lines = [
        f"### {result['dataset']} — {result['arch']} ({result['seeds']} seeds, mean ± std)",
        "",
        f"| model | params | {metric} | Δ vs no-KD (paired) | better than no-KD | gap closed | train s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in [r for r in ROWS if r in s]:
        row = s[name]
        student_kd = name not in ("teacher", "none") and "delta_vs_none" in row
        gap = f"{100 * row['gap_closed']:.0f} %" if student_kd else ""
        delta = f"{row['delta_vs_none']:+.3f} ± {row['delta_std']:.3f}" if student_kd or name == "teacher" else ""
        wins = f"{row['seeds_better_than_none']}/{row['n']}" if student_kd or name == "teacher" else ""
        lines.append(f"| {LABELS[name]} | {row['params'] / 1000:.1f}k | {row['mean']:.3f} ± {row['std']:.3f} | {delta} | "
                     f"{wins} | {gap} | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfkd experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--arch", required=True, choices=["glow", "glow1d", "maf"])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--teacher-steps", type=int, default=3000)
    parser.add_argument("--student-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--methods", nargs="+", default=ROWS[1:], choices=ROWS[1:])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/experiment")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = dict(batch_size=args.batch_size, lr=args.lr, eval_every=100, patience=10, progress=False)
    result = run_experiment(
        args.data, args.arch, args.seeds, Path(args.out), args.preset,
        TrainConfig(steps=args.teacher_steps, **base), TrainConfig(steps=args.student_steps, **base),
        args.data_root, args.methods,
    )
    print(markdown_table(result))
    return 0
