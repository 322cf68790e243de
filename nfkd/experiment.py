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

import numpy as np
import torch

from .data.images import ImageSplits
from .data.splits import TabularSplits
from .distill.datafree import default_sample_counts, student_like_teacher, teacher_sample_data
from .distill.recipe import teacher_sized_config
from .distill.variants import PAPER_VARIANTS, VARIANTS, describe_variants, get_variant
from .errors import InputError
from .flows import architectures, bits_per_dim, flow_class
from .metrics.tabular import sample_quality
from .metrics.uncertainty import Estimate, fmt_diff, gap_share, paired_diff
from .pipeline import data_metadata, evaluate, flow_for, get_data, split_array, train_data
from .presets import resolve, student_preset
from .train import TrainConfig, TrainResult, train_flow

__all__ = ["train_family", "check_methods", "run_experiment", "summarize", "markdown_table", "seed_eta", "test_scores",
           "kept_step", "main"]

PROTOCOLS = ("equal-budget", "warm-start")
QUALITY_KEYS = ("teacher_ll_of_samples_median", "energy_distance")
ROWS = ["teacher", "base", *VARIANTS]
LABELS = {"teacher": "Teacher", "base": "Student (no KD, before the extra steps)",
          **{v.name: v.label for v in VARIANTS.values()}}


def _teacher(data: Any, arch: str, cfg: TrainConfig, out: Path, preset: str | None, seed: int,
             reuse: bool, meta: dict[str, Any]) -> tuple[Any, float, dict[str, Any]]:
    """Train the seed's teacher, or load it from ``out/model.pt`` when ``reuse`` (pilot -> full run).

    Returns (flow, training seconds, which step was kept and why)."""
    path = out / "model.pt"
    if reuse and path.exists():
        from .checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        tr = ckpt.metadata.get("training", {})
        return (ckpt.flow.eval(), float(tr.get("seconds", 0.0)),
                kept_step(int(tr.get("best_step", -1)), int(tr.get("steps", -1)), cfg))
    torch.manual_seed(seed)
    teacher = flow_for(data, resolve(arch, "teacher", preset))
    res = train_flow(teacher, train_data(data), cfg, out, metadata={**meta, "role": "teacher"})
    return res.flow, res.seconds, kept_step(res.best_step, res.steps_done, cfg)


def kept_step(best_step: int, steps_done: int, cfg: TrainConfig) -> dict[str, Any]:
    """Which step's weights a run kept (selection by validation NLL) and why, in words for a report."""
    if best_step < 0:
        why = "no validation evaluation ran: the last weights"
    elif best_step == steps_done:
        why = "the last step (validation NLL still improving)"
    elif steps_done < cfg.steps:
        why = (f"validation NLL rose after step {best_step}; stopped early at step {steps_done} of {cfg.steps} "
               f"({cfg.patience} evaluations without improvement)")
    else:
        why = f"validation NLL rose after step {best_step} (trained to step {steps_done})"
    return {"best_step": best_step, "steps": steps_done, "planned_steps": cfg.steps, "why": why}


@torch.no_grad()
def test_scores(flow: Any, data: Any, batch: int = 4096) -> np.ndarray:
    """Per-row test scores in float64, the rows ``evaluate`` averages: log-likelihood in nats (tables) or
    bits/dim (images, bin centres). Two models' scores on the same rows give a paired difference."""
    flow = flow.eval()
    arr, out = split_array(data, "test"), []
    for i in range(0, len(arr), batch):
        x = torch.from_numpy(np.asarray(arr[i : i + batch]))
        if isinstance(data, ImageSplits):
            x = (x.float() + 0.5) / int(data.train.n_levels) - 0.5
        lp = flow.log_prob(x.float()).double()
        out.append(bits_per_dim(lp, flow.dim, int(data.train.n_levels)) if isinstance(data, ImageSplits) else lp)
    return torch.cat(out).numpy()


def _attach_paired(results: dict[str, Any], scores: dict[str, np.ndarray],
                   references: dict[str, np.ndarray] | None) -> None:
    """Each model's paired difference (same test rows) against the teacher, the no-KD student(s) and
    ``references`` (e.g. the true density): ``vs_<name>`` = mean ± 2 SE of (this model − that one)."""
    refs = {**{k: scores[k] for k in ("teacher", "none", "base") if k in scores}, **(references or {})}
    for name, own in scores.items():
        for ref, other in refs.items():
            if ref != name:
                results[name]["vs_" + ref] = paired_diff(own, other).as_dict()


def train_family(data: Any, arch: str, teacher_cfg: TrainConfig, student_cfg: TrainConfig, runs_dir: Path,
                 seed: int, preset: str | None = None, methods: list[str] | None = None, log=print,
                 protocol: str = "equal-budget", warm_steps: int | None = None, reuse_teacher: bool = False,
                 references: dict[str, np.ndarray] | None = None):
    """A teacher, then one student per method, each from ``seed`` with one budget.

    ``equal-budget``: every student starts fresh and trains ``student_cfg.steps`` steps.
    ``warm-start`` (the paper code's tabular setting): a no-KD student trains ``student_cfg.steps``
    steps once ("base"), then every method — the no-KD baseline included — continues from it for
    ``warm_steps`` more, so that the extra steps are not credited to distillation.
    Every result also carries ``selection`` (the kept step and why) and paired differences on the
    test rows (``vs_teacher``, ``vs_none``, ``vs_base``, and ``vs_<key>`` for each per-row test
    score array in ``references``, e.g. the true density's log p).
    Returns (the teacher as a TrainResult-like object, {method: student flow}, {name: test evaluation + seconds}).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    td, meta = train_data(data), data_metadata(data)
    teacher, t_seconds, t_kept = _teacher(data, arch, teacher_cfg, runs_dir / "teacher", preset, seed, reuse_teacher,
                                          meta)
    quality = _quality_fn(teacher, data, seed)
    results: dict[str, Any] = {"teacher": {**evaluate(teacher, data), "seconds": t_seconds, **quality(teacher),
                                           "selection": t_kept}}
    flows = {"teacher": teacher}
    log(f"teacher: {_describe(results['teacher'])} ({t_seconds:.0f} s)")
    base_state, cfg = None, student_cfg
    if protocol == "warm-start":
        torch.manual_seed(seed)
        base = flow_for(data, resolve(arch, "student", preset))
        b_res = train_flow(base, td, student_cfg, runs_dir / "base", metadata={**meta, "role": "student", "method": "base"})
        base_state = b_res.flow.state_dict()
        results["base"] = {**evaluate(b_res.flow, data), "seconds": b_res.seconds, **quality(b_res.flow),
                           "selection": kept_step(b_res.best_step, b_res.steps_done, student_cfg)}
        flows["base"] = b_res.flow
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
                           **({"best_step": res.best_step, "selection": kept_step(res.best_step, res.steps_done, cfg)}
                              if res else {})}
        log(f"{method}: {_describe(results[method])} ({results[method]['seconds']:.0f} s)")
    _attach_paired(results, {k: test_scores(f, data) for k, f in {**flows, **students}.items()}, references)
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
    if "bpd" in r:
        return f"test bpd {r['bpd']:.4f} ± {r['bpd_2se']:.4f} (n={r['n']})"
    kept = r.get("selection")
    return (f"test LL {r['log_likelihood']:.4f} ± {r['ll_2se']:.4f} (n={r['n']})"
            + (f"; kept step {kept['best_step']}: {kept['why']}" if kept else ""))


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


def _se2_over_seeds(values: list[float], per_seed_se2: list[Any]) -> float:
    """2 SE of the mean of per-seed values: from the seeds' spread when there are several (each seed has its own
    split and training, so that spread holds both noises), else the one seed's 2 SE over its test rows."""
    if len(values) > 1:
        return 2 * statistics.stdev(values) / math.sqrt(len(values))
    return float(per_seed_se2[0]) if per_seed_se2 and per_seed_se2[0] is not None else math.nan


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per model: mean, std, 2 SE and median over the seeds that ran; failed seeds counted with their reasons."""
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
            "se2": _se2_over_seeds(scores, [r.get("bpd_2se" if "bpd" in r else "ll_2se") for r in ok]),
            "test_rows": ok[0].get("n"), "params": ok[0]["params"], "seconds": statistics.fmean(r["seconds"] for r in ok),
            "nonfinite_rows": sum(int(r.get("nonfinite", 0)) for r in ok),
            "kept_steps": [r["selection"]["best_step"] for r in ok if "selection" in r],
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
    """Differences against ``ref``, paired by seed (each seed's models share one split) with their 2 SE, and the
    share of the teacher's gap closed, given only when that gap is outside its noise."""
    sign = -1.0 if "bpd" in next(r for r in runs[ref] if _ok(r)) else 1.0  # bpd: lower is better
    for name, row in out.items():
        if not row.get("n"):
            continue
        pairs = [(_score(r), _score(b), r.get("vs_" + ref, {}).get("se2")) for r, b in zip(runs[name], runs[ref])
                 if _ok(r) and _ok(b)]
        if not pairs:
            continue
        deltas = [a - b for a, b, _ in pairs]
        row["delta_vs_" + ref] = statistics.fmean(deltas)
        row["delta_std" + suffix] = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
        row["delta_2se" + suffix] = _se2_over_seeds(deltas, [se for _, _, se in pairs])
        row["seeds_better_than_" + ref] = sum(sign * d > 0 for d in deltas)
        row["paired_n" + suffix] = len(deltas)
    gap = out["teacher"].get("delta_vs_" + ref, out["teacher"]["mean"] - out[ref]["mean"])
    gap_est = Estimate(gap, out["teacher"].get("delta_2se" + suffix, math.nan), out["teacher"]["n"])
    for row in out.values():
        if "delta_vs_" + ref in row:
            share = gap_share(Estimate(row["delta_vs_" + ref], 0.0, 1), gap_est)
            row["gap_closed" + suffix] = math.nan if share is None else share
            row["gap_within_noise" + suffix] = share is None


def _fmt_ll(v: float) -> str:
    return f"{v:.3f}" if math.isfinite(v) and abs(v) < 1e6 else f"{v:.2g}"


def _diff_cell(row: dict[str, Any], ref: str, suffix: str) -> str:
    return fmt_diff(Estimate(row["delta_vs_" + ref], row.get("delta_2se" + suffix, math.nan), row["n"]))


def _gap_text(row: dict[str, Any], suffix: str = "") -> str:
    if row.get("gap_within_noise" + suffix):
        return "gap within noise"
    return f"{100 * row['gap_closed' + suffix]:.0f} %"


def _table_head(result: dict[str, Any], image: bool, warm: bool) -> list[str]:
    s = result["summary"]
    metric = "test bpd (lower is better)" if image else "test log-likelihood, nats (higher is better)"
    rows_n = s["teacher"].get("test_rows")
    seeds = result["seeds"]
    noise = ("2 SE from the seeds' spread (each seed: its own split and training)" if seeds > 1
             else f"2 SE over the {rows_n} test rows")
    return [
        f"### {result['dataset']} — {result['arch']}{' ' + result['preset'] if result.get('preset') else ''}, "
        f"{result.get('protocol', 'equal-budget')} ({seeds} seed{'s' if seeds > 1 else ''}, mean ± 2 SE)",
        "",
        f"± is {noise}; {rows_n} test rows per seed. Δ: differences paired on the same test rows (and seed), "
        "'within noise' when |Δ| < 2 SE; gap closed = Δ vs no-KD / the teacher's Δ vs no-KD, given only when the "
        "teacher's Δ is outside its noise. Kept step: the step each run kept by validation NLL (per seed).",
        "",
        f"| model | params | {metric} | median | non-finite rows | Δ vs no-KD (paired) | better than no-KD | gap closed "
        f"|{' Δ vs before the extra steps (official protocol) | share of that Δ left vs no-KD continued |' if warm else ''}"
        " kept step | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if warm else "") + "---:|---:|",
    ]


def _table_row(name: str, row: dict[str, Any], warm: bool) -> str:
    key = f" (`{name}`)" if name in VARIANTS else ""
    if not row.get("n"):
        reason = "; ".join(dict.fromkeys(row.get("failures", [])))
        return (f"| {LABELS[name]}{key} | | **failed** ({row['failed']}/{row['failed']} seeds): {reason} | | | | | |"
                + (" | |" if warm else "") + " | |")
    paired = name != "none" and "delta_vs_none" in row  # absent when the run had no no-KD students
    student_kd = paired and name != "teacher"
    gap = _gap_text(row) if student_kd else ""
    delta = _diff_cell(row, "none", "") if paired else ""
    wins = f"{row['seeds_better_than_none']}/{row['paired_n']}" if paired else ""
    fails = f" ({row['failed']} seed(s) failed: {'; '.join(dict.fromkeys(row['failures']))})" if row["failed"] else ""
    median = _fmt_ll(row["median"]) if "median" in row else ""
    se = _fmt_ll(row["se2"]) if math.isfinite(row.get("se2", math.nan)) else "n/a"
    cells = (f"| {LABELS[name]}{key} | {row['params'] / 1000:.1f}k | {_fmt_ll(row['mean'])} ± {se}"
             f"{fails} | {median} | {row['nonfinite_rows']} | {delta} | {wins} | {gap} |")
    if warm:
        asym = name not in ("teacher", "base") and "delta_vs_base" in row
        kd_row = asym and name != "none" and "delta_vs_none" in row and row["delta_vs_base"]
        left = f"{100 * row['delta_vs_none'] / row['delta_vs_base']:.0f} %" if kd_row else ""
        cells += (f" {_diff_cell(row, 'base', '_base')} | {left} |" if asym else " | |")
    kept = ", ".join(map(str, row.get("kept_steps", [])))
    return cells + f" {kept} | {row['seconds']:.0f} |"


def markdown_table(result: dict[str, Any]) -> str:
    s = result["summary"]
    image = any("bpd" in r for r in result["runs"]["teacher"] if _ok(r))
    warm = "base" in s and "delta_vs_base" in s.get("none", {})
    lines = _table_head(result, image, warm)
    lines += [_table_row(name, s[name], warm) for name in ROWS if name in s]
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
