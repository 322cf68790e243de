"""HTTP density-estimation service (``python -m nfkd serve MODEL``): FastAPI + uvicorn, micro-batched.

    from nfkd import inference
    from nfkd.serving import ServeConfig, create_app
    app = create_app(inference.load("student.pt", backend="onnxruntime"), ServeConfig(max_wait_ms=2))

The model is an ``nfkd.inference`` Runner, taken as it is (a ``PairRunner`` too): the one model surface.

Modules, one job each:

- ``loading``: MODEL path + ``--backend`` choice (the registry's names and aliases) -> a Runner;
- ``config``: ``ServeConfig``, every limit;
- ``payload``: request bodies (JSON / npy) parsed, then checked by ``nfkd.validation`` -> one ``ApiError`` (4xx);
- ``admission``: the row budget shared by ``/log_prob`` and ``/sample`` (503);
- ``batcher``: micro-batching, the one model thread, counters;
- ``service``: admission + batching + chunked sampling + the parse pool + the warm-up, no HTTP;
- ``routes``: the endpoints (an ``APIRouter``); ``http_errors``: error answers; ``access_log``: request log;
- ``http_app``: ``create_app``, wiring the above;
- ``http_server``: uvicorn with read deadlines (slow-loris), a background-thread server for tests;
- ``jsonlog``: JSON-lines logging; ``triton_*``: the Triton Inference Server engine (``--engine triton``).

The command line is ``nfkd.cli.serve`` (``python -m nfkd serve``). See docs/serving.md.

Imports are lazy: ``nfkd.serving.loading`` needs neither FastAPI nor uvicorn. Exports and their
cache live in ``export/`` (``export.cache``), reached only through ``nfkd.inference``.
"""
from __future__ import annotations

__all__ = ["BACKEND_CHOICES", "ServeConfig", "create_app", "load_model", "load_pair_model"]

_LAZY = {
    "ServeConfig": "config", "create_app": "http_app",
    "BACKEND_CHOICES": "loading", "load_model": "loading", "load_pair_model": "loading",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'nfkd.serving' has no attribute {name!r}")
