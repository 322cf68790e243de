"""Field-by-field checks of a ``train_state.pt`` before ``--resume`` uses any of it.

The state file is written by nfkd but read back from disk, where it can be damaged or edited:
``step: "abc"`` or a bad generator state gave tracebacks, ``step: -100`` ran 106 steps and
``lr_scale: NaN`` trained with a NaN learning rate and exited 0. Each field is checked here for
type, range and finiteness, and a failure is one CheckpointError naming the field.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import CheckpointError

__all__ = ["check_state_fields"]

GENERATOR_FIELDS = ("batch_gen", "noise_gen", "torch_rng")
COUNT_FIELDS = ("step", "evals_without_improvement", "skipped", "skd_excluded")


class _Bad(Exception):
    """A field's problem, turned into one CheckpointError that names the field."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v: Any) -> None:
    if not _is_int(v) or v < 0:
        raise _Bad(f"is {v!r}; expected an integer >= 0")


def _lr_scale(v: Any) -> None:
    if not _is_number(v) or not math.isfinite(v) or not 0 < v <= 1:
        raise _Bad(f"is {v!r}; expected a finite number in (0, 1] (it only ever halves from 1)")


def _best_val(v: Any) -> None:
    if not _is_number(v) or math.isnan(v) or v == -math.inf:
        raise _Bad(f"is {v!r}; expected a finite number, or inf before the first evaluation")


def _generator_state(v: Any) -> None:
    """A CPU generator's state: a uint8 byte tensor of the size torch writes, that torch accepts."""
    want = torch.Generator().get_state()
    if not isinstance(v, torch.Tensor) or v.dtype != torch.uint8 or tuple(v.shape) != tuple(want.shape):
        what = f"{v.dtype} tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        raise _Bad(f"is a {what}; expected a uint8 tensor of shape {tuple(want.shape)} (a torch generator state)")
    try:
        torch.Generator().set_state(v.cpu())
    except (RuntimeError, ValueError) as exc:
        raise _Bad(f"is not a valid generator state ({str(exc).splitlines()[0][:120]})") from None


def _json_text(v: Any, kind: type) -> Any:
    if not isinstance(v, str):
        raise _Bad(f"is a {type(v).__name__}; expected JSON text")
    try:
        value = json.loads(v)
    except (ValueError, RecursionError) as exc:
        raise _Bad(f"is not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(value, kind):
        raise _Bad(f"is a JSON {type(value).__name__}; expected a {kind.__name__}")
    return value


def _history(v: Any) -> None:
    """A JSON list of evaluation rows, each with an integer step and a numeric val_nll (the plot reads them)."""
    for i, row in enumerate(_json_text(v, list)):
        if not isinstance(row, dict) or not _is_int(row.get("step")) or not _is_number(row.get("val_nll")):
            raise _Bad(f"row {i} is {str(row)[:80]}; expected an object with an integer 'step' and a number 'val_nll'")


def _running(v: Any) -> None:
    for key, value in _json_text(v, dict).items():
        if not _is_number(value) or not math.isfinite(value):
            raise _Bad(f"entry {str(key)[:40]!r} is {value!r}; expected a finite number")


def _best_state(v: Any, model: dict[str, torch.Tensor]) -> None:
    """None (no evaluation yet) or a state dict with exactly the model's keys, shapes and finite values."""
    if v is None:
        return
    if not isinstance(v, dict):
        raise _Bad(f"is a {type(v).__name__}; expected the model's state dict or None")
    if set(v) != set(model):
        diff = sorted(set(v) ^ set(model))[:3]
        raise _Bad(f"does not have this model's tensors (differs in {diff})")
    for key, want in model.items():
        got = v[key]
        if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.dtype != want.dtype:
            raise _Bad(f"{key} is not a {want.dtype} tensor of shape {tuple(want.shape)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise _Bad(f"{key} holds NaN or Inf")


def _checks(model: dict[str, torch.Tensor]) -> dict[str, Callable[[Any], None]]:
    checks: dict[str, Callable[[Any], None]] = {name: _count for name in COUNT_FIELDS}
    checks.update({name: _generator_state for name in GENERATOR_FIELDS})
    checks.update(lr_scale=_lr_scale, best_val=_best_val, history=_history,
                  best_state=lambda v: _best_state(v, model))
    return checks


def check_state_fields(path: Path, st: dict[str, Any], model: dict[str, torch.Tensor]) -> None:
    """Refuse a state whose fields are not what the trainer wrote; ``model``: this run's state dict."""
    advice = f"delete {path} (or choose another --out) to start afresh"
    for name, check in _checks(model).items():
        try:
            check(st[name])
        except _Bad as why:
            raise CheckpointError(f"cannot resume from {path}: its field '{name}' {why}; {advice}") from None
    if not _is_int(st["best_step"]) or not -1 <= st["best_step"] <= st["step"]:
        raise CheckpointError(f"cannot resume from {path}: its field 'best_step' is {st['best_step']!r}; expected an "
                              f"integer in -1..step ({st['step']}); {advice}")
    if "running" in st:
        try:
            _running(st["running"])
        except _Bad as why:
            raise CheckpointError(f"cannot resume from {path}: its field 'running' {why}; {advice}") from None
    for name in ("model", "opt"):
        if not isinstance(st[name], dict):
            raise CheckpointError(f"cannot resume from {path}: its field '{name}' is a {type(st[name]).__name__}; "
                                  f"expected a state dict; {advice}")
