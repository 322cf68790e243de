"""Micro-batching of concurrent ``log_prob`` requests, and the counters that show it.

Requests are queued (already validated); one asyncio task collects them into a merged batch --
at most ``max_batch`` rows, waiting at most ``max_wait_ms`` after the *first* queued request
arrived (time spent queued behind a running model call counts) -- and hands the concatenated
rows to ONE worker thread. Results are split back per request on the event loop, which never
blocks on the model. A single request above ``max_batch`` rows runs alone, in chunks of
``max_batch``. ``close()`` stops accepting work and drains what is queued. How many rows may be
queued is decided before ``submit`` (``admission``), for ``/log_prob`` and ``/sample`` together.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .admission import Closed

__all__ = ["LogProbBatcher", "ModelWorker", "Stats", "run_chunked"]

log = logging.getLogger("nfkd.serve")


def _bucket(v: int) -> str:
    """Power-of-two histogram buckets: 1, 2, 3-4, 5-8, 9-16, ..."""
    if v <= 2:
        return str(v)
    hi = 1 << (v - 1).bit_length()
    return f"{hi // 2 + 1}-{hi}"


def _bucket_key(label: str) -> int:
    return int(label.split("-")[0])


@dataclass
class Stats:
    """Counters, only ever touched from the event loop thread (no locks needed)."""

    started: float = field(default_factory=time.time)
    http_requests: int = 0
    http_by_status: collections.Counter = field(default_factory=collections.Counter)
    http_by_path: collections.Counter = field(default_factory=collections.Counter)
    log_prob_requests: int = 0
    log_prob_rows: int = 0
    model_calls: int = 0
    merged_requests_histogram: collections.Counter = field(default_factory=collections.Counter)
    merged_rows_histogram: collections.Counter = field(default_factory=collections.Counter)
    max_merged_requests: int = 0
    max_merged_rows: int = 0  # rows of the largest log_prob model call (a chunk, for a chunked request)
    chunked_requests: int = 0  # requests above max_batch, run as max_batch-row chunks
    sample_requests: int = 0
    sample_rows: int = 0
    sample_model_calls: int = 0
    model_seconds: float = 0.0
    queue_depth: int = 0
    queue_rows: int = 0
    max_queue_depth: int = 0
    rejected_overloaded: int = 0
    outstanding_rows: int = 0  # admitted rows of both endpoints, queued or running (admission)
    max_outstanding_rows: int = 0

    def record_batch(self, n_requests: int, rows: int, calls: int, seconds: float) -> None:
        self.log_prob_requests += n_requests
        self.log_prob_rows += rows
        self.model_calls += calls
        self.model_seconds += seconds
        self.merged_requests_histogram[_bucket(n_requests)] += 1
        self.merged_rows_histogram[_bucket(rows)] += 1
        self.max_merged_requests = max(self.max_merged_requests, n_requests)
        self.max_merged_rows = max(self.max_merged_rows, rows)

    def record_chunk(self, rows: int, seconds: float) -> None:
        """One model call of a chunked request. Counted per call, not per request, so the histograms and
        ``max_merged_rows`` show what the model thread ran (at most ``max_batch`` rows), not the request."""
        self.log_prob_rows += rows
        self.model_calls += 1
        self.model_seconds += seconds
        self.merged_requests_histogram[_bucket(1)] += 1
        self.merged_rows_histogram[_bucket(rows)] += 1
        self.max_merged_rows = max(self.max_merged_rows, rows)

    def record_chunked_request(self) -> None:
        """A chunked request is done; its calls were counted by ``record_chunk``."""
        self.log_prob_requests += 1
        self.chunked_requests += 1
        self.max_merged_requests = max(self.max_merged_requests, 1)

    def to_dict(self) -> dict[str, Any]:
        def hist(c: collections.Counter) -> dict[str, int]:
            return {k: c[k] for k in sorted(c, key=_bucket_key)}

        calls = self.model_calls
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "http_requests": self.http_requests,
            "http_by_status": {str(k): v for k, v in sorted(self.http_by_status.items())},
            "http_by_path": dict(sorted(self.http_by_path.items())),
            "log_prob": {
                "requests": self.log_prob_requests,
                "rows": self.log_prob_rows,
                "model_calls": calls,
                "mean_requests_per_call": round(self.log_prob_requests / calls, 3) if calls else None,
                "mean_rows_per_call": round(self.log_prob_rows / calls, 3) if calls else None,
                "merged_requests_histogram": hist(self.merged_requests_histogram),
                "merged_rows_histogram": hist(self.merged_rows_histogram),
                "max_merged_requests": self.max_merged_requests,
                "max_merged_rows": self.max_merged_rows,
                "chunked_requests": self.chunked_requests,
            },
            "sample": {"requests": self.sample_requests, "rows": self.sample_rows,
                       "model_calls": self.sample_model_calls},
            "model_seconds": round(self.model_seconds, 6),
            "queue": {"depth": self.queue_depth, "rows": self.queue_rows, "max_depth": self.max_queue_depth,
                      "outstanding_rows": self.outstanding_rows, "max_outstanding_rows": self.max_outstanding_rows,
                      "rejected_overloaded": self.rejected_overloaded},
        }


@dataclass
class _Waits:
    """How long calls of one lane waited between submission and start (seconds in, milliseconds out)."""

    calls: int = 0
    total: float = 0.0
    max: float = 0.0

    def add(self, seconds: float) -> None:
        self.calls += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def to_dict(self) -> dict[str, Any]:
        mean = self.total / self.calls if self.calls else 0.0
        return {"calls": self.calls, "mean": round(mean * 1000, 3), "max": round(self.max * 1000, 3)}


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    arrived: float

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


def run_chunked(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, max_batch: int) -> tuple[np.ndarray, int]:
    """fn over x in chunks of at most max_batch rows -> (concatenated result, number of calls)."""
    if x.shape[0] <= max_batch:
        return np.asarray(fn(x)), 1
    parts = [np.asarray(fn(x[i : i + max_batch])) for i in range(0, x.shape[0], max_batch)]
    return np.concatenate(parts), len(parts)


def _resolve(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():  # the request was cancelled (client gone, 504) while the model ran
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class ModelWorker:
    """The one thread that calls the model, highest priority first, then in submission order.

    ``/log_prob`` batches run at ``HIGH`` priority, sample chunks at ``LOW``: a merged log_prob call
    waits for at most the one call already running, never for a queue of sample chunks (so its
    latency stays bounded while large samples are drawn), and sample chunks run in the gaps.
    ``initializer`` runs once inside that thread before any call: per-thread runtime settings
    (``torch.set_num_threads``) must be made there, not in the thread that loaded the model.
    """

    HIGH, LOW = 0, 1

    def __init__(self, initializer: Callable[[], None] | None = None) -> None:
        self._initializer = initializer
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.submitted = 0  # written by the event loop only
        self.started = 0  # written by the model thread only
        self.waits = {self.HIGH: _Waits(), self.LOW: _Waits()}  # written by the model thread only
        self.busy_s = 0.0  # written by the model thread only
        self.closed = False

    @property
    def pending(self) -> int:
        """Calls submitted that the model thread has not started yet."""
        return self.submitted - self.started

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="nfkd-model_0", daemon=True)
                self._thread.start()

    def _main(self) -> None:
        if self._initializer is not None:
            try:
                self._initializer()
            except Exception:  # a failed setting must not kill the thread that answers every request
                log.exception("model thread initializer failed")
        while True:
            priority, _, job = self._queue.get()
            if job is None:
                return
            fn, args, fut, loop, queued_at = job
            self.started += 1
            t0 = time.perf_counter()
            self.waits[priority].add(t0 - queued_at)
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the awaiting request
                result, error = None, exc
            self.busy_s += time.perf_counter() - t0
            try:
                loop.call_soon_threadsafe(_resolve, fut, result, error)
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

    async def run(self, fn: Callable, *args, priority: int = LOW) -> Any:
        if self.closed:
            raise Closed("the server is shutting down")
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.submitted += 1
        self._queue.put((priority, next(self._seq), (fn, args, fut, loop, time.perf_counter())))
        return await fut

    def to_dict(self) -> dict[str, Any]:
        """Calls not started yet, time spent running calls, and how long calls of each lane waited to start
        (the wait a small request has behind the call already running, plus the thread's scheduling lag)."""
        return {"pending_calls": self.pending, "busy_s": round(self.busy_s, 3),
                "wait_ms": {"log_prob": self.waits[self.HIGH].to_dict(), "chunks": self.waits[self.LOW].to_dict()}}

    def shutdown(self) -> None:
        """Finish every queued call, then stop the thread."""
        self.closed = True
        self._queue.put((self.LOW + 1, next(self._seq), None))
        if self._thread is not None:
            self._thread.join()


class LogProbBatcher:
    """Queue + collector task; ``submit(x)`` resolves to that request's log_prob rows."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], worker: ModelWorker, stats: Stats, *,
                 max_batch: int = 4096, max_wait_ms: float = 2.0, batching: bool = True) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn = fn
        self.worker = worker
        self.stats = stats
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.batching = batching
        self._items: collections.deque[_Item] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.batching and self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._collect(), name="nfkd-batcher")

    async def close(self) -> int:
        """Refuse new work, run everything still queued, stop. Returns how many requests were drained."""
        self._closing = True
        pending = len(self._items)
        if self._task is not None:
            self._wakeup.set()
            await self._task
            self._task = None
        return pending

    @property
    def closing(self) -> bool:
        return self._closing

    # --- submit -------------------------------------------------------------------------------
    async def submit(self, x: np.ndarray) -> np.ndarray:
        if self._closing:
            raise Closed("the server is shutting down")
        rows = int(x.shape[0])
        if not self.batching:
            t0 = time.perf_counter()
            out, calls = await self.worker.run(run_chunked, self.fn, x, self.max_batch, priority=ModelWorker.HIGH)
            self.stats.record_batch(1, rows, calls, time.perf_counter() - t0)
            return out
        if self._task is None:  # the app's lifespan did not run (e.g. an ASGI test transport): start now
            self.start()
        loop = asyncio.get_running_loop()
        item = _Item(x, loop.create_future(), loop.time())
        self._items.append(item)
        self.stats.queue_depth += 1
        self.stats.queue_rows += rows
        self.stats.max_queue_depth = max(self.stats.max_queue_depth, self.stats.queue_depth)
        self._wakeup.set()
        return await item.future

    # --- the collector ------------------------------------------------------------------------
    def _pop(self) -> _Item:
        item = self._items.popleft()
        self.stats.queue_depth -= 1
        self.stats.queue_rows -= item.rows
        return item

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._items and self._items[0].future.done():  # cancelled: client went away
                self._pop()
            if not self._items:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._items[0].arrived + self.max_wait
            while not self._closing and self.stats.queue_rows < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                except asyncio.TimeoutError:
                    break
            batch: list[_Item] = []
            rows = 0
            while self._items and (not batch or rows + self._items[0].rows <= self.max_batch):
                item = self._pop()
                if not item.future.done():  # skip requests whose client went away meanwhile
                    batch.append(item)
                    rows += item.rows
            if batch:
                await self._run(batch, rows)

    async def _run(self, batch: list[_Item], rows: int) -> None:
        x = batch[0].x if len(batch) == 1 else np.concatenate([it.x for it in batch])
        t0 = time.perf_counter()
        try:
            out, calls = await self.worker.run(run_chunked, self.fn, x, self.max_batch, priority=ModelWorker.HIGH)
        except Exception as exc:  # the model failed: every request of this batch gets the error
            log.exception("model call failed", extra={"requests": len(batch), "rows": rows})
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        self.stats.record_batch(len(batch), rows, calls, time.perf_counter() - t0)
        off = 0
        for it in batch:
            n = it.rows
            if not it.future.done():
                it.future.set_result(out[off : off + n])
            off += n
