"""HTTP density-estimation service (``python -m nfkd serve MODEL``): FastAPI + uvicorn, micro-batched.

    from nfkd.serving import ServeConfig, create_app, load_backend
    app = create_app(load_backend("student.pt", "onnxruntime"), ServeConfig(max_wait_ms=2))

Modules: ``backends`` (onnxruntime / tensorrt / torch, export on the fly), ``payload`` (request
parsing and validation -> 4xx), ``batcher`` (micro-batching, one model thread, counters), ``app``
(endpoints, access log), ``server`` (uvicorn, JSON logs, a background-thread server for tests),
``bench`` (loopback load test). See docs/serving.md.

Imports are lazy: ``nfkd.serving.backends`` (used by ``export.triton_repo``) needs neither FastAPI
nor uvicorn.
"""
from __future__ import annotations

__all__ = ["BACKENDS", "ModelBackend", "ServeConfig", "create_app", "ensure_export", "load_backend"]

_LAZY = {
    "ServeConfig": "app", "create_app": "app",
    "BACKENDS": "backends", "ModelBackend": "backends", "ensure_export": "backends", "load_backend": "backends",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'nfkd.serving' has no attribute {name!r}")
