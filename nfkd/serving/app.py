"""The FastAPI application: ``create_app(backend, ServeConfig(...))``.

Endpoints (errors are always ``{"error": "..."}`` with a 4xx/5xx status, see ``payload``):

- ``POST /log_prob``: JSON ``{"x": [[...], ...]}`` or a ``np.save`` body with
  ``Content-Type: application/x-npy`` -> ``{"log_prob": [...]}`` (or ``.npy`` float32 bytes with
  ``Accept: application/x-npy``). Concurrent requests are micro-batched (``batcher``).
- ``POST /sample``: ``{"n": 100, "temperature": 1.0, "seed": 0}`` -> ``{"x": [[...], ...]}`` (or ``.npy``).
- ``GET /healthz``, ``GET /metadata``, ``GET /stats``.

Every request is logged as one JSON line (logger ``nfkd.serve.access``: method, path, status,
rows, latency_ms, and the error message for 4xx/5xx).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import nfkd

from . import payload
from .backends import ModelBackend
from .batcher import Closed, LogProbBatcher, ModelWorker, Overloaded, Stats

log = logging.getLogger("nfkd.serve")
access_log = logging.getLogger("nfkd.serve.access")

# JSON text costs up to ~26 bytes per float32 value ("-1.2345678901234567e-30, "), npy 8 (float64).
BYTES_PER_VALUE = 32
BODY_SLACK = 64 * 1024


@dataclass
class ServeConfig:
    max_batch: int = 4096  # rows merged into one model call
    max_wait_ms: float = 2.0  # how long the first queued request may wait for others
    max_request_rows: int = 65536
    max_sample_n: int | None = None  # default: min(max_request_rows, model max batch)
    max_body_bytes: int | None = None  # default: from max_request_rows and the event size
    max_queue_rows: int | None = None  # default: 4 * max(max_request_rows, max_batch)
    batching: bool = True
    request_timeout_s: float = 60.0

    def resolved(self, backend: ModelBackend) -> "ServeConfig":
        c = ServeConfig(**asdict(self))
        for name in ("max_batch", "max_request_rows"):
            if getattr(c, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(c, name)}")
        c.max_batch = min(int(c.max_batch), int(backend.max_batch))
        if c.max_sample_n is None:
            c.max_sample_n = min(int(c.max_request_rows), int(backend.max_batch))
        c.max_sample_n = min(int(c.max_sample_n), int(backend.max_batch))
        if c.max_body_bytes is None:
            c.max_body_bytes = int(c.max_request_rows) * backend.dim * BYTES_PER_VALUE + BODY_SLACK
        if c.max_queue_rows is None:
            c.max_queue_rows = 4 * max(int(c.max_request_rows), int(c.max_batch))
        return c


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":"), allow_nan=False).encode(), status_code=status,
                    media_type=payload.JSON)


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


class AccessLog:
    """Pure ASGI middleware: one structured log line and the status counters per HTTP request."""

    def __init__(self, app, stats: Stats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = scope.setdefault("state", {})
        status = 500

        async def send_wrapper(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            self.stats.http_requests += 1
            self.stats.http_by_status[status] += 1
            self.stats.http_by_path[path] += 1
            if access_log.isEnabledFor(logging.INFO):
                extra = {"method": scope.get("method"), "path": path, "status": status, "rows": state.get("rows"),
                         "latency_ms": round((time.perf_counter() - t0) * 1000, 3)}
                if "error" in state:
                    extra["error"] = state["error"]
                access_log.info("request", extra=extra)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) anything above ``limit`` bytes before reading all of it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise payload.ApiError(400, f"invalid Content-Length header {declared!r}") from None
        if size > limit:
            raise payload.ApiError(413, f"request body of {size} bytes is above this server's limit of {limit} "
                                        f"bytes; send fewer rows per request")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise payload.ApiError(413, f"request body is above this server's limit of {limit} bytes; "
                                        f"send fewer rows per request")
        chunks.append(chunk)
    return b"".join(chunks)


def _content_type(request: Request, allowed: tuple[str, ...]) -> str:
    ctype = payload.media_type(request.headers.get("content-type"))
    if ctype not in allowed:
        shown = ctype or "none"
        raise payload.ApiError(415, f"unsupported Content-Type {shown!r}; send {' or '.join(allowed)}")
    return ctype


def create_app(backend: ModelBackend, config: ServeConfig | None = None) -> FastAPI:
    """The service for one loaded model. The batcher and the model thread live in the app's lifespan."""
    cfg = (config or ServeConfig()).resolved(backend)
    stats = Stats()
    worker = ModelWorker()
    batcher = LogProbBatcher(backend.log_prob, worker, stats, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms,
                             max_queue_rows=cfg.max_queue_rows, batching=cfg.batching)
    event_shape = tuple(backend.event_shape)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        log.info("ready", extra={"backend": backend.name, "arch": backend.arch, "batching": cfg.batching,
                                 "max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms})
        try:
            yield
        finally:
            drained = await batcher.close()
            await asyncio.get_running_loop().run_in_executor(None, worker.shutdown)
            log.info("drained and stopped", extra={"drained_requests": drained, "stats": stats.to_dict()})

    app = FastAPI(title="nfkd density service", version=nfkd.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = backend
    app.state.config = cfg
    app.state.stats = stats
    app.state.batcher = batcher

    # --- errors: always {"error": "..."} -------------------------------------------------------
    @app.exception_handler(payload.ApiError)
    async def _api_error(request: Request, exc: payload.ApiError) -> Response:
        request.state.error = exc.message
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: f"no endpoint {request.url.path}; see GET /metadata",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        request.state.error = message
        return _error(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error", extra={"path": request.url.path})
        return _error(500, f"internal error: {type(exc).__name__}")

    async def _await_model(coro):
        try:
            return await asyncio.wait_for(coro, cfg.request_timeout_s)
        except Overloaded as exc:
            raise payload.ApiError(503, str(exc)) from None
        except Closed as exc:
            raise payload.ApiError(503, str(exc)) from None
        except asyncio.TimeoutError:
            raise payload.ApiError(504, f"the model did not answer within {cfg.request_timeout_s:g} s") from None
        except payload.ApiError:
            raise
        except Exception as exc:
            raise payload.ApiError(500, f"model call failed: {type(exc).__name__}: {exc}") from None

    # --- endpoints ---------------------------------------------------------------------------
    @app.post("/log_prob")
    async def log_prob(request: Request) -> Response:
        ctype = _content_type(request, (payload.JSON, payload.NPY))
        body = await _read_body(request, cfg.max_body_bytes)
        if ctype == payload.NPY:
            x = payload.npy_rows(body, event_shape, cfg.max_request_rows)
        else:
            x = payload.json_rows(body, event_shape, cfg.max_request_rows)
        request.state.rows = int(x.shape[0])
        lp = await _await_model(batcher.submit(x))
        if payload.wants_npy(request.headers.get("accept")):
            return Response(payload.npy_bytes(lp.astype(np.float32, copy=False)), media_type=payload.NPY)
        return _json({"log_prob": payload.json_floats(lp)})

    @app.post("/sample")
    async def sample(request: Request) -> Response:
        _content_type(request, (payload.JSON,))
        body = await _read_body(request, min(cfg.max_body_bytes, BODY_SLACK))
        n, temperature, seed = payload.sample_request(body, cfg.max_sample_n)
        request.state.rows = n
        if batcher.closing:
            raise payload.ApiError(503, "the server is shutting down")
        t0 = time.perf_counter()
        xs = await _await_model(worker.run(backend.sample, n, temperature, seed))
        stats.sample_requests += 1
        stats.sample_rows += n
        stats.sample_model_calls += 1
        stats.model_seconds += time.perf_counter() - t0
        if payload.wants_npy(request.headers.get("accept")):
            return Response(payload.npy_bytes(xs.astype(np.float32, copy=False)), media_type=payload.NPY)
        return _json({"x": payload.json_floats(xs), "n": n, "temperature": temperature, "seed": seed})

    @app.get("/healthz")
    async def healthz() -> Response:
        if batcher.closing:
            return _json({"status": "shutting down"}, 503)
        return _json({"status": "ok"})

    @app.get("/metadata")
    async def metadata() -> Response:
        return _json({
            **backend.info(),
            "nfkd_version": nfkd.__version__,
            "max_batch": cfg.max_batch,
            "max_wait_ms": cfg.max_wait_ms,
            "batching": cfg.batching,
            "max_request_rows": cfg.max_request_rows,
            "max_sample_n": cfg.max_sample_n,
            "max_body_bytes": cfg.max_body_bytes,
            "max_queue_rows": cfg.max_queue_rows,
            "request_timeout_s": cfg.request_timeout_s,
            "endpoints": {
                "POST /log_prob": 'JSON {"x": [[...], ...]} or application/x-npy; Accept: application/x-npy for npy out',
                "POST /sample": 'JSON {"n": int, "temperature": float = 1.0, "seed": int | null}',
                "GET /healthz": "liveness", "GET /stats": "counters (requests, model calls, merged-batch histogram)",
            },
        })

    @app.get("/stats")
    async def get_stats() -> Response:
        return _json({**stats.to_dict(), "batching": cfg.batching, "max_batch": cfg.max_batch,
                      "max_wait_ms": cfg.max_wait_ms})

    app.add_middleware(AccessLog, stats=stats)
    return app


__all__ = ["AccessLog", "ServeConfig", "create_app"]
