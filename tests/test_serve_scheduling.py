"""Model-thread scheduling without HTTP: a small ``/log_prob`` request never waits for a whole large one.

A stepping fake backend runs one model call per permit, so the order of calls is observed, not timed.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Callable

import numpy as np

from nfkd.serving import ServeConfig
from nfkd.serving.service import Service

DIM = 3
TIMEOUT_S = 30.0


class SteppingBackend:
    """Duck-typed ``nfkd.inference.Runner``: each ``log_prob`` call records its rows, then waits for one permit."""

    dim = DIM
    event_shape = (DIM,)
    max_batch = 1 << 20

    def __init__(self) -> None:
        self.permits = threading.Semaphore(0)
        self.calls: list[int] = []

    def pin_threads(self) -> None:
        pass

    @staticmethod
    def score(x: np.ndarray) -> np.ndarray:
        """Row-wise, so any chunking must give exactly these values in this order."""
        return (x * np.arange(1, DIM + 1, dtype=np.float32)).sum(axis=1) - np.float32(0.5)

    def log_prob(self, x: np.ndarray, validate: bool = True) -> np.ndarray:
        self.calls.append(int(x.shape[0]))
        assert self.permits.acquire(timeout=TIMEOUT_S), "no permit: the test did not release this call"
        return self.score(x)


async def _until(pred: Callable[[], bool], what: str) -> None:
    """Poll the event loop until ``pred()`` holds (a bound against hanging, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while not pred():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.002)


def _rows(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _service(backend: SteppingBackend, max_batch: int) -> Service:
    cfg = ServeConfig(max_batch=max_batch, max_wait_ms=0.0, max_request_rows=1024).resolved(backend)
    return Service(backend, cfg)


def test_a_small_request_after_a_large_one_is_answered_before_the_large_ones_last_chunk():
    backend = SteppingBackend()
    big, small = _rows(0, 12), _rows(1, 2)

    async def go() -> tuple[np.ndarray, np.ndarray, Service]:
        svc = _service(backend, max_batch=4)
        svc.start()
        big_task = asyncio.ensure_future(svc.log_prob(big))
        await _until(lambda: backend.calls == [4], "the large request's first chunk to start")
        small_task = asyncio.ensure_future(svc.log_prob(small))
        await _until(lambda: svc.worker.pending >= 1, "the small request's call to be queued")
        backend.permits.release(2)  # the running chunk, then one more call: the small request's
        small_out = await asyncio.wait_for(small_task, TIMEOUT_S)
        # the small request ran second; the large one's next chunk may already have entered (it then waits
        # for a permit), so it cannot have finished: two of its chunks are still to run
        assert backend.calls[:2] == [4, 2] and len(backend.calls) <= 3 and not big_task.done()
        backend.permits.release(2)
        big_out = await asyncio.wait_for(big_task, TIMEOUT_S)
        await svc.close()
        return big_out, small_out, svc

    big_out, small_out, svc = asyncio.run(go())
    assert backend.calls == [4, 2, 4, 4]
    np.testing.assert_array_equal(small_out, backend.score(small))
    np.testing.assert_array_equal(big_out, backend.score(big))  # chunked == one call over all rows, in order
    lp = svc.stats_dict()["log_prob"]
    assert lp["model_calls"] == 4 and lp["requests"] == 2 and lp["rows"] == 14 and lp["chunked_requests"] == 1
    assert lp["max_merged_rows"] == 4  # the largest model call, not the large request's 12 rows
    waits = svc.stats_dict()["model"]["wait_ms"]
    assert waits["log_prob"]["calls"] == 1 and waits["chunks"]["calls"] == 3


def test_chunked_answers_equal_unchunked_ones_for_every_chunk_size():
    backend = SteppingBackend()
    backend.permits.release(10_000)
    x = _rows(2, 37)

    async def answer(max_batch: int) -> np.ndarray:
        svc = _service(backend, max_batch)
        svc.start()
        try:
            return await svc.log_prob(x)
        finally:
            await svc.close()

    whole = asyncio.run(answer(64))
    np.testing.assert_array_equal(whole, backend.score(x))
    for max_batch in (1, 5, 16, 36, 37):
        np.testing.assert_array_equal(asyncio.run(answer(max_batch)), whole)
