"""``ServeConfig``: every limit of the service in one place (what ``GET /metadata`` reports).

Each limit has one status code a client gets when it is exceeded (docs/serving.md, "Limits").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

__all__ = ["BODY_SLACK", "BYTES_PER_VALUE", "DEFAULT_SAMPLE_CHUNK", "INFLIGHT_BODIES", "MIN_INFLIGHT_BYTES", "MODEL_ANY_BATCH",
           "ServeConfig"]

if TYPE_CHECKING:  # pragma: no cover
    from nfkd.inference import Runner

# JSON text costs up to ~26 bytes per float32 value ("-1.2345678901234567e-30, "), npy 8 (float64).
BYTES_PER_VALUE = 32
BODY_SLACK = 64 * 1024
DEFAULT_SAMPLE_CHUNK = 1024
INFLIGHT_BODIES = 4  # default max_inflight_bytes: four largest request bodies,
MIN_INFLIGHT_BYTES = 64 << 20  # and at least 64 MiB (thousands of small requests at once)
MODEL_ANY_BATCH = 1 << 30  # a Runner without max_batch takes any batch; the service's own limits bound requests


@dataclass
class ServeConfig:
    max_batch: int = 4096  # rows merged into one model call
    max_wait_ms: float = 2.0  # how long the first queued request may wait for others
    max_request_rows: int = 65536
    max_sample_n: int | None = None  # default: min(max_request_rows, model max batch)
    max_body_bytes: int | None = None  # default: from max_request_rows and the event size
    max_queue_rows: int | None = None  # default: 4 * max(max_request_rows, max_batch); /log_prob and /sample rows
    sample_chunk_rows: int | None = None  # rows per sampling model call; default min(max_batch, 1024)
    batching: bool = True
    request_timeout_s: float = 60.0  # waiting for the model (then 504)
    header_timeout_s: float = 10.0  # connection open / previous answer -> request headers complete (else dropped)
    body_timeout_s: float = 30.0  # request headers -> body complete (else 408)
    write_timeout_s: float = 30.0  # the client falls behind -> it has taken the whole answer (else dropped)
    max_inflight_bytes: int | None = None  # request bodies + answers held at once; default max(4 * max_body_bytes, 64 MiB)

    def resolved(self, runner: "Runner") -> "ServeConfig":
        """Defaults filled in and bounded by the model: rows per call at most the Runner's ``max_batch``."""
        c = ServeConfig(**asdict(self))
        for name in ("max_batch", "max_request_rows"):
            if getattr(c, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(c, name)}")
        for name in ("header_timeout_s", "body_timeout_s", "request_timeout_s", "write_timeout_s"):
            if not getattr(c, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(c, name)}")
        model_max = int(runner.max_batch or MODEL_ANY_BATCH)
        c.max_batch = min(int(c.max_batch), model_max)
        if c.max_sample_n is None:
            c.max_sample_n = min(int(c.max_request_rows), model_max)
        c.max_sample_n = min(int(c.max_sample_n), model_max)
        if c.max_body_bytes is None:
            c.max_body_bytes = int(c.max_request_rows) * int(runner.dim) * BYTES_PER_VALUE + BODY_SLACK
        if c.max_inflight_bytes is None:
            c.max_inflight_bytes = max(INFLIGHT_BODIES * int(c.max_body_bytes), MIN_INFLIGHT_BYTES)
        if c.max_inflight_bytes < 1:
            raise ValueError(f"max_inflight_bytes must be >= 1, got {c.max_inflight_bytes}")
        if c.max_queue_rows is None:
            c.max_queue_rows = 4 * max(int(c.max_request_rows), int(c.max_batch))
        if c.sample_chunk_rows is None:
            c.sample_chunk_rows = DEFAULT_SAMPLE_CHUNK
        c.sample_chunk_rows = max(1, min(int(c.sample_chunk_rows), c.max_batch))
        return c
