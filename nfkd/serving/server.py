"""Running the app: structured (JSON-lines) logging and uvicorn, in the foreground or a background thread."""
from __future__ import annotations

import datetime as _dt
import json
import logging
import socket
import sys
import threading
import time
from typing import Any

import uvicorn

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged as a field.
_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_logging(level: str = "info", stream=None) -> logging.Handler:
    """JSON lines on stderr for nfkd's and uvicorn's loggers (uvicorn's own access log stays off)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("nfkd", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False
    return handler


def bind(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket (port 0: the OS picks a free one). Connections made before uvicorn has
    started wait in the backlog instead of being refused, so the port can be announced at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app, graceful_timeout_s: float | None = 30.0, **kwargs) -> uvicorn.Config:
    return uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", server_header=False,
                          timeout_graceful_shutdown=graceful_timeout_s, backlog=4096, **kwargs)


class BackgroundServer:
    """uvicorn in a daemon thread on loopback, for tests and benchmarks::

        with BackgroundServer(app) as srv:
            httpx.get(srv.url + "/healthz")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0, **kwargs) -> None:
        self.sock = bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn_config(app, **kwargs))
        self.thread = threading.Thread(target=self._run, name="nfkd-uvicorn", daemon=True)
        self.start_timeout_s = start_timeout_s
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # pragma: no cover - surfaced by start()
            self.error = exc

    def start(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"server failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start within {self.start_timeout_s} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["BackgroundServer", "JsonFormatter", "bind", "configure_logging", "uvicorn_config"]
