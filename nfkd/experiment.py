"""``python -m nfkd experiment``: a teacher and one student per distillation method, paper Table 1 layout.

``--methods`` without names lists every method; ``--methods all`` compares them all. Under
``--protocol equal-budget`` every student gets the same budget (steps, batch, lr, seed); under
``warm-start`` every method continues one trained no-KD student. Each seed trains its own teacher.
Results are test log-likelihoods (nats, higher is better; bpd for images, lower is better), mean
± std over seeds, with the share of the teacher-student gap that each method closes:
(LL_method − LL_noKD) / (LL_teacher − LL_noKD). On tables each model's samples are also scored
without its own density: the teacher's log-density of them and their energy distance to the test
split (``nfkd.metrics.tabular``). With a MAF teacher, the ``iaf`` methods train an IAF student
(one-pass sampling) of the MAF student's size beside the MAF students.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .data.splits import TabularSplits
from .distill.variants import PAPER_VARIANTS, VARIANTS, describe_variants, get_variant
from .errors import InputError
from .metrics.tabular import sample_quality
from .pipeline import data_metadata, evaluate, flow_for, get_data, train_data
from .presets import resolve, student_preset
from .train import TrainConfig, TrainResult, train_flow

__all__ = ["train_family", "check_methods", "run_experiment", "summarize", "markdown_table", "main"]

PROTOCOLS = ("equal-budget", "warm-start")
QUALITY_KEYS = ("teacher_ll_of_samples_median", "energy_distance")
ROWS = ["teacher", "base", *VARIANTS]
LABELS = {"teacher": "Teacher", "base": "Student (no KD, before the extra steps)",
          **{v.name: v.label for v in VARIANTS.values()}}


def _teacher(data: Any, arch: str, cfg: TrainConfig, out: Path, preset: str | None, seed: int,
             reuse: bool, meta: dict[str, Any]) -> tuple[Any, float]:
    """Train the seed's teacher, or load it from ``out/model.pt`` when ``reuse`` (pilot -> full run)."""
    path = out / "model.pt"
    if reuse and path.exists():
        from .checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        return ckpt.flow.eval(), float(ckpt.metadata.get("training", {}).get("seconds", 0.0))
    torch.manual_seed(seed)
    teacher = flow_for(data, resolve(arch, "teacher", preset))
    res = train_flow(teacher, train_data(data), cfg, out, metadata={**meta, "role": "teacher"})
    return res.flow, res.seconds


def train_family(data: Any, arch: str, teacher_cfg: TrainConfig, student_cfg: TrainConfig, runs_dir: Path,
                 seed: int, preset: str | None = None, methods: list[str] | None = None, log=print,
                 protocol: str = "equal-budget", warm_steps: int | None = None, reuse_teacher: bool = False):
    """A teacher, then one student per method, each from ``seed`` with one budget.

    ``equal-budget``: every student starts fresh and trains ``student_cfg.steps`` steps.
    ``warm-start`` (the paper code's tabular setting): a no-KD student trains ``student_cfg.steps``
    steps once ("base"), then every method — the no-KD baseline included — continues from it for
    ``warm_steps`` more, so that the extra steps are not credited to distillation.
    Returns (the teacher as a TrainResult-like object, {method: student flow}, {name: test evaluation + seconds}).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    td, meta = train_data(data), data_metadata(data)
    teacher, t_seconds = _teacher(data, arch, teacher_cfg, runs_dir / "teacher", preset, seed, reuse_teacher, meta)
    quality = _quality_fn(teacher, data, seed)
    results: dict[str, Any] = {"teacher": {**evaluate(teacher, data), "seconds": t_seconds, **quality(teacher)}}
    log(f"teacher: {_describe(results['teacher'])} ({t_seconds:.0f} s)")
    base_state, cfg = None, student_cfg
    if protocol == "warm-start":
        torch.manual_seed(seed)
        base = flow_for(data, resolve(arch, "student", preset))
        b_res = train_flow(base, td, student_cfg, runs_dir / "base", metadata={**meta, "role": "student", "method": "base"})
        base_state = b_res.flow.state_dict()
        results["base"] = {**evaluate(b_res.flow, data), "seconds": b_res.seconds, **quality(b_res.flow)}
        log(f"base: {_describe(results['base'])} ({b_res.seconds:.0f} s)")
        cfg = replace(student_cfg, steps=student_cfg.steps if warm_steps is None else warm_steps)
    students = {}
    for method in methods or PAPER_VARIANTS:
        variant = get_variant(method)
        kd = variant.config(seed=seed)
        torch.manual_seed(seed)
        student_arch = variant.student_arch or arch
        student = flow_for(data, resolve(student_arch, "student", student_preset(preset, student_arch)))
        if base_state is not None:
            student.load_state_dict(base_state)
            kd = replace(kd, init_from_teacher=False)  # the warm start is the initialisation
            if cfg.steps == 0:  # no extra steps: every student is the base student (nothing to train)
                students[method] = student.eval()
                results[method] = {**evaluate(student, data), "seconds": 0.0, "skd_excluded": 0, **quality(student)}
                continue
        res = train_flow(student, td, cfg, runs_dir / method.replace(":", "_"),
                         teacher=teacher if kd.needs_teacher else None, kd=kd,
                         metadata={**meta, "role": "student", "method": method, "protocol": protocol})
        students[method] = res.flow
        results[method] = {**evaluate(res.flow, data), "seconds": res.seconds, "skd_excluded": res.skd_excluded,
                           **quality(res.flow)}
        log(f"{method}: {_describe(results[method])} ({res.seconds:.0f} s)")
    return TrainResult(teacher, math.nan, -1, 0, t_seconds), students, results


def _quality_fn(teacher: Any, data: Any, seed: int):
    """Tables: each model's samples scored by the teacher and against the test split; images: nothing."""
    if not isinstance(data, TabularSplits):
        return lambda flow: {}
    return lambda flow: sample_quality(flow, teacher, data.test, data.mean, data.std, seed=seed)


def check_methods(arch: str, methods: list[str], protocol: str = "equal-budget") -> None:
    """Every method exists and fits the teacher architecture and protocol (before any training)."""
    for m in methods:
        v = get_variant(m)
        if not v.applies_to(arch):
            raise InputError(f"method {m!r} trains an {v.student_arch} student, which needs a maf teacher (--arch maf)")
        if v.student_arch is not None and protocol == "warm-start":
            raise InputError(f"method {m!r} trains an {v.student_arch} student, which cannot continue the "
                             f"{arch} base student: use --protocol equal-budget")


def _describe(r: dict[str, Any]) -> str:
    return f"test bpd {r['bpd']:.4f}" if "bpd" in r else f"test LL {r['log_likelihood']:.4f}"


def run_experiment(data_name: str, arch: str, seeds: int, out: Path, preset: str | None = None,
                   teacher_cfg: TrainConfig | None = None, student_cfg: TrainConfig | None = None,
                   data_root: str | None = None, methods: list[str] | None = None,
                   log=print, protocol: str = "equal-budget", warm_steps: int | None = None,
                   reuse_teachers: bool = False) -> dict[str, Any]:
    methods = methods or PAPER_VARIANTS
    check_methods(arch, methods, protocol)  # fail before any training
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    for seed in range(seeds):
        data = get_data(data_name, data_root, seed=seed)
        _, _, results = train_family(data, arch, _with_seed(teacher_cfg or TrainConfig(), seed),
                                     _with_seed(student_cfg or TrainConfig(), seed), out / f"seed{seed}", seed,
                                     preset, methods, log=lambda m, seed=seed: log(f"[seed {seed}] {m}"),
                                     protocol=protocol, warm_steps=warm_steps, reuse_teacher=reuse_teachers)
        for name, r in results.items():
            runs.setdefault(name, []).append(r)
        partial = {"dataset": data_name, "arch": arch, "preset": preset, "seeds": seed + 1, "protocol": protocol,
                   "methods": methods, "runs": runs, "summary": summarize(runs)}
        (out / "results.json").write_text(json.dumps(partial, indent=1))  # every finished seed is kept
        (out / "table.md").write_text(markdown_table(partial))
    return partial


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
        for key in QUALITY_KEYS:
            vals = [r[key] for r in rs if key in r]
            if len(vals) == len(rs):
                out[name][key] = statistics.fmean(vals)
                out[name][key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
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
        f"### {result['dataset']} — {result['arch']}{' ' + result['preset'] if result.get('preset') else ''}, "
        f"{result.get('protocol', 'equal-budget')} ({result['seeds']} seeds, mean ± std)",
        "",
        f"| model | params | {metric} | Δ vs no-KD (paired) | better than no-KD | gap closed | train s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in [r for r in ROWS if r in s]:
        row = s[name]
        paired = name != "none" and "delta_vs_none" in row  # absent when the run had no no-KD students
        student_kd = paired and name != "teacher"
        gap = f"{100 * row['gap_closed']:.0f} %" if student_kd else ""
        delta = f"{row['delta_vs_none']:+.3f} ± {row['delta_std']:.3f}" if paired else ""
        wins = f"{row['seeds_better_than_none']}/{row['n']}" if paired else ""
        key = f" (`{name}`)" if name in VARIANTS else ""
        lines.append(f"| {LABELS[name]}{key} | {row['params'] / 1000:.1f}k | {row['mean']:.3f} ± {row['std']:.3f} | {delta} | "
                     f"{wins} | {gap} | {row['seconds']:.0f} |")
    names = [r for r in ROWS if r in s and all(k in s[r] for k in QUALITY_KEYS)]
    if names:
        lines += ["", "Samples, scored without the model's own density (2000 samples per model; energy distance "
                  "to the test split in standardized units, lower is better):", "",
                  "| model | teacher log-density of its samples (median) | energy distance to test data |",
                  "|---|---:|---:|"]
        for name in names:
            row = s[name]
            lines.append(f"| {LABELS[name]} | {row['teacher_ll_of_samples_median']:.3f} ± "
                         f"{row['teacher_ll_of_samples_median_std']:.3f} "
                         f"| {row['energy_distance']:.4f} ± {row['energy_distance_std']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfkd experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="dataset name (required unless only listing methods)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--arch", default=None, choices=["glow", "glow1d", "maf"],
                        help="the teacher's architecture (maf: the iaf methods add IAF students)")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--teacher-steps", type=int, default=3000)
    parser.add_argument("--student-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--methods", nargs="*", default=None, metavar="METHOD",
                        help="methods to compare ('all' for every one); without names: list them and exit")
    parser.add_argument("--protocol", default="equal-budget", choices=PROTOCOLS,
                        help="equal-budget: fresh students, one budget; warm-start: continue a trained no-KD student")
    parser.add_argument("--warm-steps", type=int, default=None, help="warm-start: extra steps (default: --student-steps)")
    parser.add_argument("--reuse-teachers", action="store_true", help="load OUT/seedN/teacher/model.pt when present")
    parser.add_argument("--patience", type=int, default=10,
                        help="evaluations (every 100 steps) without validation improvement before a run stops")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/experiment")
    args = parser.parse_args(argv)
    if args.methods is not None and not args.methods:
        print(describe_variants())
        return 0
    if args.data is None or args.arch is None:
        parser.error("--data and --arch are required to run an experiment")
    if args.methods == ["all"]:
        methods = [m for m, v in VARIANTS.items() if v.applies_to(args.arch)]
    else:
        methods = args.methods or PAPER_VARIANTS
    check_methods(args.arch, methods, args.protocol)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = dict(batch_size=args.batch_size, lr=args.lr, eval_every=100, patience=args.patience, progress=False)
    result = run_experiment(
        args.data, args.arch, args.seeds, Path(args.out), args.preset,
        TrainConfig(steps=args.teacher_steps, **base), TrainConfig(steps=args.student_steps, **base),
        args.data_root, methods, protocol=args.protocol, warm_steps=args.warm_steps,
        reuse_teachers=args.reuse_teachers,
    )
    print(markdown_table(result))
    return 0
