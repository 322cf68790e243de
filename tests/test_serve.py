"""The HTTP service (``python -m nfkd serve``): answers equal the direct runtime's under a concurrent
client pool, micro-batching merges requests, every class of bad input is a clear 4xx (and the service
stays up), SIGTERM drains in-flight requests.

One small Glow1D student is exported once per session, through the service's own on-the-fly export
(``ensure_export``: the parity gate runs), and shared with test_triton_model_repository.py. Servers run uvicorn
on loopback in a background thread (one test starts the real CLI as a subprocess).
"""
from __future__ import annotations

import asyncio
import atexit
import functools
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import nfkd
from export.cache import ensure_export
from export.manifest import reusable_export
from export.runtime import load as load_runtime
from nfkd.errors import InputError
from nfkd.flows import Glow1D
from nfkd.serving import ServeConfig, create_app, load_model
from nfkd.serving.admission import Admission, Closed, Overloaded
from nfkd.serving.batcher import LogProbBatcher, ModelWorker, Stats
from nfkd.serving.http_server import BackgroundServer
from nfkd.serving.jsonlog import JsonFormatter

from .helpers import perturb

REPO = Path(__file__).resolve().parents[1]
DIM = 5
_ROOT = Path(tempfile.mkdtemp(prefix="nfkd-serve-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
CACHE = _ROOT / "cache"
TIMEOUT = httpx.Timeout(30.0)


def make_flow() -> nfkd.Flow:
    torch.manual_seed(0)
    flow = Glow1D(DIM, steps=2, hidden=16)
    g = torch.Generator().manual_seed(1)
    flow.normalize.set(2 * torch.randn(DIM, generator=g), torch.rand(DIM, generator=g) + 0.5)
    return perturb(flow, scale=0.1, seed=3).eval()


@functools.lru_cache(maxsize=None)
def student() -> tuple[Path, Path]:
    """(checkpoint, export folder): exported once per session by the service's on-the-fly export."""
    ckpt = _ROOT / "student.pt"
    nfkd.save(make_flow(), ckpt, metadata={"dataset": "test"})
    return ckpt, ensure_export(ckpt, CACHE)


def rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.standard_normal((n, DIM)) * 2).astype(np.float32)


def npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


NPY_HEADERS = {"content-type": "application/x-npy"}


@pytest.fixture(scope="module")
def runtime():
    return load_runtime(student()[1], intra_op_threads=1)


@pytest.fixture(scope="module")
def server():
    """ONNX Runtime backend from the checkpoint (the cached export is reused), small limits."""
    ckpt, _ = student()
    backend = load_model(ckpt, "onnxruntime", threads=1, cache_dir=CACHE)
    cfg = ServeConfig(max_wait_ms=5, max_request_rows=64, max_sample_n=256, max_body_bytes=32 * 1024)
    with BackgroundServer(create_app(backend, cfg)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c


async def _fire(url: str, payloads: list[tuple[str, dict]], concurrency: int) -> list[httpx.Response]:
    """POST every payload at once: `concurrency` clients (one connection each), all requests in flight together.

    (One client per connection: httpx's pool gets slow with hundreds of connections in one client;
    verify=False only skips loading the CA bundle per client, which costs ~50 ms each -- plain http on loopback.)
    """
    clients = [httpx.AsyncClient(base_url=url, timeout=TIMEOUT, verify=False) for _ in range(concurrency)]
    try:
        return await asyncio.gather(*(clients[i % concurrency].post(path, **kw) for i, (path, kw) in enumerate(payloads)))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def _decode(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    if r.headers["content-type"].startswith("application/x-npy"):
        return np.load(io.BytesIO(r.content), allow_pickle=False)
    return np.asarray(r.json()["log_prob"], np.float32)


# --------------------------------------------------------------------------------------------
# Correctness under concurrency, micro-batching
# --------------------------------------------------------------------------------------------
def test_concurrent_requests_match_the_runtime_and_are_merged(server, client, runtime):
    rng = np.random.default_rng(0)
    xs = [rows(rng, int(rng.integers(1, 17))) for _ in range(256)]
    payloads = []
    for i, x in enumerate(xs):
        if i % 4 == 0:  # binary in, binary out
            payloads.append(("/log_prob", {"content": npy(x), "headers": {**NPY_HEADERS, "accept": "application/x-npy"}}))
        elif i % 4 == 1:  # binary in (float64), JSON out
            payloads.append(("/log_prob", {"content": npy(x.astype(np.float64)), "headers": NPY_HEADERS}))
        else:
            payloads.append(("/log_prob", {"json": {"x": x.tolist()}}))
    before = client.get("/stats").json()
    t0 = time.perf_counter()
    responses = asyncio.run(_fire(server.url, payloads, concurrency=256))
    elapsed = time.perf_counter() - t0
    after = client.get("/stats").json()

    worst = 0.0
    for x, r in zip(xs, responses):
        got, ref = _decode(r), runtime.log_prob(x)
        assert got.dtype == np.float32 and got.shape == (len(x),)
        worst = max(worst, float(np.max(np.abs(got - ref) / np.maximum(1, np.abs(ref)))))
    print(f"max relative difference to the direct runtime: {worst:.3g}")
    assert worst <= 1e-6, worst  # same graph, same float32 rows; only the merged batch differs
    requests = after["log_prob"]["requests"] - before["log_prob"]["requests"]
    calls = after["log_prob"]["model_calls"] - before["log_prob"]["model_calls"]
    assert requests == 256 and after["log_prob"]["rows"] - before["log_prob"]["rows"] == sum(map(len, xs))
    assert calls < requests, (calls, requests, elapsed)
    assert after["log_prob"]["max_merged_requests"] > 1
    merged = {k: v for k, v in after["log_prob"]["merged_requests_histogram"].items() if k != "1"}
    assert merged, after["log_prob"]["merged_requests_histogram"]
    assert after["log_prob"]["max_merged_rows"] <= after["max_batch"]
    assert after["http_by_status"].get("500") is None


def test_log_prob_matches_the_eager_flow(client):
    flow = nfkd.load(student()[0]).double()
    x = rows(np.random.default_rng(1), 32)
    got = np.asarray(client.post("/log_prob", json={"x": x.tolist()}).json()["log_prob"])
    with torch.no_grad():
        ref = flow.log_prob(torch.from_numpy(x).double()).numpy()
    assert np.max(np.abs(got - ref) / np.maximum(1, np.abs(ref))) <= 1e-4


def test_binary_payloads_and_accepted_dtypes(client, runtime):
    x = rows(np.random.default_rng(2), 7)
    ref = runtime.log_prob(x)
    for arr in (x, x.astype(np.float64), x.astype(np.float16), np.asfortranarray(x.astype(np.float64)),
                x.astype(">f4")):
        r = client.post("/log_prob", content=npy(arr), headers={**NPY_HEADERS, "accept": "application/x-npy"})
        assert r.headers["content-type"] == "application/x-npy"
        got = np.load(io.BytesIO(r.content), allow_pickle=False)
        np.testing.assert_allclose(got, runtime.log_prob(arr.astype(np.float32)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_decode(client.post("/log_prob", content=npy(x), headers=NPY_HEADERS)), ref,
                               rtol=1e-6, atol=1e-6)
    ints = np.arange(3 * DIM).reshape(3, DIM) - 7  # integers: accepted, cast to float32
    for r in (client.post("/log_prob", json={"x": ints.tolist()}),
              client.post("/log_prob", content=npy(ints.astype(np.int64)), headers=NPY_HEADERS),
              client.post("/log_prob", content=npy(ints.astype(np.int8)), headers=NPY_HEADERS)):
        np.testing.assert_allclose(_decode(r), runtime.log_prob(ints.astype(np.float32)), rtol=1e-6, atol=1e-6)


def test_sample_matches_the_runtime(client, runtime):
    r = client.post("/sample", json={"n": 9, "temperature": 0.7, "seed": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["n"], body["temperature"], body["seed"]) == (9, 0.7, 5)
    np.testing.assert_array_equal(np.asarray(body["x"], np.float32), runtime.sample(9, temperature=0.7, seed=5))
    r = client.post("/sample", json={"n": 3, "seed": 1}, headers={"accept": "application/x-npy"})
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content), allow_pickle=False), runtime.sample(3, temperature=1.0, seed=1))
    r = client.post("/sample", json={"n": 4})  # no seed: random, still valid
    assert np.asarray(r.json()["x"]).shape == (4, DIM)
    assert np.asarray(client.post("/sample", json={"n": 2, "temperature": 0, "seed": 0}).json()["x"]).shape == (2, DIM)


def test_metadata_healthz_stats(client):
    ckpt, folder = student()
    assert client.get("/healthz").json() == {"status": "ok"}
    meta = client.get("/metadata").json()
    assert meta["event_shape"] == [DIM] and meta["dim"] == DIM and meta["arch"] == "glow1d"
    assert meta["backend"] == "onnxruntime" and meta["device"] == "cpu"
    assert meta["nfkd_version"] == nfkd.__version__
    assert meta["checkpoint_sha256"] == nfkd.load_checkpoint(ckpt).sha256
    assert meta["max_batch"] == 4096 and meta["max_request_rows"] == 64 and meta["max_sample_n"] == 256
    assert meta["max_body_bytes"] == 32 * 1024 and meta["batching"] is True
    assert meta["export"]["folder"] == str(folder) and meta["export"]["parity"]["passed"] is True
    stats = client.get("/stats").json()
    for key in ("requests", "rows", "model_calls", "merged_requests_histogram", "merged_rows_histogram"):
        assert key in stats["log_prob"]
    assert stats["queue"]["depth"] == 0


# --------------------------------------------------------------------------------------------
# Bad input: one clear 4xx each, then the service still answers
# --------------------------------------------------------------------------------------------
J = {"content-type": "application/json"}
_obj = np.empty((2, DIM), dtype=object)
_obj[:] = 1.0
BAD = [
    # (id, path, request kwargs, status, message regex)
    ("features", "/log_prob", {"json": {"x": [[1.0, 2.0, 3.0]]}}, 422, r"has 3 features per row; this model expects 5"),
    ("features-npy", "/log_prob", {"content": npy(np.zeros((2, 7), np.float32)), "headers": NPY_HEADERS}, 422,
     r"has 7 features per row; this model expects 5"),
    ("strings", "/log_prob", {"json": {"x": [["a", "b", "c", "d", "e"]]}}, 422, r"only numbers, found a string"),
    ("mixed-string", "/log_prob", {"json": {"x": [[1, 2, "3", 4, 5]]}}, 422, r"only numbers, found a string"),
    ("bools", "/log_prob", {"json": {"x": [[True, False, True, False, True]]}}, 422, r"booleans are not accepted"),
    ("mixed-bool", "/log_prob", {"json": {"x": [[1.5, True, 0, 0, 0]]}}, 422, r"booleans are not accepted"),
    ("null", "/log_prob", {"json": {"x": [[1, 2, None, 4, 5]]}}, 422, r"only numbers, found a null"),
    ("nested-object", "/log_prob", {"json": {"x": [[1, 2, {"a": 1}, 4, 5]]}}, 422, r"only numbers, found a object"),
    ("npy-bool", "/log_prob", {"content": npy(np.ones((2, DIM), bool)), "headers": NPY_HEADERS}, 422, r"dtype bool"),
    ("npy-object", "/log_prob", {"content": npy(_obj, allow_pickle=True), "headers": NPY_HEADERS}, 422,
     r"dtype object .*not accepted"),
    ("npy-complex", "/log_prob", {"content": npy(np.ones((2, DIM), np.complex64)), "headers": NPY_HEADERS}, 422,
     r"complex"),
    ("npy-string", "/log_prob", {"content": npy(np.full((2, DIM), "a")), "headers": NPY_HEADERS}, 422, r"string"),
    ("npy-structured", "/log_prob",
     {"content": npy(np.zeros(2, dtype=[("a", "f4"), ("b", "f4")])), "headers": NPY_HEADERS}, 422, r"structured"),
    ("nan", "/log_prob", {"content": b'{"x": [[NaN, 0, 0, 0, 0]]}', "headers": J}, 422, r"NaN or Inf .* rows \[0\]"),
    ("inf", "/log_prob", {"content": b'{"x": [[0, 0, 0, 0, 0], [0, -Infinity, 0, 0, 0]]}', "headers": J}, 422,
     r"NaN or Inf .* rows \[1\]"),
    ("float32-overflow", "/log_prob", {"json": {"x": [[0, 0, 0, 0, 1e39]]}}, 422, r"beyond the float32 range"),
    ("huge-int", "/log_prob", {"content": b'{"x": [[0, 0, 0, 0, 1' + b"0" * 400 + b']]}', "headers": J}, 422,
     r"integer too large"),
    ("int-digits-limit", "/log_prob", {"content": b'{"x": [[0, 0, 0, 0, 1' + b"0" * 5000 + b']]}', "headers": J}, 422,
     r"integer literal with more than 4300 digits.*float32"),
    ("deep-nesting", "/log_prob", {"content": b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "headers": J}, 400,
     r"nested too deeply"),
    ("nested-128", "/log_prob", {"content": b'{"x": ' + b"[" * 128 + b"1" + b"]" * 128 + b"}", "headers": J}, 422,
     r"ragged|expected \(batch, 5\)"),
    ("npy-nan", "/log_prob", {"content": npy(np.array([[0, 0, np.nan, 0, 0.0]])), "headers": NPY_HEADERS}, 422,
     r"NaN or Inf"),
    ("empty", "/log_prob", {"json": {"x": []}}, 422, r"empty batch"),
    ("empty-rows", "/log_prob", {"json": {"x": [[]]}}, 422, r"empty batch"),
    ("empty-npy", "/log_prob", {"content": npy(np.zeros((0, DIM), np.float32)), "headers": NPY_HEADERS}, 422,
     r"empty batch"),
    ("no-batch-dim", "/log_prob", {"json": {"x": [1, 2, 3, 4, 5]}}, 422, r"without a batch dimension"),
    ("ragged", "/log_prob", {"json": {"x": [[1, 2, 3, 4, 5], [1, 2]]}}, 422, r"ragged"),
    ("3d", "/log_prob", {"json": {"x": [[[1, 2, 3, 4, 5]]]}}, 422, r"expected \(batch, 5\)"),
    ("x-not-list", "/log_prob", {"json": {"x": "1,2,3,4,5"}}, 422, r"x must be an array of rows"),
    ("rows-json", "/log_prob", {"json": {"x": np.zeros((65, DIM)).tolist()}}, 413, r"65 rows is above .* limit of 64"),
    ("rows-npy", "/log_prob", {"content": npy(np.zeros((65, DIM), np.float32)), "headers": NPY_HEADERS}, 413,
     r"65 rows is above .* limit of 64"),
    ("bytes", "/log_prob", {"content": b'{"x": [[0, 0, 0, 0, 0]]' + b" " * 40000 + b"}", "headers": J}, 413,
     r"body of \d+ bytes is above .* limit of 32768 bytes"),
    ("malformed-json", "/log_prob", {"content": b'{"x": [[1, 2, 3, 4, 5]]', "headers": J}, 400, r"malformed JSON"),
    ("empty-body", "/log_prob", {"content": b"", "headers": J}, 400, r"empty request body"),
    ("not-utf8", "/log_prob", {"content": b"\xff\xfe{", "headers": J}, 400, r"malformed JSON"),
    ("json-list", "/log_prob", {"json": [[1, 2, 3, 4, 5]]}, 422, r"expected a JSON object .* got a JSON array"),
    ("missing-x", "/log_prob", {"json": {}}, 422, r"missing field 'x'"),
    ("unknown-field", "/log_prob", {"json": {"x": [[0, 0, 0, 0, 0]], "y": 1}}, 422, r"unknown field\(s\) \['y'\]"),
    ("malformed-npy", "/log_prob", {"content": b"not an npy file", "headers": NPY_HEADERS}, 400, r"malformed \.npy"),
    ("truncated-npy", "/log_prob", {"content": npy(np.zeros((4, DIM), np.float32))[:-3], "headers": NPY_HEADERS}, 400,
     r"malformed \.npy payload: header says shape \(4, 5\)"),
    ("npz", "/log_prob", {"content": b"PK\x03\x04" + b"\0" * 40, "headers": NPY_HEADERS}, 400, r"\.npz archive"),
    ("content-type", "/log_prob", {"content": b"1,2,3,4,5", "headers": {"content-type": "text/csv"}}, 415,
     r"unsupported Content-Type 'text/csv'; send application/json or application/x-npy"),
    ("no-content-type", "/log_prob", {"content": b'{"x": [[0, 0, 0, 0, 0]]}'}, 415, r"unsupported Content-Type 'none'"),
    ("sample-content-type", "/sample", {"content": npy(np.zeros(1)), "headers": NPY_HEADERS}, 415,
     r"send application/json"),
    ("n-zero", "/sample", {"json": {"n": 0}}, 422, r"n must be a positive integer, got 0"),
    ("n-negative", "/sample", {"json": {"n": -3}}, 422, r"n must be a positive integer, got -3"),
    ("n-float", "/sample", {"json": {"n": 2.5}}, 422, r"n must be a positive integer, got 2.5"),
    ("n-string", "/sample", {"json": {"n": "4"}}, 422, r"n must be a positive integer, got \"4\""),
    ("n-bool", "/sample", {"json": {"n": True}}, 422, r"n must be a positive integer, got true"),
    ("n-too-large", "/sample", {"json": {"n": 257}}, 422, r"n = 257 is above this server's limit of 256"),
    ("n-missing", "/sample", {"json": {"temperature": 1.0}}, 422, r"missing field 'n'"),
    ("t-nan", "/sample", {"content": b'{"n": 2, "temperature": NaN}', "headers": J}, 422,
     r"temperature must be a finite number in \[0, 10\], got NaN"),
    ("t-inf", "/sample", {"content": b'{"n": 2, "temperature": Infinity}', "headers": J}, 422, r"temperature must be"),
    ("t-negative", "/sample", {"json": {"n": 2, "temperature": -0.5}}, 422, r"temperature must be .* got -0.5"),
    ("t-string", "/sample", {"json": {"n": 2, "temperature": "hot"}}, 422, r"temperature must be"),
    ("t-huge-int", "/sample", {"content": b'{"n": 2, "temperature": 1' + b"0" * 400 + b"}", "headers": J}, 422,
     r"temperature must be a finite number in \[0, 10\]"),
    ("t-float32-overflow", "/sample", {"json": {"n": 2, "temperature": 1e39}}, 422,
     r"temperature must be a finite number in \[0, 10\]"),
    ("t-1e10", "/sample", {"json": {"n": 2, "temperature": 1e10}}, 422,
     r"temperature must be a finite number in \[0, 10\], got 1e\+?10"),
    ("t-above-limit", "/sample", {"json": {"n": 2, "temperature": 10.5}}, 422, r"in \[0, 10\], got 10.5"),
    ("n-huge", "/sample", {"content": b'{"n": 1' + b"0" * 400 + b"}", "headers": J}, 422,
     r"n = a 401-digit integer is above this server's limit of 256"),
    ("seed-huge", "/sample", {"content": b'{"n": 2, "seed": 1' + b"0" * 400 + b"}", "headers": J}, 422,
     r"seed must be an integer in 0\.\.4294967295 \(or null.*got a 401-digit integer"),
    ("seed-above-range", "/sample", {"json": {"n": 2, "seed": 2**32}}, 422, r"seed must be an integer in 0\.\.4294967295"),
    ("seed-negative", "/sample", {"json": {"n": 2, "seed": -1}}, 422, r"seed must be an integer in 0\.\.4294967295"),
    ("seed-float", "/sample", {"json": {"n": 2, "seed": 1.5}}, 422, r"seed must be an integer"),
    ("sample-malformed", "/sample", {"content": b"{n: 2}", "headers": J}, 400, r"malformed JSON"),
    ("sample-unknown", "/sample", {"json": {"n": 2, "temp": 0.5}}, 422, r"unknown field\(s\) \['temp'\]"),
]


@pytest.mark.parametrize("path,kwargs,status,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_4xx_and_the_service_stays_up(client, runtime, path, kwargs, status, message):
    before = client.get("/stats").json()["log_prob"]["model_calls"]
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and re.search(message, body["error"]), body
    assert client.get("/stats").json()["log_prob"]["model_calls"] == before  # never reached the model
    x = rows(np.random.default_rng(3), 2)
    good = client.post("/log_prob", json={"x": x.tolist()})
    np.testing.assert_allclose(_decode(good), runtime.log_prob(x), rtol=1e-6, atol=1e-6)


def test_unknown_routes_and_methods_answer_json_errors(client):
    r = client.get("/nope")
    assert r.status_code == 404 and "no endpoint /nope" in r.json()["error"]
    r = client.get("/log_prob")
    assert r.status_code == 405 and r.json() == {"error": "method GET is not allowed on /log_prob"}
    assert client.get("/healthz").status_code == 200


def test_oversized_body_without_content_length_is_refused(client):
    def chunks():  # chunked transfer: no Content-Length to check up front
        yield b'{"x": ['
        for _ in range(3000):
            yield b"[0, 0, 0, 0, 0], "
        yield b"[0, 0, 0, 0, 0]]}"

    r = client.post("/log_prob", content=chunks(), headers=J)
    assert r.status_code == 413 and "limit of 32768 bytes" in r.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_access_log_lines_are_structured(client, caplog):
    with caplog.at_level(logging.INFO, logger="nfkd.serve.access"):
        client.post("/log_prob", json={"x": np.zeros((3, DIM)).tolist()})
        client.post("/log_prob", json={"x": [[1]]})
        deadline = time.monotonic() + 5
        while len([r for r in caplog.records if r.name == "nfkd.serve.access"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    recs = [r for r in caplog.records if r.name == "nfkd.serve.access"]
    ok, bad = recs[-2], recs[-1]
    assert (ok.method, ok.path, ok.status, ok.rows) == ("POST", "/log_prob", 200, 3) and ok.latency_ms > 0
    assert bad.status == 422 and "features per row" in bad.error
    line = json.loads(JsonFormatter().format(ok))
    assert {"ts", "level", "logger", "msg", "method", "path", "status", "rows", "latency_ms"} <= set(line)


# --------------------------------------------------------------------------------------------
# Other modes: no batching, torch backend
# --------------------------------------------------------------------------------------------
def test_no_batching_runs_one_model_call_per_request(runtime):
    backend = load_model(student()[1], "onnxruntime", threads=1)
    with BackgroundServer(create_app(backend, ServeConfig(batching=False))) as srv:
        rng = np.random.default_rng(4)
        xs = [rows(rng, 4) for _ in range(64)]
        responses = asyncio.run(_fire(srv.url, [("/log_prob", {"json": {"x": x.tolist()}}) for x in xs], 64))
        for x, r in zip(xs, responses):
            np.testing.assert_allclose(_decode(r), runtime.log_prob(x), rtol=1e-6, atol=1e-6)
        stats = httpx.get(srv.url + "/stats", timeout=TIMEOUT).json()
    assert stats["batching"] is False
    assert stats["log_prob"]["requests"] == stats["log_prob"]["model_calls"] == 64
    assert stats["log_prob"]["merged_requests_histogram"] == {"1": 64}


def test_torch_backend_serves_the_eager_flow(runtime):
    ckpt, folder = student()
    backend = load_model(ckpt, "torch")
    with BackgroundServer(create_app(backend, ServeConfig(max_wait_ms=2))) as srv, \
            httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
        x = rows(np.random.default_rng(5), 16)
        got = _decode(c.post("/log_prob", json={"x": x.tolist()}))
        ref = runtime.log_prob(x)
        assert np.max(np.abs(got - ref) / np.maximum(1, np.abs(ref))) <= 1e-4
        xs = np.asarray(c.post("/sample", json={"n": 6, "temperature": 0.8, "seed": 2}).json()["x"], np.float32)
        np.testing.assert_allclose(xs, runtime.sample(6, temperature=0.8, seed=2), rtol=1e-4, atol=1e-4)  # same noise
        meta = c.get("/metadata").json()
        assert meta["backend"] == "eager" and meta["checkpoint_sha256"] == nfkd.load_checkpoint(ckpt).sha256
        assert c.post("/log_prob", json={"x": [[0, 0]]}).status_code == 422
    with pytest.raises(InputError, match="needs the checkpoint file"):
        load_model(folder, "torch")


def test_backend_loading_errors(tmp_path):
    with pytest.raises(InputError, match="model not found"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="without manifest.json"):
        load_model(tmp_path)
    with pytest.raises(InputError, match="backend must be one of"):
        load_model(student()[0], "tflite")


def test_backend_choices_are_the_registry_and_its_aliases():
    from nfkd.inference import registry
    from nfkd.serving.loading import BACKEND_CHOICES, backend_name

    aliases = {a: s.name for s in registry.BACKENDS.values() for a in s.aliases}
    assert set(BACKEND_CHOICES) == {"auto", *registry.BACKENDS, *aliases} and aliases.get("torch") == "eager"
    assert backend_name("torch") == "eager" and backend_name("numba") == "numba" and backend_name(None) is None


def test_on_the_fly_export_is_cached_and_verified(tmp_path, monkeypatch):
    ckpt, folder = student()
    import export.onnx

    def no_export(*a, **k):
        raise AssertionError("should have reused the cached export")

    monkeypatch.setattr(export.onnx, "export_onnx", no_export)
    assert ensure_export(ckpt, CACHE) == folder  # intact: reused, not re-exported
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    sha = nfkd.load_checkpoint(ckpt).sha256
    assert reusable_export(copy, sha) is not None
    with open(copy / "density.onnx", "ab") as f:
        f.write(b"\0")
    assert reusable_export(copy, sha) is None  # a graph file changed after export
    assert reusable_export(folder, "0" * 64) is None  # another checkpoint
    assert reusable_export(folder, sha, need_engines=True) is None  # no engines
    (copy / "manifest.json").write_text("{not json")
    assert reusable_export(copy, sha) is None  # corrupt manifest: export again, no traceback


# --------------------------------------------------------------------------------------------
# The batcher itself (no HTTP): merging bounds, chunking, drain, cancellation, errors, overload
# --------------------------------------------------------------------------------------------
class _Recorder:
    def __init__(self, fail: bool = False, delay: float = 0.0) -> None:
        self.calls: list[int] = []
        self.fail = fail
        self.delay = delay
        self.threads: set[str] = set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return x.sum(1)


def _run_batcher(fn, coro_fn, **kwargs):
    async def main():
        stats, worker = Stats(), ModelWorker()
        b = LogProbBatcher(fn, worker, stats, **kwargs)
        b.start()
        try:
            return await asyncio.wait_for(coro_fn(b), 20), stats
        finally:
            await b.close()
            worker.shutdown()

    return asyncio.run(main())


def test_batcher_merges_within_bounds_and_splits_results():
    fn = _Recorder()
    xs = [np.full((3, 2), i, np.float32) for i in range(10)]

    async def go(b):
        return await asyncio.gather(*(b.submit(x) for x in xs))

    outs, stats = _run_batcher(fn, go, max_batch=8, max_wait_ms=50)
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, np.full(3, 2 * i, np.float32))
    assert all(c <= 8 for c in fn.calls) and sum(fn.calls) == 30 and len(fn.calls) == 5  # 2 requests per call
    assert stats.model_calls == 5 and stats.log_prob_requests == 10 and stats.max_merged_rows == 6
    assert fn.threads == {"nfkd-model_0"}  # one model thread


def test_batcher_chunks_a_request_above_max_batch():
    fn = _Recorder()
    x = np.arange(40, dtype=np.float32).reshape(20, 2)

    async def go(b):
        return await b.submit(x)

    out, stats = _run_batcher(fn, go, max_batch=8, max_wait_ms=1)
    np.testing.assert_array_equal(out, x.sum(1))
    assert fn.calls == [8, 8, 4] and stats.model_calls == 3 and stats.log_prob_requests == 1


def test_batcher_close_drains_the_queue_without_waiting_out_max_wait():
    fn = _Recorder()

    async def main():
        stats, worker = Stats(), ModelWorker()
        b = LogProbBatcher(fn, worker, stats, max_batch=1000, max_wait_ms=60_000)
        b.start()
        tasks = [asyncio.ensure_future(b.submit(np.ones((2, 2), np.float32))) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert stats.queue_depth == 5 and not fn.calls  # waiting for more (60 s)
        t0 = time.perf_counter()
        drained = await b.close()
        outs = await asyncio.gather(*tasks)
        with pytest.raises(Closed):
            await b.submit(np.ones((1, 2), np.float32))
        worker.shutdown()
        return drained, outs, time.perf_counter() - t0

    drained, outs, dt = asyncio.run(main())
    assert drained == 5 and len(outs) == 5 and fn.calls == [10] and dt < 5


def test_batcher_skips_cancelled_requests_and_reports_model_errors():
    fn = _Recorder()

    async def go(b):
        gone = asyncio.ensure_future(b.submit(np.ones((3, 2), np.float32)))
        kept = asyncio.ensure_future(b.submit(np.ones((1, 2), np.float32)))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away before the batch ran
        return await kept

    out, stats = _run_batcher(fn, go, max_batch=100, max_wait_ms=100)
    assert fn.calls == [1] and out.shape == (1,)

    async def go_fail(b):
        return await asyncio.gather(*(b.submit(np.ones((1, 2), np.float32)) for _ in range(3)), return_exceptions=True)

    outs, _ = _run_batcher(_Recorder(fail=True), go_fail, max_batch=100, max_wait_ms=20)
    assert all(isinstance(o, RuntimeError) for o in outs)


def test_model_worker_runs_log_prob_before_queued_sample_chunks():
    gate, order = threading.Event(), []

    def job(name):
        if name == "running":
            assert gate.wait(30)
        order.append((name, threading.current_thread().name))
        return name

    async def main():
        w = ModelWorker(initializer=lambda: order.append(("init", threading.current_thread().name)))
        first = asyncio.ensure_future(w.run(job, "running"))
        while w.started < 1:
            await asyncio.sleep(0.01)
        chunks = [asyncio.ensure_future(w.run(job, f"chunk{i}")) for i in range(3)]  # LOW: sample chunks
        await asyncio.sleep(0)
        batch = asyncio.ensure_future(w.run(job, "log_prob", priority=ModelWorker.HIGH))
        await asyncio.sleep(0.05)
        assert w.pending == 4
        gate.set()
        out = await asyncio.gather(first, batch, *chunks)
        await asyncio.get_running_loop().run_in_executor(None, w.shutdown)
        return out

    assert asyncio.run(main()) == ["running", "log_prob", "chunk0", "chunk1", "chunk2"]
    assert [n for n, _ in order] == ["init", "running", "log_prob", "chunk0", "chunk1", "chunk2"]
    assert {t for _, t in order} == {"nfkd-model_0"}  # the initializer ran in the model thread


def test_admission_refuses_work_above_the_row_budget():
    a = Admission(4)
    a.admit(3)
    with pytest.raises(Overloaded, match=r"3 rows queued or running, limit 4"):
        a.admit(3)
    a.admit(1)  # exactly at the limit: admitted
    a.release(4)
    a.admit(10)  # idle: one request above the budget still runs, alone
    assert a.rejected == 1 and a.max_seen == 10
    a.release(10)
    a.closing = True
    with pytest.raises(Closed):
        a.admit(1)


def test_admission_keeps_headroom_for_small_requests():
    a = Admission(100, headroom=10)
    a.admit(50)  # large (> 10 rows)
    with pytest.raises(Overloaded, match="limit 90 for a request of 41 rows"):
        a.admit(41)  # a large request may fill the budget only up to 100 - 10
    a.admit(40)
    for _ in range(10):
        a.admit(1)  # small requests still get the last 10 rows
    with pytest.raises(Overloaded):
        a.admit(1)


def test_admission_keeps_headroom_beside_a_request_larger_than_the_budget():
    """An oversized request admitted while idle (it must run somewhere) used to hold the whole budget, so
    every small request got 503 until it finished (measured on Triton: 3018 small 503s at a 16384-row
    budget); small requests now still get the headroom beside it, and larger ones still wait."""
    a = Admission(100, headroom=10)
    a.admit(500)  # idle: admitted, alone
    a.admit(6)
    a.admit(4)  # small requests fill the headroom (6 + 4 = 10)...
    with pytest.raises(Overloaded, match="100 rows queued or running, limit 100 for a request of 1 rows"):
        a.admit(1)  # ...and no more
    with pytest.raises(Overloaded):
        a.admit(11)  # a large request waits for the big one
    for part in (200, 200, 100):  # the big request released chunk by chunk, as the service does
        a.release(part, 500)
    assert (a.rows, a.large) == (10, 0)
    a.admit(80)  # large again: up to 100 - 10, counting the 10 small rows
    with pytest.raises(Overloaded):
        a.admit(11)
    a.admit(10)  # small ones fill the budget to 100
    with pytest.raises(Overloaded):
        a.admit(1)
    a.release(6)
    a.admit(1)
    assert (a.rows, a.large) == (95, 80)


# --------------------------------------------------------------------------------------------
# The CLI: python -m nfkd serve, JSON logs, SIGTERM drains in-flight requests, exit 0
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_serves_and_drains_on_sigterm(runtime):
    _, folder = student()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfkd", "serve", str(folder), "--port", "0", "--max-wait-ms", "1500", "--threads", "1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            for ln in list(lines):
                if '"listening"' in ln:
                    url = json.loads(ln)["url"]
            time.sleep(0.05)
        assert url, "".join(lines)
        rng = np.random.default_rng(6)
        xs = [rows(rng, 3) for _ in range(32)]

        async def drive():
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, limits=httpx.Limits(max_connections=64)) as c:
                tasks = [asyncio.ensure_future(c.post("/log_prob", json={"x": x.tolist()})) for x in xs]
                t_end = time.monotonic() + 20
                while time.monotonic() < t_end:  # every request queued (waiting out max-wait-ms) ...
                    if (await c.get("/stats")).json()["queue"]["depth"] == len(xs):
                        break
                    await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGTERM)  # ... then stop the server
                return await asyncio.gather(*tasks)

        responses = asyncio.run(drive())
        for x, r in zip(xs, responses):
            np.testing.assert_allclose(_decode(r), runtime.log_prob(x), rtol=1e-6, atol=1e-6)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    records = [json.loads(ln) for ln in lines if ln.strip()]  # every stderr line is one JSON object
    access = [r for r in records if r["logger"] == "nfkd.serve.access" and r["path"] == "/log_prob"]
    assert len(access) == 32 and all(r["status"] == 200 and r["rows"] == 3 and r["latency_ms"] > 0 for r in access)
    stopped = [r for r in records if r["msg"] == "drained and stopped"]
    assert stopped and stopped[0]["stats"]["log_prob"]["model_calls"] == 1  # all 32 merged into one call


@pytest.fixture
def _restore_logging():
    saved = {n: (lg.handlers[:], lg.level, lg.propagate)
             for n in ("nfkd", "uvicorn", "uvicorn.error") for lg in [logging.getLogger(n)]}
    yield
    for n, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


def test_cli_errors_are_one_line(tmp_path, capsys, _restore_logging):
    from nfkd.__main__ import main

    assert main(["serve", str(tmp_path / "missing.pt")]) == 2
    assert "model not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(tmp_path), "--max-batch", "0"])
    assert "expected a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(tmp_path), "--header-timeout", "0"])
    assert "expected a finite number > 0" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    # the export cache is ONNX Runtime's (auto may pick the numba engine on CPU, which has no exports)
    assert main(["serve", str(student()[0]), "--backend", "onnxruntime", "--cache-dir",
                 str(tmp_path / "file" / "cache")]) == 2
    # the JSON log lines (the service's own progress log on stderr) aside, the error is one line
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith('{"ts":')]
    assert len(err) == 1 and "cannot create the export cache folder" in err[0], err
