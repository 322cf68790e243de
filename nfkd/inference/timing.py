"""Interleaved throughput: one measurer for the demo and quick checks (bench/ uses pytest-benchmark).

Candidates are timed round by round (A, B, C, A, B, C, ...) so that machine drift hits them alike;
the median per candidate is reported with rows per second.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

__all__ = ["interleaved_medians"]


def _timeit(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def interleaved_medians(fns: dict[str, Callable[[], Any]], rows: int, rounds: int = 5,
                        repeats: int = 2) -> dict[str, dict[str, float]]:
    """{name: {median_s, std_s, rows_per_s}} for calls that each process ``rows`` rows."""
    for fn in fns.values():
        fn()  # warm-up (first-call compilation, allocations) excluded
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k] += _timeit(fn, repeats)
    return {k: {"median_s": statistics.median(v), "std_s": statistics.pstdev(v), "rows_per_s": rows / statistics.median(v)}
            for k, v in times.items()}
