"""The main job end to end on a tiny budget: every artefact of the report folder exists."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from nfkd.experiment import LABELS
from nfkd.metrics import grid_size

REPO = Path(__file__).resolve().parents[1]


class _PoolFeatures(nn.Module):
    """Stand-in Inception (4x4 average pool): exercises the demo's FID plumbing in seconds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1)


@pytest.mark.slow
def test_demo_quick_writes_full_report(tmp_path):
    out = tmp_path / "demo"
    inception = tmp_path / "pool.pt"
    torch.jit.script(_PoolFeatures()).save(str(inception))
    proc = subprocess.run([sys.executable, "-m", "nfkd", "demo", "--quick", "--out", str(out), "--fid", "12",
                           "--inception", str(inception)],
                          capture_output=True, text=True, cwd=REPO, timeout=900,
                          env={**os.environ, "NFKD_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ["report.md", "results.json", "samples.png", "throughput.png", "loss_curve_teacher.png"]:
        assert (out / name).exists(), name
    res = json.loads((out / "results.json").read_text())
    from nfkd.distill.variants import demo_recipe

    (best, protocol, _), best_img = demo_recipe("glow1d"), demo_recipe("glow")[0]
    models = {"teacher", "none", "skd", best} | ({"base"} if protocol == "warm-start" else set())
    assert set(res["results"]) == models and res["kd_method"] == best and res["kd_method_why"]
    assert res["protocol"] == protocol
    assert res["export"]["ok"] is True
    assert (out / "export" / "manifest.json").exists()
    assert res["throughput_batch4096"]["student (onnxruntime)"]["rows_per_s"] > 0
    assert res["throughput_batch4096"]["student (numba)"]["rows_per_s"] > 0  # the fused CPU engine (dev extra)
    assert res["results"]["teacher"]["params"] > res["results"]["none"]["params"]
    # report.md's tables say what results.json says (test LL ± 2 SE, paired differences, gap closed, kept step)
    report = (out / "report.md").read_text()
    teacher = res["results"]["teacher"]
    assert teacher["n"] == 3000 and res["truth"]["n"] == 3000  # the synthetic table: 3000 test rows, density known
    assert "true density's own test LL is" in report and f"{res['truth']['mean']:.3f} ±" in report
    gap = teacher["vs_none"]
    for name, v in res["results"].items():
        row = next(ln for ln in report.splitlines() if ln.startswith(f"| {LABELS[name]} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"{v['params']:,}" and cells[2] == f"{v['log_likelihood']:.3f} ± {v['ll_2se']:.3f}", row
        # a paired difference's mean is the difference of the two means (same rows, all finite)
        assert v["vs_truth"]["mean"] == pytest.approx(v["log_likelihood"] - res["truth"]["mean"], abs=1e-6)
        assert v["selection"]["why"] and cells[6] == f"{v['selection']['best_step']} / {v['selection']['steps']}"
        if name != "none":
            assert v["vs_none"]["mean"] == pytest.approx(v["log_likelihood"] - res["results"]["none"]["log_likelihood"],
                                                         abs=1e-6)
            assert cells[3].startswith(f"{v['vs_none']['mean']:+.3f} ± {v['vs_none']['se2']:.3f}"), row
        if name not in ("teacher", "none"):
            share = f"{round(100 * v['vs_none']['mean'] / gap['mean']):d} %" if abs(gap["mean"]) >= gap["se2"] else None
            assert cells[4] == (share or "gap within noise"), row
    for name, v in res["throughput_batch4096"].items():
        assert v["q1_s"] <= v["median_s"] <= v["q3_s"]
        assert (f"| {name} | {1e3 * v['median_s']:.2f} [{1e3 * v['q1_s']:.2f}–{1e3 * v['q3_s']:.2f}] | "
                f"{v['rows_per_s']:,.0f} |") in report, name
    assert "load average" in report and res["machine"]["isa"] in report
    # the deployment part: the IAF row, the density + sampler pair, the trade-off table, picks and plot
    dep = res["deploy"]
    assert set(dep["results"]) == {"teacher", "none", "iaf"} and dep["results"]["iaf"]["arch"] == "iaf"
    assert (out / "pair" / "pair.json").is_file() and dep["pair"]["log_prob_max_abs_diff_vs_maf_student"] < 1e-3
    assert {r["model"] for r in dep["tradeoff"]["rows"]} >= {"MAF teacher", "MAF student", "IAF student"}
    assert (out / "tradeoff.png").is_file() and "![trade-off](tradeoff.png)" in report
    assert "| IAF student (recipe) |" in report and "Which model for a latency budget" in report
    assert "Faithfulness: teacher (maf) scores iaf samples" in report
    # the image part: bpd for every model, grids from the same noise, all linked from the report
    img = res["images"]
    models = {"teacher", "none", "skd", best_img}
    assert set(img["results"]) == models and img["kd_method"] == best_img
    assert all(r["bpd"] > 0 and r["nonfinite"] == 0 for r in img["results"].values())
    report = (out / "report.md").read_text()
    for name in img["grids"].values():
        assert (out / name).is_file() and f"]({name})" in report, name
    for name in models:
        f = img["fid"][name]
        assert f["fid"]["1.0"]["n_samples"] == 12 and f["fid"]["0.7"]["n_reference"] == 12
        assert f["fid"]["1.0"]["fid"] >= 0 and f["interpolation_fid"]["n_samples"] == 12
    assert "FID T=0.7" in report and "FID from 12 samples" in report
    grid = Image.open(out / img["grids"]["T=0.7"])
    assert grid.size == grid_size(len(models), 16, (8, 8), cols=4, scale=4)  # a panel of 4x4 digits per model
    assert f"Distillation method: **{best}**" in report and f"Distillation method: **{best_img}**" in report


@pytest.mark.slow
def test_demo_rejects_wrong_data_kinds_before_training(tmp_path):
    for args, message in ((["--image-data", "wine"], "must be an image dataset"),
                          (["--data", "digits_images"], "must be a table"),
                          (["--image-data", "mnist"], "unknown dataset")):
        proc = subprocess.run([sys.executable, "-m", "nfkd", "demo", "--quick", "--out", str(tmp_path / "d"), *args],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "d" / "runs").exists()  # nothing trained
