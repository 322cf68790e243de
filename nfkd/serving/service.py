"""The model side of the service, without HTTP: admission, micro-batching, chunked sampling, the two threads.

``Service`` owns one ``nfkd.inference`` Runner (taken as it is: the one model surface), the row
budget (``admission``), the ``/log_prob`` batcher, the ONE
model thread and one helper thread that parses large request bodies and encodes large answers, so
that neither a large parse nor the model runs on the event loop (bodies under 64 KiB are parsed
in place: < 2 ms, and no wait behind a large one). The HTTP layer (``routes``) only reads bodies
and formats answers.

Before it reports ready (``GET /ready``), ``warm_up`` runs one small sample and one log_prob on the
model thread: the first call of a backend compiles or loads its kernels (numba: ~3.4 s on the 2-core
AMD EPYC), which a client's first request would otherwise wait for.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any, Callable

import numpy as np

from nfkd.inference import Runner
from nfkd.noise import draw_noise

from .admission import Admission
from .batcher import LogProbBatcher, ModelWorker, Stats
from .config import MODEL_ANY_BATCH, ServeConfig
from .memory import ByteBudget

__all__ = ["PARSE_THREADS", "Service", "model_info"]

log = logging.getLogger("nfkd.serve")
WARMUP_SEED = 0

PARSE_THREADS = 1  # large bodies parsed at once (each holds the GIL in slices); more wait in the pool's queue
INLINE_BYTES = 64 * 1024  # smaller bodies are parsed on the event loop (< ~2 ms): no queue behind large ones
INLINE_VALUES = 16384  # smaller answers are encoded on the event loop


def model_info(runner: Runner) -> dict[str, Any]:
    """What ``GET /metadata`` says about the model: the Runner's ``info()`` and the most rows one call takes."""
    return {**runner.info(), "model_max_batch": int(runner.max_batch or MODEL_ANY_BATCH)}


class Service:
    """One loaded Runner behind the row budget; ``start``/``warm_up``/``close`` run in the app's lifespan."""

    def __init__(self, runner: Runner, config: ServeConfig) -> None:
        self.runner = runner
        self.cfg = config
        self.stats = Stats()
        self.admission = Admission(config.max_queue_rows, headroom=config.max_batch)
        self.memory = ByteBudget(int(config.max_inflight_bytes))
        # torch's intra-op thread count is per thread: the Runner sets its own inside the model thread
        self.worker = ModelWorker(initializer=runner.pin_threads)
        self.batcher = LogProbBatcher(self._log_prob, self.worker, self.stats, max_batch=config.max_batch,
                                      max_wait_ms=config.max_wait_ms, batching=config.batching)
        self.parser = concurrent.futures.ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="nfkd-parse")
        self.warmup_s: float | None = None  # seconds the warm-up took; None until it is done
        self.warmup_error: str | None = None

    # --- the model calls (on the model thread) ------------------------------------------------
    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.runner.log_prob(x, validate=False), np.float32)  # the service checked x

    def _decode(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:
        return np.asarray(self.runner.sample(noise=noise, temperature=temperature), np.float32)

    def _warm(self) -> None:
        x = self._decode(draw_noise(self.runner.noise_shapes, 1, WARMUP_SEED), 1.0)
        self._log_prob(x.reshape(1, *self.runner.event_shape))

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.batcher.start()

    @property
    def ready(self) -> bool:
        return self.warmup_s is not None and not self.closing

    async def warm_up(self) -> None:
        """One sample and one log_prob on the model thread, ahead of any request; ``ready`` after it.

        A failure is logged and kept (``warmup_error``): the service then stays not ready."""
        t0 = time.perf_counter()
        try:
            await self.worker.run(self._warm, priority=ModelWorker.HIGH)
        except Exception as exc:
            self.warmup_error = f"{type(exc).__name__}: {exc}"
            log.exception("warm-up failed: the service stays not ready")
            return
        self.warmup_s = time.perf_counter() - t0
        log.info("warmed up", extra={"warmup_s": round(self.warmup_s, 3), "backend": self.runner.backend})

    async def close(self) -> int:
        """Refuse new work, finish what was admitted, stop both threads; returns the drained request count."""
        self.admission.closing = True
        drained = await self.batcher.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.worker.shutdown)
        await loop.run_in_executor(None, self.parser.shutdown)
        return drained

    @property
    def closing(self) -> bool:
        return self.admission.closing

    # --- work ---------------------------------------------------------------------------------
    async def parse(self, fn: Callable, *args) -> Any:
        """Run a body parser (or an answer encoder) off the event loop: ``/healthz`` and small requests
        stay answerable during a large parse."""
        return await asyncio.get_running_loop().run_in_executor(self.parser, fn, *args)

    async def parse_sized(self, size: int, inline_limit: int, fn: Callable, *args) -> Any:
        """``fn(*args)`` in place when ``size`` is small (no wait behind large bodies in the pool), else ``parse``."""
        if size <= inline_limit:
            return fn(*args)
        return await self.parse(fn, *args)

    def _admit(self, rows: int) -> None:
        try:
            self.admission.admit(rows)
        except Exception:
            self.stats.rejected_overloaded = self.admission.rejected
            raise
        self._sync_rows()

    def _release(self, rows: int, request_rows: int | None = None) -> None:
        self.admission.release(rows, request_rows)
        self._sync_rows()

    def _sync_rows(self) -> None:
        self.stats.outstanding_rows = self.admission.rows
        self.stats.max_outstanding_rows = self.admission.max_seen

    async def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Admit, then either queue for a merged model call (up to ``max_batch`` rows) or, for a larger
        request, run it in ``max_batch``-row chunks at low priority, so merged calls of small requests
        run between its chunks. Waits at most ``request_timeout_s`` (then TimeoutError)."""
        rows = int(x.shape[0])
        if rows <= self.cfg.max_batch:
            self._admit(rows)
            try:
                return await asyncio.wait_for(self.batcher.submit(x), self.cfg.request_timeout_s)
            finally:
                self._release(rows)
        step = self.cfg.max_batch
        out = await self._chunked(rows, step, lambda i: (self._log_prob, x[i : i + step]),
                                  on_call=self.stats.record_chunk)
        self.stats.record_chunked_request()
        return out

    async def sample(self, n: int, temperature: float, seed: int | None) -> np.ndarray:
        """Admit ``n`` rows, then decode them in chunks of ``sample_chunk_rows``, each its own low-priority
        model call, so merged ``/log_prob`` calls run between chunks. The noise is drawn once for all
        ``n`` rows, so a seed gives the same rows as one unchunked call."""
        step = self.cfg.sample_chunk_rows
        noise: list[np.ndarray] = []

        async def draw() -> None:
            noise.extend(await self.parse_sized(n * self.runner.dim, INLINE_VALUES, draw_noise,
                                                self.runner.noise_shapes, n, seed))

        t0 = time.perf_counter()
        xs = await self._chunked(n, step, lambda i: (self._decode, [z[i : i + step] for z in noise],
                                                     temperature), before=draw)
        self.stats.model_seconds += time.perf_counter() - t0
        self.stats.sample_model_calls += -(-n // step)
        self.stats.sample_requests += 1
        self.stats.sample_rows += n
        return xs

    async def _chunked(self, rows: int, step: int, call: Callable[[int], tuple], before=None,
                       on_call: Callable[[int, float], None] | None = None) -> np.ndarray:
        """Admit ``rows``, run ``call(i)`` = (fn, *args) for i = 0, step, ... as low-priority model calls,
        one at a time, releasing each chunk's rows from the budget as it is done; ``on_call(rows, seconds)``
        after each."""
        self._admit(rows)
        remaining = rows

        async def run() -> np.ndarray:
            nonlocal remaining
            if before is not None:
                await before()
            parts = []
            for i in range(0, rows, step):
                fn, *args = call(i)
                t0 = time.perf_counter()
                parts.append(np.asarray(await self.worker.run(fn, *args, priority=ModelWorker.LOW)))
                done = min(step, remaining)
                if on_call is not None:
                    on_call(done, time.perf_counter() - t0)
                remaining -= done
                self._release(done, rows)
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        try:
            return await asyncio.wait_for(run(), self.cfg.request_timeout_s)
        finally:
            if remaining:
                self._release(remaining, rows)

    def stats_dict(self) -> dict[str, Any]:
        return {**self.stats.to_dict(), "model": self.worker.to_dict(), "warmup_s": self.warmup_s,
                "memory": self.memory.to_dict(),
                "batching": self.cfg.batching, "max_batch": self.cfg.max_batch, "max_wait_ms": self.cfg.max_wait_ms}
