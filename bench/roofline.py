"""The machine's own limits and a model's arithmetic, so every throughput says how close to the peak it is.

- ``matmul_peak_gflops(threads)``: float32 GFLOP/s of a large square matmul (the machine's practical
  peak for the dense arithmetic flows are made of), 1 thread and all threads;
- ``copy_bandwidth_gbs(threads)``: GB/s of a large tensor copy (read + write);
- ``model_flops(flow, batch, direction)``: the exact multiply-add count of the folded model's dense
  layers (2 FLOPs each), from the module shapes: matmuls and convolutions (elementwise work is not
  counted: it is O(width), not O(width^2)). MAF sampling counts its D sequential MADE passes.
- ``useful_flops(flow, batch, direction)``: the same without the multiply-adds by a MADE mask's
  structural zeros (about half of a MADE's dense count): the arithmetic the flow *needs*. An engine
  that skips the masked blocks does less than ``model_flops``; judging it by the dense count would
  overstate its GFLOP/s, so the benchmarks report achieved GFLOP/s from this count for every backend.

Achieved GFLOP/s = FLOPs / seconds; % of peak = achieved / matmul_peak.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn

__all__ = ["copy_bandwidth_gbs", "matmul_peak_gflops", "model_flops", "useful_flops"]


def _best_seconds(fn: Callable[[], object], repeats: int, min_time: float = 0.2,
                  clock: Callable[[], float] = time.perf_counter) -> float:
    fn()
    best, spent = math.inf, 0.0
    for _ in range(repeats):
        t = clock()
        fn()
        dt = clock() - t
        best, spent = min(best, dt), spent + dt
        if spent > min_time and _ >= 2:
            break
    return best


def _with_threads(threads: int, fn: Callable[[], float]) -> float:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def matmul_peak_gflops(threads: int, n: int = 1024, repeats: int = 20) -> float:
    """Best-of float32 GFLOP/s of an n x n x n matmul on ``threads`` threads.

    One thread computes in the calling thread: timed by its CPU time (``time.thread_time``), the clock the
    benchmarks time 1-thread calls by, so the peak and the rates compared with it are measured alike and
    other jobs on a shared machine do not lower it."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    clock = time.thread_time if threads == 1 else time.perf_counter
    sec = _with_threads(threads, lambda: _best_seconds(lambda: torch.mm(a, b, out=out), repeats, clock=clock))
    return 2 * n**3 / sec / 1e9


def copy_bandwidth_gbs(threads: int, nbytes: int = 1 << 28, repeats: int = 10) -> float:
    """Best-of GB/s of copying ``nbytes`` (counted as read + write)."""
    src = torch.empty(nbytes // 4).uniform_()
    dst = torch.empty_like(src)
    sec = _with_threads(threads, lambda: _best_seconds(lambda: dst.copy_(src), repeats))
    return 2 * nbytes / sec / 1e9


def _dense_flops_per_row(net: nn.Module, positions: int) -> int:
    total = 0
    for m in net.modules():
        if isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features
        elif isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += 2 * (m.in_channels // m.groups) * m.out_channels * kh * kw * positions
    return total


def _made_masked_out_per_row(made: nn.Module) -> int:
    """2 x the MACs of a MADE's dense layers whose weight is a structural zero of its masks."""
    from nfkd.flows.layers import made_degrees

    linears = [m for m in made.net.modules() if isinstance(m, nn.Linear)]
    deg = made_degrees(made.dim, linears[0].out_features, len(linears) - 1)
    zeros = sum(int((deg[i + 1][:, None] < deg[i][None, :]).sum()) for i in range(len(deg) - 1))
    zeros += 2 * int((deg[0][:, None] <= deg[-1][None, :]).sum())  # mu and alpha rows
    return 2 * zeros


def useful_flops(flow: nn.Module, batch: int, direction: str) -> int:
    """``model_flops`` less the multiply-adds by MADE mask zeros (Glow / Glow-1D: equal to it)."""
    from nfkd.flows.layers import MADE
    from nfkd.fold import fold, is_folded

    folded = flow if is_folded(flow) else fold(flow, torch.float64)
    skipped = 0
    for m in folded.modules():
        if isinstance(m, MADE):
            skipped += (m.dim if direction == "sample" else 1) * _made_masked_out_per_row(m)
    return model_flops(folded, batch, direction) - skipped * batch


def model_flops(flow: nn.Module, batch: int, direction: str) -> int:
    """Dense FLOPs of one ``log_prob`` (direction 'density') or ``sample`` call on ``batch`` rows."""
    from nfkd.flows.layers import MADE, FlowStep, FoldedAffine
    from nfkd.fold import fold, is_folded

    if direction not in ("density", "sample"):
        raise ValueError("direction must be 'density' or 'sample'")
    folded = flow if is_folded(flow) else fold(flow, torch.float64)
    per_row = 0
    if folded.arch == "glow":
        c, h, w = folded.event_shape
        for lvl, steps in enumerate(folded.levels):
            c, h, w = c * 4, h // 2, w // 2
            for step in steps:
                per_row += 2 * c * c * h * w + _dense_flops_per_row(step.coupling.net, h * w)
            if lvl < len(folded.levels) - 1:
                per_row += _dense_flops_per_row(folded.priors[lvl], h * w)
                c = c // 2
    else:
        for m in folded.modules():
            if isinstance(m, FlowStep):
                assert isinstance(m.mix, FoldedAffine)
                d = m.mix.weight.shape[0]
                per_row += 2 * d * d + _dense_flops_per_row(m.coupling.net, 1)
            elif isinstance(m, MADE):
                passes = m.dim if direction == "sample" else 1
                per_row += passes * _dense_flops_per_row(m.net, 1)
    return per_row * batch
