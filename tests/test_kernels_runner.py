"""The triton backend's Runner (kernels/backend.py): kernels vs float64, decided and packed once at load; gpu_check."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton's first import

import pytest  # noqa: E402

from kernels._env import triton_available  # noqa: E402
from nfkd import inference  # noqa: E402
from nfkd.errors import InputError  # noqa: E402

from .kernel_helpers import fresh_seed, glow_flow, max_rel_err, max_scaled_err, tabular_flow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")

def _kernels_runnable() -> tuple[bool, str]:
    if not triton_available():
        return False, "triton not installed"
    try:
        import kernels.tabular  # noqa: F401
    except RuntimeError as exc:  # triton imported in compiled mode before TRITON_INTERPRET was set
        from .kernel_helpers import CONFTEST_HINT

        return False, f"{CONFTEST_HINT} ({exc})"
    return True, ""


_OK, _WHY = _kernels_runnable()
needs_triton = pytest.mark.skipif(not _OK, reason=_WHY)

def test_probe_says_why_without_a_gpu_or_the_interpreter(monkeypatch):
    from kernels.backend import probe_triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, why, devs = probe_triton()
    if torch.cuda.is_available():
        assert ok and devs == ("cuda",)
    else:
        assert not ok and devs == () and ("CUDA GPU" in why or "not installed" in why)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert probe_triton()[2] == (("cpu",) if triton_available() else ())


CASES = {
    "glow1d": lambda: tabular_flow("glow1d", 7, seed=1),
    "maf": lambda: tabular_flow("maf", 6, seed=2, batch_norm=True),
    "glow": lambda: glow_flow((3, 8, 8), levels=2, steps=1, hidden=8, seed=3),
}


def _inputs(flow, seed: int, batch: int):
    g = torch.Generator().manual_seed(seed)
    if flow.arch == "glow":
        x = torch.rand(batch, *flow.event_shape, generator=g, dtype=torch.float64) - 0.5
    else:
        x = flow.normalize.loc + flow.normalize.scale * torch.randn(batch, flow.dim, generator=g, dtype=torch.float64)
    return x, [torch.randn(s, generator=g, dtype=torch.float64) for s in flow.noise_shapes(batch)]


@needs_triton
@pytest.mark.parametrize("arch", list(CASES))
def test_runner_matches_the_float64_flow(arch):
    flow = CASES[arch]()
    seed = fresh_seed()
    x, noise = _inputs(flow, seed, 5 if arch != "glow" else 2)
    with torch.no_grad():
        ref_lp = flow.log_prob(x)
        ref_s = flow.sample(x.shape[0], temperature=0.75, noise=noise)
    runner = inference.load(flow, backend="triton", device=DEV.type)
    assert runner.info()["kernel_ops"] == ["log_prob", "sample"]
    lp = runner.log_prob(x.float())
    s = runner.sample(noise=[z.float() for z in noise], temperature=0.75)
    assert lp.dtype == torch.float32
    assert max_rel_err(lp.cpu(), ref_lp) < 1e-4, f"{arch} seed={seed}"
    assert max_scaled_err(s.cpu(), ref_s) < 1e-4, f"{arch} seed={seed}"


@needs_triton
@pytest.mark.parametrize("arch", ["maf", "glow"])
def test_runner_packs_once_at_load_and_owns_its_buffers(arch, monkeypatch):
    """No packing, folding or parameter scan per call: with pack() broken after load the Runner still
    runs; training the flow afterwards leaves the loaded Runner as it was (a new load sees the change)."""
    from kernels import glow_step, tabular

    flow = CASES[arch]().float()
    x, _ = _inputs(flow, fresh_seed(), 3)
    runner = inference.load(flow, backend="triton", device=DEV.type)
    first = runner.log_prob(x.float()).clone()

    def boom(*a, **k):
        raise AssertionError("packed again after load")

    monkeypatch.setattr(tabular, "pack", boom)
    monkeypatch.setattr(glow_step, "pack", boom)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert torch.equal(runner.log_prob(x.float()), first)
    monkeypatch.undo()
    again = inference.load(flow, backend="triton", device=DEV.type).log_prob(x.float())
    with torch.no_grad():
        ref = flow.double().log_prob(x)
    assert max_rel_err(again.cpu(), ref) < 1e-4 and not torch.allclose(again, first)


@needs_triton
def test_a_flow_the_kernels_do_not_cover_is_refused_at_load():
    from kernels import tabular

    wide = tabular_flow("maf", tabular.MAX_D + 1, hidden=8, blocks=1)
    with pytest.raises(InputError, match="do not cover"):
        inference.load(wide, backend="triton", device=DEV.type)


def test_gpu_check_cpu_parts():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    a = gpu_check.parse_args(["--dry-run", "--budget-s", "30", "--no-compile"])
    assert a.dry_run and a.budget_s == 30 and a.no_compile
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--interpret"])  # needs --dry-run
    table = gpu_check.format_table([{"a": 1, "b": 0.000012345}, {"a": "x", "c": float("nan")}], ["a", "b", "c"], "t")
    lines = table.splitlines()
    assert lines[0] == "== t" and lines[1].split() == ["a", "b", "c"] and "1.23e-05" in lines[3] and "nan" in lines[4]


@pytest.mark.parametrize("interpret", [False, pytest.param(True, marks=needs_triton)], ids=["pytorch", "kernels"])
def test_gpu_check_dry_run(tmp_path, interpret):
    """The GPU script's whole flow on tiny CPU sizes (it cannot rot): through the PyTorch path, and
    through the kernels in the interpreter (packed once per model, as the triton Runner does)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OUT=str(tmp_path))
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run",
                        *(["--interpret"] if interpret else [])], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not data["failures"] and data["info"]["kernels"] is interpret
    assert {"copy", "correctness", "speed"} <= set(data["sections"])
    assert all(row["ok"] for row in data["sections"]["correctness"])
    if interpret:  # the fused step kernels of every Glow level were timed alone
        assert any(row["op"] == "step_fwd" for row in data["sections"]["speed"])
    assert "ALL OK" in r.stdout
