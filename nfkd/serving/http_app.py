"""The FastAPI application for one loaded model: ``create_app(backend, ServeConfig(...))``.

It only wires the parts together: the ``Service`` (admission, batching, model thread) lives in the
app's lifespan and in ``app.state.service``; endpoints come from ``routes.router``; error answers
from ``http_errors``; one access-log line per request from ``access_log``.
"""
from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI

import nfkd

from .access_log import AccessLog
from .backends import ModelBackend
from .config import ServeConfig
from .http_errors import install_error_handlers
from .memory import MemoryBudget
from .routes import router
from .service import Service

__all__ = ["ServeConfig", "create_app"]

log = logging.getLogger("nfkd.serve")


def create_app(backend: ModelBackend, config: ServeConfig | None = None) -> FastAPI:
    """The service for one loaded model; the batcher and the model thread start and stop with the app."""
    cfg = (config or ServeConfig()).resolved(backend)
    service = Service(backend, cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        log.info("ready", extra={"backend": backend.name, "arch": backend.arch, "batching": cfg.batching,
                                 "max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms})
        try:
            yield
        finally:
            drained = await service.close()
            log.info("drained and stopped", extra={"drained_requests": drained, "stats": service.stats.to_dict()})

    app = FastAPI(title="nfkd density service", version=nfkd.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.backend = backend
    app.state.config = cfg
    app.state.stats = service.stats
    app.state.batcher = service.batcher
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(MemoryBudget, budget=service.memory, max_body_bytes=cfg.max_body_bytes)
    app.add_middleware(AccessLog, stats=service.stats)  # outermost: logs MemoryBudget's 503s too
    return app
