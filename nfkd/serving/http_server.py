"""Running the app under uvicorn: the listening socket, read deadlines per connection, a background-thread server.

uvicorn's HTTP/1.1 protocol has a keep-alive timeout but no deadline for reading a request, so a
client that sends its headers one byte every few seconds (slow-loris) holds a connection forever
(issue #19: 800 such connections stayed open). ``DeadlineH11Protocol`` adds two deadlines:

- headers: from the connection's start (or, on a kept-alive connection, the first byte of the
  next request) until the request's headers are complete -- ``header_timeout_s``; then a 408 is
  written and the connection is closed (an idle kept-alive connection is uvicorn's keep-alive
  timeout's business: closed after ``timeout_keep_alive``, 5 s);
- body: from the headers until the body is complete -- ``body_timeout_s`` (+1 s, so that the
  endpoint's own 408 with a message comes first); then the connection is closed.

And one write deadline (issue #24, defect 3): a client that does not read its answer held it in the
transport's buffer forever (50 clients asking for 14 MB answers: +700 MB). From the moment the
server's buffer for a connection first exceeds asyncio's high-water mark (64 KiB: the client is not
keeping up) until the client has taken the whole answer, at most ``write_timeout_s`` may pass; then
the connection is aborted (``transport.abort()``: the buffer is dropped at once, not flushed) and one
``"slow reader dropped"`` line is logged.

All three come from the app's ``ServeConfig`` (``app.state.config``), so tests and the CLI share them.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["BackgroundServer", "DeadlineH11Protocol", "bind", "deadline_protocol", "uvicorn_config"]

log = logging.getLogger("nfkd.serve")

BODY_GRACE_S = 1.0  # the endpoint answers 408 itself at body_timeout_s; the connection goes this much later


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body read deadlines (class attributes, see ``deadline_protocol``)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    write_timeout_s: float = 30.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._idle = False  # True between an answer and the next request's first byte
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._idle = False
        super().data_received(data)
        self._arm()

    def on_response_complete(self) -> None:
        self._idle = True
        if not self.flow.write_paused:  # the client has taken all but < 64 KiB of the answer
            self._cancel_write()
        super().on_response_complete()  # may parse an already received (pipelined) request at once
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._cancel_write()
        super().connection_lost(exc)

    # --- write deadline -----------------------------------------------------------------------
    def pause_writing(self) -> None:
        """The transport holds more than its high-water mark for this client: the deadline starts."""
        super().pause_writing()
        if self._write_deadline is None and not self.transport.is_closing():
            self._write_deadline = self.loop.call_later(self.write_timeout_s, self._write_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        cycle = getattr(self, "cycle", None)
        if cycle is None or cycle.response_complete:  # the whole answer has been taken (to < 16 KiB)
            self._cancel_write()

    def _cancel_write(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _write_expired(self) -> None:
        self._write_deadline = None
        if self.transport.is_closing() and self.transport.get_write_buffer_size() == 0:
            return
        log.info("slow reader dropped", extra={
            "client": "%s:%d" % self.client if self.client else None,
            "reason": f"the answer was not taken within {self.write_timeout_s:g} seconds; connection closed",
            "buffered_bytes": self.transport.get_write_buffer_size()})
        self.transport.abort()  # drops the buffered answer now (close() would wait to flush it)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _arm(self) -> None:
        """Keep one deadline for the phase the client is in: sending headers, sending a body, or neither."""
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE and not self._idle else "body" if state is h11.SEND_BODY else None
        if phase == self._phase:
            return
        self._cancel()
        self._phase = phase
        if phase is not None and not self.transport.is_closing():
            delay = self.header_timeout_s if phase == "headers" else self.body_timeout_s + BODY_GRACE_S
            self._deadline = self.loop.call_later(delay, self._expired, phase)

    def _expired(self, phase: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        limit = self.header_timeout_s if phase == "headers" else self.body_timeout_s
        message = f"request {phase} not complete within {limit:g} seconds; connection closed"
        log.info("slow client dropped", extra={"client": "%s:%d" % self.client if self.client else None,
                                               "reason": message})
        cycle = getattr(self, "cycle", None)
        if cycle is None or getattr(cycle, "response_complete", True):  # no answer in progress: say why
            body = json.dumps({"error": message}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def deadline_protocol(header_timeout_s: float, body_timeout_s: float,
                      write_timeout_s: float = DeadlineH11Protocol.write_timeout_s) -> type[DeadlineH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these deadlines."""
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,),
                {"header_timeout_s": float(header_timeout_s), "body_timeout_s": float(body_timeout_s),
                 "write_timeout_s": float(write_timeout_s)})


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


def uvicorn_config(app, graceful_timeout_s: float | None = 30.0, **kwargs: Any) -> uvicorn.Config:
    """uvicorn settings for an app made by ``create_app``: read deadlines from its ``ServeConfig``."""
    cfg = getattr(getattr(app, "state", None), "config", None)
    header_s = getattr(cfg, "header_timeout_s", DeadlineH11Protocol.header_timeout_s)
    body_s = getattr(cfg, "body_timeout_s", DeadlineH11Protocol.body_timeout_s)
    write_s = getattr(cfg, "write_timeout_s", DeadlineH11Protocol.write_timeout_s)
    return uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", server_header=False,
                          timeout_graceful_shutdown=graceful_timeout_s, backlog=4096,
                          http=deadline_protocol(header_s, body_s, write_s), **kwargs)


class BackgroundServer:
    """uvicorn in a daemon thread on loopback, for tests and benchmarks::

        with BackgroundServer(app) as srv:
            httpx.get(srv.url + "/healthz")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0,
                 wait_ready: bool = True, **kwargs) -> None:
        self.app = app
        self.wait_ready = wait_ready  # start() returns once the model is warmed up (GET /ready would say 200)
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
        service = getattr(getattr(self.app, "state", None), "service", None) if self.wait_ready else None
        while not self.server.started or (service is not None and not service.ready):
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"server failed to start: {self.error!r}")
            if service is not None and service.warmup_error is not None:
                raise RuntimeError(f"the model's warm-up failed: {service.warmup_error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start (and warm up) within {self.start_timeout_s} s")
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
