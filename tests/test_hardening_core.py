"""Hardening, round 3 (issue 24), core half: crafted buffers, crafted resume states, distill flags,
float64 rows beyond float32, tensor-count budget, disk full, scale-free constancy, unknown options."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

import nfkd
from nfkd.checkpoint_header import covered_digest, entries_of
from nfkd.errors import CheckpointError
from nfkd.flows import IAF, MAF, Glow, Glow1D

from .helpers import perturb


def _write_crafted(path: Path, arch: str, config: dict, tensors: dict[str, torch.Tensor],
                   metadata: dict | None = None) -> Path:
    """A checkpoint with the given tensors and a recomputed (self-vouching) checksum, as an attacker would."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    payload = st_save(tensors)
    (n,) = struct.unpack("<Q", payload[:8])
    meta = {"format": "nfkd-checkpoint", "format_version": "2", "arch": arch, "config": json.dumps(config),
            "metadata": json.dumps(metadata or {})}
    meta["sha256"] = covered_digest(meta, entries_of(payload), payload[8 + n:])
    path.write_bytes(st_save(tensors, metadata=meta))
    return path


def _edited(tmp_path: Path, flow, key: str, value: torch.Tensor, metadata: dict | None = None) -> Path:
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    assert key in state, sorted(state)
    state[key] = value.to(state[key].dtype)
    return _write_crafted(tmp_path / "crafted.pt", flow.arch, flow.config, state, metadata)


# --- 4: structural buffers ----------------------------------------------------------------------
def _maf() -> MAF:
    return perturb(MAF(2, blocks=2, hidden=8), seed=1)


@pytest.mark.parametrize("make,key,value,match", [
    (_maf, "blocks.0.made.net.0.mask", lambda t: torch.ones_like(t), r"blocks\.0\.made\.net\.0\.mask differs"),
    (_maf, "blocks.0.made.net.4.mask", lambda t: torch.ones_like(t), r"mask differs from the one its config"),
    (_maf, "blocks.1.perm.perm", lambda t: torch.tensor([0, 0]), r"perm\.perm is not a permutation"),
    (_maf, "blocks.1.perm.perm", lambda t: torch.tensor([0, 1]), r"perm\.perm differs from the permutation"),
    (_maf, "blocks.1.perm.inv_perm", lambda t: torch.tensor([0, 1]), r"inv_perm is not the inverse"),
    (_maf, "normalize.scale", lambda t: torch.tensor([1.0, 0.0]), r"normalize\.scale holds values <= 0"),
    (_maf, "normalize.loc", lambda t: torch.tensor([float("nan"), 0.0]), r"holds NaN or Inf"),
    (lambda: perturb(MAF(2, blocks=2, hidden=8, batch_norm=True)), "blocks.0.bn.running_var",
     lambda t: torch.tensor([-1.0, 1.0]), r"running_var holds values <= 0"),
    (lambda: perturb(IAF(3, blocks=2, hidden=8)), "blocks.0.made.net.0.mask", lambda t: torch.ones_like(t),
     r"mask differs"),
    (lambda: perturb(Glow1D(4, steps=2, hidden=8)), "steps.0.mix.sign_s", lambda t: t * 2, r"sign_s holds values"),
    (lambda: perturb(Glow1D(4, steps=2, hidden=8)), "steps.0.mix.perm", lambda t: torch.ones_like(t),
     r"mix\.perm is not a permutation matrix"),
    (lambda: perturb(Glow1D(4, steps=2, hidden=8)), "steps.1.mix.lower_mask", lambda t: torch.ones_like(t),
     r"lower_mask differs"),
    (lambda: perturb(Glow1D(4, steps=2, hidden=8)), "steps.1.mix.eye", lambda t: 2 * t, r"mix\.eye differs"),
    (lambda: perturb(Glow((1, 4, 4), levels=1, steps=1, hidden=4)), "levels.0.0.mix.sign_s",
     lambda t: torch.zeros_like(t), r"sign_s holds values"),
    (_maf, "blocks.0.made.net.0.weight", lambda t: t * float("inf"), r"tensor blocks\.0\.made\.net\.0\.weight holds"),
])
def test_crafted_structural_buffers_are_refused(tmp_path, make, key, value, match):
    """Masks of ones made the "density" integrate to 1.43, perm=[0, 0] to 8.17, and eager/folded scored them."""
    flow = make()
    path = _edited(tmp_path, flow, key, value(flow.state_dict()[key]))
    with pytest.raises(CheckpointError, match=match):
        nfkd.load(path)


def test_teacher_initialised_permutations_load(tmp_path):
    """A student initialised from a teacher's blocks keeps the teacher's permutations: valid, not the seed's."""
    flow = perturb(MAF(3, blocks=2, hidden=8, permutation="random", seed=0))
    other = torch.tensor([1, 2, 0]) if not torch.equal(flow.blocks[0].perm.perm, torch.tensor([1, 2, 0])) \
        else torch.tensor([2, 0, 1])
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    state["blocks.0.perm.perm"], state["blocks.0.perm.inv_perm"] = other, torch.argsort(other)
    path = _write_crafted(tmp_path / "t.pt", "maf", flow.config, state, {"init_from_teacher": ["block0"]})
    assert torch.equal(nfkd.load(path).blocks[0].perm.perm, other)
    path = _write_crafted(tmp_path / "u.pt", "maf", flow.config, state)
    with pytest.raises(CheckpointError, match="differs from the permutation its config"):
        nfkd.load(path)


def test_saved_models_of_every_architecture_still_load(tmp_path):
    for flow in (perturb(MAF(3, blocks=2, hidden=8, batch_norm=True, permutation="random")),
                 perturb(IAF(3, blocks=2, hidden=8)), perturb(Glow1D(4, steps=2, hidden=8)),
                 perturb(Glow((1, 4, 4), levels=2, steps=1, hidden=4))):
        x = torch.randn((2, *flow.event_shape)) * 0.1
        loaded = nfkd.load(nfkd.save(flow.eval(), tmp_path / f"{flow.arch}.pt"))
        with torch.no_grad():
            assert torch.equal(loaded.log_prob(x), flow.log_prob(x))


# --- 8: the work of refusing a crafted file is bounded by its tensor count -----------------------
def _empty_tensors(tmp_path: Path, n: int, blocks: int) -> Path:
    config = dict(MAF(4, blocks=2, hidden=8).config, blocks=blocks)
    return _write_crafted(tmp_path / f"empty{n}.pt", "maf", config, {f"t{i}": torch.zeros(0) for i in range(n)})


def test_too_many_tensors_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    """100,000 empty tensors + blocks=20000 (6.7 MB) kept `nfkd info` busy 68.5 s before refusing."""
    from nfkd.checkpoint_header import MAX_TENSORS

    built = []
    monkeypatch.setattr("nfkd.checkpoint_header.build_flow", lambda *a, **k: built.append(1))
    with pytest.raises(CheckpointError, match=f"lists {MAX_TENSORS + 1:,} tensors; nfkd checkpoints hold at most"):
        nfkd.load(_empty_tensors(tmp_path, MAX_TENSORS + 1, 20_000))
    assert not built


def test_skeleton_build_stops_at_the_stored_tensor_count(tmp_path, monkeypatch):
    """Below the tensor bound, a config implying far more tensors stops after ~as many as are stored."""
    from nfkd.flows import maf

    made = []
    original = maf.MAFBlock.__init__

    def counting(self, *args, **kwargs):
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(maf.MAFBlock, "__init__", counting)
    with pytest.raises(CheckpointError, match="implies a far larger model than the 2000 stored tensors"):
        nfkd.load(_empty_tensors(tmp_path, 2000, 20_000))
    assert len(made) <= 2000 // 11 + 10, len(made)  # a MAF block registers 11 tensors


# --- 7: float64 rows beyond the float32 range -----------------------------------------------------
def _backends() -> list[str]:
    from nfkd import inference

    return [b for b in ("eager", "folded", "numba") if inference.status(b).available]


@pytest.mark.parametrize("value", [1e39, -1e300])
def test_float64_rows_beyond_float32_are_refused_on_every_backend(tmp_path, value):
    """They gave [nan, nan] on eager, folded and numba: finiteness was checked before the float32 cast."""
    import numpy as np

    from nfkd import inference
    from nfkd.errors import InputError

    path = nfkd.save(perturb(MAF(2, blocks=2, hidden=8)).eval(), tmp_path / "m.pt")
    x = np.array([[0.0, 0.0], [value, 0.0], [0.0, 1.0]])
    for backend in _backends():
        runner = inference.load(path, backend=backend, threads=1)
        for batch in (x, torch.as_tensor(x)):
            with pytest.raises(InputError, match=r"beyond the float32 range .* in rows \[1\]"):
                runner.log_prob(batch)
        assert np.isfinite(runner.log_prob(x[[0, 2]])).all()
        with pytest.raises(InputError, match=r"noise\[0\] has values beyond the float32 range"):
            runner.sample(noise=[x])


def test_overflow_inside_the_model_is_an_error_not_nan(tmp_path):
    """3e38 is a float32 value, but eager's normalization overflows on it and gave NaN silently."""
    import numpy as np

    from nfkd import inference
    from nfkd.errors import InputError

    flow = perturb(MAF(2, blocks=2, hidden=8)).eval()
    flow.normalize.set(torch.zeros(2), torch.full((2,), 0.5))
    runner = inference.load(flow, backend="eager", threads=1)
    x = np.array([[0.0, 0.0], [3e38, 0.0]], np.float32)
    try:
        out = runner.log_prob(x)
    except InputError as exc:
        assert "rows [1] overflow float32 inside the model" in str(exc)
    else:
        assert not np.isnan(out).any(), out


# --- 12: unknown options of inference.load ---------------------------------------------------------
@pytest.mark.parametrize("option", ["cachedir", "thread"])
def test_unknown_load_options_are_refused(option):
    from nfkd import inference
    from nfkd.errors import InputError

    with pytest.raises(InputError, match=rf"unknown option\(s\) '{option}' .*valid: .*threads, cache_dir, export_dir"):
        inference.load(MAF(2, blocks=1, hidden=4), backend="eager", **{option: 1})


def test_float32_runner_refuses_rows_beyond_float32():
    """A Runner casts float64 x to float32 (the kernels' Runner did so through kernels.dispatch): one clear error."""
    from nfkd import inference
    from nfkd.errors import InputError

    flow = perturb(MAF(2, blocks=2, hidden=8)).eval()
    with pytest.raises(InputError, match=r"beyond the float32 range .* in rows \[0\]"):
        inference.load(flow, backend="folded").log_prob(torch.tensor([[1e39, 0.0]], dtype=torch.float64))
