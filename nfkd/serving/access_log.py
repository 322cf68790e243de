"""One structured log line and the status counters per HTTP request (pure ASGI middleware)."""
from __future__ import annotations

import logging
import time

from .batcher import Stats

__all__ = ["AccessLog", "access_log"]

access_log = logging.getLogger("nfkd.serve.access")


class AccessLog:
    """Logger ``nfkd.serve.access``: method, path, status, rows, latency_ms, and the error message
    for 4xx/5xx (499: the client went away before its request was complete)."""

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
            self.stats.http_by_path[path[:200]] += 1
            if access_log.isEnabledFor(logging.INFO):
                extra = {"method": scope.get("method"), "path": path[:200], "status": status,
                         "rows": state.get("rows"), "latency_ms": round((time.perf_counter() - t0) * 1000, 3)}
                if "error" in state:
                    extra["error"] = state["error"]
                access_log.info("client aborted" if status == 499 else "request", extra=extra)
