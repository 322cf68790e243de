"""Triton inference kernels for folded flows (``nfkd.fold.fold`` output) and their dispatch.

Importing this package does not import triton; the kernel modules (``kernels.tabular``,
``kernels.glow_step``) are loaded on first use by ``kernels.dispatch``.
"""
from .dispatch import clear_cache, fast_log_prob, fast_sample, folded_for, kernels_enabled, use_kernels

__all__ = ["use_kernels", "kernels_enabled", "fast_log_prob", "fast_sample", "folded_for", "clear_cache"]
