"""Issue #19, service half: each test reproduces one defect found by a hostile client.

No timing thresholds: stalls are shown by ordering (``/healthz`` answered while a parse or a model
call is provably still blocked on an event), admission by status codes, thread counts by reading
them inside the model thread. Socket timeouts below only turn a hang into a failure.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch

import nfkd
from export.cache import ensure_export
from export.manifest import Manifest, sha256_file
from nfkd.errors import InputError
from nfkd.inference import Runner
from nfkd.serving import ServeConfig, create_app, load_model, payload
from nfkd.serving.http_server import BackgroundServer

from .test_serve import DIM, TIMEOUT, rows, student

J = {"content-type": "application/json"}


def _wait(pred, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


class GatedRunner(Runner):
    """A real Runner's calls, recorded once ``armed`` (after the warm-up); the first sampling call then blocks
    until released (and, with ``gate_log_prob_above``, the first log_prob call of more rows)."""

    def __init__(self, inner: Runner) -> None:
        super().__init__(inner.meta, inner.device, inner.threads, inner.max_batch)
        self.backend = inner.backend
        self.inner = inner
        self.armed = False
        self.calls: list[tuple[str, int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def _gate(self) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(60), "never released"

    gate_log_prob_above = None  # rows: the first log_prob call with more rows blocks too

    def log_prob(self, x, validate=True):
        if self.armed:
            self.calls.append(("log_prob", len(x)))
            if self.gate_log_prob_above is not None and len(x) > self.gate_log_prob_above:
                self._gate()
        return self.inner.log_prob(x, validate=validate)

    def sample(self, n=None, *, temperature=1.0, seed=None, noise=None):
        if self.armed:
            self.calls.append(("sample", len(noise[0]) if noise is not None else n))
            self._gate()
        return self.inner.sample(n, temperature=temperature, seed=seed, noise=noise)


@contextlib.contextmanager
def gated_server(gated: GatedRunner, cfg: ServeConfig):
    """A server on ``gated``, warmed up (BackgroundServer waits for /ready), then armed."""
    with BackgroundServer(create_app(gated, cfg)) as srv:
        gated.armed = True
        yield srv


@pytest.fixture(scope="module")
def ort_backend():
    return load_model(student()[1], "onnxruntime", threads=1)


# --------------------------------------------------------------------------------------------
# 2. Large JSON bodies: rows bounded before parsing, parsing off the event loop
# --------------------------------------------------------------------------------------------
def test_json_rows_are_counted_before_the_body_is_parsed(monkeypatch):
    body = b'{"x":[' + b",".join([b"[0,0,0,0,0]"] * 1000) + b"]}"  # 1000 rows, 12 bytes each

    def no_parse(*a, **k):
        raise AssertionError("the body was parsed before its rows were counted")

    monkeypatch.setattr(json, "loads", no_parse)
    with pytest.raises(payload.ApiError) as err:
        payload.json_rows(body, (DIM,), 64)
    assert err.value.status == 413 and "1000 rows" in err.value.message and "limit of 64" in err.value.message
    # one row with 5000 values is as many values as 1000 rows: refused before parsing, too
    wide = b'{"x":[[' + b",".join([b"0"] * 5000) + b"]]}"
    with pytest.raises(payload.ApiError) as err:
        payload.json_rows(wide, (DIM,), 64)
    assert err.value.status == 413


def test_json_row_count_is_exact_for_valid_bodies():
    for shape in [(5,), (2, 3, 4)]:
        for n in (1, 2, 7):
            x = np.zeros((n, *shape)).tolist()
            compact = json.dumps({"x": x}, separators=(",", ":"))
            for text in (json.dumps({"x": x}), compact, json.dumps({"x": x}, indent=2)):
                assert payload.json_row_bound(text.encode(), shape) == n


def test_healthz_is_answered_while_a_body_is_being_parsed(monkeypatch, ort_backend):
    entered, release = threading.Event(), threading.Event()
    real = payload.json_rows

    def slow_parse(*args, **kwargs):
        entered.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(payload, "json_rows", slow_parse)
    x = rows(np.random.default_rng(0), 3000)  # a large body (small ones are parsed in place, in < 2 ms)
    assert len(json.dumps({"x": x.tolist()})) > 64 * 1024
    with BackgroundServer(create_app(ort_backend, ServeConfig())) as srv:
        t, box = _in_thread(httpx.post, srv.url + "/log_prob", json={"x": x.tolist()}, timeout=TIMEOUT)
        try:
            assert entered.wait(30)
            r = httpx.get(srv.url + "/healthz", timeout=10.0)  # the event loop is free while the body is parsed
            assert r.status_code == 200 and not release.is_set()
        finally:
            release.set()
            t.join(30)
    assert box["value"].status_code == 200, box
    np.testing.assert_allclose(box["value"].json()["log_prob"], ort_backend.log_prob(x), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# 3. /sample: admission control, chunks interleaved with /log_prob
# --------------------------------------------------------------------------------------------
def test_sample_rows_count_against_the_queue_limit(ort_backend):
    gated = GatedRunner(ort_backend)
    cfg = ServeConfig(max_queue_rows=100, max_request_rows=100, max_sample_n=1000)
    with gated_server(gated, cfg) as srv, httpx.Client(base_url=srv.url, timeout=10.0) as c:
        t, box = _in_thread(httpx.post, srv.url + "/sample", json={"n": 80, "seed": 3}, timeout=TIMEOUT)
        try:
            assert gated.entered.wait(30)  # 80 rows in the model thread
            r = c.post("/sample", json={"n": 80, "seed": 4})
            assert r.status_code == 503 and "overloaded" in r.json()["error"], r.text
            # a large log_prob too (60 rows > the 50-row headroom); small ones would still get the headroom
            # beside the 80 rows (tests/test_serve.py::test_admission_keeps_headroom_beside_a_request_...)
            r = c.post("/log_prob", json={"x": np.zeros((60, DIM)).tolist()})
            assert r.status_code == 503 and "overloaded" in r.json()["error"], r.text
            assert c.get("/healthz").status_code == 200
        finally:
            gated.release.set()
            t.join(30)
        assert box["value"].status_code == 200, box
        np.testing.assert_array_equal(np.asarray(box["value"].json()["x"], np.float32), ort_backend.sample(80, temperature=1.0, seed=3))
        assert c.get("/stats").json()["queue"]["rejected_overloaded"] == 2


def _small_behind_the_gate(srv, c, gated: GatedRunner, path: str, body: dict, small: np.ndarray) -> tuple[dict, dict]:
    """POST ``body`` to ``path``; once its first model call is held at the gate, queue a small /log_prob behind
    it, then release: (the first answer's box, the small one's)."""
    t, box = _in_thread(httpx.post, srv.url + path, json=body, timeout=TIMEOUT)
    t2 = None
    try:
        assert gated.entered.wait(30)  # the first chunk is in the model thread
        t2, box2 = _in_thread(c.post, "/log_prob", json={"x": small.tolist()})
        _wait(lambda: c.get("/stats").json()["model"]["pending_calls"] >= 1, "the small log_prob call to be queued")
    finally:
        gated.release.set()
        t.join(30)
        if t2 is not None:
            t2.join(30)
    return box, box2


def test_large_samples_are_split_and_log_prob_runs_between_chunks(ort_backend):
    gated = GatedRunner(ort_backend)
    with gated_server(gated, ServeConfig(max_batch=16, max_sample_n=64)) as srv, \
            httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
        x = rows(np.random.default_rng(1), 2)
        box, box2 = _small_behind_the_gate(srv, c, gated, "/sample", {"n": 64, "temperature": 0.8, "seed": 7}, x)
    assert box["value"].status_code == 200 and box2["value"].status_code == 200
    kinds = [k for k, _ in gated.calls]
    assert all(n <= 16 for k, n in gated.calls if k == "sample") and kinds.count("sample") == 4, gated.calls
    assert kinds.index("log_prob") < len(kinds) - 1 - kinds[::-1].index("sample"), gated.calls  # ran between chunks
    got = np.asarray(box["value"].json()["x"], np.float32)
    np.testing.assert_allclose(got, ort_backend.sample(64, temperature=0.8, seed=7), rtol=1e-5, atol=1e-5)  # same seed, same rows
    np.testing.assert_allclose(box2["value"].json()["log_prob"], ort_backend.log_prob(x), rtol=1e-6, atol=1e-6)


def test_large_log_prob_requests_are_chunked_and_small_ones_run_between(ort_backend):
    gated = GatedRunner(ort_backend)
    gated.gate_log_prob_above = 2
    big = rows(np.random.default_rng(3), 64)
    small = rows(np.random.default_rng(4), 2)
    with gated_server(gated, ServeConfig(max_batch=16, max_request_rows=64)) as srv, \
            httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
        box, box2 = _small_behind_the_gate(srv, c, gated, "/log_prob", {"x": big.tolist()}, small)
    assert [n for _, n in gated.calls] == [16, 2, 16, 16, 16], gated.calls
    np.testing.assert_allclose(box["value"].json()["log_prob"], ort_backend.log_prob(big), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(box2["value"].json()["log_prob"], ort_backend.log_prob(small), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# 5. --threads applies inside the model thread, for the torch backend too
# --------------------------------------------------------------------------------------------
def test_torch_threads_are_set_inside_the_model_thread():
    before = torch.get_num_threads()
    k = 1 if before != 1 else 2
    backend = load_model(student()[0], "torch", threads=k)
    assert torch.get_num_threads() == before  # loading does not change the caller's thread count
    torch.set_num_threads(before)  # whatever the process does afterwards must not matter
    seen: list[int] = []
    inner = backend.log_prob

    def spy(x, validate=True):
        seen.append(torch.get_num_threads())
        return inner(x, validate=validate)

    backend.log_prob = spy
    with BackgroundServer(create_app(backend, ServeConfig())) as srv:
        r = httpx.post(srv.url + "/log_prob", json={"x": np.zeros((9, DIM)).tolist()}, timeout=TIMEOUT)
    assert r.status_code == 200 and seen == [k, k]  # the warm-up's call, then the request's


# --------------------------------------------------------------------------------------------
# 6. The export cache is checked against the checkpoint, not against itself
# --------------------------------------------------------------------------------------------
def _tamper(folder) -> None:
    """Another model's density graph (one weight changed), with the manifest's hash updated to match."""
    import onnx
    from onnx import numpy_helper

    path = folder / "density.onnx"
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))
    m = Manifest.load(folder)
    m.graphs["density"]["sha256"] = sha256_file(path)
    m.save(folder)


def test_a_tampered_cached_export_is_refused_and_rebuilt(tmp_path, caplog):
    ckpt, folder = student()
    cache = tmp_path / "cache"
    copy = cache / folder.name
    shutil.copytree(folder, copy)
    intact = load_model(ckpt, "onnxruntime", threads=1, cache_dir=cache)  # reused after a passing re-check
    parity = intact.info()["export"]["parity"]
    assert parity["rechecked"] is True and parity["recheck"]["passed"] is True
    _tamper(copy)
    x = rows(np.random.default_rng(2), 8)
    flow = nfkd.load(ckpt).double()
    with torch.no_grad():
        ref = flow.log_prob(torch.from_numpy(x).double()).numpy()
    from export.runtime import load

    bad = load(copy).log_prob(x)
    assert np.max(np.abs(bad - ref)) > 1e-2  # the tampered graph really serves other densities
    with caplog.at_level(logging.WARNING, logger="nfkd.serve"):
        backend = load_model(ckpt, "onnxruntime", threads=1, cache_dir=cache)
    assert any("failed the parity re-check" in r.getMessage() for r in caplog.records)
    got = backend.log_prob(x)
    assert np.max(np.abs(got - ref) / np.maximum(1, np.abs(ref))) <= 1e-4
    parity = backend.info()["export"]["parity"]
    assert parity["passed"] is True and parity["rechecked"] is False  # rebuilt: the full gate ran again
    assert Manifest.load(copy).graphs["density"]["sha256"] == sha256_file(copy / "density.onnx")


def test_an_uncreatable_cache_dir_is_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="cannot create the export cache folder .*--cache-dir"):
        ensure_export(student()[0], blocker / "cache")


# --------------------------------------------------------------------------------------------
# 7. A client that goes away mid-request is a client abort, not a server error
# --------------------------------------------------------------------------------------------
def test_client_disconnect_is_logged_as_a_client_abort(ort_backend, caplog):
    with caplog.at_level(logging.INFO), BackgroundServer(create_app(ort_backend, ServeConfig())) as srv:
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:
            s.sendall(b"POST /log_prob HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                      b"content-length: 1000\r\n\r\n" + b'{"x": [[0, 0')
        _wait(lambda: srv_stat(srv)["http_by_path"].get("/log_prob", 0) == 1, "the aborted request to be counted")
        stats = srv_stat(srv)
    assert stats["http_by_status"].get("500") is None and stats["http_by_status"].get("499") == 1, stats
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    aborts = [r for r in caplog.records if r.name == "nfkd.serve.access" and getattr(r, "status", None) == 499]
    assert aborts and "client" in aborts[0].error


def srv_stat(srv) -> dict:
    return httpx.get(srv.url + "/stats", timeout=TIMEOUT).json()


# --------------------------------------------------------------------------------------------
# 12. Slow clients (slowloris) are dropped; a huge integer is a clear client error
# --------------------------------------------------------------------------------------------
def _read_until_closed(s: socket.socket) -> bytes:
    s.settimeout(20)
    out = b""
    while True:
        chunk = s.recv(65536)  # socket.timeout here means the server kept a slow client open
        if not chunk:
            return out
        out += chunk


def test_a_client_that_never_finishes_its_headers_is_dropped(ort_backend):
    app = create_app(ort_backend, ServeConfig(header_timeout_s=0.3, body_timeout_s=0.3))
    with BackgroundServer(app) as srv:
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:
            s.sendall(b"POST /log_prob HTTP/1.1\r\nhost: t\r\n")  # ... and never the rest
            out = _read_until_closed(s)
        assert out == b"" or out.startswith(b"HTTP/1.1 408")
        assert httpx.get(srv.url + "/healthz", timeout=TIMEOUT).status_code == 200


def test_a_client_that_never_finishes_its_body_gets_408(ort_backend):
    app = create_app(ort_backend, ServeConfig(header_timeout_s=0.3, body_timeout_s=0.3))
    with BackgroundServer(app) as srv:
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:
            s.sendall(b"POST /log_prob HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                      b"content-length: 100\r\n\r\n" + b'{"x": [[')
            out = _read_until_closed(s)
        assert out.startswith(b"HTTP/1.1 408"), out
        assert b"body" in out and b"seconds" in out
        stats = srv_stat(srv)
        assert stats["http_by_status"].get("500") is None


def test_keep_alive_requests_are_not_cut_by_the_header_timeout(ort_backend):
    """The header deadline is per request: a client sending many quick requests on one connection is fine."""
    app = create_app(ort_backend, ServeConfig(header_timeout_s=1.0, body_timeout_s=1.0))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
        for _ in range(4):  # one connection, 1.6 s in all: longer than one header deadline
            assert c.post("/log_prob", json={"x": np.zeros((1, DIM)).tolist()}).status_code == 200
            time.sleep(0.4)
        assert c.get("/stats").json()["http_by_path"]["/log_prob"] == 4


@pytest.mark.parametrize("body", [b'{"x": [[0, 0, 0, 0, 1' + b"0" * 5000 + b']]}', b'{"n": 1' + b"0" * 5000 + b"}"])
def test_a_huge_integer_is_a_clear_client_error(ort_backend, body):
    with BackgroundServer(create_app(ort_backend, ServeConfig())) as srv:
        path = "/log_prob" if body.startswith(b'{"x"') else "/sample"
        r = httpx.post(srv.url + path, content=body, headers=J, timeout=TIMEOUT)
    assert r.status_code == 422, r.text
    msg = r.json()["error"]
    assert "set_int_max_str_digits" not in msg and "digits" in msg and "float32" in msg, msg


def test_large_json_bodies_parse_in_slices_to_the_same_array():
    """The sliced parse (large bodies) gives exactly the one-piece parse's array, and falls back to it
    (with its exact message) for anything but plain numbers."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9000, DIM)) * 10.0 ** rng.integers(-8, 8, (9000, DIM))
    x[:50] = np.round(x[:50])  # some integers
    body = json.dumps({"x": x.tolist()}).encode()
    assert len(body) > payload.SLICED_MIN_BYTES
    sliced = payload._json_rows_sliced(body, (DIM,))
    assert sliced is not None and sliced.shape == (9000, DIM)
    np.testing.assert_array_equal(payload.json_rows(body, (DIM,), 10000), np.asarray(json.loads(body)["x"], np.float32))
    spaced = json.dumps({"x": x.tolist()}, indent=1).encode()
    np.testing.assert_array_equal(payload.json_rows(spaced, (DIM,), 10000), x.astype(np.float32))
    for bad, status, message in [
        (body.replace(b"]]}", b"], [1, 2, null, 4, 5]]}"), 422, "only numbers, found a null"),
        (body.replace(b"]]}", b"], [1, 2]]}"), 422, "ragged"),
        (body.replace(b"]]}", b"], [1, true, 0, 0, 0]]}"), 422, "booleans"),
        (body.replace(b"]]}", b"], [[1, 2, 3, 4, 5]]]}"), 422, "ragged|expected"),
    ]:
        with pytest.raises(payload.ApiError, match=message) as err:
            payload.json_rows(bad, (DIM,), 10000)
        assert err.value.status == status


def test_large_json_answers_are_encoded_in_slices():
    x = np.random.default_rng(6).standard_normal((5000, 3)).astype(np.float32)
    x[7, 1] = np.inf
    got = json.loads(payload.json_array_bytes(x, "x", {"n": 5000, "seed": None}))
    assert got["n"] == 5000 and got["seed"] is None and got["x"][7][1] is None
    ref = x.astype(object)
    ref[7, 1] = None
    assert got["x"] == ref.tolist()


@pytest.mark.parametrize("shape", [(0, 10**20), (1,) * 65])
def test_a_hostile_npy_header_is_a_400_or_422_not_a_500(ort_backend, caplog, shape):
    """Issue 24 #9: these headers reached numpy's reshape and came back as 500 with two tracebacks."""
    from .test_payload_npy import _npy

    body = _npy({"descr": "<f4", "fortran_order": False, "shape": shape}, b"" if 0 in shape else b"\0" * 4)
    with BackgroundServer(create_app(ort_backend, ServeConfig())) as srv, caplog.at_level(logging.INFO):
        r = httpx.post(srv.url + "/log_prob", content=body, headers={"content-type": "application/x-npy"},
                       timeout=TIMEOUT)
        assert httpx.get(srv.url + "/healthz", timeout=TIMEOUT).status_code == 200
    assert r.status_code in (400, 422), r.text
    assert "\n" not in r.json()["error"]
    assert not any(rec.exc_info for rec in caplog.records)


# --------------------------------------------------------------------------------------------
# Issue 24 #3: slow readers and large uploads pin memory
# --------------------------------------------------------------------------------------------
def test_a_client_that_never_reads_its_answer_is_dropped_and_its_answer_freed(ort_backend, caplog):
    """The probe asked for the largest JSON /sample answer and never read it: the server held it forever."""
    cfg = ServeConfig(write_timeout_s=1.0)
    body = json.dumps({"n": min(65536, ort_backend.max_batch), "seed": 0}).encode()
    with BackgroundServer(create_app(ort_backend, cfg)) as srv, caplog.at_level(logging.INFO, logger="nfkd.serve"), \
            httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing, small window
        s.connect((srv.host, srv.port))
        s.sendall(b"POST /sample HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(body), body))
        try:
            _wait(lambda: any(r.getMessage() == "slow reader dropped" for r in caplog.records), "the slow reader "
                  "to be dropped")
            _wait(lambda: c.get("/stats").json()["memory"]["held_bytes"] == 0, "its answer to be released")
            assert c.get("/healthz").status_code == 200
            s.settimeout(10)  # the connection is gone: reading ends (reset or EOF) instead of timing out
            with contextlib.suppress(ConnectionResetError):
                while s.recv(1 << 20):
                    pass
        finally:
            s.close()


def test_large_uploads_beyond_the_memory_budget_get_503_with_retry_after(ort_backend):
    """30 concurrent legal 17.7 MB uploads took the probe's server to 1.4 GB: bodies are now reserved
    from Content-Length before they are read; a large one that does not fit gets 503 + Retry-After,
    while small requests still fit in the headroom."""
    gated = GatedRunner(ort_backend)
    gated.gate_log_prob_above = 100
    big = json.dumps({"x": rows(np.random.default_rng(7), 1000).tolist()}).encode()  # ~100 KB
    small = {"x": rows(np.random.default_rng(8), 1).tolist()}
    cfg = ServeConfig(max_inflight_bytes=int(2.5 * len(big)))
    with gated_server(gated, cfg) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
        post = functools.partial(httpx.post, srv.url + "/log_prob", content=big, headers=J, timeout=TIMEOUT)
        t1, box1 = _in_thread(post)
        try:
            assert gated.entered.wait(30)  # the first upload is held in the model thread
            t2, box2 = _in_thread(post)
            _wait(lambda: c.get("/stats").json()["memory"]["held_bytes"] >= 2 * len(big), "two uploads held")
            refused = c.post("/log_prob", content=big, headers=J)
            t3, box3 = _in_thread(c.post, "/log_prob", json=small)  # fits in the headroom; waits for the model
            _wait(lambda: c.get("/stats").json()["memory"]["held_bytes"] > 2 * len(big), "the small one admitted")
        finally:
            gated.release.set()
            for t in (t1, t2):
                t.join(30)
        t3.join(30)
        assert c.get("/stats").json()["memory"]["held_bytes"] == 0
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
    assert "retry after 1 s" in refused.json()["error"]
    assert [b["value"].status_code for b in (box1, box2, box3)] == [200, 200, 200]


def test_retry_after_grows_with_what_a_refused_client_asked_to_hold():
    """A refused 10 MB upload is told to wait longer than a refused small one (its retry costs the server a
    10 MB read-and-discard on a kept-alive connection), so large retries back off and small ones do not."""
    from nfkd.serving.memory import RETRY_AFTER_S, retry_after_s

    assert retry_after_s(0) == retry_after_s(100_000) == RETRY_AFTER_S == 1
    assert retry_after_s(10 * 1024 * 1024) == 6 and retry_after_s(17_700_000) == 9
    assert all(retry_after_s(n) <= retry_after_s(n + 1_000_000) for n in range(0, 20_000_000, 997_000))
