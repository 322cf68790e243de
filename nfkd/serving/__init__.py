"""HTTP density-estimation service (``python -m nfkd serve MODEL``): FastAPI + uvicorn, micro-batched.

    from nfkd.serving import ServeConfig, create_app, load_backend
    app = create_app(load_backend("student.pt", "onnxruntime"), ServeConfig(max_wait_ms=2))

Modules, one job each:

- ``backends``: what runs the model: an ``nfkd.inference`` Runner on any backend (auto, onnxruntime,
  tensorrt, triton, torch = eager, ...), adapted to numpy batches and the one model thread;
- ``config``: ``ServeConfig``, every limit;
- ``payload``: request parsing and validation -> one ``ApiError`` (4xx) each;
- ``admission``: the row budget shared by ``/log_prob`` and ``/sample`` (503);
- ``batcher``: micro-batching, the one model thread, counters;
- ``service``: admission + batching + chunked sampling + the parse pool, no HTTP;
- ``routes``: the endpoints (an ``APIRouter``); ``http_errors``: error answers; ``access_log``: request log;
- ``http_app``: ``create_app``, wiring the above;
- ``runner``: uvicorn with read deadlines (slow-loris), a background-thread server for tests;
- ``jsonlog``: JSON-lines logging; ``bench``: loopback throughput benchmark.

The command line is ``nfkd.cli.serve`` (``python -m nfkd serve``). See docs/serving.md.

Imports are lazy: ``nfkd.serving.backends`` needs neither FastAPI nor uvicorn. Exports and their
cache live in ``export/`` (``export.cache``), reached only through ``nfkd.inference``.
"""
from __future__ import annotations

__all__ = ["BACKENDS", "ModelBackend", "ServeConfig", "create_app", "load_backend", "load_pair_backend"]

_LAZY = {
    "ServeConfig": "config", "create_app": "http_app",
    "BACKENDS": "backends", "ModelBackend": "backends", "load_backend": "backends",
    "load_pair_backend": "backends",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'nfkd.serving' has no attribute {name!r}")
