"""Shortest-first, chunked model work inside one Triton Python-backend model instance (issue #25).

Why: Triton runs one ``execute`` per model instance at a time, so a 65536-row request held the
instance for its whole duration and the dynamic batcher's FIFO queue put every small request behind
it (2.3 s average queue time under ``bench.serve_load``'s hostile mix). Decoupled models would free
``execute``, but Triton 2.51 refuses them on HTTP ``/v2/models/<m>/infer`` (501) and on non-streaming
gRPC ``ModelInfer`` (UNIMPLEMENTED). A *non-decoupled* Python model may still answer each request
through its response sender after ``execute`` has returned None (exactly one final response per
request), which both front ends accept. So ``execute`` only validates and calls ``submit``, and this
scheduler's one worker thread runs the model:

- each round is one model call of at most ``chunk`` rows, filled shortest-remaining-first from the
  jobs that may share a call (the same ``key``: all density rows; samples of one temperature); a
  big job is split across rounds, so small jobs run between its chunks, and whatever room the small
  jobs leave in a round goes to the next-shortest (big) job, which therefore keeps progressing;
- admission is the built-in service's row budget (``nfkd.serving.admission.Admission``: rows queued
  or running, with one chunk of headroom that requests larger than a chunk must leave free), and a
  refusal is answered at once with the same message (Triton: UNAVAILABLE, HTTP 503).
"""
from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np

from .admission import Admission, Closed, Overloaded

__all__ = ["ChunkScheduler", "Job", "Piece"]

log = logging.getLogger("nfkd.serve.triton")


@dataclass(eq=False)
class Job:
    """One request's work: ``rows`` rows of ``data`` (sliced by ``compute``), answered once by ``reply``
    with the float32 result (rows in order) or an error message."""

    rows: int
    key: Hashable
    data: Any
    reply: Callable[[np.ndarray | None, str | None], None]
    seq: int = 0
    done: int = 0
    parts: list[np.ndarray] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return self.rows - self.done


Piece = tuple[Job, int, int]  # a job and the rows [start, stop) of it in one model call
Compute = Callable[[Hashable, list[Piece]], list[np.ndarray]]


class ChunkScheduler:
    """Jobs in, one worker thread calling ``compute(key, pieces)`` -> one result per piece."""

    def __init__(self, compute: Compute, chunk: int, admission: Admission,
                 on_worker_start: Callable[[], None] | None = None) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.compute, self.chunk, self.admission = compute, int(chunk), admission
        self._on_start = on_worker_start
        self._cv = threading.Condition()
        self._jobs: list[Job] = []
        self._seq = itertools.count()
        self._closing = False
        self.rounds = 0
        self._thread = threading.Thread(target=self._run, name="nfkd-chunk-scheduler", daemon=True)

    def start(self) -> "ChunkScheduler":
        self._thread.start()
        return self

    def submit(self, job: Job) -> str | None:
        """Queue ``job`` (its ``reply`` will be called from the worker), or the refusal message (then never)."""
        with self._cv:
            try:
                if self._closing:
                    raise Closed("the server is shutting down")
                self.admission.admit(job.rows)
            except (Overloaded, Closed) as exc:
                return str(exc)
            job.seq = next(self._seq)
            self._jobs.append(job)
            self._cv.notify()
        return None

    def pending_rows(self) -> int:
        with self._cv:
            return self.admission.rows

    def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new jobs, finish the queued ones, stop the worker."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # --- the worker --------------------------------------------------------------------------
    def next_round(self) -> tuple[Hashable, list[Piece]]:
        """The next model call (lock held, at least one job queued): shortest remaining first, one key."""
        order = sorted(self._jobs, key=lambda j: (j.remaining, j.seq))
        key, room, pieces = order[0].key, self.chunk, []
        for job in order:
            if job.key != key:
                continue
            take = min(room, job.remaining)
            pieces.append((job, job.done, job.done + take))
            room -= take
            if room == 0:
                break
        return key, pieces

    def _run(self) -> None:
        if self._on_start is not None:
            self._on_start()
        while True:
            with self._cv:
                while not self._jobs and not self._closing:
                    self._cv.wait()
                if not self._jobs:
                    return
                key, pieces = self.next_round()
            self._one_round(key, pieces)

    def _one_round(self, key: Hashable, pieces: list[Piece]) -> None:
        """Run one call; finished (or failed) jobs leave the queue and are answered outside the lock."""
        try:
            results = self.compute(key, pieces)
            failure = None
        except Exception as exc:  # the model failed: every job of this call gets the error, none is lost
            results, failure = [], f"the model failed: {type(exc).__name__}: {exc}"
        finished: list[Job] = []
        with self._cv:
            self.rounds += 1
            for i, (job, _start, stop) in enumerate(pieces):
                if failure is None:
                    job.parts.append(results[i])
                    job.done = stop
                if failure is not None or job.done == job.rows:
                    self._jobs.remove(job)
                    self.admission.release(job.rows)
                    finished.append(job)
        for job in finished:
            result = None if failure else job.parts[0] if len(job.parts) == 1 else np.concatenate(job.parts)
            try:
                job.reply(result, failure)
            except Exception:  # a reply that cannot be sent (client gone) must not stop the worker
                log.exception("could not send an answer")
