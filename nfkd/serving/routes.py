"""The HTTP endpoints (an ``APIRouter``): read and check a body, parse it off the event loop, ask the ``Service``.

- ``POST /log_prob``: JSON ``{"x": [[...], ...]}`` or a ``np.save`` body with
  ``Content-Type: application/x-npy`` -> ``{"log_prob": [...]}`` (or ``.npy`` float32 bytes with
  ``Accept: application/x-npy``). Concurrent requests are micro-batched.
- ``POST /sample``: ``{"n": 100, "temperature": 1.0, "seed": 0}`` -> ``{"x": [[...], ...]}`` (or ``.npy``).
- ``GET /healthz`` (alive), ``GET /ready`` (503 until the model is warmed up), ``GET /metadata``, ``GET /stats``.

Errors are raised as ``payload.ApiError`` and answered by ``http_errors``.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

import nfkd

from . import payload
from .admission import Closed, Overloaded
from .config import BODY_SLACK
from .memory import RETRY_AFTER_S, BudgetExceeded, reserve, retry_after_s
from .service import INLINE_BYTES, INLINE_VALUES, Service, model_info

__all__ = ["json_response", "read_body", "router"]

router = APIRouter()

# An answer's bytes per value, for /sample's reservation before the work: JSON floats of float32 values
# ("-0.123456789012345678," ~ 22-27 bytes), .npy 4; plus 8 for the noise and the decoded rows.
ANSWER_BYTES_PER_VALUE = {"json": 28, "npy": 4}
WORK_BYTES_PER_VALUE = 8


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json_bytes(obj), status_code=status, media_type=payload.JSON, headers=headers)


def _encode_array(arr: np.ndarray, npy: bool, key: str, extra: dict[str, Any]) -> bytes:
    """The response body for an array (runs in the parse pool: 65536 rows of JSON take ~0.1 s)."""
    if npy:
        return payload.npy_bytes(arr.astype(np.float32, copy=False))
    return payload.json_array_bytes(arr, key, extra)


async def _array_response(request: Request, svc: Service, arr: np.ndarray, key: str,
                          extra: dict[str, Any] | None = None) -> Response:
    npy = payload.wants_npy(request.headers.get("accept"))
    body = await svc.parse_sized(arr.size, INLINE_VALUES, _encode_array, arr, npy, key, extra or {})
    return Response(body, media_type=payload.NPY if npy else payload.JSON)


def _service(request: Request) -> Service:
    return request.app.state.service


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body: 413 above ``limit`` bytes (before reading, from Content-Length, or while streaming);
    408 when it is not complete within ``timeout_s`` of the headers (a slow-loris client)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise payload.ApiError(400, f"invalid Content-Length header {declared[:40]!r}") from None
        if size > limit:
            raise payload.ApiError(413, f"request body of {size} bytes is above this server's limit of {limit} "
                                        f"bytes; send fewer rows per request")
    chunks, total = [], 0

    async def collect() -> None:
        nonlocal total
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise payload.ApiError(413, f"request body is above this server's limit of {limit} bytes; "
                                            f"send fewer rows per request")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise payload.ApiError(408, f"the request body was not complete within {timeout_s:g} seconds of its "
                                    f"headers ({total} bytes received); send it at once") from None
    return b"".join(chunks)


def _content_type(request: Request, allowed: tuple[str, ...]) -> str:
    ctype = payload.media_type(request.headers.get("content-type"))
    if ctype not in allowed:
        shown = ctype or "none"
        raise payload.ApiError(415, f"unsupported Content-Type {shown[:60]!r}; send {' or '.join(allowed)}")
    return ctype


async def _model(coro, timeout_s: float):
    """The service's answer, or the ApiError a client gets instead (503 / 504 / 500)."""
    try:
        return await coro
    except Overloaded as exc:
        raise payload.ApiError(503, str(exc), {"retry-after": str(RETRY_AFTER_S)}) from None
    except Closed as exc:
        raise payload.ApiError(503, str(exc)) from None
    except asyncio.TimeoutError:
        raise payload.ApiError(504, f"the model did not answer within {timeout_s:g} s") from None
    except payload.ApiError:
        raise
    except Exception as exc:
        raise payload.ApiError(500, f"model call failed: {type(exc).__name__}: {exc}") from None


@router.post("/log_prob")
async def log_prob(request: Request) -> Response:
    svc = _service(request)
    cfg = svc.cfg
    ctype = _content_type(request, (payload.JSON, payload.NPY))
    body = await read_body(request, cfg.max_body_bytes, cfg.body_timeout_s)
    parse = payload.npy_rows if ctype == payload.NPY else payload.json_rows  # looked up per call (tests wrap them)
    x = await svc.parse_sized(len(body), INLINE_BYTES, parse, body, tuple(svc.runner.event_shape),
                              cfg.max_request_rows)
    request.state.rows = int(x.shape[0])
    lp = await _model(svc.log_prob(x), cfg.request_timeout_s)
    return await _array_response(request, svc, lp, "log_prob")


@router.post("/sample")
async def sample(request: Request) -> Response:
    svc = _service(request)
    cfg = svc.cfg
    _content_type(request, (payload.JSON,))
    body = await read_body(request, min(cfg.max_body_bytes, BODY_SLACK), cfg.body_timeout_s)
    n, temperature, seed = payload.sample_request(body, cfg.max_sample_n)  # at most 64 KiB: parsed in place
    request.state.rows = n
    values = n * int(svc.runner.dim)
    per_value = ANSWER_BYTES_PER_VALUE["npy" if payload.wants_npy(request.headers.get("accept")) else "json"]
    answer_bytes = values * (per_value + WORK_BYTES_PER_VALUE)
    try:  # the answer's size is known from n: refuse now rather than hold it for a client that may not read
        reserve(request.scope.setdefault("state", {}), answer_bytes, "an answer")
    except BudgetExceeded as exc:
        raise payload.ApiError(503, str(exc), {"retry-after": str(retry_after_s(answer_bytes))}) from None
    xs = await _model(svc.sample(n, temperature, seed), cfg.request_timeout_s)
    return await _array_response(request, svc, xs, "x", {"n": n, "temperature": temperature, "seed": seed})


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    if _service(request).closing:
        return json_response({"status": "shutting down"}, 503)
    return json_response({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> Response:
    """200 once the model answered its warm-up calls (first-call compilation done); 503 before, and when closing."""
    svc = _service(request)
    if svc.closing:
        return json_response({"status": "shutting down"}, 503)
    if svc.warmup_error is not None:
        return json_response({"status": "warm-up failed", "error": svc.warmup_error}, 503)
    if not svc.ready:
        return json_response({"status": "warming up"}, 503, {"retry-after": "1"})
    return json_response({"status": "ready", "warmup_s": round(svc.warmup_s, 3)})


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    svc = _service(request)
    cfg = svc.cfg
    return json_response({
        **model_info(svc.runner),
        "warmup_s": svc.warmup_s,
        "nfkd_version": nfkd.__version__,
        "max_batch": cfg.max_batch,
        "max_wait_ms": cfg.max_wait_ms,
        "batching": cfg.batching,
        "max_request_rows": cfg.max_request_rows,
        "max_sample_n": cfg.max_sample_n,
        "max_body_bytes": cfg.max_body_bytes,
        "max_queue_rows": cfg.max_queue_rows,
        "sample_chunk_rows": cfg.sample_chunk_rows,
        "max_temperature": payload.MAX_TEMPERATURE,
        "request_timeout_s": cfg.request_timeout_s,
        "header_timeout_s": cfg.header_timeout_s,
        "body_timeout_s": cfg.body_timeout_s,
        "write_timeout_s": cfg.write_timeout_s,
        "max_inflight_bytes": cfg.max_inflight_bytes,
        "endpoints": {
            "POST /log_prob": 'JSON {"x": [[...], ...]} or application/x-npy; Accept: application/x-npy for npy out',
            "POST /sample": 'JSON {"n": int, "temperature": float = 1.0, "seed": int | null}',
            "GET /healthz": "liveness", "GET /ready": "readiness (after the warm-up)", "GET /stats": "counters (requests, model calls, merged-batch histogram)",
        },
    })


@router.get("/stats")
async def get_stats(request: Request) -> Response:
    return json_response(_service(request).stats_dict())
