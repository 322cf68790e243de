"""The demo's deployment part: a MAF teacher, a MAF student (density), an IAF student (one-pass sampler),
the density + sampler pair as one deployable bundle, and the latency / quality trade-off.

Why a MAF family next to the demo's Glow-1D one: the deployable sampler is an IAF, which is the
MAF's mirror image (one pass to sample, D passes for a density); the pair routes ``log_prob`` to
the MAF student and ``sample`` to the IAF, and the trade-off table says which model on which
backend meets a latency budget (sometimes the teacher itself, on the fused CPU engine).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .demo_tables import paired_cell, score_cell, selection_lines
from .experiment import LABELS, train_family
from .train import TrainConfig

__all__ = ["DEMO_BACKENDS", "run_deploy_demo", "render_deploy_section"]

#: Backends the demo times (``python -m nfkd tradeoff`` times every one available). torch.compile is left
#: out here: compiling every model and op takes minutes on 2 cores and it ranks behind numba on CPU.
DEMO_BACKENDS = ("eager", "folded", "numba", "onnxruntime")


def _bundle(out: Path, runs: Path, data: Any, seed: int) -> dict[str, Any]:
    """pair/: the MAF student (density) + the IAF student (sampler), faithfulness against the teacher."""
    from .cli.pair import bundle_pair
    from .inference import load

    paths = {k: runs / k / "model.pt" for k in ("teacher", "none", "iaf")}
    folder, record = bundle_pair(paths["none"], paths["iaf"], out / "pair", paths["teacher"], data, seed=seed)
    pair = load(folder, threads=1)
    x = np.ascontiguousarray(data.test[:64].astype(np.float32))
    routed = float(np.max(np.abs(pair.log_prob(x) - load(paths["none"], "eager", threads=1).log_prob(x))))
    return {"folder": "pair", "backend": pair.info()["backend"], "faithfulness": record,
            "log_prob_max_abs_diff_vs_maf_student": routed}


def run_deploy_demo(out: Path, data: Any, teacher_steps: int, student_steps: int, seed: int, log: Callable = print,
                    extra_models: dict[str, Path] | None = None, rounds: int = 3,
                    batches: tuple[int, ...] = (1, 4096), teacher: str = "MAF teacher",
                    references: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Train the MAF family, bundle the pair, measure the trade-off; everything lands in ``out``.

    ``extra_models`` (name -> checkpoint) join the trade-off, e.g. the demo's own teacher and student;
    ``teacher`` names the model the picks compare against ("the teacher itself meets the budget");
    ``references`` (name -> per-row test log p, e.g. the true density) every model is paired against.
    """
    from .tradeoff import measure_tradeoff

    runs = out / "runs" / "deploy"
    base = dict(batch_size=128, lr=2e-3, warmup=50, eval_every=50, patience=12, checkpoint_every=500, seed=seed)
    log(f"deployment: MAF teacher -> MAF student + IAF student ({LABELS['iaf']}) on {data.name}")
    _, _, results = train_family(data, "maf", TrainConfig(steps=teacher_steps, **base),
                                 TrainConfig(steps=student_steps, **base), runs, seed, methods=["none", "iaf"],
                                 log=lambda m: log(f"  {m}"), references=references)
    pair = _bundle(out, runs, data, seed)
    log(f"  pair bundle: {out / 'pair'} ({pair['faithfulness']['summary']})")
    models = {"MAF teacher": runs / "teacher" / "model.pt", "MAF student": runs / "none" / "model.pt",
              "IAF student": runs / "iaf" / "model.pt", **(extra_models or {})}
    log(f"  trade-off: {len(models)} models x {len(DEMO_BACKENDS)} backends, batches {batches}, 1 thread")
    trained_on = torch.get_num_threads()  # the threads the training just before kept busy
    tradeoff = measure_tradeoff({k: str(v) for k, v in models.items()}, data, backends=list(DEMO_BACKENDS),
                                threads=1, batches=batches, rounds=rounds, log=lambda m: log(f"    {m}"),
                                teacher=teacher, export_dir=out / "runs" / "deploy_exports", seed=seed,
                                references=references)
    tradeoff["machine"]["busy_before"] = trained_on  # the load average still holds that work: not other work
    return {"results": results, "pair": pair, "tradeoff": tradeoff}


def render_deploy_section(d: dict[str, Any], out: Path) -> str:
    """The report's deployment section: the MAF family's table, the pair, the trade-off table and plot."""
    from .tradeoff import tradeoff_section

    res = d["results"]
    lines = ["## Deployment: a fast sampler, the density + sampler pair, the latency / quality pick", "",
             "A MAF teacher, a MAF student (the density model: one pass per block) and an IAF student (the "
             "sampler: one pass per block to sample, D passes for its density) trained by the recipe "
             "(maximum likelihood, with half of every batch from the teacher's samples below 1000 training "
             f"rows). Test log-likelihood in nats ± 2 SE (n = {res['teacher']['n']} test rows); '− teacher' is the "
             "paired difference on the same rows ± 2 SE; the sample columns score 2000 samples without the "
             "model's own density.", "",
             "| model | params | test LL | − teacher (paired) | median | teacher median LL of its samples | "
             "energy distance | kept step |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    names = {"teacher": "MAF teacher", "none": "MAF student (maximum likelihood)"}
    for name, v in res.items():
        kept = v.get("selection")
        lines.append(f"| {names.get(name, LABELS[name])} | {v['params']:,} | {score_cell(v)} | "
                     f"{paired_cell(v, 'teacher')} | {v['median_log_likelihood']:.3f} | "
                     f"{v['teacher_ll_of_samples_median']:.3f} | {v['energy_distance']:.4f} | "
                     + (f"{kept['best_step']} / {kept['steps']}" if kept else "") + " |")
    lines += ["", *selection_lines(res, {**LABELS, **names})]
    p = d["pair"]
    lines += ["", f"**The pair** (`{p['folder']}/`, load with `nfkd.inference.load('{p['folder']}')`, serve with "
              f"`python -m nfkd serve {p['folder']}`): `log_prob` from the MAF student, `sample` from the IAF "
              f"student, backends `{p['backend']}`; its log_prob equals the MAF student's to "
              f"{p['log_prob_max_abs_diff_vs_maf_student']:.1e} nats. Faithfulness: {p['faithfulness']['summary']}.",
              ""]
    return "\n".join(lines) + "\n" + tradeoff_section(d["tradeoff"], out, op="sample", batch=1)
