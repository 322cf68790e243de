"""export.runtime: validated inputs, reproducible sampling, integrity checks; export.trt without TensorRT."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.runtime import load
from nfkd.errors import ExportError, InputError

from .test_export_onnx import checkpoint, exported

REPO = Path(__file__).resolve().parents[1]
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def maf():
    flow, out, _ = exported("maf_bn")
    return flow, load(out, intra_op_threads=2)


def test_log_prob_and_sample_match_eager(maf):
    flow, model = maf
    assert model.session_options.intra_op_num_threads == 2
    x = flow.normalize.loc.numpy() + np.random.default_rng(0).standard_normal((4096, 8)) * flow.normalize.scale.numpy()
    lp = model.log_prob(x)  # float64 input is accepted (cast to float32)
    with torch.no_grad():
        ref = flow.log_prob(torch.from_numpy(x.astype(np.float32)).double()).numpy()
    assert lp.dtype == np.float32 and lp.shape == (4096,)
    assert (np.abs(lp - ref) / np.maximum(1, np.abs(ref))).max() <= 1e-4
    lp2, lat = model.density(x[:3])
    np.testing.assert_allclose(lp2, lp[:3], rtol=1e-6)
    assert lat.shape == (3, 8)


def test_sample_is_reproducible_and_equals_decode_of_the_same_noise(maf):
    flow, model = maf
    a, b, c = model.sample(5, temperature=0.8, seed=3), model.sample(5, temperature=0.8, seed=3), model.sample(5, temperature=0.8, seed=4)
    assert a.shape == (5, 8) and a.dtype == torch.float32  # a Runner: samples are tensors
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    noise = np.random.default_rng(3).standard_normal((5, 8), dtype=np.float32)
    np.testing.assert_array_equal(model.decode([noise], 0.8), a)
    with torch.no_grad():
        ref = flow.sample(5, temperature=0.8, noise=[torch.from_numpy(noise).double()]).numpy()
    np.testing.assert_allclose(a, ref, rtol=1e-3, atol=1e-3)


def test_image_export_runs_through_the_runtime():
    flow, out, _ = exported("glow")
    model = load(out)
    xs = model.sample(7, temperature=0.5, seed=0).numpy()
    assert xs.shape == (7, 3, 8, 8)
    lp = model.log_prob(np.clip(xs, -0.5, 0.5))
    assert lp.shape == (7,) and np.isfinite(lp).all()
    with pytest.raises(InputError, match=r"shape \(7, 8, 8\), expected|expected \(batch, 3, 8, 8\)"):
        model.log_prob(xs[:, 0])


BAD_X = [
    (lambda: np.zeros((3, 5), np.float32), "has 5 features per row; this model expects 8"),
    (lambda: np.zeros((3, 8), np.int64), "dtype int64; expected a floating-point array"),
    (lambda: np.zeros(8, np.float32), r"one sample without a batch dimension; pass x\[None\]"),
    (lambda: np.zeros((0, 8), np.float32), "empty batch"),
    (lambda: np.array([[0.0] * 8, [np.nan] + [0.0] * 7]), r"NaN or Inf \(first bad rows: \[1\]\)"),
    (lambda: np.full((2, 8), np.inf, np.float32), "NaN or Inf"),
    (lambda: "x", "must be a numpy array"),
    (lambda: np.zeros((2, 2, 4), np.float32), r"expected \(batch, 8\)"),
]


@pytest.mark.parametrize("make,message", BAD_X, ids=[m for _, m in BAD_X])
def test_bad_x_is_one_clear_input_error(maf, make, message):
    with pytest.raises(InputError, match=message):
        maf[1].log_prob(make())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"n": 0}, "n must be a positive integer"),
        ({"n": 2.5}, "n must be a positive integer"),
        ({"n": True}, "n must be a positive integer"),
        ({"n": 2, "temperature": -1.0}, r"temperature must be a finite number in \[0"),
        ({"n": 2, "temperature": float("nan")}, "temperature"),
        ({"n": 2, "seed": "abc"}, r"seed must be an integer in 0\.\.4294967295"),
    ],
)
def test_bad_sample_arguments(maf, kwargs, message):
    with pytest.raises(InputError, match=message):
        maf[1].sample(**kwargs)


def test_decode_checks_noise(maf):
    with pytest.raises(InputError, match="noise\\[0\\] has 3 features"):
        maf[1].decode([np.zeros((2, 3), np.float32)])
    with pytest.raises(InputError, match="expected 1 noise arrays"):
        maf[1].decode([np.zeros((2, 8), np.float32)] * 2)


def test_tampered_graph_file_is_refused_on_load(tmp_path):
    _, out, _ = exported("glow1d")
    copy = tmp_path / "e"
    shutil.copytree(out, copy)
    data = bytearray((copy / "sample.onnx").read_bytes())
    data[-5] ^= 0xFF
    (copy / "sample.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="does not match the SHA-256 in manifest.json"):
        load(copy)
    with pytest.raises(ExportError, match="no manifest.json"):
        load(tmp_path)


def test_bad_backend_and_device_arguments():
    _, out, _ = exported("glow1d")
    with pytest.raises(InputError, match="backend must be one of"):
        load(out, backend="tflite")
    with pytest.raises(InputError, match="device must be one of"):
        load(out, device="tpu")
    with pytest.raises(InputError, match="tensorrt backend runs on the GPU"):
        load(out, backend="tensorrt", device="cpu")
    with pytest.raises(InputError, match="intra_op_threads"):
        load(out, intra_op_threads=0)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA EP present")
def test_cuda_device_without_cuda_ep_names_the_package():
    _, out, _ = exported("glow1d")
    with pytest.raises(ExportError, match="install onnxruntime-gpu"):
        load(out, device="cuda")


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed")
def test_tensorrt_backend_without_tensorrt_names_the_package():
    _, out, _ = exported("glow1d")
    with pytest.raises(ExportError, match=r"TensorRT is not installed: pip install 'nfkd\[gpu\]'"):
        load(out, backend="tensorrt")


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed")
def test_trt_cli_without_tensorrt_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "engines"
    proc = subprocess.run(
        [sys.executable, "-m", "export.trt", str(checkpoint("glow1d")), "-o", str(out), "--fp16"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["TensorRT is not installed: pip install 'nfkd[gpu]' (tensorrt>=10) on a machine with an NVIDIA GPU"]
    assert proc.stdout == "" and not out.exists()
