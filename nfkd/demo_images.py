"""The image part of ``python -m nfkd demo``: Glow teacher -> students on a small image set.

Default data: scikit-learn's 8x8 digits as 17-level images (bundled, no download), so the demo
runs anywhere in a few CPU minutes; ``--image-data cifar10`` uses the shared CIFAR-10 instead.
Writes the paper's image views: test bits/dim, sample grids of every model decoded from the SAME
unit noise at temperatures 0.7 and 1.0, an eq.-16 interpolation grid between the same real image
pairs, and with ``--fid N`` (needs the ``fid`` extra) FID per temperature and interpolation FID.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import InputError
from .pipeline import get_data

__all__ = ["run_image_demo", "render_image_section"]

#: Short panel titles: an 8x8 digit grid is narrow.
SHORT = {"teacher": "teacher", "none": "no KD", "lkd": "LKD", "ilkd": "ILKD", "skd": "SKD", "fkl": "fwd KL",
         "density": "density", "init": "init", "ilkd-aligned": "ILKD+R"}
GRID_TEMPERATURES = (0.7, 1.0)
GRID_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def run_image_demo(out: Path, data_name: str = "digits_images", teacher_steps: int = 1000, student_steps: int = 600,
                   seed: int = 0, fid_n: int = 0, log: Callable[[str], None] = print,
                   inception: str | None = None, method: str | None = None) -> dict[str, Any]:
    """Train the family, write the grids (and FID when asked) under ``out``; return a JSON-ready dict."""
    from .data.images import ImageSplits
    from .distill.variants import demo_recipe
    from .experiment import train_family
    from .metrics import interpolation_grid, sample_grid
    from .train import TrainConfig

    method, why = (method, "chosen with --method") if method else demo_recipe("glow")[::2]
    methods = list(dict.fromkeys(["none", "skd", method]))
    data = get_data(data_name, seed=seed)
    if not isinstance(data, ImageSplits):
        raise InputError(f"--image-data must be an image dataset, {data_name!r} is tabular")
    n_levels = int(data.train.n_levels)
    base = dict(batch_size=64, lr=1e-3, warmup=50, eval_every=50, patience=12, checkpoint_every=500, seed=seed)
    log(f"demo (images): {data_name} {tuple(data.shape)}, {n_levels} levels, splits {data.sizes}, glow teacher -> students")
    t_res, students, results = train_family(data, "glow", TrainConfig(steps=teacher_steps, **base),
                                            TrainConfig(steps=student_steps, **base), out / "runs_images", seed,
                                            methods=methods, log=lambda m: log(f"  {m}"))
    flows = {"teacher": t_res.flow, **students}
    titled = {SHORT.get(k, k): f for k, f in flows.items()}
    width = int(data.shape[-1])
    scale = 4 if width <= 16 else 2 if width <= 32 else 1  # digits drawn at 32 px, CIFAR at 64, CelebA as is

    noise = t_res.flow.sample_noise(16, generator=torch.Generator().manual_seed(seed))
    grids = {}
    for t in GRID_TEMPERATURES:
        name = f"grid_T{t:g}.png"
        sample_grid(titled, out / name, noise, t, n_levels=n_levels, cols=4, scale=scale)
        grids[f"T={t:g}"] = name
    rng = np.random.RandomState(seed)
    idx = rng.choice(len(data.test.images), 8, replace=False)
    interpolation_grid(titled, data.test.images[idx[:4]], data.test.images[idx[4:]], out / "grid_interpolation.png",
                       GRID_ALPHAS, n_levels, scale=scale)
    grids["interpolation"] = "grid_interpolation.png"
    log(f"  grids: {', '.join(grids.values())}")

    report: dict[str, Any] = {"dataset": data_name, "shape": list(data.shape), "n_levels": n_levels,
                              "splits": data.sizes, "results": results, "grids": grids, "kd_method": method,
                              "kd_method_why": why}
    if fid_n:
        report["fid"] = _fid_all(flows, data, fid_n, seed, log, inception)
    return report


def _fid_all(flows: dict[str, Any], data: Any, fid_n: int, seed: int, log: Callable[[str], None],
             inception: str | None = None) -> dict[str, Any]:
    """FID at T=1.0 and 0.7 and interpolation FID for every model; one Inception and reference shared."""
    from .metrics import image_metrics
    from .metrics.fid import InceptionFeatures, MissingDependencyError

    try:
        ext = InceptionFeatures(inception, progress=False)
    except MissingDependencyError as exc:
        log(f"  FID skipped: {exc}")
        return {"skipped": str(exc)}
    out = {}
    for name, flow in flows.items():
        out[name] = image_metrics(flow, data, fid_n, (1.0, 0.7), interpolation=True, seed=seed, extractor=ext,
                                  progress=False)
        f = out[name]["fid"]
        log(f"  {name:<7}  FID(T=1) {f['1.0']['fid']:.1f}  FID(T=0.7) {f['0.7']['fid']:.1f}  "
            f"interp FID {out[name]['interpolation_fid']['fid']:.1f}  (N={fid_n})")
    return out


def render_image_section(r: dict[str, Any]) -> str:
    """The report.md section: bpd table (with FID columns when computed) and the grids."""
    from .demo_tables import gap_cell, gap_note, headline_lines, paired_cell, score_cell, selection_lines
    from .experiment import LABELS

    res = r["results"]
    fid = r.get("fid") if "skipped" not in r.get("fid", {}) else None
    head = "| model | params | test bpd ± 2 SE | − no-KD student (paired) | gap closed | train s |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if fid:
        first = next(iter(fid.values()))["fid"]["1.0"]
        n, n_ref = first["n_samples"], first["n_reference"]
        head += " FID T=1 | FID T=0.7 | interp. FID |"
        rule += "---:|---:|---:|"
    lines = [
        f"## Images — {r['dataset']} {'x'.join(map(str, r['shape']))}, {r['n_levels']} levels, Glow",
        "",
        f"Splits (train/val/test): {r['splits']}. Bits per dimension on the test split (lower is better), mean ± 2 SE "
        f"over the n = {res['teacher']['n']} test images; differences paired on the same images ± 2 SE.",
        "",
        f"Distillation method: **{r['kd_method']}**, next to the paper's SKD and a no-KD student. "
        f"Why: {r['kd_method_why']}.",
        "",
        head,
        rule,
    ]
    for name, v in res.items():
        row = (f"| {LABELS[name]} | {v['params']:,} | {score_cell(v)} | {paired_cell(v, 'none')} | {gap_cell(res, name)} "
               f"| {v['seconds']:.0f} |")
        if fid:
            f = fid[name]
            row += f" {f['fid']['1.0']['fid']:.1f} | {f['fid']['0.7']['fid']:.1f} | {f['interpolation_fid']['fid']:.1f} |"
        lines.append(row)
    lines += ["", gap_note(res), "", *headline_lines(res, LABELS), *selection_lines(res, LABELS)]
    if fid:
        lines += ["", f"FID from {n} samples vs {n_ref} test images (Inception-v3 pool features); small-N FID is "
                      "biased upwards, so compare rows with each other, not with published numbers."]
    elif r.get("fid"):
        lines += ["", f"FID not computed: {r['fid']['skipped']}"]
    order = ", ".join(SHORT.get(k, k) for k in res)
    lines += ["", f"Every panel decodes the same unit noise, scaled by the temperature (left to right: {order}):", ""]
    lines += [f"![samples {k}]({v})" for k, v in r["grids"].items() if k != "interpolation"]
    lines += ["", "Eq.-16 norm-preserving interpolation between the same four pairs of test images "
                  f"(columns alpha = {', '.join(f'{a:g}' for a in GRID_ALPHAS)}; each model encodes the pair itself):",
              "", f"![interpolation]({r['grids']['interpolation']})", ""]
    return "\n".join(lines) + "\n"
