"""The real Triton Inference Server (the ``tritonserver`` binary of the nvidia-pytriton wheel) serves our
students: ``python -m nfkd serve --engine triton`` and the Python-backend repository of
``export.triton_model_repository --platform python``, over KServe v2 HTTP.

Answers equal the eager float64 flow at the export gate's tolerance (log_prob and seeded samples),
every bad request gets its own clear error and the server stays ready, concurrent requests are merged
by Triton's dynamic batcher (its own metrics say so), and shutdown leaves no process behind. One
server per module (the CLI), one more for the exported repository. Skipped only when the wheel is
not installed (``pip install --no-deps nvidia-pytriton==0.7.0``; .ci/run installs it).
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

import nfkd
from export.parity import TOLERANCE, _reference_flow, reference_outputs
from export.triton_model_repository import main as repository_main
from nfkd.inference import draw_noise

from .test_serve import CACHE, DIM, REPO, rows, student

HAVE_WHEEL = importlib.util.find_spec("pytriton") is not None
needs_wheel = pytest.mark.skipif(not HAVE_WHEEL, reason="nvidia-pytriton is not installed (the tritonserver binary): "
                                                        "pip install --no-deps nvidia-pytriton==0.7.0")
TOL = TOLERANCE["float32"]
MAX_ROWS, MAX_N = 64, 256


def infer_body(x: np.ndarray, name: str = "x", datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}]}


def sample_body(n: int, temperature: float | None = None, seed: int | None = None) -> dict:
    inputs = [{"name": "n", "shape": [1], "datatype": "INT64", "data": [n]}]
    if temperature is not None:
        inputs.append({"name": "temperature", "shape": [1], "datatype": "FP32", "data": [temperature]})
    if seed is not None:
        inputs.append({"name": "seed", "shape": [1], "datatype": "INT64", "data": [seed]})
    return {"inputs": inputs}


def output(r: httpx.Response, name: str) -> np.ndarray:
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}[name]
    return np.asarray(out["data"], np.float64).reshape(out["shape"])


def eager(x: np.ndarray, noise: list[np.ndarray], temperature: float) -> tuple[np.ndarray, np.ndarray]:
    lp, _, xs = reference_outputs(_reference_flow(nfkd.load(student()[0])), x, noise, temperature)
    return lp, xs


def assert_gate(lp: np.ndarray, lp_ref: np.ndarray, xs: np.ndarray | None = None, xs_ref: np.ndarray | None = None):
    assert np.max(np.abs(lp - lp_ref) / np.maximum(1, np.abs(lp_ref))) <= TOL["log_prob_rel"]
    if xs is not None:
        assert np.all(np.abs(xs - xs_ref) <= TOL["sample_abs"] + TOL["sample_rel"] * np.abs(xs_ref))


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def cli():
    """``python -m nfkd serve student.pt --engine triton`` as a user runs it; its "listening" log line."""
    if not HAVE_WHEEL:
        pytest.skip("nvidia-pytriton is not installed: pip install --no-deps nvidia-pytriton==0.7.0")
    ckpt, _ = student()
    cmd = [sys.executable, "-m", "nfkd", "serve", str(ckpt), "--engine", "triton", "--backend", "onnxruntime",
           "--threads", "1", "--instances", "2", "--port", "0", "--max-request-rows", str(MAX_ROWS),
           "--max-sample-n", str(MAX_N), "--max-batch", "32", "--max-wait-ms", "20", "--cache-dir", str(CACHE),
           "--graceful-timeout", "10"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    info, seen = None, []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and info is None:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if '"listening"' in line:
            info = json.loads(line)
    if info is None:
        proc.kill()
        pytest.fail(f"nfkd serve --engine triton did not start: {''.join(seen)[-3000:]}")
    with httpx.Client(base_url=info["url"], timeout=60) as client:
        yield proc, info, client
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


@pytest.mark.slow
@needs_wheel
def test_log_prob_and_seeded_samples_equal_eager_float64(cli):
    _, info, client = cli
    assert info["models"] == {"density": "student_density", "sample": "student_sample"}
    x = rows(np.random.default_rng(1), 40)
    lp = output(client.post("/v2/models/student_density/infer", json=infer_body(x)), "log_prob")
    assert lp.shape == (40, 1)
    noise = draw_noise([(DIM,)], 9, 5)
    xs = output(client.post("/v2/models/student_sample/infer", json=sample_body(9, 0.7, 5)), "x")
    lp_ref, xs_ref = eager(x, noise, np.float32(0.7).item())
    assert_gate(lp[:, 0], lp_ref, xs, xs_ref)
    # the same seed, the same samples as the built-in service's runners; no seed: random but valid
    again = output(client.post("/v2/models/student_sample/infer", json=sample_body(9, 0.7, 5)), "x")
    np.testing.assert_array_equal(again, xs)
    assert output(client.post("/v2/models/student_sample/infer", json=sample_body(4)), "x").shape == (4, DIM)


@pytest.mark.slow
@needs_wheel
def test_concurrent_requests_are_merged_by_the_dynamic_batcher(cli):
    _, info, client = cli
    xs = [rows(np.random.default_rng(100 + i), 1 + i % 5) for i in range(48)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=info["url"], timeout=60) as c:
            return await asyncio.gather(*[c.post("/v2/models/student_density/infer", json=infer_body(x)) for x in xs])

    before = client.get("/v2/models/student_density/stats").json()["model_stats"][0]
    answers = asyncio.run(fire())
    ref = eager(np.concatenate(xs), draw_noise([(DIM,)], 1, 0), 1.0)[0]
    assert_gate(np.concatenate([output(r, "log_prob")[:, 0] for r in answers]), ref)
    after = client.get("/v2/models/student_density/stats").json()["model_stats"][0]
    requests = after["inference_count"] - before["inference_count"]
    calls = after["execution_count"] - before["execution_count"]
    assert requests == sum(len(x) for x in xs) and calls < len(xs), (requests, calls)
    metrics = httpx.get(info["metrics"]).text
    assert re.search(r'nv_inference_exec_count\{model="student_density",version="1"\} \d+', metrics)


BAD = [  # (model, body, status, message fragment); the last two are Triton 2.51's own front end
    ("density", infer_body(np.zeros((2, DIM + 1), np.float32)), 400, "unexpected shape for input 'x'"),
    ("density", infer_body(np.zeros((2, DIM)), datatype="FP64"), 400, "data-type is 'FP64', but model"),
    ("density", infer_body(np.zeros((MAX_ROWS + 1, DIM), np.float32)), 400, f"batch-size must be <= {MAX_ROWS}"),
    ("density", infer_body(np.array([[0, 1, np.nan, 0, 0], [0] * 5], np.float32)), 400, "x contains NaN or Inf"),
    ("density", infer_body(np.full((1, DIM), 1e39)), 400, "x contains NaN or Inf (or values beyond the float32"),
    ("density", {"inputs": []}, 400, "missing required input(s) ['x']"),
    ("sample", sample_body(MAX_N + 1), 400, f"above this server's limit of {MAX_N} samples"),
    ("sample", sample_body(0), 400, "n must be a positive integer"),
    ("sample", sample_body(3, temperature=11.0), 400, "temperature must be a number in [0, 10]"),
    ("sample", sample_body(3, seed=-1), 400, "seed must be null or an integer"),
    ("density", b'{"inputs": [{"name": "x", "sha', 500, "failed to parse the request JSON"),
    ("density", {"inputs": [{"name": "x", "shape": [1, DIM], "datatype": "FP32", "data": [1.0]}]}, 500,
     "Shape does not match true shape of 'data'"),
]


@pytest.mark.slow
@needs_wheel
@pytest.mark.parametrize("model, body, status, message", BAD, ids=[
    "wrong-shape", "wrong-dtype", "oversized", "nan", "beyond-float32", "missing-input", "n-too-large", "n-zero",
    "temperature", "seed", "malformed-json", "data-count"])
def test_bad_requests_get_one_clear_error_and_the_server_stays_ready(cli, model, body, status, message):
    _, _, client = cli
    url = f"/v2/models/student_{model}/infer"
    r = client.post(url, content=body if isinstance(body, bytes) else json.dumps(body).encode())  # NaN: a JSON token
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.text
    assert client.get("/v2/health/ready").status_code == 200
    x = rows(np.random.default_rng(3), 2)
    assert output(client.post("/v2/models/student_density/infer", json=infer_body(x)), "log_prob").shape == (2, 1)


@pytest.mark.slow
@needs_wheel
def test_nan_in_a_merged_batch_fails_only_its_own_request(cli):
    """A NaN request merged with good ones: only it fails (per-request errors inside one model call)."""
    _, info, _ = cli
    good = [rows(np.random.default_rng(7 + i), 3) for i in range(6)]
    bad = good[0].copy()
    bad[1, 2] = np.nan
    bodies = good[:3] + [bad] + good[3:]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=info["url"], timeout=60) as c:
            return await asyncio.gather(*[c.post("/v2/models/student_density/infer",
                                                 content=json.dumps(infer_body(x)).encode()) for x in bodies])

    answers = asyncio.run(fire())
    assert [r.status_code for r in answers] == [200, 200, 200, 400, 200, 200, 200]
    assert "rows [1]" in answers[3].json()["error"]


@pytest.mark.slow
@needs_wheel
def test_model_config_has_instances_limits_and_batcher(cli):
    _, _, client = cli
    cfg = client.get("/v2/models/student_density/config").json()
    assert cfg["max_batch_size"] == MAX_ROWS and cfg["backend"] == "python"
    assert cfg["instance_group"][0]["count"] == 2 and cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [32]
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 20000
    assert cfg["parameters"]["nfkd_threads"]["string_value"] == "1"
    assert client.get("/v2/models/student_sample/config").json()["max_batch_size"] == 0


@pytest.mark.slow
@needs_wheel
def test_sigterm_stops_cleanly_with_no_orphan_processes(cli):
    proc, info, client = cli
    assert client.get("/v2/health/ready").status_code == 200
    pgid = info["pid"]
    assert group_alive(pgid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(pgid), subprocess.run(["ps", "-o", "pid,cmd", "-g", str(pgid)], capture_output=True,
                                                 text=True).stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{info['url']}/v2/health/live", timeout=2)


@pytest.mark.slow
@needs_wheel
def test_exported_repository_is_loaded_by_the_real_server(tmp_path):
    """export.triton_model_repository: the Python-backend variant is served end to end; the ONNX Runtime variant's
    config is accepted, and the model stops at the missing backend (the CPU wheel ships the Python one only)."""
    from nfkd.serving.triton_binary import TritonServer

    _, folder = student()
    repo = tmp_path / "repo"
    assert repository_main([str(folder), "-o", str(repo), "--platform", "python", "--cpu", "--threads", "1",
                               "--max-batch", "128"]) == 0
    assert repository_main([str(folder), "-o", str(repo), "--platform", "onnx", "--cpu", "--name", "ort"]) == 0
    broken = repo / "broken_density"  # the same config with one typo: the server's own parser must refuse it
    shutil.copytree(repo / "ort_density", broken)
    text = (broken / "config.pbtxt").read_text().replace('name: "ort_density"', 'name: "broken_density"')
    (broken / "config.pbtxt").write_text(text.replace("max_batch_size:", "max_batch_sise:"))
    with TritonServer(repo, strict=False) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        name = student()[0].stem
        x = rows(np.random.default_rng(11), 16)
        lp = output(client.post(f"/v2/models/{name}_density/infer", json=infer_body(x)), "log_prob")
        xs = output(client.post(f"/v2/models/{name}_sample/infer", json=sample_body(5, 0.8, 2)), "x")
        lp_ref, xs_ref = eager(x, draw_noise([(DIM,)], 5, 2), np.float32(0.8).item())
        assert_gate(lp[:, 0], lp_ref, xs, xs_ref)
        index = {m["name"]: m for m in client.post("/v2/repository/index", json={}).json()}
        for model in ("ort_density", "ort_sample"):
            assert index[model]["state"] == "UNAVAILABLE"
            assert "onnxruntime" in index[model]["reason"], index[model]
        assert client.get("/v2/models/ort_density/ready").status_code == 400
        assert "state" not in index["broken_density"]  # refused while parsing its config: no version was created
        assert "max_batch_sise" in srv.log_path.read_text()
        pgid = srv.proc.pid
    assert not group_alive(pgid)


def test_missing_wheel_is_one_clear_line(monkeypatch):
    from nfkd.serving import triton_binary

    monkeypatch.setattr(triton_binary.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(triton_binary.TritonNotInstalled, match="pip install --no-deps nvidia-pytriton==0.7.0"):
        triton_binary.triton_home()


def test_instances_need_the_triton_engine():
    r = subprocess.run([sys.executable, "-m", "nfkd", "serve", "missing.pt", "--instances", "2"], cwd=REPO,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and "--instances needs --engine triton" in r.stderr, r.stderr


def test_libpython_of_this_interpreter_comes_first():
    """A pyenv Python: the stub must load this interpreter's libpython, not the system's (another patch level)."""
    if not HAVE_WHEEL:
        pytest.skip("nvidia-pytriton is not installed")
    import sysconfig

    from nfkd.serving.triton_binary import library_path

    libdir = sysconfig.get_config_var("LIBDIR")
    first = library_path().split(os.pathsep)[0]
    has_shared = os.path.exists(os.path.join(libdir, f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"))
    assert (first == libdir) == has_shared
