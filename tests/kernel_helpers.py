"""Models and error measures shared by the kernel tests and ``bench/gpu_check.py`` (no triton import here).

Models use fixed seeds (well-conditioned, non-identity weights, so failures reproduce); inputs
are fresh random draws each run with their seed reported in assertion messages.
"""
from __future__ import annotations

import importlib
import os
import random

import torch

from nfkd.flows import IAF, MAF, Glow, Glow1D

__all__ = ["kernel_module", "fresh_seed", "randomize", "tabular_flow", "glow_flow", "max_rel_err",
    "max_scaled_err"]

CONFTEST_HINT = ("triton was imported (e.g. by torch.compile) before TRITON_INTERPRET=1 was set, so the "
                 "kernels cannot run in the interpreter in this process; set it first thing in tests/conftest.py: "
                 "`if not torch.cuda.is_available(): os.environ.setdefault('TRITON_INTERPRET', '1')`")


def kernel_module(name: str):
    """Import ``kernels.<name>`` for a test, or a (module-level) skip that says how to fix the order."""
    import pytest

    pytest.importorskip("triton")
    try:
        return importlib.import_module(f"kernels.{name}")
    except RuntimeError as exc:
        if "TRITON_INTERPRET" not in str(exc):
            raise
        pytest.skip(CONFTEST_HINT, allow_module_level=True)


def fresh_seed() -> int:
    """A new seed every run (``NFKD_TEST_SEED`` pins it to reproduce a failure)."""
    env = os.environ.get("NFKD_TEST_SEED")
    return int(env) if env else random.SystemRandom().randrange(2**31)


def randomize(flow: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """Move parameters off their identity init (nfkd.testing.perturb)."""
    from nfkd.testing import perturb

    return perturb(flow, scale, seed)


def tabular_flow(arch: str, dim: int, seed: int = 0, **kw) -> torch.nn.Module:
    """A float64 Glow-1D / MAF with data normalization and random non-identity weights (eval)."""
    g = torch.Generator().manual_seed(seed + 1000)
    if arch == "glow1d":
        flow = Glow1D(dim, steps=kw.pop("steps", 3), hidden=kw.pop("hidden", 16), **kw)
    elif arch == "iaf":
        flow = IAF(dim, blocks=kw.pop("blocks", 3), hidden=kw.pop("hidden", 16), **kw)
    else:
        flow = MAF(dim, blocks=kw.pop("blocks", 3), hidden=kw.pop("hidden", 16), **kw)
    flow = flow.double()
    flow.normalize.set(torch.randn(dim, generator=g, dtype=torch.float64),
                       torch.rand(dim, generator=g, dtype=torch.float64) + 0.5)
    return randomize(flow, 0.1 if arch in ("maf", "iaf") else 0.05, seed).eval()


def glow_flow(in_shape=(3, 12, 12), levels=2, steps=2, hidden=8, additive=False, seed=0) -> torch.nn.Module:
    flow = Glow(in_shape, levels=levels, steps=steps, hidden=hidden, additive=additive).double()
    return randomize(flow, 0.05, seed).eval()


def max_rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max(1, |ref|) elementwise (log p is O(10..1000) nats)."""
    got, ref = got.double(), ref.double()
    return float(((got - ref).abs() / ref.abs().clamp_min(1.0)).max())


def max_scaled_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max(1, max |ref|) (samples: error relative to the sample's scale)."""
    got, ref = got.double(), ref.double()
    return float((got - ref).abs().max() / max(1.0, float(ref.abs().max())))
