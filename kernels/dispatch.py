"""Inference dispatch: Triton kernels on CUDA, the PyTorch folded path everywhere else.

``fast_log_prob(model, x)`` / ``fast_sample(model, noise, temperature)`` accept a trained flow
(``nfkd.flows.Flow``) or its folded form (``nfkd.fold.fold(...)``).  Both paths run the same
folded constants, so they agree to float32 rounding (~1e-6 relative on log p).  Training never
goes through here: ``nfkd.flows`` is untouched and gradients are not supported (``no_grad``).

Selection (first match wins):

1. ``NFKD_KERNELS=0`` in the environment: PyTorch, always.
2. ``use_kernels(False)``: PyTorch.  ``use_kernels(True)`` (or ``NFKD_KERNELS=1``): kernels are
   *required* - a clear error if triton is missing or the kernels cannot run on the input's
   device (compiled kernels need CUDA tensors; under ``TRITON_INTERPRET=1`` they run on CPU
   tensors, which is how the tests exercise them).  Flows the kernels do not cover still fall
   back to PyTorch: a MAF wider than ``kernels.tabular.MAX_D``, or any flow whose kernels have no
   launch configuration in ``kernels/configs.py`` for the GPU's architecture (the list that
   ``python -m kernels.aot`` compiles; an unchecked configuration is never launched).
3. Automatic (``use_kernels(None)``, the default): kernels when the input is on CUDA, triton
   imports and the model is float32 (kernels compute in float32; a float64 model keeps its
   float64 PyTorch results), else PyTorch.

``use_kernels(flag)`` works as a plain call (sets the switch until changed) and as a context
manager (restores the previous setting on exit).

Caching: the folded form of a ``Flow`` (and the packed kernel weights of a folded module) are
cached per model object in a ``WeakKeyDictionary``, keyed by a version key over every parameter
and buffer: ``(data_ptr, Tensor._version)``.  ``_version`` is bumped by every in-place update
(optimizer steps, ``load_state_dict``'s ``copy_``, batch-norm running stats) and ``data_ptr``
changes when a tensor is replaced or moved, so a stale fold is never used.  (Out-of-band writes
that bypass autograd's version counter, e.g. via ``.data`` on another view or raw pointers, are
not seen - call ``clear_cache()`` after such surgery.)  Folding a ``Flow`` uses its eval-mode
(running-statistics) form and restores the flow's train/eval mode afterwards.
"""
from __future__ import annotations

import os
import weakref
from typing import Sequence

import torch
from torch import Tensor

from ._env import triton_available, version_key

__all__ = ["use_kernels", "kernels_enabled", "fast_log_prob", "fast_sample", "folded_for", "clear_cache"]

_FORCED: bool | None = None
_FOLD_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


class use_kernels:  # noqa: N801 - used like a function
    """Switch (``use_kernels(False)``) or context manager (``with use_kernels(True): ...``)."""

    def __init__(self, flag: bool | None) -> None:
        global _FORCED
        if flag is not None and not isinstance(flag, bool):
            raise TypeError("use_kernels expects True, False or None")
        self._prev = _FORCED
        _FORCED = flag

    def __enter__(self) -> "use_kernels":
        return self

    def __exit__(self, *exc) -> None:
        global _FORCED
        _FORCED = self._prev


def _setting() -> bool | None:
    env = os.environ.get("NFKD_KERNELS", "").strip().lower()
    if env in ("0", "false", "off", "no"):
        return False
    if _FORCED is not None:
        return _FORCED
    if env in ("1", "true", "on", "yes"):
        return True
    return None


def kernels_enabled(device: torch.device | str) -> bool:
    """Whether fast_* would run Triton kernels for inputs on ``device`` (raises if required but impossible)."""
    device = torch.device(device)
    flag = _setting()
    if flag is False:
        return False
    if not triton_available():
        if flag:
            raise RuntimeError("use_kernels(True) / NFKD_KERNELS=1, but triton cannot be imported")
        return False
    if flag is None:
        return device.type == "cuda" and torch.cuda.is_available() and not _interpreted()
    from . import _env
    from .tabular import _glow1d_log_prob_kernel  # defines the kernels (after the _env switch)

    if not _env.can_launch(_glow1d_log_prob_kernel, device):
        mode = "interpreted (TRITON_INTERPRET=1: CPU tensors)" if _interpreted() else "compiled (CUDA tensors)"
        raise RuntimeError(f"kernels required, but they are {mode} and the input is on {device}")
    return True


def _interpreted() -> bool:
    from . import _env

    return _env.interpreting()


def clear_cache() -> None:
    _FOLD_CACHE.clear()


def _model_dtype(flow: torch.nn.Module) -> torch.dtype:
    for p in flow.parameters():
        return p.dtype
    return torch.float32


def folded_for(flow, dtype: torch.dtype | None = None):
    """The cached ``fold(flow, dtype)`` (re-folded when any parameter/buffer changed)."""
    from nfkd.fold import fold

    dtype = dtype or _model_dtype(flow)
    key = version_key(flow)
    per = _FOLD_CACHE.get(flow)
    if per is None or per["key"] != key:
        per = {"key": key}
        _FOLD_CACHE[flow] = per
    if dtype not in per:
        was_training = flow.training
        try:
            per[dtype] = fold(flow, dtype)
        finally:
            flow.train(was_training)
    return per[dtype]


def _is_flow(model) -> bool:
    """A trained (unfolded) flow; a folded one is used as it is."""
    from nfkd.flows.base import Flow
    from nfkd.fold import is_folded

    return isinstance(model, Flow) and not is_folded(model)


def _kernel_supported(folded, op: str) -> bool:
    if folded.dtype != torch.float32:
        return False
    if folded.arch == "glow":
        from .glow_step import supports

        return supports(folded)
    from .tabular import supports

    return supports(folded, (op,))


def _resolve(model, device: torch.device, op: str):
    """(folded, use_kernel) for a Flow or a folded module, an input device and "log_prob" / "sample"."""
    want = kernels_enabled(device)
    if want and _setting() is None:  # automatic: a float64 model keeps float64 results (PyTorch)
        dt = model.dtype
        want = dt == torch.float32
    if _is_flow(model):
        folded = folded_for(model, torch.float32 if want else None)
    else:
        folded = model
    return folded, want and _kernel_supported(folded, op)


def fast_log_prob(model, x: Tensor, *, validate: bool = True) -> Tensor:
    """log p(x) [B] in nats, through the kernels or the PyTorch folded path (see module doc)."""
    if _is_flow(model) and validate:
        from nfkd.flows.base import check_finite_input

        check_finite_input(x, model.event_shape, float32=model.dtype == torch.float32)  # x is cast to it below
    folded, use_k = _resolve(model, x.device, "log_prob")
    with torch.no_grad():
        if use_k:
            if folded.arch == "glow":
                from .glow_step import glow_log_prob_triton

                return glow_log_prob_triton(folded, x)
            from .tabular import tabular_log_prob

            return tabular_log_prob(folded, x)
        return folded.log_prob(x.to(folded.dtype))


def fast_sample(model, noise: Tensor | Sequence[Tensor] | None = None, temperature: float | Tensor = 1.0, *,
                n: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Samples from per-level unit noise (``flow.noise_shapes``) at a temperature.

    With ``noise=None`` (Flow only) draws ``n`` samples' unit noise from ``generator``.
    """
    if noise is None:
        if not _is_flow(model) or n is None:
            raise ValueError("pass noise, or a Flow and n")
        noise = model.sample_noise(n, temperature=1.0, generator=generator)
    elif _is_flow(model):
        noise = model.check_noise(noise)
    noise = [noise] if isinstance(noise, Tensor) else list(noise)
    folded, use_k = _resolve(model, noise[0].device, "sample")
    with torch.no_grad():
        if use_k:
            if folded.arch == "glow":
                from .glow_step import glow_sample_triton

                return glow_sample_triton(folded, noise, temperature)
            from .tabular import tabular_sample

            return tabular_sample(folded, noise[0], temperature)
        dt = folded.dtype
        return folded.sample(noise[0].shape[0], temperature=temperature, noise=[z.to(dt) for z in noise])
