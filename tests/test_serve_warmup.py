"""The service takes an ``nfkd.inference`` Runner as it is, and warms it up before ``/ready`` says ready.

A Runner stub (a unit Gaussian, checked against its closed form) counts its calls and blocks its first
one until the test releases it, so "not ready while warming up" is shown by ordering, not by timing.
"""
from __future__ import annotations

import math
import threading

import httpx
import numpy as np

from nfkd.inference import ModelMeta, Runner
from nfkd.serving import ServeConfig, create_app
from nfkd.serving.http_server import BackgroundServer

DIM = 4
TIMEOUT = httpx.Timeout(30.0)


class CountingRunner(Runner):
    """N(0, I) in DIM dimensions; records ("log_prob" | "sample", rows) per call; the first call waits for ``go``."""

    backend = "stub"
    native = "numpy"

    def __init__(self, fail: bool = False) -> None:
        super().__init__(ModelMeta(arch="gauss", config={}, event_shape=(DIM,), noise_shapes=((DIM,),)))
        self.calls: list[tuple[str, int]] = []
        self.go = threading.Event()
        self.fail = fail

    def _first_waits(self) -> None:
        if len(self.calls) == 1:
            assert self.go.wait(30), "the test never released the warm-up"
            if self.fail:
                raise RuntimeError("no kernels for this CPU")

    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(("log_prob", len(x)))
        self._first_waits()
        return -0.5 * (x.astype(np.float64) ** 2).sum(1) - 0.5 * DIM * math.log(2 * math.pi)

    def _decode(self, noise: list, temperature: float) -> np.ndarray:
        self.calls.append(("sample", len(noise[0])))
        self._first_waits()
        return noise[0] * temperature


def _wait_ready(c: httpx.Client) -> httpx.Response:
    for _ in range(3000):
        r = c.get("/ready")
        if r.status_code == 200:
            return r
        threading.Event().wait(0.01)
    raise AssertionError("never ready")


def test_ready_only_after_the_warm_up_and_the_first_request_is_not_a_first_call():
    runner = CountingRunner()
    with BackgroundServer(create_app(runner, ServeConfig(max_wait_ms=0)), wait_ready=False) as srv, \
            httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
        while not runner.calls:  # the warm-up's first model call has started (and waits for go)
            threading.Event().wait(0.005)
        r = c.get("/ready")
        assert r.status_code == 503 and r.json() == {"status": "warming up"}
        assert c.get("/healthz").status_code == 200  # alive while not ready
        runner.go.set()
        r = _wait_ready(c)
        assert r.json()["status"] == "ready" and r.json()["warmup_s"] >= 0
        assert runner.calls == [("sample", 1), ("log_prob", 1)]  # one small sample and one log_prob, nothing else
        x = np.random.default_rng(0).standard_normal((3, DIM)).astype(np.float32)
        got = c.post("/log_prob", json={"x": x.tolist()}).json()["log_prob"]
        want = -0.5 * (x.astype(np.float64) ** 2).sum(1) - 0.5 * DIM * math.log(2 * math.pi)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert runner.calls[-1] == ("log_prob", 3) and len(runner.calls) == 3  # not the model's first call
        meta = c.get("/metadata").json()
        assert meta["backend"] == "stub" and abs(meta["warmup_s"] - r.json()["warmup_s"]) <= 5e-4


def test_a_failed_warm_up_keeps_the_service_not_ready():
    runner = CountingRunner(fail=True)
    runner.go.set()
    with BackgroundServer(create_app(runner, ServeConfig()), wait_ready=False) as srv, \
            httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
        for _ in range(3000):
            body = c.get("/ready").json()
            if body["status"] != "warming up":
                break
            threading.Event().wait(0.01)
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "warm-up failed"
        assert "no kernels for this CPU" in r.json()["error"]
        assert c.get("/healthz").status_code == 200
