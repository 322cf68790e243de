"""``python -m nfkd demo``: the main job end to end on an embedded dataset.

teacher -> students (no KD, the paper's SKD, and the best measured recipe: ``variants.demo_recipe``, or
``--method``; for Glow-1D the recipe is forward KL under the warm-start protocol, where every student,
no-KD included, continues one trained no-KD student) -> test evaluation -> ONNX export of
the best student with its parity gate -> density throughput (eager teacher, eager student, ONNX
Runtime student; same threads, interleaved) -> then the same for images (a small Glow family on
8x8 digits by default: test bpd, sample grids from the same noise at T=0.7 and 1.0, an eq.-16
interpolation grid, FID with --fid N) -> a report folder: report.md, results.json, loss curves,
sample plots and grids, a throughput plot.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import inference
from .data.splits import TabularSplits
from .demo_data import SYNTHETIC, load_synthetic
from .demo_images import render_image_section, run_image_demo
from .demo_tables import gap_cell, gap_note, headline_lines, paired_cell, score_cell, selection_lines
from .distill.variants import demo_recipe, get_variant
from .errors import InputError
from .experiment import LABELS, train_family
from .flows import MAF, architectures, flow_class
from .metrics.uncertainty import Estimate, fmt_estimate, fmt_spread_ms, load_note, machine_load, mean_2se, spread
from .pipeline import evaluate, get_data
from .train import TrainConfig

__all__ = ["measure_throughput", "measure_sampling", "plot_samples", "plot_throughput", "run_demo",
    "render_report", "main"]


def _interleaved(fns: dict[str, Callable[[], Any]], rows: int, rounds: int, repeats: int = 2) -> dict[str, dict[str, Any]]:
    """Single calls timed round by round (A, B, C, A, B, C, ...) after one warm-up call each, so that machine
    drift hits every candidate alike: median [Q1–Q3] seconds per call and rows per second at the median."""
    for fn in fns.values():
        fn()  # warm-up (first-call compilation, allocations) excluded
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    return {k: {**(s := spread(v)), "rows_per_s": rows / s["median_s"]} for k, v in times.items()}


def measure_throughput(runners: dict[str, Any], x: np.ndarray, rounds: int = 5) -> dict[str, dict[str, Any]]:
    """Median [IQR] seconds per batch of each ``nfkd.inference`` runner, interleaved round by round."""
    return _interleaved({k: (lambda r=r: r.log_prob(x)) for k, r in runners.items()}, len(x), rounds)


def measure_sampling(flows: dict[str, Any], seed: int, n: int = 4096, rounds: int = 3) -> dict[str, dict[str, Any]]:
    """Median [IQR] seconds to draw n samples with each eager flow (the same noise), interleaved."""
    noise = next(iter(flows.values())).sample_noise(n, generator=torch.Generator().manual_seed(seed))

    def draw(flow: Any) -> None:
        with torch.no_grad():
            flow.sample(n, noise=noise)

    return _interleaved({k: (lambda f=f: draw(f)) for k, f in flows.items()}, n, rounds)


def plot_samples(data: np.ndarray, samples: dict[str, np.ndarray], path: Path, cols: tuple[int, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["data", *samples]
    fig, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3), sharex=True, sharey=True)
    for ax, name in zip(axes, names):
        arr = data if name == "data" else samples[name]
        ax.scatter(arr[:, cols[0]], arr[:, cols[1]], s=3, alpha=0.5)
        ax.set_title(name if name == "data" else LABELS.get(name, name), fontsize=8)
    lo = np.percentile(data[:, list(cols)], 0.5, axis=0)
    hi = np.percentile(data[:, list(cols)], 99.5, axis=0)
    pad = (hi - lo) * 0.3
    axes[0].set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    axes[0].set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    fig.suptitle(f"features {cols[0]} vs {cols[1]}; models decode the same noise", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_throughput(tp: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.8))
    names = list(tp)
    ax.barh(names, [tp[n]["rows_per_s"] for n in names])
    ax.set_xlabel("log_prob rows / second (batch 4096)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _elapsed(log):
    """``log`` with the seconds since the demo started in front of each line."""
    t0 = time.perf_counter()
    return lambda m: log(f"[{time.perf_counter() - t0:6.0f} s] {m}")


def _plan(arch: str, method: str | None, protocol: str | None) -> tuple[list[str], str, str, str]:
    """(methods to train, the KD method, why it, the protocol); a typo fails before any training."""
    chosen = method is not None
    best_method, best_protocol, best_why = demo_recipe(arch)
    method, why = (method, "chosen with --method") if chosen else (best_method, best_why)
    protocol = protocol or ("equal-budget" if chosen else best_protocol)
    get_variant(method)
    if protocol not in ("equal-budget", "warm-start"):
        raise InputError(f"protocol must be 'equal-budget' or 'warm-start', got {protocol!r}")
    # A MAF teacher also gets the parallel-sampling IAF student (one MADE pass per block to sample).
    methods = list(dict.fromkeys(["none", "skd", method,
                                  *(["iaf"] if get_variant("iaf").applies_to(arch)
                                    and protocol == "equal-budget" else [])]))
    return methods, method, why, protocol


def _load_table(data_name: str, image_data: str | None, seed: int) -> tuple[TabularSplits, Any]:
    """(the table, its true density or None): the default synthetic table knows its exact density."""
    if data_name == SYNTHETIC:
        data, truth = load_synthetic(seed)
    else:
        data, truth = get_data(data_name, seed=seed), None
        if not isinstance(data, TabularSplits):
            raise InputError(f"--data must be a table (image sets go to --image-data), got {data_name!r}")
    if image_data:  # fail now, not after the tabular part
        from .data.registry import dataset_info

        if dataset_info(image_data).kind != "image":
            raise InputError(f"--image-data must be an image dataset, {image_data!r} is tabular")
    return data, truth


def _runners(t_res: Any, student: Any, ckpt: Path, out: Path, threads: int, log) -> tuple[dict[str, Any], dict]:
    """Eager teacher, eager / folded / ONNX Runtime (export with its parity gate) / numba student."""
    export_info: dict[str, Any] = {}
    runners = {"teacher (eager)": inference.load(t_res.flow, "eager", threads=threads),
               "student (eager)": inference.load(student, "eager", threads=threads),
               "student (folded)": inference.load(student, "folded", threads=threads)}
    try:
        ort_runner = inference.load(ckpt, "onnxruntime", threads=threads, export_dir=out / "export")
        export_info.update({"ok": True, "folder": str(ort_runner.folder),
                            "parity": ort_runner.info()["export"]["parity"]})
        runners["student (onnxruntime)"] = ort_runner
        log("  exported the student to ONNX; parity gate passed")
    except InputError as exc:  # onnxruntime / export not available here: report it, keep the rest
        export_info.update({"ok": False, "error": str(exc)})
        log(f"  ONNX export skipped: {exc}")
    try:  # the fused CPU engine (the `cpu` extra, tabular flows): the fastest CPU path where it runs
        runners["student (numba)"] = inference.load(student, "numba", threads=threads)
    except InputError as exc:
        log(f"  numba engine skipped: {exc}")
    return runners, export_info


def _throughput(runners: dict[str, Any], data: TabularSplits, threads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(density throughput per runner at batch 4096 with its speed-up over the eager teacher, the machine and load)."""
    from .tradeoff.machine import cpu_info

    x = np.ascontiguousarray(np.resize(data.test, (4096, data.dim)).astype(np.float32))
    load_start = machine_load()
    tp = measure_throughput(runners, x)
    teacher_rate = tp["teacher (eager)"]["rows_per_s"]
    for v in tp.values():
        v["speedup_vs_eager_teacher"] = v["rows_per_s"] / teacher_rate
    machine = {**cpu_info(), "load_start": load_start, "load_end": machine_load(), "threads": threads}
    return tp, machine


def _pictures(out: Path, runs: Path, data: TabularSplits, t_res: Any, students: dict[str, Any],
              tp: dict[str, Any], seed: int) -> None:
    """samples.png (every model decodes the same noise), throughput.png, and each run's loss curve."""
    g = torch.Generator().manual_seed(seed)
    noise = t_res.flow.sample_noise(1000, generator=g)
    with torch.no_grad():
        samples = {"teacher": t_res.flow.sample(1000, noise=noise).numpy()}
        samples.update({m: f.sample(1000, noise=noise).numpy() for m, f in students.items()})
    var = np.argsort(-np.abs(np.corrcoef(data.train.T) - np.eye(data.dim)).max(0))[:2]
    plot_samples(data.train, samples, out / "samples.png", (int(var[0]), int(var[1])))
    plot_throughput(tp, out / "throughput.png")
    for name in ["teacher", "base", *students]:
        curve = runs / name.replace(":", "_") / "loss_curve.png"
        if curve.exists():
            shutil.copy(curve, out / f"loss_curve_{name}.png")


def _tabular_part(out: Path, data: TabularSplits, truth: Any, arch: str, steps: tuple[int, int], threads: int,
                  seed: int, log, methods: list[str], protocol: str) -> dict[str, Any]:
    """Teacher -> students, test evaluation (paired, against the true density when known), the export of the
    best student by validation LL, throughput, plots: the report's tabular fields."""
    runs = out / "runs"
    base = dict(batch_size=128, lr=2e-3, warmup=50, eval_every=50, patience=12, checkpoint_every=500, seed=seed)
    references = {"truth": truth.log_prob(data.test)} if truth is not None else None
    t_res, students, results = train_family(data, arch, TrainConfig(steps=steps[0], **base),
                                            TrainConfig(steps=steps[1], **base), runs, seed,
                                            methods=methods, log=lambda m: log(f"  {m}"), protocol=protocol,
                                            warm_steps=steps[1] if protocol == "warm-start" else None,
                                            references=references)
    # The exported student serves densities: the IAF student (D passes per block for a density) is
    # there for sampling and is not a candidate.
    density_students = [m for m in students if get_variant(m).student_arch is None]
    best = max(density_students, key=lambda m: results[m]["log_likelihood"])  # by test LL for the report only
    best_by_val = min(density_students, key=lambda m: -evaluate(students[m], data, "val")["log_likelihood"])
    log(f"  best student by validation LL: {best_by_val}")
    runners, export_info = _runners(t_res, students[best_by_val], runs / best_by_val.replace(":", "_") / "model.pt",
                                    out, threads, log)
    log(f"  throughput of {len(runners)} runners at batch 4096 ({', '.join(runners)})")
    tp, machine = _throughput(runners, data, threads)
    _pictures(out, runs, data, t_res, students, tp, seed)
    sampling = measure_sampling({"teacher": t_res.flow, **students}, seed) if "iaf" in students else {}
    return {"results": results, "best_student_by_val": best_by_val, "best_student_by_test": best,
            "export": {"student": best_by_val, **export_info}, "throughput_batch4096": tp, "machine": machine,
            "sampling_batch4096": sampling,
            "truth": mean_2se(references["truth"]).as_dict() if references else None,
            "source": data.source}


def run_demo(out: Path, data_name: str = SYNTHETIC, arch: str = "glow1d", teacher_steps: int = 2000,
             student_steps: int = 1500, threads: int = 2, seed: int = 0, log=print,
             image_data: str | None = "digits_images", image_steps: tuple[int, int] = (1000, 600),
             fid_n: int = 0, inception: str | None = None, method: str | None = None,
             protocol: str | None = None, deploy: bool = True, deploy_rounds: int = 3) -> dict[str, Any]:
    """The whole demo: the tabular family, the deployment part, the image part; report.md after each."""
    torch.set_num_threads(threads)
    log = _elapsed(log)  # every phase line carries the time since the start (issue 27: no silent phase)
    chosen = method is not None
    methods, method, why, protocol = _plan(arch, method, protocol)
    data, truth = _load_table(data_name, image_data, seed)
    out.mkdir(parents=True, exist_ok=True)
    log(f"demo: {data_name} ({data.dim}-d, splits {data.sizes}), {arch} teacher -> students")
    report = {"out": str(out), "dataset": data_name, "arch": arch, "dim": data.dim, "splits": data.sizes,
              "methods": methods, "kd_method": method, "kd_method_why": why, "protocol": protocol, "threads": threads,
              **_tabular_part(out, data, truth, arch, (teacher_steps, student_steps), threads, seed, log, methods,
                              protocol)}
    _write_report(out, report)  # the tabular results are kept even if the image part fails
    if deploy:
        from .demo_deploy import run_deploy_demo

        runs, best = out / "runs", report["best_student_by_val"]
        own = flow_class(arch) is MAF  # the deployment part trains a MAF family of its own
        extra = {} if own else {f"{arch} teacher": runs / "teacher" / "model.pt",
                                          f"{arch} student ({best})": runs / best.replace(":", "_") / "model.pt"}
        report["deploy"] = run_deploy_demo(out, data, teacher_steps, student_steps, seed, log=log, extra_models=extra,
                                           rounds=deploy_rounds,
                                           teacher="MAF teacher" if own else f"{arch} teacher",
                                           references={"truth": truth.log_prob(data.test)} if truth else None)
        _write_report(out, report)
    if image_data:
        report["images"] = run_image_demo(out, image_data, *image_steps, seed=seed, fid_n=fid_n, log=log,
                                           inception=inception, method=method if chosen else None)
        _write_report(out, report)
    log(f"report: {out / 'report.md'}")
    return report


def _write_report(out: Path, report: dict[str, Any]) -> None:
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(out / "results.json", json.dumps(report, indent=1, default=str).encode())
    atomic_write_bytes(out / "report.md", render_report(report).encode())


def _results_lines(r: dict[str, Any]) -> list[str]:
    """The tabular family's table: test LL ± 2 SE, paired differences, gap closed, kept steps."""
    res, truth = r["results"], r.get("truth")
    n = res["teacher"]["n"]
    lines = [f"Test log-likelihood in nats per row (higher is better), mean ± 2 SE over the n = {n} test rows; "
             "differences are paired (per-row differences on the same test rows) ± 2 SE, 'within noise' when "
             "|difference| < 2 SE.", ""]
    if truth:
        lines += [f"The data are synthetic ({r.get('source', '')}): the **true density's own test LL is "
                  f"{fmt_estimate(Estimate(**truth))}**, the exact upper bound a model reaches in expectation; the "
                  "'− true density' column is minus a KL estimate (≤ 0 in expectation).", ""]
    head = "| model | params | test LL ± 2 SE | − no-KD student (paired) | gap closed |"
    head += " − true density (paired) |" if truth else ""
    lines += [head + " kept step | train s |", "|---|---:|---:|---:|---:|" + ("---:|" if truth else "") + "---:|---:|"]
    for name, v in res.items():
        cells = [LABELS[name], f"{v['params']:,}", score_cell(v), paired_cell(v, "none"), gap_cell(res, name)]
        cells += [paired_cell(v, "truth")] if truth else []
        kept = v.get("selection")
        cells += [f"{kept['best_step']} / {kept['steps']}" if kept else "", f"{v['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", gap_note(res), "", *headline_lines(res, LABELS, "truth" if truth else None),
              *selection_lines(res, LABELS)]
    return lines


def _throughput_lines(r: dict[str, Any]) -> list[str]:
    m = r.get("machine", {})
    th = f"{r['threads']} thread{'s' if r['threads'] != 1 else ''}"
    where = (f"{m.get('cpu', '?')} ({m.get('isa', '?')}), {th}; "
             + load_note(m.get("load_start"), m.get("load_end"), m.get("logical_cpus"), r["threads"],
                         busy_before=r["threads"]))  # it trained on these threads just before
    lines = [f"## Density throughput, batch 4096, {th}", "",
             f"Median [Q1–Q3] of single calls, interleaved round by round; {where}.", "",
             "| backend | ms / batch, median [IQR] | rows / s | vs eager teacher |", "|---|---:|---:|---:|"]
    for name, v in r["throughput_batch4096"].items():
        lines.append(f"| {name} | {fmt_spread_ms(v)} | {v['rows_per_s']:,.0f} | {v['speedup_vs_eager_teacher']:.2f}x |")
    lines += _ranking_note(r["throughput_batch4096"])
    if r.get("sampling_batch4096"):
        lines += ["", f"## Sampling time, batch 4096, {th}, eager (median [IQR], interleaved)", "",
                  "| model | ms / batch, median [IQR] | samples / s |", "|---|---:|---:|"]
        for name, v in r["sampling_batch4096"].items():
            lines.append(f"| {LABELS[name]} | {fmt_spread_ms(v)} | {v['rows_per_s']:,.0f} |")
    return lines


def _ranking_note(tp: dict[str, Any]) -> list[str]:
    """Say so when this run's numba student was slower than its eager one (``auto`` follows bench/'s ranking)."""
    n, e = tp.get("student (numba)"), tp.get("student (eager)")
    if not n or not e or n["median_s"] <= e["median_s"]:
        return []
    overlap = n["q1_s"] <= e["q3_s"]
    return ["", "In this run the numba student was slower than the eager one"
            + (" (their IQRs overlap: within this run's noise)" if overlap else "")
            + "; the `auto` backend follows the ranking measured by `bench/` on a quiet machine, not this run."]


def render_report(r: dict[str, Any]) -> str:
    res = r["results"]
    lines = [
        f"# nfkd demo — {r['dataset']} ({r['dim']}-d), {r['arch']}",
        "",
        f"Splits (train/val/test): {r['splits']}.",
        "",
        f"Distillation method: **{r['kd_method']}** ({get_variant(r['kd_method']).about}), next to the paper's "
        f"SKD and a no-KD student with the same budget. Why: {r['kd_method_why']}.",
        "",
        *(["Protocol: **warm start** — one no-KD student is trained first (the 'before' row); every student, the "
           "no-KD baseline included, continues from it for the same extra steps, so the extra steps are not "
           "credited to distillation.", ""] if r.get("protocol") == "warm-start" else []),
        *_results_lines(r),
        f"Best student on validation data: **{r['best_student_by_val']}** (exported).", "",
    ]
    ex = r["export"]
    lines.append(f"ONNX export: {'passed the parity gate' if ex.get('ok') else 'not run: ' + ex.get('error', '')}")
    lines += ["", *_throughput_lines(r)]
    lines += ["", "![samples](samples.png)", "", "![throughput](throughput.png)", ""]
    lines += [f"![loss {n}](loss_curve_{n}.png)" for n in res]
    text = "\n".join(lines) + "\n"
    if "deploy" in r:
        from .demo_deploy import render_deploy_section

        text += "\n" + render_deploy_section(r["deploy"], Path(r.get("out", ".")))
    if "images" in r:
        text += "\n" + render_image_section(r["images"])
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfkd demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--data", default=SYNTHETIC, help=f"a table (default {SYNTHETIC}: synthetic, exact density "
                        "known, 3000 test rows; or any tabular dataset name, e.g. breast_cancer)")
    parser.add_argument("--arch", default="glow1d", choices=architectures(tabular=True, teacher=True))
    parser.add_argument("--teacher-steps", type=int, default=2000)
    parser.add_argument("--student-steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", default=None, choices=["equal-budget", "warm-start"],
                        help="students from scratch at one budget, or all continuing one no-KD student (default: the "
                             "protocol the default method was measured under; equal-budget with --method)")
    parser.add_argument("--method", default=None,
                        help="distillation method next to no-KD and SKD (default: the best measured for the "
                             "architecture, see docs/experiments.md; list: python -m nfkd experiment --methods)")
    img = parser.add_argument_group("images")
    img.add_argument("--image-data", default="digits_images", help="image dataset (digits_images, cifar10, celeba)")
    img.add_argument("--no-images", action="store_true", help="skip the image part")
    img.add_argument("--image-teacher-steps", type=int, default=1000)
    img.add_argument("--image-student-steps", type=int, default=600)
    img.add_argument("--fid", type=int, default=0, metavar="N",
                     help="also FID of N samples (T=1, 0.7) and N interpolants per model (needs the fid extra)")
    img.add_argument("--inception", default=None, metavar="PATH", help="TorchScript Inception-v3 for --fid")
    parser.add_argument("--no-deploy", action="store_true",
                        help="skip the deployment part (MAF + IAF students, the pair bundle, the latency trade-off)")
    parser.add_argument("--quick", action="store_true", help="a tiny budget (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.teacher_steps, args.student_steps = 60, 40
        args.image_teacher_steps, args.image_student_steps = 40, 30
    run_demo(Path(args.out), args.data, args.arch, args.teacher_steps, args.student_steps, args.threads, args.seed,
             image_data=None if args.no_images else args.image_data,
             image_steps=(args.image_teacher_steps, args.image_student_steps), fid_n=args.fid,
             inception=args.inception, method=args.method, protocol=args.protocol, deploy=not args.no_deploy,
             deploy_rounds=1 if args.quick else 3)
    return 0
