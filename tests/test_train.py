"""Trainer: resume equals an uninterrupted run, the NaN guard recovers, DDP equals one process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nfkd
from nfkd.distill import KDConfig
from nfkd.flows import MAF, Glow1D
from nfkd.train import TrainConfig, TrainData, Trainer

from .helpers import cli_teacher_then_student, run_nfkd

REPO = Path(__file__).resolve().parents[1]


def _data(n=600, d=4, seed=0) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g)
    x = torch.cat([base[:, :1], base[:, 1:] + 0.8 * base[:, :1] ** 2], 1)  # a curved, non-Gaussian table
    return TrainData(x[:500], x[500:])


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=40, batch_size=32, lr=3e-3, warmup=5, eval_every=10, checkpoint_every=20, patience=100,
                progress=False, snapshot_every=5)
    base.update(kw)
    return TrainConfig(**base)


def _teacher() -> MAF:
    torch.manual_seed(5)
    return MAF(4, blocks=3, hidden=8).eval()


def _student() -> Glow1D:
    torch.manual_seed(1)
    return Glow1D(4, steps=2, hidden=8)


def _pair(method: str) -> tuple[MAF | None, Glow1D | MAF]:
    """(teacher, student) drawn the same way each call: no teacher for ``none``."""
    if method == "none":
        return None, _student()
    torch.manual_seed(7)
    return MAF(4, blocks=4, hidden=8).eval(), MAF(4, blocks=2, hidden=8)


@pytest.mark.parametrize("method", ["none", "skd"])
def test_resume_matches_uninterrupted(tmp_path, method):
    kd = KDConfig(method)
    teacher, student = _pair(method)
    full = Trainer(student, _data(), _cfg(), tmp_path / "full", teacher, kd).run()

    teacher, student2 = _pair(method)
    crashed = Trainer(student2, _data(), _cfg(), tmp_path / "resumed", teacher, kd)

    def crash(step, loss):
        if step == 27:  # killed after the step-20 checkpoint
            raise KeyboardInterrupt
        return loss

    crashed.nan_hook = crash
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    assert (tmp_path / "resumed" / "train_state.pt").exists()
    student3 = MAF(4, blocks=2, hidden=8) if teacher is not None else Glow1D(4, steps=2, hidden=8)
    resumed = Trainer(student3, _data(), _cfg(), tmp_path / "resumed", teacher, kd).run(resume=True)
    assert resumed.steps_done == full.steps_done == 40
    for (k, a), b in zip(full.flow.state_dict().items(), resumed.flow.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.best_val_nll == full.best_val_nll


def test_nan_guard_skips_step_lowers_lr_and_restores(tmp_path):
    trainer = Trainer(_student(), _data(), _cfg(steps=30), tmp_path)
    seen = {}

    def inject(step, loss):
        if step == 12:
            seen["good_before"] = {k: v.clone() for k, v in trainer.good["model"].items()}
            return loss * float("nan")
        if step == 13:  # right after the bad step: back at the last good state
            seen["after"] = {k: v.clone() for k, v in trainer.flow.state_dict().items()}
        return loss

    trainer.nan_hook = inject
    result = trainer.run()
    assert result.skipped_steps == 1 and trainer.lr_scale == 0.5
    for k, v in seen["good_before"].items():
        assert torch.equal(v, seen["after"][k]), k
    assert all(torch.isfinite(p).all() for p in result.flow.parameters())
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "nonfinite_step_skipped" for e in events)
    assert (tmp_path / "model.pt").exists() and (tmp_path / "loss_curve.png").exists()


def test_model_selection_uses_validation_nll_and_saves_best(tmp_path):
    result = Trainer(_student(), _data(), _cfg(steps=30), tmp_path).run()
    kept = min(result.history, key=lambda h: h["val_nll_trimmed"])
    assert result.best_step == kept["step"] and result.best_val_trimmed == kept["val_nll_trimmed"]
    best = kept["val_nll"]
    assert result.best_val_nll == best
    loaded = nfkd.load_checkpoint(tmp_path / "model.pt")
    assert loaded.metadata["training"]["best_val_nll"] == best
    with torch.no_grad():
        val = -loaded.flow.log_prob(_data().val).mean()
    assert float(val) == pytest.approx(best, rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path):
    args = ["--data", "wine", "--arch", "glow1d", "--steps", "12", "--batch-size", "32", "--eval-every", "4",
            "--steps-arch", "2", "--hidden", "8", "--no-progress", "--threads", "1", "--lr", "3e-3", "--warmup", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "nfkd", "train", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "nfkd", "train", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = nfkd.load(tmp_path / "one" / "model.pt").state_dict()
    b = nfkd.load(tmp_path / "two" / "model.pt").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)


@pytest.mark.slow
def test_cli_train_distill_evaluate(tmp_path):
    cli_teacher_then_student(tmp_path, "maf", 20, "--method", "ilkd", "--distance", "mse")
    e = run_nfkd("evaluate", str(tmp_path / "s" / "model.pt"), "--split", "test")
    res = json.loads(e.stdout)
    assert res["dataset"] == "wine" and res["n"] == 17 and res["nonfinite"] == 0
    assert res["params"] < nfkd.load(tmp_path / "t" / "model.pt").num_parameters()
    meta = nfkd.load_checkpoint(tmp_path / "s" / "model.pt").metadata
    assert meta["training"]["kd"]["method"] == "ilkd" and meta["training"]["kd"]["latent_distance"] == "mse"


def test_trimmed_nll_drops_only_the_worst_rows_and_counts_nonfinite_as_worst():
    from nfkd.train import trimmed_nll

    nll = torch.tensor([1.0, 2.0, 3.0, 1e30, float("nan")], dtype=torch.float64)
    assert trimmed_nll(nll, 0.4) == pytest.approx(2.0)  # floor(0.4*5) = 2 worst rows out: nan and 1e30
    assert trimmed_nll(nll, 0.2) == pytest.approx((1 + 2 + 3 + 1e30) / 4)  # only the nan row out
    assert trimmed_nll(torch.tensor([1.0, float("inf"), float("nan"), 0.0, 2.0]), 0.2) == float("inf")  # 2 bad > 1
    assert trimmed_nll(torch.tensor([4.0, 2.0]), 0.0) == pytest.approx(3.0)
    assert trimmed_nll(torch.tensor([1.0] * 98 + [1e6]), 0.01) > 1e3  # under 100 rows: the plain mean


def test_selection_ignores_a_few_exploding_validation_rows(tmp_path):
    """A run whose validation set holds one absurd row keeps the step the other rows prefer."""
    data = _data(n=800)  # 300 validation rows: the 1 % trim leaves out 3
    bad = data.val.clone()
    bad[0] = 1e3  # one row far outside: its NLL dominates the plain mean at every step
    result = Trainer(_student(), TrainData(data.train, bad), _cfg(steps=40), tmp_path).run()
    rows = [h for h in result.history if "val_nll_trimmed" in h]
    assert result.best_step == min(rows, key=lambda h: h["val_nll_trimmed"])["step"]
    assert all(h["val_nll_median"] <= h["val_nll"] for h in rows)  # the one row pulls the mean up
