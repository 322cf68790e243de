"""Which model on which backend to deploy for a latency budget (issue #28).

``measure_tradeoff`` measures every (model, backend) pair available here: test log-likelihood once
per model (float64), each backend's agreement with it, and log_prob / sample latency at small and
large batches, interleaved. ``pick`` answers a budget; ``render_tradeoff_markdown``,
``plot_tradeoff`` and ``tradeoff_section`` report it; ``python -m nfkd tradeoff`` runs it all.
"""
from __future__ import annotations

from .choose import candidates, fmt_seconds, pareto_front, pick
from .machine import cpu_info, machine_line
from .measure import DEFAULT_BATCHES, OPS, agreement, float64_test_ll, measure_tradeoff
from .report import default_budgets, plot_caption, plot_tradeoff, render_tradeoff_markdown, tradeoff_section

__all__ = ["DEFAULT_BATCHES", "OPS", "agreement", "candidates", "cpu_info", "default_budgets", "float64_test_ll",
           "fmt_seconds", "machine_line", "measure_tradeoff", "pareto_front", "pick", "plot_caption", "plot_tradeoff",
           "render_tradeoff_markdown", "tradeoff_section"]
