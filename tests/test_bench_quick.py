"""The benchmark suite cannot rot: its quick mode runs end to end and the report is right.

``python -m pytest`` does not collect ``bench/`` (``testpaths = ["tests"]``); this test runs the quick
suite in a subprocess (``python -m pytest bench --bench-quick``), then ``python -m bench.report`` on
its JSON, and checks the report's arithmetic on a hand-made JSON. ONNX exports are cached by
checkpoint hash (``$NFKD_BENCH_CACHE``, default ``~/.cache/nfkd-bench``): a cold cache adds the
three student exports (~10-25 s each on 2 loaded cores).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report

REPO = Path(__file__).resolve().parents[1]
EXTRA_KEYS = {"arch", "role", "backend", "dim", "batch", "params", "direction"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.mark.slow
def test_quick_suite_runs_and_reports_every_backend_that_ran(tmp_path):
    js = tmp_path / "quick.json"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "--bench-quick", f"--benchmark-json={js}", "-q",
         "-p", "no:cacheprovider", "--benchmark-columns=min,median,rounds"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    data = json.loads(js.read_text())
    benches = data["benchmarks"]
    assert benches
    for b in benches:
        e = b["extra_info"]
        assert EXTRA_KEYS <= e.keys(), b["name"]
        assert b["group"] == f"{e['direction']} {e['arch']} d={e['dim']} batch={e['batch']}"
        assert e["params"] > 0 and b["stats"]["rounds"] >= 1 and b["stats"]["median"] > 0
        assert e["flops"] > 0 and e["gflops"] > 0 and 0 < e["pct_of_peak"]  # the roofline columns
        if e["backend"] not in ("nflows", "zuko"):  # every nfkd row, density and samples, every batch size
            assert 0.0 <= e["err_over_tol_vs_eager64"] <= 1.0, (b["name"], e["err_over_tol_vs_eager64"])
    ran = {b["extra_info"]["backend"] for b in benches}
    expected = {"eager", "folded", "onnxruntime"} | {p for p in ("nflows", "zuko") if importlib.util.find_spec(p)}
    assert expected <= ran, ran
    pairs = {(b["extra_info"]["direction"], b["extra_info"]["arch"]) for b in benches}
    assert pairs == {(d, a) for d in ("density", "sample") for a in ("glow1d", "maf", "glow")}
    # every group has its reference (the eager teacher), so every speed-up is defined
    groups = {b["group"] for b in benches}
    refs = {b["group"] for b in benches if b["extra_info"]["backend"] == "eager" and b["extra_info"]["role"] == "teacher"}
    assert groups == refs
    assert data["machine_info"]["bench_threads"] == 2 and data["machine_info"]["omp_wait_policy"]
    roof = data["machine_info"]["roofline"]
    assert roof["peak_gflops"] > 0 and roof["peak_gflops_1t"] > 0 and roof["copy_gbs"] > 0
    # nothing unavailable on CPU may fail: GPU-only backends are skipped with a reason
    assert " failed" not in run.stdout.splitlines()[-1]

    out = tmp_path / "report"
    rep = subprocess.run([sys.executable, "-m", "bench.report", str(js), "-o", str(out)],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    md = (out / "report.md").read_text()
    assert "## Table 2 layout" in md and "## Key comparisons" in md
    for backend in ran:
        assert report.BACKEND_LABEL[backend] in md, backend
    assert "ONNX Runtime student vs eager teacher" in md
    assert "roofline (measured in the same run)" in md and "GFLOP/s (% peak)" in md
    if ran & {"nflows", "zuko"}:  # the peer section exists exactly when a peer library ran
        assert "nflows / zuko" in md
    for direction, arch in pairs:
        png = out / f"report-{direction}-{arch}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
        assert f"]({png.name})" in md
    rows = list((out / "report.csv").read_text().splitlines())
    assert len(rows) == len(benches) + 1


def _bench(name, direction, arch, dim, batch, role, backend, median, params=1000, mean=None, std=0.0, rounds=5):
    return {
        "name": name, "fullname": f"bench/x.py::{name}", "group": f"{direction} {arch} d={dim} batch={batch}",
        "extra_info": {"arch": arch, "role": role, "backend": backend, "dim": dim, "batch": batch,
                       "params": params, "direction": direction, "shape": str(dim)},
        "stats": {"min": median * 0.9, "max": median * 1.2, "mean": mean or median, "stddev": std,
                  "median": median, "q1": median * 0.95, "q3": median * 1.1, "iqr": median * 0.15,
                  "rounds": rounds, "iterations": 1},
    }


def _write(path: Path, benches: list[dict], **machine) -> Path:
    path.write_text(json.dumps({"machine_info": {"bench_mode": "full", "bench_threads": 2, **machine},
                                "datetime": "now", "version": "5", "benchmarks": benches}))
    return path


def test_report_arithmetic_on_a_hand_made_json(tmp_path):
    js = _write(tmp_path / "r.json", [
        _bench("t_eager", "density", "maf", 8, 4096, "teacher", "eager", 0.010, params=20000, mean=0.011, std=0.001),
        _bench("s_eager", "density", "maf", 8, 4096, "student", "eager", 0.004, params=10000),
        _bench("s_ort", "density", "maf", 8, 4096, "student", "onnxruntime", 0.002, params=10000),
        _bench("t_ort", "density", "maf", 8, 4096, "teacher", "onnxruntime", 0.005, params=20000),
        _bench("t_nflows", "density", "maf", 8, 4096, "teacher", "nflows", 0.020, params=20000),
        _bench("lonely", "sample", "maf", 8, 256, "student", "eager", 0.5),  # no eager teacher: no speed-up
    ])
    rows, _ = report.load_rows([js])
    report.derive(rows, "median")
    by = {r.name: r for r in rows}
    assert by["s_ort"].speedup == pytest.approx(5.0)
    assert by["s_ort"].samples_per_s == pytest.approx(4096 / 0.002)
    assert by["t_eager"].speedup == pytest.approx(1.0)
    assert by["s_eager"].speedup == pytest.approx(2.5)
    assert by["t_nflows"].speedup == pytest.approx(0.5)
    assert by["lonely"].speedup is None and by["lonely"].samples_per_s == pytest.approx(512)
    report.derive(rows, "min")  # another statistic: same ratios here (min = 0.9 median for all)
    assert by["s_ort"].speedup == pytest.approx(5.0) and by["s_ort"].time_s == pytest.approx(0.0018)
    assert report.geomean([2.0, 8.0]) == pytest.approx(4.0) and math.isnan(report.geomean([]))

    md = report.build_report([js], tmp_path / "out", "t", plots=False).read_text()
    assert "| MAF | 8 | 10.0 [9.50–11.0] | 410 k | 2.00 [1.90–2.20] | 2.05 M | 5x | 2x |" in md  # median [IQR]
    assert "**5x**" in md  # geometric mean of the (single) ORT-student speed-up
    # columns: batch 256, batch 4096 (the lonely sampling row has batch 256 but no teacher)
    assert "| density | MAF | eager PyTorch | - | 2.5x |" in md and "| density | MAF | ONNX Runtime | - | 2.5x |" in md
    assert "| density | teacher | 8 | 4096 | 10.0 | 5.00 (onnxruntime) | 20.0 (2x) | - |" in md
    assert "| 8 | 4096 | 20.0 / 10.0 | 10.0 | 4.00 (2.5x) | 5.00 (2x) | 2.00 (5x) | 20.0 (0.5x) |" in md
    assert "| 8 | 256 | student | eager PyTorch | 1.0 | 500 [n/a] |" not in md  # 5 rounds: the IQR is shown
    assert "| 8 | 256 | student | eager PyTorch | 1.0 | 500 [475–550] | 450 | 512 | - | - | 5x1 |" in md


def _roof_bench(name, gflops):
    b = _bench(name, "density", "maf", 8, 4096, "student", "numba", 0.001)
    b["extra_info"].update({"gflops": gflops, "pct_of_peak": 999.0})  # the stored share is not trusted
    return b


def test_percent_of_peak_only_against_the_same_runs_peak_and_flagged_under_load(tmp_path):
    roof = {"peak_gflops": 50.0, "peak_gflops_1t": 25.0, "copy_gbs": 10.0, "copy_gbs_1t": 8.0, "threads": 2}
    quiet = _write(tmp_path / "q.json", [_roof_bench("a", 10.0)], roofline=roof, cpu_count=2,
                   loadavg_start=[0.2], loadavg_end=[2.1])  # at the end its own 2 threads count: quiet
    busy = _write(tmp_path / "b.json", [_roof_bench("b", 60.0)], roofline=roof, cpu_count=2,
                  loadavg_start=[3.5], loadavg_end=[5.0])
    nopeak = _write(tmp_path / "n.json", [_roof_bench("c", 10.0)], cpu_count=2)
    rows, infos = report.load_rows([quiet, busy, nopeak])
    by = {r.name: r for r in rows}
    assert report.pct_of_peak(by["a"]) == pytest.approx(20.0) and not by["a"].loaded
    assert report._fmt_roof(by["a"]) == "10.00 (20.0 %)"
    assert by["b"].loaded and report._fmt_roof(by["b"]) == "60.00 (120.0 %; peak measured under load)"
    assert report.pct_of_peak(by["c"]) is None and report._fmt_roof(by["c"]) == "10.00 (-)"
    md = report.render(report.derive(rows), infos, "median")
    assert "`b.json`: **the machine was loaded**" in md and "`q.json`: **the machine was loaded**" not in md


def test_report_marks_speedups_whose_reference_comes_from_another_run(tmp_path):
    a = _write(tmp_path / "a.json", [_bench("t", "density", "glow1d", 6, 1, "teacher", "eager", 0.004)])
    b = _write(tmp_path / "b.json", [_bench("s", "density", "glow1d", 6, 1, "student", "onnxruntime", 0.001),
                                     _bench("s2", "density", "glow1d", 6, 1, "student", "eager", 0.002)])
    rows, infos = report.load_rows([a, b])
    report.derive(rows)
    by = {r.name: r for r in rows}
    assert by["s"].speedup == pytest.approx(4.0) and by["s"].speedup_other_run and not by["t"].speedup_other_run
    md = report.render(rows, infos, "median")
    assert "0.001" not in md and "1.00 (4x†)" in md
    # a later file replaces a same-named benchmark of an earlier one
    c = _write(tmp_path / "c.json", [_bench("t", "density", "glow1d", 6, 1, "teacher", "eager", 0.008)])
    rows, _ = report.load_rows([a, b, c])
    report.derive(rows)
    assert {r.name: r for r in rows}["s"].speedup == pytest.approx(8.0)


def test_cpu_engine_peak_pairs_and_iaf_sections_run(capsys):
    """bench.cpu_engine's adjacent-pair % of peak and the IAF section (with the draw rows) on tiny sizes:
    every row present, every ratio a finite positive number (their timings are not asserted)."""
    pytest.importorskip("numba")
    pytest.importorskip("zuko")
    import re

    from bench import cpu_engine

    assert cpu_engine.main(["--only", "peak", "--only", "iaf", "--dims", "6", "--batch", "256", "--peak-pairs", "3",
                            "--iaf-dim", "6", "--iaf-rounds", "1"]) == 0
    out = capsys.readouterr().out
    for arch in ("glow1d", "maf"):
        row = re.search(rf"^\| {arch} \| 6 \| .*\*\*(\d+) %\*\* \[(\d+), (\d+)\] \|$", out, re.M)
        assert row, out[-2000:]
        q1, med, q3 = int(row.group(2)), int(row.group(1)), int(row.group(3))
        assert 0 < q1 <= med <= q3
    for label in ("the draw alone, numba's copy of numpy's normals", "the draw alone, numpy",
                  "IAF student, numba, numpy's own draw", "IAF student, numba, given noise"):
        assert re.search(rf"^\| {re.escape(label)} \| [\d.]+ \|", out, re.M), label
