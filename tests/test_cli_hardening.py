"""`train` / `distill` refuse bad settings, foreign teachers and foreign resume states with one line
(issue 19 #8), and metrics.jsonl never repeats a row after a resume (#12)."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nfkd
from nfkd.__main__ import main as nfkd_main
from nfkd.flows import MAF, Glow1D
from nfkd.train import TrainConfig, TrainData, Trainer

from .helpers import one_line_error

REPO = Path(__file__).resolve().parents[1]


# In-process `--threads 1` sets torch's thread count: tests/conftest.py gives later tests theirs back.
FAST = ["--data", "wine", "--steps", "20", "--batch-size", "32", "--eval-every", "10", "--checkpoint-every", "10",
        "--no-progress", "--threads", "1", "--steps-arch", "2", "--hidden", "8"]


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


@pytest.mark.parametrize("flag,value,match", [
    ("--batch-size", "0", r"--batch-size must be a positive integer, got 0"),
    ("--eval-every", "0", r"--eval-every must be a positive integer, got 0"),
    ("--lr", "nan", r"--lr must be a finite number > 0, got nan"),
    ("--lr", "-0.1", r"--lr must be a finite number > 0"),
    ("--clip-grad", "inf", r"--clip-grad must be a finite number > 0"),
    ("--steps", "-5", r"--steps must be a positive integer, got -5"),
    ("--steps", "0", r"--steps must be a positive integer, got 0"),
    ("--checkpoint-every", "-1", r"--checkpoint-every must be a positive integer"),
    ("--patience", "0", r"--patience must be a positive integer"),
    ("--warmup", "-3", r"--warmup must be an integer >= 0"),
    ("--seed", "-1", r"--seed must be an integer in 0\.\.4294967295"),
    ("--threads", "0", r"--threads must be a positive integer"),
    ("--hidden", "0", r"--hidden must be a positive integer"),
    ("--steps-arch", "-2", r"--steps-arch must be a positive integer"),
    ("--device", "nonsense", r"--device 'nonsense' is not a torch device"),
    ("--hidden", "100000000", r"--hidden = 100000000 is above the largest supported 16,384"),  # was a traceback
    ("--steps-arch", "5000", r"--steps-arch = 5000 is above the largest supported 1,024"),
])
@pytest.mark.parametrize("command", ["train", "distill"])
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, capsys, command, flag, value, match):
    teacher = nfkd.save(MAF(13, blocks=2, hidden=8), tmp_path / "teacher.pt")
    extra = ["--arch", "maf"] if command == "train" else ["--teacher", str(teacher)]
    err = one_line_error(capsys, [command, *_replace(FAST, flag, value), *extra, "--out", str(tmp_path / "o")])
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "o").exists(), "nothing may be written for a refused command line"


@pytest.mark.parametrize("flag,value,match", [
    ("--temperature", "nan", r"--temperature must be a finite number > 0"),  # silently dropped SKD, exit 0
    ("--temperature", "-3", r"--temperature must be a finite number > 0 and <= 1000, got -3\.0"),
    ("--temperature", "0", r"--temperature must be a finite number > 0"),
    ("--lambda-kd", "nan", r"--lambda-kd must be a finite number >= 0, got nan"),  # an untrained model.pt, exit 0
    ("--lambda-nll", "-1", r"--lambda-nll must be a finite number >= 0"),
    ("--lambda-skd", "inf", r"--lambda-skd must be a finite number >= 0"),
    ("--align-every", "0", r"--align-every must be a positive integer, got 0"),  # was a traceback
    ("--teacher-pool", "-4", r"--teacher-pool must be an integer >= 0"),  # was a traceback
])
def test_bad_distill_flags_are_one_line_before_any_work(tmp_path, capsys, flag, value, match):
    """Issue 24 #6: checked before the teacher is even read (it does not exist here)."""
    argv = ["distill", *FAST, flag, value, "--teacher", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]
    err = one_line_error(capsys, argv)
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "o").exists()


def test_out_pointing_at_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("my notes")
    err = one_line_error(capsys, ["train", *FAST, "--arch", "maf", "--out", str(tmp_path / "taken")])
    assert "is an existing file" in err and (tmp_path / "taken").read_text() == "my notes"
    err = one_line_error(capsys, ["train", *FAST, "--arch", "maf", "--out", str(tmp_path / "taken" / "sub")])
    assert "is a file, so the folder cannot be created" in err


def test_distill_with_a_teacher_of_another_dimension(tmp_path, capsys):
    teacher = nfkd.save(MAF(30, blocks=2, hidden=8), tmp_path / "t30.pt", metadata={"dataset": "breast_cancer"})
    err = one_line_error(capsys, ["distill", *FAST, "--teacher", str(teacher), "--out", str(tmp_path / "s")])
    assert "teacher models 30 inputs but dataset 'wine' has 13" in err and "'breast_cancer'" in err
    assert not (tmp_path / "s" / "model.pt").exists()


def test_arch_of_the_wrong_kind_is_one_line(tmp_path, capsys):
    err = one_line_error(capsys, ["train", *FAST, "--arch", "glow", "--out", str(tmp_path / "g")])
    assert "glow is for images" in err


def test_bad_settings_subprocess_has_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "nfkd", "train", *_replace(FAST, "--steps", "-5"), "--arch", "maf",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "o" / "model.pt").exists()


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_foreign_damaged_or_mismatched_state(tmp_path, capsys):
    out = tmp_path / "run"
    assert nfkd_main(["train", *FAST, "--arch", "maf", "--out", str(out)]) == 0
    capsys.readouterr()
    state = out / "train_state.pt"
    good = state.read_bytes()
    resume = ["train", *FAST, "--arch", "maf", "--out", str(out), "--resume"]
    # The unchanged command resumes (nothing left to do: 20 of 20 steps) and exits 0.
    assert nfkd_main(resume) == 0
    capsys.readouterr()

    state.write_bytes(good[: len(good) // 2])
    assert "truncated, corrupt or not a training state" in one_line_error(capsys, resume)
    torch.save({"weights": torch.zeros(3)}, state)
    assert "not a training state written by nfkd (missing step" in one_line_error(capsys, resume)
    marker = tmp_path / "ran"
    state.write_bytes(pickle.dumps({"step": _RunsCode(marker)}))
    assert "cannot resume" in one_line_error(capsys, resume) and not marker.exists()

    state.write_bytes(good)
    err = one_line_error(capsys, _replace(resume, "--hidden", "12"))
    assert "written for another run (hidden 8 vs 12 now)" in err
    err = one_line_error(capsys, _replace(resume, "--data", "breast_cancer"))
    assert "dim 13 vs 30 now" in err
    err = one_line_error(capsys, _replace(resume, "--seed", "1"))  # same shapes, other rows
    assert "different data" in err
    assert state.read_bytes() == good, "a refused resume must leave the state untouched"


def test_training_on_unusable_statistics_is_one_line(tmp_path, capsys):
    (tmp_path / "power").mkdir()
    raw = np.random.RandomState(0).randn(300, 8) * 1e300
    np.save(tmp_path / "power" / "data.npy", raw)
    argv = ["train", *_replace(FAST, "--data", "power"), "--data-root", str(tmp_path), "--arch", "maf",
            "--out", str(tmp_path / "o")]
    assert "not finite" in one_line_error(capsys, argv)
    assert not (tmp_path / "o" / "model.pt").exists()


# ----------------------------------------------------------------------------------- metrics.jsonl

def _data() -> TrainData:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(600, 4, generator=g)
    x = torch.cat([base[:, :1], base[:, 1:] + 0.8 * base[:, :1] ** 2], 1)
    return TrainData(x[:500], x[500:])


def _cfg() -> TrainConfig:
    return TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup=5, eval_every=10, checkpoint_every=20, patience=100,
                       progress=False, snapshot_every=5)


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _student() -> Glow1D:
    torch.manual_seed(1)
    return Glow1D(4, steps=2, hidden=8)


def test_metrics_rows_are_not_repeated_after_resume(tmp_path):
    """Killed at step 33: the step-30 row was written after the step-20 state; the resumed run
    recomputes step 30, so the file must hold it once — and equal an uninterrupted run's file."""
    Trainer(_student(), _data(), _cfg(), tmp_path / "full").run()
    crashed = Trainer(_student(), _data(), _cfg(), tmp_path / "resumed")

    def crash(step, loss):
        if step == 33:
            raise KeyboardInterrupt
        return loss

    crashed.nan_hook = crash
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    assert [r["step"] for r in _rows(tmp_path / "resumed")] == [10, 20, 30]
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write('{"step": 31, "val_n')  # a row torn by the kill
    Trainer(_student(), _data(), _cfg(), tmp_path / "resumed").run(resume=True)
    steps = [r["step"] for r in _rows(tmp_path / "resumed")]
    assert steps == [10, 20, 30, 40], steps
    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "full")  # resume is bit-exact


def test_fresh_run_in_a_used_folder_starts_a_new_metrics_file(tmp_path):
    Trainer(_student(), _data(), _cfg(), tmp_path / "o").run()
    Trainer(_student(), _data(), _cfg(), tmp_path / "o").run()
    assert [r["step"] for r in _rows(tmp_path / "o")] == [10, 20, 30, 40]


def test_nonfinite_events_before_the_saved_step_are_kept(tmp_path):
    from nfkd.train_state import prepare_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 10, "val_nll": 1.0}, {"step": 19, "event": "nonfinite_step_skipped"},
            {"step": 20, "val_nll": 0.9}, {"step": 20, "event": "nonfinite_step_skipped"},
            {"step": 30, "val_nll": 0.8}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare_metrics(path, 20)
    assert [json.loads(x) for x in path.read_text().splitlines()] == rows[:3]


def test_disk_full_while_training_is_one_line_and_keeps_the_last_state(tmp_path, capsys, monkeypatch):
    """Issue 24 #10: ENOSPC from atomic_write_bytes was an OSError traceback (exit 1)."""
    import errno
    import os

    out = tmp_path / "run"
    assert nfkd_main(["train", *FAST, "--arch", "maf", "--out", str(out)]) == 0
    capsys.readouterr()
    state, model = out / "train_state.pt", out / "model.pt"
    before = {p: p.read_bytes() for p in (state, model)}
    real_fsync = os.fsync

    def full_for_states(fd: int) -> None:  # the disk fills up when the next training state is written
        if ".train_state.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_for_states)
    err = one_line_error(capsys, ["train", *_replace(FAST, "--steps", "40"), "--arch", "maf", "--out", str(out),
                                   "--resume"])
    assert "cannot write" in err and "No space left on device" in err and "previous train_state.pt is kept" in err
    assert all(p.read_bytes() == b for p, b in before.items())
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def _edit_state(good: bytes, path: Path, **changes) -> None:
    import io

    st = torch.load(io.BytesIO(good), weights_only=True)
    st.update(changes)
    torch.save(st, path)


def test_resume_refuses_edited_state_fields(tmp_path, capsys):
    """Issue 24 #5: bad batch_gen / torch_rng / history or step "abc" gave tracebacks, step -100 ran 106 steps,
    lr_scale NaN exited 0 with a NaN learning rate."""
    out = tmp_path / "run"
    assert nfkd_main(["train", *FAST, "--arch", "maf", "--out", str(out)]) == 0
    capsys.readouterr()
    state = out / "train_state.pt"
    good = state.read_bytes()
    model = torch.load(state, weights_only=True)["model"]
    resume = ["train", *_replace(FAST, "--steps", "40"), "--arch", "maf", "--out", str(out), "--resume"]
    cases = [
        ({"step": "abc"}, "'step' is 'abc'; expected an integer >= 0"),
        ({"step": -100}, "'step' is -100; expected an integer >= 0"),
        ({"step": True}, "'step' is True"),
        ({"lr_scale": float("nan")}, "'lr_scale' is nan; expected a finite number in (0, 1]"),
        ({"lr_scale": 0.0}, "'lr_scale' is 0.0"),
        ({"best_val": float("nan")}, "'best_val' is nan"),
        ({"best_step": 10**6}, "'best_step' is 1000000; expected an integer in -1..step (20)"),
        ({"skipped": -1}, "'skipped' is -1"),
        ({"evals_without_improvement": 1.5}, "'evals_without_improvement' is 1.5"),
        ({"batch_gen": torch.zeros(7, dtype=torch.uint8)}, "'batch_gen' is a torch.uint8 tensor of shape (7,)"),
        ({"noise_gen": torch.zeros(5056)}, "'noise_gen' is a torch.float32 tensor"),
        ({"torch_rng": "abc"}, "'torch_rng' is a str; expected a uint8 tensor"),
        ({"history": "[1, 2"}, "'history' is not valid JSON"),
        ({"history": json.dumps({"a": 1})}, "'history' is a JSON dict; expected a list"),
        ({"history": json.dumps([{"step": "x"}])}, "'history' row 0 is"),
        ({"history": 5}, "'history' is a int; expected JSON text"),
        ({"running": json.dumps({"nll": float("nan")})}, "'running' entry 'nll' is nan"),
        ({"best_state": {"a": torch.zeros(1)}}, "'best_state' does not have this model's tensors"),
        ({"best_state": {k: v.double() for k, v in model.items()}}, "'best_state' normalize.loc is not a torch.float32 tensor"),
        ({"best_state": {k: v * float("nan") if v.is_floating_point() else v for k, v in model.items()}},
         "holds NaN or Inf"),
        ({"opt": [1]}, "'opt' is a list; expected a state dict"),
    ]
    for changes, match in cases:
        _edit_state(good, state, **changes)
        err = one_line_error(capsys, resume)
        assert match in err, (changes, err)
    state.write_bytes(good)
    assert nfkd_main(resume) == 0  # the unedited state resumes
    capsys.readouterr()
