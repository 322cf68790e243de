"""Density throughput: ``log_prob`` of a batch, teacher and student, on every backend present."""
from __future__ import annotations

DIRECTION = "density"


def test_density(case, run_case):
    run_case(case)
