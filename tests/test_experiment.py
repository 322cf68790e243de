"""Experiment table: the summary arithmetic against hand values, and a tiny end-to-end run."""
from __future__ import annotations

import json

import pytest

from nfkd.experiment import markdown_table, run_experiment, summarize
from nfkd.train import TrainConfig


def _runs(values):
    return [{"log_likelihood": v, "params": 10, "seconds": 1.0} for v in values]


def test_summary_mean_std_and_gap_closed():
    runs = {"teacher": _runs([-1.0, -2.0, -3.0]), "none": _runs([-5.0, -6.0, -7.0]), "ilkd": _runs([-4.0, -4.0, -4.0])}
    s = summarize(runs)
    assert s["teacher"]["mean"] == pytest.approx(-2.0) and s["teacher"]["std"] == pytest.approx(1.0)
    # gap = -2 - (-6) = 4; ILKD closes (-4 - (-6)) / 4 = 50 %.
    assert s["ilkd"]["gap_closed"] == pytest.approx(0.5)
    assert s["none"]["gap_closed"] == pytest.approx(0.0) and s["teacher"]["gap_closed"] == pytest.approx(1.0)
    # Paired by seed: ILKD minus no-KD = (+1, +2, +3) -> mean 2, std 1, better in 3/3 seeds.
    assert s["ilkd"]["delta_vs_none"] == pytest.approx(2.0) and s["ilkd"]["delta_std"] == pytest.approx(1.0)
    assert s["ilkd"]["seeds_better_than_none"] == 3
    # 2 SE of a mean over seeds = 2 std / sqrt(seeds); the gap (4 ± 0) is outside its noise.
    assert s["ilkd"]["delta_2se"] == pytest.approx(2 / 3 ** 0.5) and s["teacher"]["se2"] == pytest.approx(2 / 3 ** 0.5)
    assert s["ilkd"]["gap_within_noise"] is False


def test_gap_closed_only_when_the_gap_is_outside_its_noise():
    """One seed: the 2 SE come from the per-row paired differences; a teacher within noise of no-KD gets no share."""
    def run(v, vs_none_se2):
        return [{"log_likelihood": v, "ll_2se": 1.0, "n": 300, "params": 10, "seconds": 1.0,
                 "vs_none": {"mean": v + 5.0, "se2": vs_none_se2, "n": 300}}]

    runs = {"teacher": run(-4.5, 0.8), "none": _runs([-5.0]), "skd": run(-4.0, 0.1)}
    s = summarize(runs)
    assert s["teacher"]["delta_2se"] == 0.8 and s["teacher"]["gap_within_noise"] is True
    assert s["skd"]["delta_2se"] == 0.1 and s["skd"]["gap_within_noise"] is True  # the gap is noise, not the row
    table = markdown_table({"summary": s, "runs": runs, "dataset": "wine", "arch": "glow1d", "seeds": 1})
    skd = next(line for line in table.splitlines() if line.startswith("| Student + SKD"))
    assert "+1.000 ± 0.100 |" in skd and "gap within noise" in skd and "-4.000 ± 1.000" in skd
    teacher = next(line for line in table.splitlines() if line.startswith("| Teacher"))
    assert "+0.500 ± 0.800 (within noise)" in teacher and "2 SE over the 300 test rows" in table


def test_table_without_no_kd_students_has_no_paired_columns():
    """--methods without 'none': no gap or paired delta to report, and no crash on the teacher row."""
    runs = {"teacher": _runs([-1.0, -2.0]), "fkl": _runs([-4.0, -5.0])}
    res = {"summary": summarize(runs), "runs": runs, "dataset": "magic", "arch": "glow1d", "seeds": 2}
    table = markdown_table(res)
    teacher_row = next(line for line in table.splitlines() if line.startswith("| Teacher"))
    assert "-1.500 ± 1.000" in teacher_row and teacher_row.endswith("|  |  |  |  | 1 |")  # 2 std / sqrt(2)
    assert "`fkl`" in table


@pytest.mark.slow
def test_tiny_experiment_end_to_end(tmp_path):
    cfg = TrainConfig(steps=15, batch_size=32, eval_every=5, progress=False, warmup=2)
    res = run_experiment("wine", "glow1d", 2, tmp_path, teacher_cfg=cfg, student_cfg=cfg, methods=["none", "lkd"],
                         log=lambda *_: None)
    assert len(res["runs"]["teacher"]) == 2 and len(res["runs"]["lkd"]) == 2
    table = (tmp_path / "table.md").read_text()
    assert "Student + LKD" in table and "± " in table
    assert json.loads((tmp_path / "results.json").read_text())["seeds"] == 2
    assert markdown_table(res) == table


@pytest.mark.slow
def test_warm_start_students_continue_the_base_student(tmp_path):
    cfg = TrainConfig(steps=12, batch_size=32, eval_every=4, progress=False, warmup=2)
    res = run_experiment("wine", "glow1d", 1, tmp_path, teacher_cfg=cfg, student_cfg=cfg, methods=["none", "lkd"],
                         log=lambda *_: None, protocol="warm-start", warm_steps=0)
    runs = res["runs"]
    # Zero extra steps: every method is exactly the trained no-KD base student.
    assert runs["none"][0]["log_likelihood"] == runs["base"][0]["log_likelihood"]
    assert runs["lkd"][0]["log_likelihood"] == runs["base"][0]["log_likelihood"]
    assert "warm-start" in (tmp_path / "table.md").read_text()


def test_methods_flag_lists_every_method(capsys):
    from nfkd.distill.variants import VARIANTS
    from nfkd.experiment import main

    assert main(["--methods"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert listed == list(VARIANTS)
    with pytest.raises(Exception, match="unknown method"):
        main(["--data", "wine", "--arch", "glow1d", "--methods", "nope"])


def test_paper_preset_sizes_match_table_2_at_d6():
    """The paper's Table 2 (POWER, D = 6): student 13.8k, teacher 86.7k parameters."""
    from nfkd.flows import build_flow
    from nfkd.presets import PRESETS, effective_parameters

    for role, paper in (("student", 13_800), ("teacher", 86_700)):
        cfg = dict(PRESETS["glow1d-paper"][role])
        n = effective_parameters(build_flow(cfg.pop("arch"), dim=6, **cfg))
        assert abs(n - paper) / paper < 0.02, (role, n)


def test_seed_eta_line():
    from nfkd.experiment import seed_eta

    assert seed_eta(1, 3, 60.0) == "seed 1/3 done, 60 s elapsed, ETA 120 s"
    assert seed_eta(3, 3, 90.0) == "seed 3/3 done, 90 s elapsed"
