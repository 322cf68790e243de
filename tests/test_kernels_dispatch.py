"""kernels.dispatch: switch semantics, kernel vs PyTorch agreement, fold cache, gpu_check dry run."""
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

import kernels  # noqa: E402
from kernels import dispatch  # noqa: E402
from kernels._env import triton_available  # noqa: E402
from kernels.testing import fresh_seed, glow_flow, max_rel_err, max_scaled_err, tabular_flow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")

def _kernels_runnable() -> tuple[bool, str]:
    if not triton_available():
        return False, "triton not installed"
    try:
        import kernels.tabular  # noqa: F401
    except RuntimeError as exc:  # triton imported in compiled mode before TRITON_INTERPRET was set
        from kernels.testing import CONFTEST_HINT

        return False, f"{CONFTEST_HINT} ({exc})"
    return True, ""


_OK, _WHY = _kernels_runnable()
needs_triton = pytest.mark.skipif(not _OK, reason=_WHY)


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("NFKD_KERNELS", raising=False)
    prev = dispatch._FORCED
    dispatch._FORCED = None
    yield
    dispatch._FORCED = prev


def test_switch_semantics(monkeypatch):
    assert dispatch._setting() is None
    kernels.use_kernels(False)  # plain call: stays set
    assert dispatch._setting() is False and not kernels.kernels_enabled(DEV)
    with kernels.use_kernels(None):
        assert dispatch._setting() is None
        with kernels.use_kernels(True):
            assert dispatch._setting() is True
        assert dispatch._setting() is None
    assert dispatch._setting() is False  # context exit restores the previous value
    monkeypatch.setenv("NFKD_KERNELS", "0")  # the environment wins over everything
    with kernels.use_kernels(True):
        assert not kernels.kernels_enabled(DEV)
    monkeypatch.setenv("NFKD_KERNELS", "1")
    kernels.use_kernels(None)
    assert dispatch._setting() is True
    with pytest.raises(TypeError):
        kernels.use_kernels("yes")


def test_auto_mode_on_cpu_uses_pytorch():
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    assert not kernels.kernels_enabled("cpu")


CASES = {
    "glow1d": lambda: tabular_flow("glow1d", 7, seed=1),
    "maf": lambda: tabular_flow("maf", 6, seed=2, batch_norm=True),
    "glow": lambda: glow_flow((3, 8, 8), levels=2, steps=1, hidden=8, seed=3),
}


@needs_triton
@pytest.mark.parametrize("arch", list(CASES))
def test_kernel_and_pytorch_paths_agree(arch):
    flow = CASES[arch]().to(DEV)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    if arch == "glow":
        x = torch.rand(2, *flow.event_shape, generator=g, dtype=torch.float64) - 0.5
    else:
        x = flow.normalize.loc.cpu() + flow.normalize.scale.cpu() * torch.randn(5, flow.dim, generator=g, dtype=torch.float64)
    x = x.to(DEV)
    noise = [torch.randn(s, generator=g, dtype=torch.float64).to(DEV) for s in flow.noise_shapes(x.shape[0])]
    with torch.no_grad():
        ref_lp = flow.log_prob(x)
        ref_s = flow.sample(x.shape[0], temperature=0.75, noise=noise)
    with kernels.use_kernels(False):
        lp_t = kernels.fast_log_prob(flow, x)
        s_t = kernels.fast_sample(flow, noise, 0.75)
    with kernels.use_kernels(True):
        assert kernels.kernels_enabled(DEV)
        lp_k = kernels.fast_log_prob(flow, x.float())
        s_k = kernels.fast_sample(flow, [z.float() for z in noise], 0.75)
        folded = dispatch.folded_for(flow, torch.float32)
        lp_kf = kernels.fast_log_prob(folded, x.float())  # a folded module is accepted as is
    assert lp_t.dtype == torch.float64  # PyTorch path folds in the flow's dtype
    assert lp_k.dtype == torch.float32
    assert max_rel_err(lp_t, ref_lp) < 1e-9
    assert max_scaled_err(s_t, ref_s) < 1e-9
    for got, ref in [(lp_k, ref_lp), (lp_kf, ref_lp)]:
        assert max_rel_err(got.cpu(), ref.cpu()) < 1e-4, f"{arch} seed={seed}"
    assert max_scaled_err(s_k.cpu(), ref_s.cpu()) < 1e-4, f"{arch} seed={seed}"


def test_fold_cache_invalidation_and_mode():
    flow = tabular_flow("maf", 5, seed=4).float()
    flow.train()
    f1 = dispatch.folded_for(flow)
    assert flow.training  # folding uses the eval form but leaves the caller's mode alone
    assert dispatch.folded_for(flow) is f1
    x = torch.randn(4, 5)
    with kernels.use_kernels(False):
        before = kernels.fast_log_prob(flow, x)
        opt = torch.optim.SGD(flow.parameters(), lr=0.05)
        flow.train()
        loss = -flow.log_prob(x).mean()
        loss.backward()
        opt.step()  # in-place parameter update bumps Tensor._version
        f2 = dispatch.folded_for(flow)
        after = kernels.fast_log_prob(flow, x)
    assert f2 is not f1
    flow.eval()
    with torch.no_grad():
        torch.testing.assert_close(after, flow.log_prob(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)
    # load_state_dict (copy_) also invalidates
    sd = {k: v.clone() for k, v in flow.state_dict().items()}
    sd["blocks.0.made.net.0.bias"] += 0.3
    flow.load_state_dict(sd)
    assert dispatch.folded_for(flow) is not f2


def test_fast_sample_draws_noise_and_validates():
    flow = tabular_flow("glow1d", 4, seed=5)
    with kernels.use_kernels(False):
        s1 = kernels.fast_sample(flow, n=3, generator=torch.Generator().manual_seed(0))
        s2 = flow.sample(3, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(s1, s2)
        with pytest.raises(ValueError):
            kernels.fast_sample(dispatch.folded_for(flow))
        from nfkd.errors import InputError

        with pytest.raises(InputError):
            kernels.fast_log_prob(flow, torch.full((2, 4), float("nan"), dtype=torch.float64))


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


def test_gpu_check_dry_run(tmp_path):
    """The GPU script's whole flow on tiny CPU sizes through the PyTorch path (it cannot rot)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OUT=str(tmp_path))
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not data["failures"]
    assert {"copy", "correctness", "speed"} <= set(data["sections"])
    assert all(row["ok"] for row in data["sections"]["correctness"])
    assert "ALL OK" in r.stdout
