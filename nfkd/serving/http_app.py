"""The FastAPI application for one loaded model: ``create_app(runner, ServeConfig(...))``.

``runner`` is an ``nfkd.inference`` Runner (``inference.load``, ``load_pair``, a pair bundle), taken
as it is. This module only wires the parts together: the ``Service`` (admission, batching, model
thread, warm-up) lives in the app's lifespan and in ``app.state.service``; endpoints come from
``routes.router``; error answers from ``http_errors``; one access-log line per request from
``access_log``. The warm-up starts with the lifespan and runs on the model thread while the server
already answers ``/healthz`` (alive) and ``/ready`` (503 until warmed up).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

import nfkd
from nfkd.inference import Runner

from .access_log import AccessLog
from .config import ServeConfig
from .http_errors import install_error_handlers
from .memory import MemoryBudget
from .routes import router
from .service import Service

__all__ = ["ServeConfig", "create_app"]

log = logging.getLogger("nfkd.serve")


def create_app(runner: Runner, config: ServeConfig | None = None) -> FastAPI:
    """The service for one loaded Runner; the batcher, the model thread and the warm-up start with the app."""
    cfg = (config or ServeConfig()).resolved(runner)
    service = Service(runner, cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        warm = asyncio.get_running_loop().create_task(service.warm_up(), name="nfkd-warm-up")
        log.info("started", extra={"backend": runner.backend, "arch": runner.meta.arch, "batching": cfg.batching,
                                   "max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms})
        try:
            yield
        finally:
            drained = await service.close()  # finishes every queued model call, the warm-up's too
            await warm
            log.info("drained and stopped", extra={"drained_requests": drained, "stats": service.stats.to_dict()})

    app = FastAPI(title="nfkd density service", version=nfkd.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.runner = runner
    app.state.config = cfg
    app.state.stats = service.stats
    app.state.batcher = service.batcher
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(MemoryBudget, budget=service.memory, max_body_bytes=cfg.max_body_bytes)
    app.add_middleware(AccessLog, stats=service.stats)  # outermost: logs MemoryBudget's 503s too
    return app
