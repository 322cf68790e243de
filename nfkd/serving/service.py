"""The model side of the service, without HTTP: admission, micro-batching, chunked sampling, the two threads.

``Service`` owns one backend, the row budget (``admission``), the ``/log_prob`` batcher, the ONE
model thread and a small pool that parses request bodies, so that neither parsing nor the model
ever runs on the event loop. The HTTP layer (``routes``) only reads bodies and formats answers.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any, Callable

import numpy as np

from .admission import Admission
from .backends import ModelBackend, draw_noise
from .batcher import LogProbBatcher, ModelWorker, Stats
from .config import ServeConfig

log = logging.getLogger("nfkd.serve")

PARSE_THREADS = 2  # large bodies parsed at once; more wait in the pool's queue (their bytes are already read)
INLINE_BYTES = 64 * 1024  # smaller bodies are parsed on the event loop (< ~2 ms): no queue behind large ones
INLINE_VALUES = 16384  # smaller answers are encoded on the event loop


class Service:
    """One loaded model behind the row budget; ``start``/``close`` run in the app's lifespan."""

    def __init__(self, backend: ModelBackend, config: ServeConfig) -> None:
        self.backend = backend
        self.cfg = config
        self.stats = Stats()
        self.admission = Admission(config.max_queue_rows, headroom=config.max_batch)
        self.worker = ModelWorker(initializer=backend.init_model_thread)
        self.batcher = LogProbBatcher(backend.log_prob, self.worker, self.stats, max_batch=config.max_batch,
                                      max_wait_ms=config.max_wait_ms, batching=config.batching)
        self.parser = concurrent.futures.ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="nfkd-parse")

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.batcher.start()

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

    def _release(self, rows: int) -> None:
        self.admission.release(rows)
        self._sync_rows()

    def _sync_rows(self) -> None:
        self.stats.outstanding_rows = self.admission.rows
        self.stats.max_outstanding_rows = self.admission.max_seen

    async def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Admit, queue for a merged model call, wait at most ``request_timeout_s`` (then TimeoutError)."""
        rows = int(x.shape[0])
        self._admit(rows)
        try:
            return await asyncio.wait_for(self.batcher.submit(x), self.cfg.request_timeout_s)
        finally:
            self._release(rows)

    async def sample(self, n: int, temperature: float, seed: int | None) -> np.ndarray:
        """Admit ``n`` rows, then decode them in chunks of ``sample_chunk_rows``: each chunk is its own
        model call, so merged ``/log_prob`` calls queued meanwhile run between chunks. The noise is
        drawn once for all ``n`` rows, so a seed gives the same rows as one unchunked call."""
        self._admit(n)
        remaining = n
        try:
            async def run() -> np.ndarray:
                nonlocal remaining
                noise = await self.parse_sized(n * self.backend.dim, INLINE_VALUES, draw_noise,
                                               self.backend.noise_shapes, n, seed)
                step = self.cfg.sample_chunk_rows
                parts = []
                for i in range(0, n, step):
                    t0 = time.perf_counter()
                    chunk = [z[i : i + step] for z in noise]
                    parts.append(np.asarray(await self.worker.run(self.backend.decode, chunk, temperature)))
                    self.stats.sample_model_calls += 1
                    self.stats.model_seconds += time.perf_counter() - t0
                    done = min(step, remaining)
                    remaining -= done
                    self._release(done)
                return parts[0] if len(parts) == 1 else np.concatenate(parts)

            xs = await asyncio.wait_for(run(), self.cfg.request_timeout_s)
        finally:
            if remaining:
                self._release(remaining)
        self.stats.sample_requests += 1
        self.stats.sample_rows += n
        return xs

    def stats_dict(self) -> dict[str, Any]:
        return {**self.stats.to_dict(), "model": {"pending_calls": self.worker.pending},
                "batching": self.cfg.batching, "max_batch": self.cfg.max_batch, "max_wait_ms": self.cfg.max_wait_ms}


__all__ = ["PARSE_THREADS", "Service"]
