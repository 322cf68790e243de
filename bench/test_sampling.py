"""Sampling throughput: ``sample(n)`` (noise drawn inside the timed call), teacher and student, on every backend present."""
from __future__ import annotations

DIRECTION = "sample"


def test_sampling(case, run_case):
    run_case(case)
