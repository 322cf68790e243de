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
TIGHT_QUEUE_ROWS = 160  # the "tight" model: one-row chunks, room for one 128-row request at a time


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


# --- KServe v2 over gRPC, without grpcio-tools or tritonclient (tritonclient pins protobuf<7) ---------------
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
GRPC_READY = "/inference.GRPCInferenceService/ServerReady"


def kserve_grpc_messages() -> dict[str, type]:
    """The KServe v2 messages these tests send and read, as protobuf classes built at run time from the field
    names and numbers of ``protobuf/grpc_service.proto`` (triton-inference-server/common); fields the tests
    do not use (parameter maps) are left out: they stay unknown fields, skipped on parsing."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED

    def message(name: str, *fields: tuple) -> descriptor_pb2.DescriptorProto:
        m = descriptor_pb2.DescriptorProto(name=name)
        for fname, number, ftype, label, *type_name in fields:
            m.field.add(name=fname, number=number, type=ftype, label=label, **({"type_name": type_name[0]}
                                                                                 if type_name else {}))
        return m

    contents = (".inference.InferTensorContents",)
    tensor = [("name", 1, F.TYPE_STRING, one), ("datatype", 2, F.TYPE_STRING, one), ("shape", 3, F.TYPE_INT64, many),
              ("contents", 5, F.TYPE_MESSAGE, one, *contents)]
    head = [("model_name", 1, F.TYPE_STRING, one), ("model_version", 2, F.TYPE_STRING, one), ("id", 3, F.TYPE_STRING, one)]
    request = message("ModelInferRequest", *head,
                      ("inputs", 5, F.TYPE_MESSAGE, many, ".inference.ModelInferRequest.InferInputTensor"),
                      ("outputs", 6, F.TYPE_MESSAGE, many, ".inference.ModelInferRequest.InferRequestedOutputTensor"),
                      ("raw_input_contents", 7, F.TYPE_BYTES, many))
    request.nested_type.extend([message("InferInputTensor", *tensor),
                                message("InferRequestedOutputTensor", ("name", 1, F.TYPE_STRING, one))])
    response = message("ModelInferResponse", *head,
                       ("outputs", 5, F.TYPE_MESSAGE, many, ".inference.ModelInferResponse.InferOutputTensor"),
                       ("raw_output_contents", 6, F.TYPE_BYTES, many))
    response.nested_type.append(message("InferOutputTensor", *tensor))
    proto = descriptor_pb2.FileDescriptorProto(name="nfkd_tests/kserve_v2_subset.proto", package="inference",
                                               syntax="proto3")
    proto.message_type.extend([
        message("ServerReadyRequest"), message("ServerReadyResponse", ("ready", 1, F.TYPE_BOOL, one)),
        message("InferTensorContents", ("int64_contents", 3, F.TYPE_INT64, many),
                ("fp32_contents", 6, F.TYPE_FLOAT, many)),
        request, response])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{m.name}"))
            for m in proto.message_type}


def grpc_tensor(response, name: str) -> np.ndarray:
    """An output of a ModelInferResponse: Triton sends every output in ``raw_output_contents``, in order."""
    i = [o.name for o in response.outputs].index(name)
    out = response.outputs[i]
    assert out.datatype == "FP32"
    return np.frombuffer(response.raw_output_contents[i], np.float32).reshape(tuple(out.shape)).astype(np.float64)


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


@pytest.mark.slow
@needs_wheel
def test_big_and_small_requests_together_are_all_answered_equal_to_eager(cli):
    """Requests larger than the chunk (32 rows) and small ones at once: the model's scheduler splits the big
    ones and runs the small ones between their chunks; every answer is whole and equals the eager float64 flow
    (rows kept within the queue budget, so none is refused)."""
    _, info, _ = cli
    big = [rows(np.random.default_rng(40 + i), MAX_ROWS) for i in range(2)]
    small = [rows(np.random.default_rng(50 + i), 1 + i % 3) for i in range(20)]
    samples = [(MAX_N, 0.7, 1), (MAX_N, 0.9, 2), (3, 0.7, 3), (3, 1.0, 4), (2, 0.9, 5), (1, 0.5, 6)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=info["url"], timeout=60) as c:
            lp = [c.post("/v2/models/student_density/infer", json=infer_body(x)) for x in big + small]
            xs = [c.post("/v2/models/student_sample/infer", json=sample_body(*s)) for s in samples]
            return await asyncio.gather(*lp, *xs)

    answers = asyncio.run(fire())
    xs_in = big + small
    lp = np.concatenate([output(r, "log_prob")[:, 0] for r in answers[:len(xs_in)]])
    assert_gate(lp, eager(np.concatenate(xs_in), draw_noise([(DIM,)], 1, 0), 1.0)[0])
    for (n, t, seed), r in zip(samples, answers[len(xs_in):]):
        got = output(r, "x")
        assert got.shape == (n, DIM)
        _, ref = eager(xs_in[0][:1], draw_noise([(DIM,)], n, seed), np.float32(t).item())
        assert np.all(np.abs(got - ref) <= TOL["sample_abs"] + TOL["sample_rel"] * np.abs(ref))


BAD = [  # (model, body, status, message fragment); the last two are Triton 2.51's own front end
    ("density", infer_body(np.zeros((2, DIM + 1), np.float32)), 400, "unexpected shape for input 'x'"),
    ("density", infer_body(np.zeros((2, DIM)), datatype="FP64"), 400, "data-type is 'FP64', but model"),
    ("density", infer_body(np.zeros((MAX_ROWS + 1, DIM), np.float32)), 400, f"batch-size must be <= {MAX_ROWS}"),
    ("density", infer_body(np.array([[0, 1, np.nan, 0, 0], [0] * 5], np.float32)), 400, "x contains NaN or Inf"),
    ("density", infer_body(np.full((1, DIM), 1e39)), 400, "x contains NaN or Inf"),
    ("density", {"inputs": []}, 400, "missing required input(s) ['x']"),
    ("sample", sample_body(MAX_N + 1), 400, f"above this server's limit of {MAX_N} samples"),
    ("sample", sample_body(0), 400, "n must be a positive integer"),
    ("sample", sample_body(3, temperature=11.0), 400, "temperature must be a finite number in [0, 10]"),
    ("sample", sample_body(3, seed=-1), 400, "seed must be an integer in 0..4294967295"),
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


@pytest.fixture(scope="module")
def grpc_client(cli):
    """(ModelInfer, ServerReady, messages) on the server's gRPC port, from its "listening" line."""
    grpc = pytest.importorskip("grpc", reason="grpcio is not installed (the dev extra has it)")
    _, info, _ = cli
    msgs = kserve_grpc_messages()
    with grpc.insecure_channel(info["grpc"]) as channel:
        infer = channel.unary_unary(GRPC_INFER, request_serializer=msgs["ModelInferRequest"].SerializeToString,
                                    response_deserializer=msgs["ModelInferResponse"].FromString)
        ready = channel.unary_unary(GRPC_READY, request_serializer=msgs["ServerReadyRequest"].SerializeToString,
                                    response_deserializer=msgs["ServerReadyResponse"].FromString)
        yield infer, ready, msgs


@pytest.mark.slow
@needs_wheel
def test_grpc_model_infer_equals_eager_float64(grpc_client):
    """KServe v2 gRPC: raw tensor bytes in (density), typed contents in (sample), raw bytes out; the same values
    as the eager float64 flow at the export gate's tolerance, and the same seeded samples as over HTTP."""
    infer, ready, msgs = grpc_client
    Request = msgs["ModelInferRequest"]
    assert ready(msgs["ServerReadyRequest"](), timeout=30).ready
    x = rows(np.random.default_rng(21), 33)
    req = Request(model_name="student_density", inputs=[Request.InferInputTensor(
        name="x", datatype="FP32", shape=list(x.shape))], raw_input_contents=[x.tobytes()])
    lp = grpc_tensor(infer(req, timeout=60), "log_prob")
    req = Request(model_name="student_sample", inputs=[
        Request.InferInputTensor(name="n", datatype="INT64", shape=[1], contents={"int64_contents": [7]}),
        Request.InferInputTensor(name="temperature", datatype="FP32", shape=[1], contents={"fp32_contents": [0.6]}),
        Request.InferInputTensor(name="seed", datatype="INT64", shape=[1], contents={"int64_contents": [13]})])
    xs = grpc_tensor(infer(req, timeout=60), "x")
    assert lp.shape == (33, 1) and xs.shape == (7, DIM)
    lp_ref, xs_ref = eager(x, draw_noise([(DIM,)], 7, 13), np.float32(0.6).item())
    assert_gate(lp[:, 0], lp_ref, xs, xs_ref)


@pytest.mark.slow
@needs_wheel
@pytest.mark.parametrize("x, message", [
    (np.array([[0, 1, np.nan, 0, 0]], np.float32), "x contains NaN or Inf"),
    (np.zeros((2, DIM + 1), np.float32), "unexpected shape for input 'x'"),
    (np.zeros((MAX_ROWS + 1, DIM), np.float32), f"batch-size must be <= {MAX_ROWS}"),
], ids=["nan", "wrong-shape", "oversized"])
def test_grpc_bad_request_is_invalid_argument(grpc_client, x, message):
    """The model's own check (NaN) and Triton's (shape, row limit): INVALID_ARGUMENT, HTTP's 400 over gRPC."""
    import grpc

    infer, ready, msgs = grpc_client
    Request = msgs["ModelInferRequest"]
    req = Request(model_name="student_density", inputs=[Request.InferInputTensor(
        name="x", datatype="FP32", shape=list(x.shape))], raw_input_contents=[x.tobytes()])
    with pytest.raises(grpc.RpcError) as err:
        infer(req, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert message in err.value.details(), err.value.details()
    assert ready(msgs["ServerReadyRequest"](), timeout=30).ready


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


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One real server on a repository holding: export.triton_model_repository's Python-backend variant (ONNX
    Runtime runner), the same variant with the numba runner (written from the checkpoint), one with a queue
    budget of a single large request ("tight"), the ONNX Runtime variant, and a copy of that one with a
    misspelt field."""
    if not HAVE_WHEEL:
        pytest.skip("nvidia-pytriton is not installed: pip install --no-deps nvidia-pytriton==0.7.0")
    from export.triton_python import write_python_repository
    from nfkd.serving.triton_binary import TritonServer

    ckpt, folder = student()
    repo = tmp_path_factory.mktemp("exported") / "repo"
    assert repository_main([str(folder), "-o", str(repo), "--platform", "python", "--cpu", "--threads", "1",
                            "--max-batch", "128"]) == 0
    write_python_repository(ckpt, repo, (DIM,), "nb", backend="numba", threads=1, max_request_rows=128,
                            max_batch=128, cache_dir=CACHE)
    write_python_repository(folder, repo, (DIM,), "tight", backend="onnxruntime", threads=1, max_request_rows=128,
                            max_batch=1, max_queue_rows=TIGHT_QUEUE_ROWS)
    assert repository_main([str(folder), "-o", str(repo), "--platform", "onnx", "--cpu", "--name", "ort"]) == 0
    broken = repo / "broken_density"  # the same config with one typo: the server's own parser must refuse it
    shutil.copytree(repo / "ort_density", broken)
    text = (broken / "config.pbtxt").read_text().replace('name: "ort_density"', 'name: "broken_density"')
    (broken / "config.pbtxt").write_text(text.replace("max_batch_size:", "max_batch_sise:"))
    srv = TritonServer(repo, strict=False).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            yield srv, client
    finally:
        pgid = srv.proc.pid
        srv.stop()
        assert not group_alive(pgid)


def served_equal_eager(client: httpx.Client, name: str) -> None:
    x = rows(np.random.default_rng(11), 16)
    lp = output(client.post(f"/v2/models/{name}_density/infer", json=infer_body(x)), "log_prob")
    xs = output(client.post(f"/v2/models/{name}_sample/infer", json=sample_body(5, 0.8, 2)), "x")
    lp_ref, xs_ref = eager(x, draw_noise([(DIM,)], 5, 2), np.float32(0.8).item())
    assert_gate(lp[:, 0], lp_ref, xs, xs_ref)


@pytest.mark.slow
@needs_wheel
def test_exported_python_repository_is_served_by_the_real_server(exported):
    """export.triton_model_repository --platform python: served end to end, equal to the eager float64 flow."""
    srv, client = exported
    served_equal_eager(client, student()[0].stem)
    assert "backend='onnxruntime'" in srv.log_path.read_text()


@pytest.mark.slow
@needs_wheel
def test_numba_runner_inside_triton_equals_eager_float64(exported):
    """The numba runner (kernels compiled in the stub process at warm-up) behind Triton: the same values."""
    srv, client = exported
    served_equal_eager(client, "nb")
    assert "backend='numba'" in srv.log_path.read_text()


@pytest.mark.slow
@needs_wheel
def test_requests_beyond_the_queue_budget_get_503_with_the_builtin_message(exported):
    """24 concurrent 128-row requests at a model instance that holds one at a time (TIGHT_QUEUE_ROWS rows queued or
    running; one-row chunks make each take a while): the others are refused at once with UNAVAILABLE (HTTP 503)
    and the built-in service's message, every admitted one equals the eager flow, and the server stays ready."""
    _, client = exported
    xs = [rows(np.random.default_rng(60 + i), 128) for i in range(24)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=client.base_url, timeout=60) as c:
            return await asyncio.gather(*[c.post("/v2/models/tight_density/infer", json=infer_body(x)) for x in xs])

    answers = asyncio.run(fire())
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 503}, codes
    for r in answers:
        if r.status_code == 503:
            assert re.fullmatch(r"the server is overloaded \(\d+ rows queued or running, limit 159 for a request of "
                                r"128 rows\); retry later", r.json()["error"]), r.text
    ok = [i for i, c in enumerate(codes) if c == 200]
    lp = np.concatenate([output(answers[i], "log_prob")[:, 0] for i in ok])
    assert_gate(lp, eager(np.concatenate([xs[i] for i in ok]), draw_noise([(DIM,)], 1, 0), 1.0)[0])
    assert client.get("/v2/health/ready").status_code == 200
    assert output(client.post("/v2/models/tight_density/infer", json=infer_body(xs[0])), "log_prob").shape == (128, 1)


@pytest.mark.slow
@needs_wheel
def test_onnx_variant_is_accepted_and_stops_at_the_missing_backend(exported):
    """The ONNX Runtime variant's config is accepted, and the model stops at the missing backend (the CPU wheel
    ships the Python one only); a misspelt field is refused by the server's own config parser."""
    srv, client = exported
    index = {m["name"]: m for m in client.post("/v2/repository/index", json={}).json()}
    for model in ("ort_density", "ort_sample"):
        assert index[model]["state"] == "UNAVAILABLE"
        assert "onnxruntime" in index[model]["reason"], index[model]
    assert client.get("/v2/models/ort_density/ready").status_code == 400
    assert "state" not in index["broken_density"]  # refused while parsing its config: no version was created
    assert "max_batch_sise" in srv.log_path.read_text()


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
