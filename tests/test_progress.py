"""nfkd.progress (issue 27, "no phase over 10 s runs silently"): each long phase prints when progress is
on (NFKD_PROGRESS=1, or stderr a terminal), and nothing when stderr is not a TTY."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfkd
from nfkd.data.images import ImageSet, ImageSplits
from nfkd.flows import MAF, Glow
from nfkd.progress import ENV, bar, enabled, phase

from .helpers import perturb


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_enabled_follows_the_env_override_then_the_terminal(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert enabled()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not enabled()
    for value, want in (("1", True), ("on", True), ("0", False), ("no", False)):
        monkeypatch.setenv(ENV, value)
        for stream in (_Terminal(), io.StringIO()):
            monkeypatch.setattr(sys, "stderr", stream)
            assert enabled() is want, (value, type(stream).__name__)
    monkeypatch.setenv(ENV, "")  # empty or unknown: the terminal decides, as with tqdm's disable=None
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert enabled()


def test_phase_and_bar_write_to_a_terminal_and_not_to_a_pipe(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    for stream, shown in ((_Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        with phase("step one"):
            pass
        with pytest.raises(KeyError), phase("step two"):
            raise KeyError("x")
        for _ in bar(range(3), desc="counting"):
            pass
        text = stream.getvalue()
        if shown:
            assert "step one ...\n" in text and "step one: done in " in text
            assert "step two: failed after " in text and "step two: done" not in text
            assert "counting:" in text and "/3 [" in text
        else:
            assert text == ""


# --- every long phase, on and off ---------------------------------------------------------------------


def _tiny_maf(dim: int = 3) -> MAF:
    torch.manual_seed(0)
    return MAF(dim, blocks=1, hidden=8).eval()


def _export(tmp_path):
    from export.cache import ensure_export

    ckpt = tmp_path / "m.pt"
    nfkd.save(_tiny_maf(), ckpt)
    ensure_export(ckpt, cache_dir=tmp_path / "cache")  # a fresh export (tracing + parity gate)
    ensure_export(ckpt, cache_dir=tmp_path / "cache")  # reused after its parity re-check


class _PoolFeatures(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1)


def _fid(tmp_path):
    from nfkd.metrics import image_metrics

    inception = tmp_path / "tiny_inception.pt"
    torch.jit.script(_PoolFeatures()).save(str(inception))
    torch.manual_seed(0)
    glow = perturb(Glow((3, 16, 16), levels=2, steps=1, hidden=8), scale=0.05).eval()
    rng = np.random.RandomState(0)
    parts = [ImageSet("synthetic", rng.randint(0, 256, (40, 3, 16, 16)).astype(np.uint8), None, 8) for _ in range(3)]
    image_metrics(glow, ImageSplits("synthetic", *parts), 12, [1.0], True, "cpu", inception, use_cache=False)


def _tradeoff(tmp_path):
    from nfkd.pipeline import flow_for, get_data
    from nfkd.tradeoff import measure_tradeoff

    data = get_data("wine")
    flow = flow_for(data, {"arch": "maf", "blocks": 1, "hidden": 8}).eval()
    measure_tradeoff({"t": flow}, data, backends=["eager"], rounds=1, batches=(1,), round_s=0.001, log=lambda m: None)


def _distill(tmp_path):
    from nfkd.distill import KDConfig
    from nfkd.distill.datafree import teacher_sample_data
    from nfkd.distill.objective import StudentObjective

    teacher = _tiny_maf()
    teacher_sample_data(teacher, 200, 20)
    torch.manual_seed(1)
    StudentObjective(MAF(3, blocks=1, hidden=4), teacher, KDConfig("fkl", teacher_pool=64))(torch.randn(8, 3))


def _train(tmp_path):
    from nfkd.train import TrainConfig, TrainData, Trainer

    x = torch.randn(120, 3, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=6, batch_size=16, eval_every=3, checkpoint_every=6, warmup=1, progress=True)
    Trainer(MAF(3, blocks=1, hidden=4), TrainData(x[:100], x[100:]), cfg, tmp_path / "run").run()


def _bench_run(tmp_path):
    import subprocess

    from bench import run as bench_run

    calls = []
    with pytest.MonkeyPatch.context() as mp:  # the pytest run itself is not what is tested here
        mp.setattr(subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 5)
        assert bench_run.main(["-o", str(tmp_path)]) == 5  # 5: pytest's exit status, passed on
    assert ("-v" in calls[0]) == enabled() and ("-q" in calls[0]) != enabled()  # -v: a line per benchmark


PHASES = {
    "export": (_export, ["export cache: no valid export of m.pt", "export: tracing the maf density and sampling",
                         "export: parity gate in ONNX Runtime", "export cache: parity re-check of"]),
    "fid": (_fid, ["fid: sampling 12 images at T=1", "inception T=1", "fid: decoding 12 eq.-16 interpolants",
                   "inception interpolation"]),
    "tradeoff": (_tradeoff, ["tradeoff: warm-up", "tradeoff: round 1/1"]),
    "distill": (_distill, ["data-free: drawing 200 + 20 teacher samples", "distill: drawing a pool of 64 teacher"]),
    "train": (_train, ["train: ", "/6 ["]),
    "bench.run": (_bench_run, ["bench.run: the quick benchmarks ...", "bench.run: the quick benchmarks: done in"]),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "export" else n for n in PHASES])
def test_each_long_phase_prints_when_on_and_nothing_when_stderr_is_not_a_tty(name, tmp_path, monkeypatch, capsys):
    run, expected = PHASES[name]
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    monkeypatch.setenv(ENV, "1")
    run(tmp_path / "on")
    err = capsys.readouterr().err
    assert all(e in err for e in expected), [e for e in expected if e not in err]
    monkeypatch.delenv(ENV)  # capsys's stderr is not a terminal
    run(tmp_path / "off")
    err = capsys.readouterr().err
    if name == "bench.run":  # its error line (pytest wrote no JSON) and load warning are not progress
        err = "\n".join(ln for ln in err.splitlines() if "pytest wrote no" not in ln and "load average" not in ln)
    assert err == ""
