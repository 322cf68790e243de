"""One bound on the body bytes the server holds at once, across all clients (issue #24, defect 3).

Without it, 30 concurrent legal 17.7 MB uploads took the server to 1.4 GB, and 50 clients that ask
for the largest ``/sample`` answer and never read it held 14 MB each, forever. ``MemoryBudget``
(a pure ASGI middleware) counts, per request, the larger of its request body and its answer:

- a request body is reserved from its ``Content-Length`` (``max_body_bytes`` when it has none)
  *before* anything is read; a request that does not fit is answered 503 with ``Retry-After`` at
  once (uvicorn then discards its body as it arrives, holding none of it);
- a route may reserve more before doing the work (``/sample`` reserves its answer's size from ``n``)
  and gets ``BudgetExceeded`` (503) instead;
- an answer larger than ``RESPONSE_CHUNK`` is sent in chunks of that size, each one only once the
  client has taken the previous ones (uvicorn's write flow control), so a connection's socket
  buffer holds at most about one chunk plus asyncio's 64 KiB high-water mark; the reservation is
  released only when the last chunk is handed over, so an unread answer keeps counting until the
  client reads it or the write deadline (``runner``) drops the connection.

Admission mirrors ``Admission``: small reservations (bodies under ``SMALL_BYTES``: the usual
``/log_prob`` request) may use the whole budget, large ones must leave ``headroom`` free, and a
large one is always admitted when no other large one is held (one request of any legal size runs).
The event loop is the only thread touching the counters (no locks).
"""
from __future__ import annotations

import json
import logging
from typing import Any

__all__ = ["RESPONSE_CHUNK", "RETRY_AFTER_S", "RETRY_BYTES_PER_S", "SMALL_BYTES", "retry_after_s", "BudgetExceeded", "ByteBudget", "MemoryBudget",
           "reserve"]

log = logging.getLogger("nfkd.serve")

SMALL_BYTES = 64 * 1024  # reservations up to this size may use the headroom
RESPONSE_CHUNK = 64 * 1024  # answers are handed to the transport this much at a time
RETRY_AFTER_S = 1  # what a refused client is told to wait, at least
RETRY_BYTES_PER_S = 2 * 1024 * 1024  # ... and one more second per this many bytes it asked to hold


def retry_after_s(n_bytes: int) -> int:
    """Seconds a client refused for ``n_bytes`` is told to wait: 1, plus 1 per 2 MiB.

    A refused upload is answered before its body is read, but on a kept-alive connection the
    server still has to read and discard that body; 30 clients re-sending 10 MB every second kept
    the event loop busy enough to push small requests' p99 past 1 s (docs/serving.md, round 3).
    Scaling the wait with the size makes large retries back off and leaves small ones at 1 s.
    """
    return max(RETRY_AFTER_S, RETRY_AFTER_S + int(n_bytes) // RETRY_BYTES_PER_S)


class BudgetExceeded(Exception):
    """The bytes held for other clients leave no room for this request: answer 503 with Retry-After."""


class ByteBudget:
    """Bytes of request bodies and answers held at once; small reservations may use the headroom."""

    def __init__(self, max_bytes: int, headroom: int | None = None) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_inflight_bytes must be >= 1, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.headroom = self.max_bytes // 8 if headroom is None else max(0, min(int(headroom), self.max_bytes // 2))
        self.held = 0
        self.large_held = 0  # reservations above SMALL_BYTES
        self.max_seen = 0
        self.rejected = 0

    def try_reserve(self, n: int, force: bool = False, replacing: int = 0) -> bool:
        """Reserve ``n`` bytes (always when ``force``: bytes that exist already); False when refused.
        ``replacing``: bytes of the same request that ``n`` replaces (released by the caller after)."""
        large = n > SMALL_BYTES
        limit = self.max_bytes - (self.headroom if large else 0)
        others_large = self.large_held - (replacing if replacing > SMALL_BYTES else 0)
        if not force and self.held - replacing + n > limit and not (large and others_large == 0):
            self.rejected += 1
            return False
        self.held += n
        self.large_held += n if large else 0
        self.max_seen = max(self.max_seen, self.held)
        return True

    def release(self, n: int) -> None:
        self.held -= n
        if n > SMALL_BYTES:
            self.large_held -= n

    def to_dict(self) -> dict[str, int]:
        return {"held_bytes": self.held, "max_held_bytes": self.max_seen, "max_inflight_bytes": self.max_bytes,
                "rejected": self.rejected}


class _Ticket:
    """What one request holds from the budget; grows to the largest of its body, its answer, its estimates."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.held = 0

    def grow_to(self, n: int, force: bool = False) -> bool:
        if n <= self.held:
            return True
        # Reserve the new total and give back the old one, so that size classes stay consistent.
        if not self.budget.try_reserve(n, force, replacing=self.held):
            return False
        self.budget.release(self.held)
        self.held = n
        return True

    def close(self) -> None:
        self.budget.release(self.held)
        self.held = 0


def _message(budget: ByteBudget, n: int, what: str) -> str:
    return (f"the server is holding {budget.held} bytes of other requests and answers (limit "
            f"{budget.max_bytes}); no room for {what} of {n} bytes; retry after {retry_after_s(n)} s")


def reserve(state: dict[str, Any], n: int, what: str) -> None:
    """Grow the current request's reservation to ``n`` bytes (a route's estimate of its answer), or
    raise ``BudgetExceeded``. A no-op outside ``MemoryBudget`` (tests that call routes directly)."""
    ticket = state.get("memory_ticket")
    if ticket is not None and not ticket.grow_to(n):
        raise BudgetExceeded(_message(ticket.budget, n, what))


class MemoryBudget:
    """ASGI middleware: reserve each request's body before it is read, stream large answers in chunks."""

    def __init__(self, app, budget: ByteBudget, max_body_bytes: int, stats: Any = None) -> None:
        self.app = app
        self.budget = budget
        self.max_body_bytes = int(max_body_bytes)
        self.stats = stats

    def _declared(self, scope: dict[str, Any]) -> int:
        if scope.get("method") in ("GET", "HEAD"):
            return 0
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    return 0  # the route answers 400
                return n if 0 <= n <= self.max_body_bytes else 0  # above the limit: 413 before reading
        return self.max_body_bytes  # chunked: as much as the limit allows

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ticket = _Ticket(self.budget)
        try:
            n = self._declared(scope)
            if not ticket.grow_to(n):
                await self._refuse(scope, send, _message(self.budget, n, "a request body"), retry_after_s(n))
                return
            scope.setdefault("state", {})["memory_ticket"] = ticket
            await self.app(scope, receive, self._sender(ticket, send))
        finally:
            ticket.close()

    async def _refuse(self, scope, send, message: str, retry_s: int) -> None:
        scope.setdefault("state", {})["error"] = message
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(retry_s).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _sender(self, ticket: _Ticket, send):
        async def chunked_send(message) -> None:
            if message["type"] != "http.response.body" or len(message.get("body", b"")) <= RESPONSE_CHUNK:
                await send(message)
                return
            body, more = message["body"], message.get("more_body", False)
            ticket.grow_to(len(body), force=True)  # it exists already: count it until it is handed over
            view = memoryview(body)
            for i in range(0, len(body), RESPONSE_CHUNK):  # each send waits until the client takes the last
                last = i + RESPONSE_CHUNK >= len(body)
                await send({"type": "http.response.body", "body": bytes(view[i : i + RESPONSE_CHUNK]),
                            "more_body": more or not last})
        return chunked_send
