"""The deployment trade-off (issue #28 item 6): every backend row, float64 test LL, budget picks, the
Pareto front, the report and the CLI. No timing thresholds: only what was measured and how it is read."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import nfkd
from nfkd.__main__ import main as nfkd_main
from nfkd.errors import InputError
from nfkd.inference.registry import BACKENDS, status
from nfkd.pipeline import flow_for, get_data
from nfkd.tradeoff import (
    cpu_info,
    measure_tradeoff,
    pareto_front,
    pick,
    plot_tradeoff,
    render_tradeoff_markdown,
    tradeoff_section,
)

from .helpers import one_line_error

BATCHES = (1, 8)


def _trained(data, config: dict, steps: int = 15):
    """A tiny flow fitted for a few steps, so that teacher and student have different test LLs."""
    torch.manual_seed(0)
    flow = flow_for(data, config)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    x = torch.from_numpy(data.train[:128])
    for _ in range(steps):
        opt.zero_grad()
        (-flow.log_prob(x).mean()).backward()
        opt.step()
    return flow.eval()


@pytest.fixture(scope="module")
def data():
    return get_data("breast_cancer")


@pytest.fixture(scope="module")
def flows(data):
    return {"teacher": _trained(data, {"arch": "maf", "blocks": 2, "hidden": 8}),
            "iaf": _trained(data, {"arch": "iaf", "blocks": 1, "hidden": 8})}


@pytest.fixture(scope="module")
def measured(data, flows):
    # torch.compile takes minutes on 2 cores (batch 1 recompiles; test_inference checks it): here its
    # row is loaded through the folded loader, so that the row is present and measured in seconds.
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKENDS, "compile", dataclasses.replace(BACKENDS["compile"],
                                                            loader="nfkd.inference.torch_runners:load_folded"))
        return measure_tradeoff(flows, data, rounds=1, batches=BATCHES, round_s=0.001, log=lambda m: None)


def test_every_backend_has_a_row_measured_or_with_its_reason(measured, flows):
    rows = {(r["model"], r["backend"]): r for r in measured["rows"]}
    assert set(rows) == {(m, b) for m in flows for b in BACKENDS}
    for (model, backend), row in rows.items():
        st = status(backend)
        runnable = (st.available and "cpu" in st.devices and BACKENDS[backend].runs(flows[model].arch)
                    and "cpu" in BACKENDS[backend].devices)  # the Triton interpreter is a test tool, not a deployment
        assert (row["status"] == "ok") == runnable, (model, backend, row["reason"])
        if runnable:
            for op in ("log_prob", "sample"):
                for b in BATCHES:
                    t = row["timings"][op][str(b)]
                    assert t["calls"] >= 1 and t["q1_s"] <= t["median_s"] <= t["q3_s"], (model, backend, op, b)
            assert row["agreement"]["agrees"] and row["agreement"]["rows"] == min(256, measured["n_test"])
        else:
            assert row["reason"]
    assert rows[("iaf", "numba")]["status"] == ("ok" if status("numba").available else "skipped")  # the engine runs IAF
    assert measured["machine"]["cpu"] and measured["threads"] == 1 and measured["teacher"] == "teacher"
    json.dumps(measured)  # JSON-able as it is


def test_test_ll_is_the_float64_mean_with_2se(measured, flows, data):
    for name, flow in flows.items():
        with torch.no_grad():
            lp = flow.double().log_prob(torch.from_numpy(data.test).double())
        flow.float()
        m = measured["models"][name]
        assert m["n"] == len(data.test) and m["params"] == flow.num_parameters()
        assert m["log_likelihood"] == pytest.approx(float(lp.mean()), rel=1e-12, abs=1e-12)
        assert m["ll_2se"] == pytest.approx(float(2 * lp.std() / math.sqrt(len(lp))), rel=1e-9)
    assert measured["models"]["teacher"]["log_likelihood"] != measured["models"]["iaf"]["log_likelihood"]
    # the paired difference on the same rows: per-row float64 differences, 2 SE with ddof=1
    with torch.no_grad():
        d = (flows["iaf"].double().log_prob(torch.from_numpy(data.test).double())
             - flows["teacher"].double().log_prob(torch.from_numpy(data.test).double())).numpy()
    for f in flows.values():
        f.float()
    vs = measured["models"]["iaf"]["vs_teacher"]
    assert vs["n"] == len(d) and vs["mean"] == pytest.approx(d.mean(), rel=1e-9)
    assert vs["se2"] == pytest.approx(2 * d.std(ddof=1) / math.sqrt(len(d)), rel=1e-9)
    assert "vs_teacher" not in measured["models"]["teacher"]


def _row(model, backend, medians: dict[tuple[str, int], float], agrees=True):
    timings = {"log_prob": {}, "sample": {}}
    for (op, b), s in medians.items():
        timings[op][str(b)] = {"median_s": s, "q1_s": s, "q3_s": s, "iqr_s": 0.0, "calls": 3}
    return {"model": model, "backend": backend, "status": "ok", "reason": "", "timings": timings,
            "agreement": {"rows": 10, "max_abs_diff": 0.0 if agrees else 5.0, "max_rel_diff": 0.0, "agrees": agrees}}


def _hand_made(teacher_numba_s: float = 5e-3):
    models = {"teacher": 10.0, "maf": 8.0, "iaf": 6.0, "bad": 12.0}
    return {
        "teacher": "teacher", "batches": [1], "ops": ["log_prob", "sample"],
        "models": {k: {"log_likelihood": v, "ll_2se": 0.1, "params": 1, "arch": "maf", "n": 10} for k, v in models.items()},
        "rows": [_row("teacher", "eager", {("sample", 1): 50e-3}),
                 _row("teacher", "numba", {("sample", 1): teacher_numba_s}),
                 _row("maf", "numba", {("sample", 1): 0.5e-3}),
                 _row("iaf", "eager", {("sample", 1): 0.2e-3}),
                 _row("bad", "numba", {("sample", 1): 0.01e-3}, agrees=False),  # disagrees: never picked
                 {"model": "iaf", "backend": "tensorrt", "status": "skipped", "reason": "no GPU",
                  "timings": {"log_prob": {}, "sample": {}}}],
    }


def test_pick_takes_the_highest_ll_under_the_budget():
    r = _hand_made()
    p = pick(r, 1e-3, "sample", 1)
    assert (p["model"], p["backend"]) == ("maf", "numba") and p["median_s"] <= 1e-3
    assert "teacher's fastest is numba" in p["why"] and not p["teacher_meets"]
    p = pick(r, 0.3e-3, "sample", 1)
    assert (p["model"], p["backend"]) == ("iaf", "eager")
    p = pick(r, 10e-3, "sample", 1)
    assert (p["model"], p["backend"]) == ("teacher", "numba") and p["teacher_meets"]
    assert "no student needed" in p["why"] and "teacher on numba meets 10 ms" in p["why"]


def test_pick_says_so_when_nothing_meets_the_budget():
    p = pick(_hand_made(), 1e-6, "sample", 1)
    assert p["model"] is None and p["backend"] is None
    assert "nothing meets 1 µs" in p["why"] and "fastest is iaf on eager" in p["why"]
    p = pick(_hand_made(), 1.0, "log_prob", 1)  # nothing measured for this op
    assert p["model"] is None and "no model/backend pair was measured" in p["why"]
    with pytest.raises(InputError):
        pick(_hand_made(), -1.0)
    with pytest.raises(InputError):
        pick(_hand_made(), 1.0, op="train")


def test_pick_teacher_on_numba_meets_1ms():
    p = pick(_hand_made(teacher_numba_s=0.4e-3), 1e-3, "sample", 1)
    assert (p["model"], p["backend"]) == ("teacher", "numba")
    assert p["why"].startswith("the teacher on numba meets 1 ms") and "no student needed" in p["why"]


def test_pareto_front_on_hand_made_points():
    pts = [(1.0, 5.0),   # 0 front (fastest)
           (2.0, 4.0),   # 1 dominated by 0
           (3.0, 7.0),   # 2 front
           (3.0, 6.0),   # 3 dominated by 2 (same latency, lower LL)
           (10.0, 7.0),  # 4 dominated by 2 (slower, same LL)
           (20.0, 9.0),  # 5 front
           (0.5, 1.0)]   # 6 front (fastest of all)
    assert pareto_front(pts) == [6, 0, 2, 5]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0]


def test_cpu_info_names_the_vector_width():
    assert cpu_info("model name\t: Xeon X\nflags\t\t: fpu sse2 avx2 avx512f fma\n")["vector_bits"] == 512
    info = cpu_info("model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n")
    assert (info["cpu"], info["isa"], info["vector_bits"]) == ("AMD EPYC", "AVX2", 256)


def test_report_table_plot_and_section(measured, tmp_path):
    text = render_tradeoff_markdown(measured, budgets=[("sample", 1, 1.0), ("log_prob", 8, 1e-9)])
    m = measured["machine"]
    assert m["cpu"] in text and f"{m['vector_bits']}-bit" in text and "1 thread" in text
    assert "| teacher (maf) |" in text and "| iaf (iaf) |" in text and "| iaf (iaf) | " in text
    skipped = [r for r in measured["rows"] if r["status"] != "ok"]
    lines = text.splitlines()
    assert skipped and all(any(ln.startswith(f"- {r['backend']} for ") and r["model"] in ln for ln in lines)
                           for r in skipped)  # each pair that did not run is listed with its reason
    assert "nothing meets 1 ns" in text
    vs = measured["models"]["iaf"]["vs_teacher"]
    assert f"{vs['mean']:+.3f} ± {vs['se2']:.3f}" in text  # the '− teacher' column
    assert f"load average {m['load_average'][0]:.1f} at start / {m['load_end']:.1f} at end" in text
    front = plot_tradeoff(measured, tmp_path / "t.png", "sample", 1)
    assert (tmp_path / "t.png").stat().st_size > 0 and front
    section = tradeoff_section(measured, tmp_path / "sec")
    assert section.startswith("## Deployment trade-off") and "![trade-off](tradeoff.png)" in section
    assert (tmp_path / "sec" / "tradeoff.png").exists()


def _checkpoints(tmp_path: Path, data) -> list[str]:
    paths = []
    for name, cfg in (("teacher", {"arch": "maf", "blocks": 2, "hidden": 8}),
                      ("student", {"arch": "glow1d", "steps": 1, "hidden": 8})):
        path = tmp_path / name / "model.pt"
        path.parent.mkdir()
        nfkd.save(flow_for(data, cfg), path, metadata={"dataset": "breast_cancer"})
        paths.append(str(path))
    return paths


def test_cli_writes_the_three_files(tmp_path, data, capsys):
    out = tmp_path / "out"
    rc = nfkd_main(["tradeoff", *_checkpoints(tmp_path, data), "--data", "breast_cancer", "--backends", "eager",
                    "folded", "tensorrt", "--batches", "1", "4", "--rounds", "1", "--budget-ms", "1000", "--op",
                    "log_prob", "--batch", "4", "--out", str(out)])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"tradeoff.md", "tradeoff.json", "tradeoff.png"}
    result = json.loads((out / "tradeoff.json").read_text())
    assert set(result["models"]) == {"teacher", "student"} and result["pick"]["model"] in ("teacher", "student")
    assert {r["backend"] for r in result["rows"]} == {"eager", "folded", "tensorrt"}
    assert "pick for 1 s (log_prob, batch 4)" in capsys.readouterr().out
    assert "Which model for a latency budget" in (out / "tradeoff.md").read_text()


def test_cli_refuses_bad_input_in_one_line(tmp_path, data, capsys):
    paths = _checkpoints(tmp_path, data)
    base = ["--data", "breast_cancer", "--rounds", "1", "--batches", "1", "--out", str(tmp_path / "o")]
    assert "model not found" in one_line_error(capsys, ["tradeoff", str(tmp_path / "nope.pt"), *base])
    assert "unknown backend 'cuda-magic'" in one_line_error(
        capsys, ["tradeoff", *paths, *base, "--backends", "eager", "cuda-magic"])
    wine = tmp_path / "wine.pt"
    nfkd.save(flow_for(get_data("wine"), {"arch": "maf", "blocks": 1, "hidden": 8}), wine)
    err = one_line_error(capsys, ["tradeoff", paths[0], str(wine), *base, "--backends", "eager"])
    assert "takes 13 features but breast_cancer has 30 columns" in err
    assert "--names gives 1 names for 2 models" in one_line_error(capsys, ["tradeoff", *paths, *base, "--names", "a"])
    assert not (tmp_path / "o").exists()


def test_measure_refuses_bad_models(data):
    with pytest.raises(InputError, match="takes 13 features"):
        measure_tradeoff({"w": flow_for(get_data("wine"), {"arch": "maf", "blocks": 1, "hidden": 8})}, data)
    with pytest.raises(InputError, match="unknown backend"):
        measure_tradeoff({"t": flow_for(data, {"arch": "maf", "blocks": 1, "hidden": 8})}, data, backends=["gpu"])
    with pytest.raises(InputError, match="batches"):
        measure_tradeoff({"t": flow_for(data, {"arch": "maf", "blocks": 1, "hidden": 8})}, data, batches=(0,))
