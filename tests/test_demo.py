"""The main job end to end on a tiny budget: every artefact of the report folder exists."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_quick_writes_full_report(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "nfkd", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ["report.md", "results.json", "samples.png", "throughput.png", "loss_curve_teacher.png"]:
        assert (out / name).exists(), name
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]) == {"teacher", "none", "lkd", "ilkd", "skd"}
    assert res["export"]["ok"] is True
    assert (out / "export" / "manifest.json").exists()
    assert res["throughput_batch4096"]["student (onnxruntime)"]["rows_per_s"] > 0
    assert res["results"]["teacher"]["params"] > res["results"]["none"]["params"]
