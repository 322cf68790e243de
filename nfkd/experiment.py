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
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .data.splits import TabularSplits
from .distill.datafree import default_sample_counts, student_like_teacher, teacher_sample_data
from .distill.recipe import teacher_sized_config
from .distill.variants import PAPER_VARIANTS, VARIANTS, describe_variants, get_variant
from .errors import InputError
from .flows import architectures, flow_class
from .metrics.tabular import sample_quality
from .pipeline import data_metadata, evaluate, flow_for, get_data, train_data
from .presets import resolve, student_preset
from .train import TrainConfig, TrainResult, train_flow

__all__ = ["train_family", "check_methods", "run_experiment", "summarize", "markdown_table", "seed_eta", "main"]

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
    samples_cache: dict[str, Any] = {}
    for method in methods or PAPER_VARIANTS:
        try:
            flow, res = _train_variant(method, data, arch, teacher, td, cfg, runs_dir, seed, preset, meta, protocol,
                                       base_state, samples_cache)
        except Exception as exc:  # noqa: BLE001 - a failed method is a row marked failed; the others go on
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            results[method] = {"failed": reason}
            log(f"{method}: FAILED ({reason})")
            continue
        students[method] = flow
        results[method] = {**evaluate(flow, data), "seconds": res.seconds if res else 0.0,
                           "skd_excluded": res.skd_excluded if res else 0, **quality(flow),
                           **({"best_step": res.best_step} if res else {})}
        log(f"{method}: {_describe(results[method])} ({results[method]['seconds']:.0f} s)")
    return TrainResult(teacher, math.nan, -1, 0, t_seconds), students, results


def _train_variant(method: str, data: Any, arch: str, teacher: Any, td: Any, cfg: TrainConfig, runs_dir: Path,
                   seed: int, preset: str | None, meta: dict[str, Any], protocol: str, base_state: Any,
                   samples_cache: dict[str, Any]):
    """One student of one method: (its flow, its TrainResult or None when it needed no training)."""
    variant = get_variant(method)
    student_arch = variant.student_arch or arch
    if variant.size == "teacher":
        config = teacher_sized_config(teacher, student_arch)
    else:
        config = resolve(student_arch, "student", student_preset(preset, student_arch))
    torch.manual_seed(seed)
    run_meta = {**meta, "role": "student", "method": method, "protocol": protocol}
    if variant.data_free:  # train and select on teacher samples; the data's test split only reports
        if "samples" not in samples_cache:
            samples_cache["samples"] = teacher_sample_data(teacher, *default_sample_counts(teacher, cfg.steps,
                                                                                         cfg.batch_size), seed=seed)
        samples = samples_cache["samples"]
        student, v_td = student_like_teacher(teacher, config), samples.data
        run_meta.update(samples.metadata())
    else:
        student, v_td = flow_for(data, config), td
    kd = variant.config(n_train=len(v_td.train), seed=seed)
    if base_state is not None and not variant.fresh_only:
        student.load_state_dict(base_state)
        kd = replace(kd, init_from_teacher=False)  # the warm start is the initialisation
        if cfg.steps == 0:  # no extra steps: every student is the base student (nothing to train)
            return student.eval(), None
    res = train_flow(student, v_td, cfg, runs_dir / method.replace(":", "_"),
                     teacher=teacher if kd.needs_teacher else None, kd=kd, metadata=run_meta)
    return res.flow, res


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
            need = " or ".join(flow_class(v.student_arch).student_of)
            raise InputError(f"method {m!r} trains an {v.student_arch} student, which needs a {need} teacher "
                             f"(--arch {need})")
        if v.fresh_only and protocol == "warm-start":
            what = f"an {v.student_arch} student" if v.student_arch else "a fresh student (data-free or teacher-sized)"
            raise InputError(f"method {m!r} trains {what}, which cannot continue the {arch} base student: use "
                             f"--protocol equal-budget")


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
    t0 = time.perf_counter()
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
        log(seed_eta(seed + 1, seeds, time.perf_counter() - t0))
    return partial


def seed_eta(done: int, total: int, elapsed: float) -> str:
    """A progress line after each seed: seeds done, elapsed and the remaining time at the mean pace so far."""
    eta = elapsed / done * (total - done)
    return f"seed {done}/{total} done, {elapsed:.0f} s elapsed" + (f", ETA {eta:.0f} s" if total > done else "")


def _with_seed(cfg: TrainConfig, seed: int) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, seed=seed)


def _score(run: dict[str, Any]) -> float:
    return run["bpd"] if "bpd" in run else run["log_likelihood"]


def _ok(run: dict[str, Any]) -> bool:
    return "failed" not in run


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per model: mean, std and median over the seeds that ran; failed seeds counted with their reasons."""
    out: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        ok = [r for r in rs if _ok(r)]
        failed = [r["failed"] for r in rs if not _ok(r)]
        row: dict[str, Any] = {"n": len(ok), "failed": len(failed), "failures": failed}
        out[name] = row
        if not ok:
            continue
        scores = [_score(r) for r in ok]
        row.update({
            "mean": statistics.fmean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "params": ok[0]["params"], "seconds": statistics.fmean(r["seconds"] for r in ok),
            "nonfinite_rows": sum(int(r.get("nonfinite", 0)) for r in ok),
        })
        medians = [r["median_log_likelihood"] for r in ok if "median_log_likelihood" in r and "bpd" not in r]
        if len(medians) == len(ok):
            row["median"] = statistics.fmean(medians)
        for key in QUALITY_KEYS:
            vals = [r[key] for r in ok if key in r]
            if len(vals) == len(ok):
                row[key] = statistics.fmean(vals)
                row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    if out.get("teacher", {}).get("n") and out.get("none", {}).get("n"):
        _paired(runs, out, "none", "")
        if out.get("base", {}).get("n"):
            _paired(runs, out, "base", "_base")  # the official protocol: KD continues, the baseline does not
    return out


def _paired(runs: dict[str, list[dict[str, Any]]], out: dict[str, dict[str, Any]], ref: str, suffix: str) -> None:
    """Differences against ``ref``, paired by seed (each seed's models share one split), and the gap closed."""
    gap = out["teacher"]["mean"] - out[ref]["mean"]
    sign = -1.0 if "bpd" in next(r for r in runs[ref] if _ok(r)) else 1.0  # bpd: lower is better
    for name, row in out.items():
        if not row.get("n"):
            continue
        pairs = [(_score(r), _score(b)) for r, b in zip(runs[name], runs[ref]) if _ok(r) and _ok(b)]
        if not pairs:
            continue
        deltas = [a - b for a, b in pairs]
        row["gap_closed" + suffix] = (row["mean"] - out[ref]["mean"]) / gap if gap else float("nan")
        row["delta_vs_" + ref] = statistics.fmean(deltas)
        row["delta_std" + suffix] = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
        row["seeds_better_than_" + ref] = sum(sign * d > 0 for d in deltas)
        row["paired_n" + suffix] = len(deltas)


def _fmt_ll(v: float) -> str:
    return f"{v:.3f}" if math.isfinite(v) and abs(v) < 1e6 else f"{v:.2g}"


def markdown_table(result: dict[str, Any]) -> str:
    s = result["summary"]
    image = any("bpd" in r for r in result["runs"]["teacher"] if _ok(r))
    metric = "test bpd (lower is better)" if image else "test log-likelihood, nats (higher is better)"
    warm = "base" in s and "delta_vs_base" in s.get("none", {})
    lines = [
        f"### {result['dataset']} — {result['arch']}{' ' + result['preset'] if result.get('preset') else ''}, "
        f"{result.get('protocol', 'equal-budget')} ({result['seeds']} seeds, mean ± std)",
        "",
        f"| model | params | {metric} | median | non-finite rows | Δ vs no-KD (paired) | better than no-KD | gap closed "
        f"|{' Δ vs before the extra steps (official protocol) | share of that Δ left vs no-KD continued |' if warm else ''}"
        " train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if warm else "") + "---:|",
    ]
    for name in [r for r in ROWS if r in s]:
        row = s[name]
        key = f" (`{name}`)" if name in VARIANTS else ""
        if not row.get("n"):
            reason = "; ".join(dict.fromkeys(row.get("failures", [])))
            lines.append(f"| {LABELS[name]}{key} | | **failed** ({row['failed']}/{row['failed']} seeds): {reason} | | | | | |"
                         + (" | |" if warm else "") + " |")
            continue
        paired = name != "none" and "delta_vs_none" in row  # absent when the run had no no-KD students
        student_kd = paired and name != "teacher"
        gap = f"{100 * row['gap_closed']:.0f} %" if student_kd else ""
        delta = f"{row['delta_vs_none']:+.3f} ± {row['delta_std']:.3f}" if paired else ""
        wins = f"{row['seeds_better_than_none']}/{row['paired_n']}" if paired else ""
        fails = f" ({row['failed']} seed(s) failed: {'; '.join(dict.fromkeys(row['failures']))})" if row["failed"] else ""
        median = _fmt_ll(row["median"]) if "median" in row else ""
        cells = (f"| {LABELS[name]}{key} | {row['params'] / 1000:.1f}k | {_fmt_ll(row['mean'])} ± {_fmt_ll(row['std'])}"
                 f"{fails} | {median} | {row['nonfinite_rows']} | {delta} | {wins} | {gap} |")
        if warm:
            asym = name not in ("teacher", "base") and "delta_vs_base" in row
            kd_row = asym and name != "none" and "delta_vs_none" in row and row["delta_vs_base"]
            left = f"{100 * row['delta_vs_none'] / row['delta_vs_base']:.0f} %" if kd_row else ""
            cells += (f" {row['delta_vs_base']:+.3f} ± {row['delta_std_base']:.3f} | {left} |" if asym else " | |")
        lines.append(cells + f" {row['seconds']:.0f} |")
    names = [r for r in ROWS if r in s and all(k in s[r] for k in QUALITY_KEYS)]
    if names:
        lines += ["", "Samples, scored without the model's own density (2000 samples per model; energy distance "
                  "to the test split in standardized units, lower is better):", "",
                  "| model | teacher log-density of its samples (median) | energy distance to test data |",
                  "|---|---:|---:|"]
        for name in names:
            row = s[name]
            lines.append(f"| {LABELS[name]} | {_fmt_ll(row['teacher_ll_of_samples_median'])} ± "
                         f"{_fmt_ll(row['teacher_ll_of_samples_median_std'])} "
                         f"| {row['energy_distance']:.4f} ± {row['energy_distance_std']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfkd experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="dataset name (required unless only listing methods)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--arch", default=None, choices=architectures(teacher=True),
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
