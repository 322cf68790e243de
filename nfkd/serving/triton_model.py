"""The Triton Python-backend model: any ``nfkd.inference`` runner behind Triton's dynamic batcher.

A repository's ``model.py`` is one line, ``from nfkd.serving.triton_model import TritonPythonModel``;
``config.pbtxt`` parameters say what to load (``export.triton_python`` writes both):

- ``nfkd_kind``: ``density`` (``x`` [B, *event] -> ``log_prob`` [B, 1]; requests merged by the
  dynamic batcher are concatenated into one runner call, split back per request) or ``sample``
  (``n``, ``temperature``, optional ``seed`` -> ``x`` [n, *event]; noise from
  ``numpy.random.default_rng(seed)``, the same samples as the built-in service and every runner);
- ``nfkd_model`` (checkpoint or export folder, relative to the model folder or absolute),
  ``nfkd_backend``, ``nfkd_threads``, ``nfkd_cache_dir``, ``nfkd_max_sample_n``, ``nfkd_chunk_rows``,
  ``nfkd_max_queue_rows``.

``execute`` does not run the model: it validates each request, hands it to the instance's
``nfkd.serving.triton_scheduler.ChunkScheduler`` and returns None; the scheduler's worker runs the
work shortest-first in calls of at most ``nfkd_chunk_rows`` rows and answers each request through
its response sender (one final response; the model is *not* decoupled, which Triton's HTTP and
non-streaming gRPC front ends would refuse). So a small request waits for one chunk, not for a
65536-row request. Rows queued or running beyond ``nfkd_max_queue_rows`` (per instance; default
4x max(request rows, chunk), the built-in service's) are refused with the built-in service's
"overloaded" message as UNAVAILABLE (HTTP 503, gRPC UNAVAILABLE).

Every bad request gets its own error response (INVALID_ARG: HTTP 400) with the built-in service's
message; the other requests of the same batch are still answered. Tensors cross the stub by DLPack
(torch), never ``as_numpy``: the stub of Triton 2.51 was built against numpy 1.x and misreads numpy 2
arrays (wrong strides in, "output tensor shape does not match size" out).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Hashable

import numpy as np

from .triton_scheduler import Job, Piece

__all__ = ["TritonPythonModel", "check_density_rows", "check_sample_args"]

SWITCH_INTERVAL_S = 0.001


def check_density_rows(x: np.ndarray, event_shape: tuple[int, ...]) -> str | None:
    """``nfkd.validation``'s finite-value check, as the built-in service runs it (Triton already checked
    dtype, shape and the row limit): the message, or None."""
    from nfkd.errors import InputError
    from nfkd.validation import check_batch

    try:
        check_batch(x, event_shape, "x", float32=True)
    except InputError as exc:
        return str(exc)
    return None


def _one(a: np.ndarray | None, what: str, kind: str) -> Any:
    """The single value of a shape-[1] input (None when absent)."""
    from nfkd.errors import InputError

    if a is None:
        return None
    if a.size != 1:
        raise InputError(f"{what} must be one {kind} (shape [1])")
    return a.reshape(-1)[0].item()


def check_sample_args(n: np.ndarray | None, t: np.ndarray | None, seed: np.ndarray | None,
                      max_n: int) -> tuple[int, float, int | None] | str:
    """(n, temperature, seed) checked by ``nfkd.validation`` with the built-in service's bounds and
    messages (``payload.sample_request``), or the message for the first bad value."""
    from nfkd.errors import InputError
    from nfkd.validation import check_count, check_seed, check_temperature

    from .payload import MAX_TEMPERATURE

    try:
        if n is None:
            raise InputError("n must be one integer (shape [1])")
        v = check_count(_one(n, "n", "integer"), "n", max_n, limit=f"this server's limit of {max_n} samples per request")
        temp = 1.0 if t is None else check_temperature(_one(t, "temperature", "number"), MAX_TEMPERATURE)
        return v, temp, check_seed(_one(seed, "seed", "integer"))
    except InputError as exc:
        return str(exc)


class TritonPythonModel:
    """Loaded once per model instance (one stub process each); ``execute`` submits, the scheduler answers."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb

        from nfkd import inference

        from .admission import Admission
        from .triton_scheduler import ChunkScheduler

        self.pb = pb
        # execute (the stub's thread) and the scheduler's worker share the GIL: with the default 5 ms switch
        # interval each hand-over can cost execute up to 5 ms (the built-in service sets the same 1 ms)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        config = json.loads(args["model_config"])
        p = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.kind = p["nfkd_kind"]
        model = Path(p["nfkd_model"])
        if not model.is_absolute():
            model = Path(args["model_repository"]) / model
        threads = int(p.get("nfkd_threads") or 0) or None
        options = {"cache_dir": p["nfkd_cache_dir"]} if p.get("nfkd_cache_dir") else {}
        self.runner = inference.load(model, backend=p.get("nfkd_backend") or "auto", device="cpu", threads=threads,
                                     **options)
        self.event_shape = tuple(self.runner.event_shape)
        cap = int(self.runner.max_batch or 1 << 30)
        self.chunk = max(1, min(int(p.get("nfkd_chunk_rows") or 4096), cap))
        self.max_n = min(int(p.get("nfkd_max_sample_n") or 65536), cap)
        max_rows = int(config.get("max_batch_size") or 0) or self.max_n
        budget = int(p.get("nfkd_max_queue_rows") or 0) or 4 * max(max_rows, self.chunk)
        self.runner.pin_threads()
        self._warm_up()
        self.scheduler = ChunkScheduler(self._compute, self.chunk, Admission(budget, headroom=self.chunk),
                                        on_worker_start=self.runner.pin_threads).start()
        pb.Logger.log_info(f"nfkd {self.kind} model: {self.runner!r}, threads {threads}, chunk {self.chunk} rows, "
                           f"queue budget {budget} rows")

    def _warm_up(self) -> None:
        """One call before the model reports ready: numba compiles its kernels on the first call (seconds),
        which would otherwise be the first client's latency."""
        if self.kind == "density":
            self.runner.log_prob(np.zeros((1, *self.event_shape), np.float32), validate=False)
        else:
            self.runner.sample(1, seed=0)

    def finalize(self) -> None:
        """Triton has waited for the in-flight requests; finish anything still queued, stop the worker."""
        self.scheduler.close()

    # --- tensors across the stub (DLPack: see the module docstring) ----------------------------
    def _input(self, request: Any, name: str) -> np.ndarray | None:
        import torch

        t = self.pb.get_input_tensor_by_name(request, name)
        return None if t is None else torch.from_dlpack(t.to_dlpack()).numpy().copy()

    def _output(self, name: str, arr: np.ndarray) -> Any:
        import torch

        return self.pb.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(torch.from_numpy(np.ascontiguousarray(arr))))

    def _error(self, message: str, code: str = "INVALID_ARG") -> Any:
        pb = self.pb
        return pb.InferenceResponse(error=pb.TritonError(message, getattr(pb.TritonError, code)))

    # --- execute: validate, submit, return (the scheduler's worker answers) ---------------------
    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            job = self._job(request, sender)
            problem = job if isinstance(job, str) else None
            if problem is None:
                refusal = self.scheduler.submit(job)
                if refusal is not None:
                    sender.send(self._error(refusal, "UNAVAILABLE"), flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                sender.send(self._error(problem), flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _job(self, request: Any, sender: Any) -> Job | str:
        """The request's work, or the message of its one error."""
        out = "log_prob" if self.kind == "density" else "x"

        def reply(result: np.ndarray | None, error: str | None) -> None:
            answer = (self._error(error, "INTERNAL") if error is not None
                      else self.pb.InferenceResponse([self._output(out, result)]))
            sender.send(answer, flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        if self.kind == "density":
            x = self._input(request, "x")
            problem = check_density_rows(x, self.event_shape)
            return problem or Job(len(x), "log_prob", x, reply)
        args = check_sample_args(self._input(request, "n"), self._input(request, "temperature"),
                                 self._input(request, "seed"), self.max_n)
        if isinstance(args, str):
            return args
        n, temperature, seed = args
        return Job(n, float(temperature), {"seed": seed, "noise": None}, reply)

    def _compute(self, key: Hashable, pieces: list[Piece]) -> list[np.ndarray]:
        """One runner call over the pieces' rows (the scheduler's worker thread), split back per piece."""
        from nfkd.inference import draw_noise

        if self.kind == "density":
            x = np.concatenate([job.data[a:b] for job, a, b in pieces]) if len(pieces) > 1 else \
                pieces[0][0].data[pieces[0][1]:pieces[0][2]]
            out = np.asarray(self.runner.log_prob(x, validate=False), np.float32)[:, None]
        else:
            for job, _, _ in pieces:  # drawn here, not in execute: execute must stay short (Triton queues behind it)
                if job.data["noise"] is None:
                    job.data["noise"] = draw_noise(self.runner.noise_shapes, job.rows, job.data["seed"])
            levels = range(len(self.runner.noise_shapes))
            noise = [np.concatenate([job.data["noise"][lv][a:b] for job, a, b in pieces]) for lv in levels]
            out = np.asarray(self.runner.sample(noise=noise, temperature=float(key)), np.float32)
        bounds = np.cumsum([0] + [b - a for _, a, b in pieces])
        return [out[bounds[i]:bounds[i + 1]] for i in range(len(pieces))]
