"""API edges of issue 27 (build 5): detached samples, torch.distributions sample shapes, onnxruntime
splitting large batches, and one permission mode for every export file."""
from __future__ import annotations

import copy
import os
import stat

import numpy as np
import pytest
import torch

import nfkd
from export.file_modes import plain_mode
from export.onnx import export_onnx
from export.parity import TOLERANCE
from export.runtime import load as load_export
from nfkd import inference
from nfkd.errors import InputError
from nfkd.flows import MAF

from .helpers import perturb

CPU_BACKENDS = [b.name for b in inference.backends()
                if b.available and "cpu" in b.devices and b.name != "compile"
                and inference.BACKENDS[b.name].runs("maf")]


@pytest.fixture(scope="module")
def flow() -> nfkd.Flow:
    torch.manual_seed(0)
    return perturb(MAF(3, blocks=2, hidden=8), scale=0.1, seed=1).eval()


@pytest.fixture(scope="module")
def small_export(flow, tmp_path_factory):
    """An export whose graphs take at most 8 rows a call: splitting is exercised at tiny sizes."""
    folder = tmp_path_factory.mktemp("small") / "export"
    ckpt = folder.parent / "m.pt"
    nfkd.save(flow, ckpt, metadata={"dataset": "test"})
    export_onnx(ckpt, folder, max_batch=8, parity_batches=(1, 7))
    return folder


# --- samples never carry requires_grad ------------------------------------------------------------------


def test_flow_sample_is_detached_and_rsample_keeps_the_graph(flow):
    assert not flow.sample(4).requires_grad
    assert not flow.sample(4, noise=[torch.randn(4, 3, requires_grad=True)]).requires_grad
    xs = flow.rsample(4)
    assert xs.requires_grad
    xs.sum().backward()
    assert any(p.grad is not None for p in flow.parameters())
    flow.zero_grad(set_to_none=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_runner_samples_never_require_grad(flow, backend, tmp_path):
    runner = inference.load(flow, backend=backend, device="cpu", cache_dir=tmp_path)
    assert not runner.sample(5, seed=0).requires_grad
    assert not runner.sample(noise=[torch.randn(5, 3, requires_grad=True)]).requires_grad


# --- one sample signature: a seed gives the same rows on the flow and every CPU backend -----------------------

SEED_BACKENDS = [b for b in ("eager", "folded", "numba", "onnxruntime") if b in CPU_BACKENDS]


@pytest.mark.parametrize("backend", SEED_BACKENDS)
def test_a_seed_gives_the_flows_samples_on_every_cpu_backend(flow, backend, tmp_path):
    """``Flow.sample(seed=)`` draws its noise as every Runner does: the flow, its runner on each backend and a
    float64 decode of numpy's own draw agree, within the export tolerance (float32 round-off elsewhere)."""
    n, t, seed = 9, 0.8, 11
    z = np.random.default_rng(seed).standard_normal((n, 3), dtype=np.float32)  # drawn here, not by nfkd
    ref64 = copy.deepcopy(flow).double()
    want = ref64.sample(noise=[torch.from_numpy(z).double()], temperature=t).numpy()
    tol = TOLERANCE["float32"]
    close = {"rtol": tol["sample_rel"], "atol": tol["sample_abs"]}
    np.testing.assert_allclose(ref64.sample(n, temperature=t, seed=seed).numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(flow.sample(n, temperature=t, seed=seed).double().numpy(), want, **close)
    runner = inference.load(flow, backend=backend, device="cpu", cache_dir=tmp_path)
    got = runner.sample(n, temperature=t, seed=seed)
    np.testing.assert_allclose(got.double().numpy(), want, **close)
    assert runner.sample((3, 3), temperature=t, seed=seed).shape == (3, 3, 3)  # a sample shape, as the flow


def test_flow_seed_is_checked_and_excludes_a_generator(flow):
    with pytest.raises(InputError, match="seed must be an integer in 0"):
        flow.sample(2, seed=-1)
    with pytest.raises(InputError, match="not both"):
        flow.sample(2, seed=0, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError):
        flow.sample(2, 0.5)  # temperature is keyword-only, as on every Runner


# --- sample(sample_shape) as torch.distributions ---------------------------------------------------------


def test_sample_shape_like_torch_distributions(flow):
    ref = torch.distributions.Normal(torch.zeros(3), torch.ones(3))  # the convention followed
    for shape in [(3,), (2, 4), torch.Size([5]), ()]:
        assert flow.sample(shape).shape == ref.sample(shape).shape
    assert flow.sample().shape == ref.sample().shape == (3,)
    assert flow.sample(6).shape == (6, 3)  # a count still works
    # the same generator gives the same rows, whatever the shape they are laid out in
    a = flow.sample((2, 3), generator=torch.Generator().manual_seed(0))
    b = flow.sample(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.reshape(6, 3), b, rtol=0, atol=0)
    z = torch.randn(6, 3)
    torch.testing.assert_close(flow.sample((2, 3), noise=[z]).reshape(6, 3), flow.sample(noise=[z]), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, (0,), (2, -1), (2.0,)])
def test_bad_sample_shapes_are_one_input_error(flow, bad):
    with pytest.raises(InputError, match="positive"):
        flow.sample(bad)


def test_sample_shape_must_match_given_noise(flow):
    with pytest.raises(InputError, match="asks for 4 samples but the noise has 6 rows"):
        flow.sample((2, 2), noise=[torch.randn(6, 3)])


# --- onnxruntime splits batches above max_batch -------------------------------------------------------------


def test_onnxruntime_splits_large_batches_itself(flow, small_export):
    model = load_export(small_export)
    assert model.max_batch == 8
    x = np.random.default_rng(0).standard_normal((21, 3)).astype(np.float32)
    lp = model.log_prob(x)
    with torch.no_grad():
        ref = flow.double().log_prob(torch.from_numpy(x).double()).numpy()
    flow.float()
    np.testing.assert_allclose(lp, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(lp, np.concatenate([model.log_prob(x[i:i + 8]) for i in range(0, 21, 8)]))
    lp2, lat = model.density(x)
    np.testing.assert_array_equal(lp2, lp)
    assert lat.shape == (21, 3)
    xs = model.sample(21, temperature=0.7, seed=3)  # the same noise as drawn for 21 rows, decoded in 3 calls
    noise = inference.draw_noise(model.noise_shapes, 21, seed=3)
    np.testing.assert_array_equal(xs.numpy(), np.concatenate([model.decode([z[i:i + 8]], 0.7)
                                                              for z in noise for i in range(0, 21, 8)]))
    assert model.decode(noise, 0.7).shape == (21, 3)


# --- one permission mode for the whole export -----------------------------------------------------------------


def test_export_files_share_one_mode(small_export):
    def mode(p):
        return stat.S_IMODE(os.stat(p).st_mode)

    files = sorted(p.name for p in small_export.iterdir())
    assert "manifest.json" in files and "density.onnx" in files
    assert {mode(small_export / f) for f in files} == {plain_mode()}, {f: oct(mode(small_export / f)) for f in files}
    assert mode(small_export) == plain_mode(is_dir=True)
