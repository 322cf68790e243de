"""Admission control: one budget of rows for ``/log_prob`` and ``/sample`` alike.

A request's rows are counted from admission until its model work is done (queued or running).
A request that would push the count above ``max_queue_rows`` is refused with 503 unless the
service is idle (so one request larger than the budget still runs). Large requests (more
than ``headroom`` rows, by default one merged batch) must leave ``headroom`` rows of the budget
free, so a few huge ``/sample`` or ``/log_prob`` requests cannot lock small ones out; that holds
for a request larger than the whole budget too (small ones still get the headroom beside it). Counting both
endpoints in one budget is what keeps ``/sample`` from holding the model thread for minutes
while ``/log_prob`` clients time out (issue #19, defect 3).
"""
from __future__ import annotations

__all__ = ["Admission", "Closed", "Overloaded"]


class Overloaded(Exception):
    """More rows outstanding than ``max_queue_rows``: answer 503, the client retries later."""


class Closed(Exception):
    """The service is shutting down: answer 503."""


class Admission:
    """Counts outstanding rows; only ever touched from the event-loop thread (no locks)."""

    def __init__(self, max_rows: int, headroom: int = 0) -> None:
        if max_rows < 1:
            raise ValueError(f"max_queue_rows must be >= 1, got {max_rows}")
        self.max_rows = int(max_rows)
        self.headroom = max(0, min(int(headroom), self.max_rows // 2))
        self.rows = 0
        self.large = 0  # of ``rows``, those of large requests (more than ``headroom`` rows)
        self.max_seen = 0
        self.rejected = 0
        self.closing = False

    def admit(self, rows: int) -> None:
        """Reserve ``rows`` or raise ``Overloaded`` / ``Closed``; pair with ``release``."""
        if self.closing:
            raise Closed("the server is shutting down")
        large = rows > self.headroom
        if large:
            limit, used = self.max_rows - self.headroom, self.rows
        else:  # large requests count for at most their share (an oversized one admitted alone overflows it)
            limit, used = self.max_rows, self.rows - self.large + min(self.large, self.max_rows - self.headroom)
        if self.rows > 0 and used + rows > limit:
            self.rejected += 1
            raise Overloaded(f"the server is overloaded ({used} rows queued or running, limit {limit} for a "
                             f"request of {rows} rows); retry later")
        self.rows += rows
        self.large += rows if large else 0
        self.max_seen = max(self.max_seen, self.rows)

    def release(self, rows: int, request_rows: int | None = None) -> None:
        """Give back ``rows`` of a request of ``request_rows`` rows (default: all of it, ``rows``)."""
        self.rows -= rows
        if (request_rows if request_rows is not None else rows) > self.headroom:
            self.large -= rows
