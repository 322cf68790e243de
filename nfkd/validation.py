"""One set of input checks for every boundary: flows, inference backends, exports, the HTTP service, the CLI.

Each check raises one ``InputError`` that says what was wrong, what was expected and what to do,
before anything reaches torch or a runtime: never a silent NaN, never a traceback from inside.
Both numpy arrays and torch tensors are accepted; the checked value keeps its kind. A value over
a size limit raises ``LimitError`` (an ``InputError``), so the HTTP service can answer 413 for it
and 422 for the rest (``nfkd.serving.payload`` parses bodies, then calls these). Values in messages
are shown as JSON would write them (``show_value``), short: a 5000-digit integer is not echoed back.
"""
from __future__ import annotations

import json
import math
import numbers
from typing import Any, Sequence

import numpy as np
import torch

from .errors import InputError

__all__ = ["check_batch", "check_count", "check_noise", "check_temperature", "check_seed", "dims_text", "numpy_view",
           "show_value", "FLOAT32_MAX",
           "LimitError", "MAX_SEED", "MAX_TEMPERATURE"]

FLOAT32_MAX = float(np.finfo(np.float32).max)
#: The one seed range: every seeded generator nfkd uses takes it (numpy's RandomState for the data
#: splits only takes 0 .. 2**32 - 1; default_rng and torch.manual_seed take more).
MAX_SEED = 2**32 - 1
MAX_TEMPERATURE = 1e3  # float32 noise * T stays far from overflow through any trained flow's inverse


class LimitError(InputError):
    """A value above a size limit (rows per call or request, samples per request): HTTP 413 where it is rows."""


def show_value(v: Any) -> str:
    """A caller's value for an error message, short and as JSON writes it (``true``, ``null``, ``"4"``)."""
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, numbers.Integral):
        v = int(v)
        if abs(v) < 10**40:
            return str(v)
        digits = len(str(abs(v))) if abs(v).bit_length() < 14000 else int(abs(v).bit_length() * math.log10(2)) + 1
        return f"a {digits}-digit integer"
    if isinstance(v, numbers.Real):
        v = float(v)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return f"{v:.8g}"
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def dims_text(shape: Sequence[int]) -> str:
    return ", ".join(str(int(v)) for v in shape)


def _as_array(x: Any, what: str, event: tuple[int, ...]) -> np.ndarray | torch.Tensor:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x)
        except ValueError as exc:
            raise InputError(f"{what} is a ragged list ({exc}); pass an array [batch, {dims_text(event)}]") from None
    raise InputError(f"{what} must be a numpy array or torch tensor of shape (batch, {dims_text(event)}), "
                     f"got {type(x).__name__}")


def _rows_beyond_float32(x: np.ndarray | torch.Tensor, b: int) -> list[int]:
    """First rows holding a value float32 cannot represent (it would become Inf, then NaN, in the model)."""
    if x.dtype.itemsize <= 4:  # float16 / float32 / bfloat16: within range by construction
        return []
    if isinstance(x, torch.Tensor):
        over = (x.abs().reshape(b, -1) > FLOAT32_MAX).any(1)
        return over.nonzero().flatten()[:5].tolist()
    return np.flatnonzero((np.abs(x.reshape(b, -1)) > FLOAT32_MAX).any(1))[:5].tolist()


def numpy_view(x: torch.Tensor) -> np.ndarray | None:
    """A CPU tensor's own memory as a numpy array (no copy), or None where numpy cannot view it (GPU, bfloat16).

    Why: ``torch.isfinite`` is composite (x == x, |x| != inf, then and: three passes and two temporaries);
    on a 1 MB float32 batch it took ~1 ms against numpy's ~0.03 ms, a cost numpy callers never paid.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float16, torch.float32, torch.float64):
        return None
    try:
        return x.detach().numpy()
    except RuntimeError:  # e.g. a tensor with a pending negation view: let torch check it
        return None


def _nonfinite_rows(x: np.ndarray | torch.Tensor, b: int) -> list[int]:
    """First rows holding NaN or Inf; one reduction on the common (all finite) path."""
    if isinstance(x, torch.Tensor):
        if bool(torch.isfinite(x).all()):
            return []
        return (~torch.isfinite(x).flatten(1).all(1)).nonzero().flatten()[:5].tolist()
    if bool(np.isfinite(x).all()):
        return []
    return np.flatnonzero(~np.isfinite(x.reshape(b, -1)).all(1))[:5].tolist()


def check_batch(
    x: Any, event_shape: Sequence[int], what: str = "x", max_batch: int | None = None, float32: bool = False,
    limit: str | None = None,
) -> np.ndarray | torch.Tensor:
    """A floating [batch, *event_shape] array or tensor with finite values, at most max_batch rows.

    ``float32=True`` (the caller casts to float32): values beyond the float32 range are refused too,
    here, since after the cast they are Inf and the model would return NaN. ``limit`` names the row
    limit in the message (default: this model's max_batch); above it, ``LimitError``.
    """
    event = tuple(map(int, event_shape))
    x = _as_array(x, what, event)
    is_torch = isinstance(x, torch.Tensor)
    floating = x.is_floating_point() if is_torch else x.dtype.kind == "f"
    if not floating:
        fix = f"{what}.float()" if is_torch else f"{what}.astype(np.float32)"
        raise InputError(f"{what} has dtype {x.dtype}; expected a floating-point array (convert with {fix})")
    shape = tuple(x.shape)
    if 0 in shape:
        raise InputError(f"{what} is an empty batch (shape {shape}); pass at least one row "
                         f"(shape (batch, {dims_text(event)}))")
    if len(shape) == len(event) and shape == event:
        raise InputError(f"{what} has shape {shape}, one sample without a batch dimension; "
                         f"pass {what}[None] (shape (1, {dims_text(event)}))")
    if len(shape) != len(event) + 1 or shape[1:] != event:
        if len(event) == 1 and len(shape) == 2:
            raise InputError(f"{what} has {shape[1]} features per row; this model expects {event[0]}: "
                             f"expected (batch, {event[0]}), features in training order")
        raise InputError(f"{what} has shape {shape}; expected (batch, {dims_text(event)})")
    b = shape[0]
    if max_batch is not None and b > max_batch:
        limit = limit or f"this model's max_batch {max_batch}"
        raise LimitError(f"{what}: batch of {b} rows is above {limit}; split it into chunks of at most {max_batch} rows")
    values = numpy_view(x) if is_torch else x  # a CPU tensor is checked through numpy, on the same memory
    if values is None:
        values = x
    bad = _nonfinite_rows(values, b)
    if bad:
        raise InputError(f"{what} contains NaN or Inf (first bad rows: {bad}); remove or impute the values in rows {bad}")
    beyond = _rows_beyond_float32(values, b) if float32 else []
    if beyond:
        raise InputError(f"{what} has values beyond the float32 range (|v| <= {FLOAT32_MAX:.4g}) in rows {beyond}; "
                         "this backend computes in float32, where they would be Inf: rescale the features "
                         "(or score with the float64 flow: flow.double().log_prob)")
    return x


def check_noise(noise: Any, noise_shapes: Sequence[Sequence[int]], max_batch: int | None = None,
                float32: bool = False, limit: str | None = None) -> list:
    """Unit noise to decode: one [batch, *shape] array or tensor per level (a lone array: one level), each as
    ``check_batch`` wants it, the same batch on every level. Flows and Runners check given noise here."""
    if isinstance(noise, (np.ndarray, torch.Tensor)):
        noise = [noise]
    noise = list(noise) if isinstance(noise, (list, tuple)) else [noise]
    if len(noise) != len(noise_shapes):
        raise InputError(f"expected {len(noise_shapes)} noise arrays (one per level), got {len(noise)}")
    arrays = [check_batch(z, s, f"noise[{i}]", max_batch, float32=float32, limit=limit)
              for i, (z, s) in enumerate(zip(noise, noise_shapes))]
    if len({a.shape[0] for a in arrays}) != 1:
        raise InputError(f"noise arrays have different batch sizes {[a.shape[0] for a in arrays]}")
    return arrays


def check_count(n: Any, what: str = "n", max_count: int | None = None, limit: str | None = None) -> int:
    """A positive integer count; above ``max_count`` (named ``limit`` in the message), ``LimitError``."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise InputError(f"{what} must be a positive integer, got {show_value(n)}")
    n = int(n)
    if max_count is not None and n > max_count:
        limit = limit or f"this model's max_batch {max_count}"
        raise LimitError(f"{what} = {show_value(n)} is above {limit}; draw at most {max_count} at a time")
    return n


def check_temperature(t: Any, max_temperature: float = MAX_TEMPERATURE) -> float:
    """A temperature in [0, max_temperature], checked on the float32 value a model receives."""
    if isinstance(t, torch.Tensor) and t.numel() == 1:
        t = t.item()
    t32 = float("nan")
    if not isinstance(t, bool) and isinstance(t, numbers.Real) and (not isinstance(t, numbers.Integral) or abs(t) < 10**40):
        with np.errstate(over="ignore"):
            t32 = float(np.float32(t))
    if not 0.0 <= t32 <= max_temperature:
        raise InputError(f"temperature must be a finite number in [0, {max_temperature:g}], got {show_value(t)}")
    return float(t)


def check_seed(seed: Any, what: str = "seed", optional: bool = True) -> int | None:
    """An integer seed in 0 .. MAX_SEED (2**32 - 1), or None (a fresh random draw) when ``optional``."""
    if seed is None and optional:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        none = " (or null / None: a fresh random draw)" if optional else ""
        raise InputError(f"{what} must be an integer in 0..{MAX_SEED}{none}, got {show_value(seed)}")
    return int(seed)
