"""Students a user deploys (issue 28): the IAF recipe's share rule, data-free distillation, ``convert``,
and experiment rows that fail without ending the run.

References: a MAF with zeroed MADEs is exactly the Gaussian N(loc, diag(scale²)) of its normalization, so
its samples' moments and its entropy are known in closed form (numpy / math, not the flow code).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import nfkd
from nfkd.distill.datafree import student_like_teacher, teacher_sample_data
from nfkd.distill.recipe import SMALL_DATA_ROWS, default_teacher_share, share_config
from nfkd.errors import InputError
from nfkd.flows import MAF, Glow

LOC = torch.tensor([1.0, -2.0, 0.5])
SCALE = torch.tensor([0.5, 2.0, 1.5])


def _gaussian_maf(blocks: int = 2) -> MAF:
    """A MAF whose MADEs output zero: each block is the identity, so the flow is N(LOC, diag(SCALE²))."""
    flow = MAF(3, blocks=blocks, hidden=8)
    with torch.no_grad():
        for p in flow.parameters():
            p.zero_()
    flow.normalize.set(LOC, SCALE)
    return flow.eval()


def _gaussian_entropy() -> float:
    return 0.5 * len(LOC) * (1 + math.log(2 * math.pi)) + float(torch.log(SCALE).sum())


def test_share_rule_and_config():
    assert default_teacher_share(SMALL_DATA_ROWS - 1) == 0.5 and default_teacher_share(SMALL_DATA_ROWS) == 0.0
    kd = share_config(455)
    assert kd.method == "fkl" and kd.weights == (0.5, 0.5, 0.0) and kd.teacher_pool > 0
    assert share_config(12000).method == "none" and not share_config(12000).needs_teacher  # data alone
    assert share_config(12000, 0.25).weights == (0.75, 0.25, 0.0)  # --teacher-share overrides the rule
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(InputError, match="--teacher-share"):
            share_config(100, bad)


def test_teacher_samples_have_the_teachers_moments_and_disjoint_splits():
    teacher = _gaussian_maf()
    s = teacher_sample_data(teacher, 20000, 2000, seed=3)
    x = s.data.train.double().numpy()
    np.testing.assert_allclose(x.mean(0), LOC.numpy(), atol=0.05)
    np.testing.assert_allclose(x.std(0), SCALE.numpy(), rtol=0.03)
    assert s.data.val.shape == (2000, 3) and s.dropped == 0 and s.data.n_levels is None
    assert not torch.equal(s.data.train[:2000], s.data.val)  # different noise for validation
    again = teacher_sample_data(teacher, 20000, 2000, seed=3)
    assert torch.equal(again.data.train, s.data.train)  # a seed gives the same samples


def test_data_free_student_learns_the_teachers_density_without_data(tmp_path, monkeypatch):
    """No dataset is read while training; the student's held-out NLL approaches the closed-form entropy."""
    teacher = _gaussian_maf()
    nfkd.save(teacher, tmp_path / "t.pt", metadata={"dataset": "gauss", "normalization": {"mean": LOC.tolist()}})
    import nfkd.cli.distill as cli
    import nfkd.pipeline as pipeline

    def no_data(*a, **k):
        raise AssertionError("data-free distillation read a dataset")

    monkeypatch.setattr(cli, "get_data", no_data)
    monkeypatch.setattr(pipeline, "get_data", no_data)
    from nfkd.__main__ import main

    assert main(["distill", "--teacher", str(tmp_path / "t.pt"), "--data-free", "--teacher-samples", "8000",
                 "--steps", "300", "--batch-size", "256", "--eval-every", "100", "--lr", "3e-3", "--no-progress",
                 "--threads", "1", "--out", str(tmp_path / "s")]) == 0
    ckpt = nfkd.load_checkpoint(tmp_path / "s" / "model.pt")
    assert ckpt.metadata["data_free"] is True and ckpt.metadata["teacher_samples"] == 8000
    assert ckpt.metadata["dataset"] == "gauss" and ckpt.metadata["training"]["method"] == "none"
    assert torch.equal(ckpt.flow.normalize.loc, LOC) and torch.equal(ckpt.flow.normalize.scale, SCALE)
    held_out = teacher_sample_data(teacher, 4000, 1, seed=99).data.train  # fresh teacher samples
    with torch.no_grad():
        nll = -ckpt.flow.double().log_prob(held_out.double()).mean().item()
    assert nll == pytest.approx(_gaussian_entropy(), abs=0.05 * len(LOC))


def test_data_free_reports_the_real_test_split_only_after_training(tmp_path, capsys):
    from nfkd.__main__ import main

    common = ["--steps", "20", "--batch-size", "32", "--eval-every", "10", "--no-progress", "--threads", "1"]
    assert main(["train", "--data", "wine", "--arch", "maf", *common, "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    assert main(["distill", "--teacher", str(tmp_path / "t" / "model.pt"), "--data-free", "--data", "wine",
                 "--arch", "iaf", *common, "--out", str(tmp_path / "s")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["selection"]["on"] == "held-out teacher samples"
    assert report["test"]["split"] == "test" and report["test"]["arch"] == "iaf"
    want = nfkd.pipeline.evaluate(nfkd.load(tmp_path / "s" / "model.pt"), nfkd.pipeline.get_data("wine"), "test")
    assert report["test"]["log_likelihood"] == pytest.approx(want["log_likelihood"], rel=1e-9)


def test_image_teacher_samples_are_quantized_levels():
    torch.manual_seed(0)
    teacher = Glow((1, 8, 8), levels=2, steps=1, hidden=8, n_levels_data=17).eval()
    s = teacher_sample_data(teacher, 64, 16, seed=0, temperature=0.7)
    assert s.data.n_levels == 17 and s.data.train.dtype == torch.uint8
    assert int(s.data.train.max()) <= 16 and s.data.train.shape == (64, 1, 8, 8)
    student = student_like_teacher(teacher, {"arch": "glow", "levels": 2, "steps": 1, "hidden": 4})
    assert student.event_shape == teacher.event_shape and student.config["n_levels_data"] == 17


def test_distill_iaf_default_is_the_share_recipe(tmp_path, capsys):
    from nfkd.__main__ import main

    common = ["--data", "wine", "--steps", "10", "--batch-size", "32", "--eval-every", "5", "--no-progress",
              "--threads", "1"]
    assert main(["train", *common, "--arch", "maf", "--out", str(tmp_path / "t")]) == 0
    teacher = str(tmp_path / "t" / "model.pt")
    assert main(["distill", *common, "--teacher", teacher, "--arch", "iaf", "--out", str(tmp_path / "s")]) == 0
    meta = nfkd.load_checkpoint(tmp_path / "s" / "model.pt").metadata
    assert meta["training"]["kd"]["method"] == "fkl" and meta["training"]["kd"]["weights"] == [0.5, 0.5, 0.0]
    assert "0.5" in meta["recipe"] and "< 1000" in meta["recipe"]  # wine: 145 training rows
    assert main(["distill", *common, "--teacher", teacher, "--arch", "iaf", "--teacher-share", "0",
                 "--out", str(tmp_path / "s0")]) == 0
    assert nfkd.load_checkpoint(tmp_path / "s0" / "model.pt").metadata["training"]["method"] == "none"
    capsys.readouterr()
    assert main(["distill", *common, "--teacher", teacher, "--arch", "iaf", "--teacher-share", "2",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--teacher-share must be a number in [0, 1]" in capsys.readouterr().err
    assert main(["distill", "--teacher", teacher, "--steps", "5", "--out", str(tmp_path / "bad2")]) == 2
    assert "--data is required (or --data-free" in capsys.readouterr().err
    # a fine-tune: reverse KL + SKD continuing the maximum-likelihood IAF
    assert main(["distill", *common, "--teacher", teacher, "--arch", "iaf", "--method", "rkl+skd", "--teacher-pool",
                 "64", "--init-from", str(tmp_path / "s" / "model.pt"), "--out", str(tmp_path / "ft")]) == 0
    assert main(["distill", *common, "--teacher", teacher, "--arch", "iaf", "--method", "rkl", "--init-from",
                 teacher, "--out", str(tmp_path / "bad3")]) == 2
    assert "--init-from" in capsys.readouterr().err


@pytest.mark.slow
def test_convert_builds_a_teacher_sized_iaf(tmp_path, capsys):
    from nfkd.__main__ import main

    common = ["--steps", "10", "--batch-size", "32", "--eval-every", "5", "--no-progress", "--threads", "1"]
    assert main(["train", "--data", "wine", "--arch", "maf", *common, "--out", str(tmp_path / "t")]) == 0
    teacher = nfkd.load(tmp_path / "t" / "model.pt")
    assert main(["convert", str(tmp_path / "t" / "model.pt"), "--to", "iaf", *common, "--out", str(tmp_path / "c")]) == 0
    ckpt = nfkd.load_checkpoint(tmp_path / "c" / "model.pt")
    assert ckpt.arch == "iaf" and ckpt.metadata["size"] == "teacher" and ckpt.metadata["data_free"] is True
    for key in ("blocks", "hidden", "n_hidden"):
        assert ckpt.config[key] == teacher.config[key]
    assert main(["convert", str(tmp_path / "t" / "model.pt"), "--data", "wine", *common,
                 "--out", str(tmp_path / "cd")]) == 0
    assert "data_free" not in nfkd.load_checkpoint(tmp_path / "cd" / "model.pt").metadata
    assert main(["train", "--data", "wine", "--arch", "glow1d", *common, "--out", str(tmp_path / "g")]) == 0
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "g" / "model.pt"), *common, "--out", str(tmp_path / "bad")]) == 2
    assert "needs a maf teacher" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failing_method_is_a_failed_row_and_the_experiment_goes_on(tmp_path, monkeypatch):
    import nfkd.experiment as experiment
    from nfkd.train import TrainConfig

    real = experiment.train_flow

    def diverge(flow, td, cfg, out, teacher=None, kd=None, metadata=None):
        if (metadata or {}).get("method") == "iaf":
            raise RuntimeError("21 non-finite steps in a row; giving up (lower the lr?)")
        return real(flow, td, cfg, out, teacher=teacher, kd=kd, metadata=metadata)

    monkeypatch.setattr(experiment, "train_flow", diverge)
    cfg = TrainConfig(steps=10, batch_size=32, eval_every=5, progress=False, warmup=2)
    res = experiment.run_experiment("wine", "maf", 1, tmp_path, teacher_cfg=cfg, student_cfg=cfg,
                                    methods=["none", "iaf", "data-free"], log=lambda *_: None)
    assert res["runs"]["iaf"][0] == {"failed": "RuntimeError: 21 non-finite steps in a row; giving up (lower the lr?)"}
    assert res["summary"]["iaf"]["failed"] == 1 and "mean" in res["summary"]["data-free"]
    table = (tmp_path / "table.md").read_text()
    assert "**failed** (1/1 seeds): RuntimeError: 21 non-finite steps" in table and "Data-free student" in table


def test_warm_start_summary_restates_the_official_protocols_gain():
    from nfkd.experiment import markdown_table, summarize

    def runs(*lls):
        return [{"log_likelihood": v, "params": 1, "seconds": 1.0} for v in lls]

    r = {"teacher": runs(-1.0, -1.0), "base": runs(-3.0, -3.2), "none": runs(-2.0, -2.2), "skd": runs(-1.9, -2.1)}
    s = summarize(r)
    assert s["skd"]["delta_vs_base"] == pytest.approx(1.1) and s["skd"]["delta_vs_none"] == pytest.approx(0.1)
    table = markdown_table({"dataset": "x", "arch": "maf", "seeds": 2, "protocol": "warm-start", "runs": r,
                            "summary": s})
    assert "official protocol" in table and "| +1.100 ± 0.000 | 9 % |" in table  # 0.1 of the 1.1 is left


@pytest.mark.slow
def test_flowdensity_distills_a_one_pass_sampler_by_the_recipe():
    from sklearn.datasets import load_wine

    from nfkd.sklearn import FlowDensity

    X = load_wine().data
    teacher = FlowDensity(arch="maf", steps=30, random_state=0).fit(X)
    iaf = teacher.distill(X, arch="iaf", steps=20)
    assert iaf.flow_.arch == "iaf" and iaf.distilled_from_["teacher_arch"] == "maf"
    assert "share 0.5" in iaf.distilled_from_["method"]  # 178 rows < 1000: half teacher samples
    with torch.no_grad():  # scores are the IAF's own exact (D-pass) density, in X's units
        want = iaf.flow_.double().log_prob(torch.as_tensor(X[:5], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(iaf.score_samples(X[:5]), want, rtol=1e-6, atol=1e-6)
    free = teacher.distill(None, arch="iaf", steps=10)
    assert free.distilled_from_["data_free"] is True and "share 0" in free.distilled_from_["method"]
    with pytest.raises(InputError, match="arch must be"):
        teacher.distill(X, arch="glow")


def test_data_free_distillation_of_an_image_teacher_end_to_end(tmp_path, capsys):
    """An image (Glow) teacher's quantized samples train a Glow student; the real test split only reports."""
    from nfkd.__main__ import main

    common = ["--steps", "4", "--batch-size", "16", "--eval-every", "2", "--no-progress", "--threads", "1",
              "--hidden", "8"]
    assert main(["train", "--data", "digits_images", "--arch", "glow", *common, "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    assert main(["distill", "--teacher", str(tmp_path / "t" / "model.pt"), "--data-free", "--teacher-samples", "64",
                 "--data", "digits_images", *common, "--out", str(tmp_path / "s")]) == 0
    report = json.loads(capsys.readouterr().out)
    ckpt = nfkd.load_checkpoint(tmp_path / "s" / "model.pt")
    teacher = nfkd.load(tmp_path / "t" / "model.pt")
    assert ckpt.arch == "glow" and ckpt.flow.event_shape == teacher.event_shape
    assert ckpt.metadata["data_free"] is True and ckpt.metadata["teacher_samples"] == 64
    assert report["test"]["bpd"] > 0 and report["test"]["nonfinite"] == 0
