"""The config check's shape-only skeleton (nfkd/checkpoint_header.py ``_Skeleton``).

Reference: the real model built on the CPU from the same config. The skeleton must have exactly its
parameter/buffer names, shapes and dtypes for every preset and option, and checking a checkpoint must
not import ``torch._dynamo`` (seconds per process: the cost this skeleton exists to avoid).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from nfkd.checkpoint_header import _Skeleton
from nfkd.flows import build_flow
from nfkd.presets import PRESETS

CONFIGS = [
    ("maf", {"dim": 6, "blocks": 3, "hidden": 32}),
    ("maf", {"dim": 9, "blocks": 2, "hidden": 16, "batch_norm": True, "permutation": "random", "activation": "tanh",
             "n_hidden": 3}),
    ("maf", {"dim": 1, "blocks": 1, "hidden": 4}),
    ("glow1d", {"dim": 6, "steps": 3, "hidden": 32}),
    ("glow1d", {"dim": 7, "steps": 2, "hidden": 8, "additive": True, "depth": 5}),
    ("glow1d", {"dim": 2, "steps": 1, "hidden": 3}),
    ("glow", {"in_shape": (3, 8, 8), "levels": 2, "steps": 2, "hidden": 8}),
    ("glow", {"in_shape": (1, 8, 8), "levels": 3, "steps": 1, "hidden": 4, "additive": True}),
]
CONFIGS += [(c["arch"], {**{k: v for k, v in c.items() if k != "arch"},
                         **({"in_shape": (3, 16, 16)} if c["arch"] == "glow" else {"dim": 21})})
            for p in PRESETS.values() for c in p.values() if not (c["arch"] == "glow" and c["hidden"] > 64)]


def _shapes(flow: torch.nn.Module) -> dict:
    return {k: (v.dtype, tuple(v.shape)) for k, v in flow.state_dict().items()}


@pytest.mark.parametrize("arch,config", CONFIGS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(CONFIGS)])
def test_skeleton_has_the_real_models_tensors(arch, config):
    torch.manual_seed(0)
    real = build_flow(arch, **config)
    with torch.device("meta"), _Skeleton(10**6):
        skeleton = build_flow(arch, **config)
    assert all(t.device.type == "meta" for t in skeleton.state_dict().values())
    assert _shapes(skeleton) == _shapes(real)


def test_checking_a_checkpoint_does_not_import_dynamo(tmp_path):
    import nfkd
    from nfkd.flows import MAF, Glow, Glow1D

    paths = []
    for i, flow in enumerate([MAF(5, blocks=2, hidden=8), Glow1D(4, steps=2, hidden=8),
                              Glow((1, 8, 8), levels=2, steps=1, hidden=4)]):
        paths.append(str(tmp_path / f"m{i}.pt"))
        nfkd.save(flow, paths[-1])
    code = textwrap.dedent(f"""
        import sys
        import nfkd
        for p in {paths!r}:
            nfkd.load(p)
        print(" ".join(m for m in ("torch._dynamo", "sympy") if m in sys.modules) or "clean")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "clean"


def test_a_float64_flow_round_trips_in_float64(tmp_path):
    """A flow saved after ``.double()`` (the precision tests and exact scoring use) loads as float64,
    bit for bit, instead of being refused as not matching its (float32) config."""
    import nfkd
    from nfkd.flows import MAF

    torch.manual_seed(0)
    flow = MAF(4, blocks=2, hidden=8).double()
    nfkd.save(flow, tmp_path / "f64.pt")
    back = nfkd.load(tmp_path / "f64.pt")
    assert all(t.dtype == torch.float64 for t in back.state_dict().values() if t.is_floating_point())
    x = torch.randn(5, 4, dtype=torch.float64)
    assert torch.equal(back.log_prob(x), flow.eval().log_prob(x))
