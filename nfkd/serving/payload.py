"""Request bodies: parse the format (JSON / ``.npy``), check with ``nfkd.validation``, answer one ``ApiError``.

This module only knows the body formats; what a valid batch, count, temperature or seed is lives in
``nfkd.validation`` (the one set of checks of every boundary), whose ``InputError`` becomes 422 and
``LimitError`` (rows over the limit) 413.

Status codes, one rule each:

===  ==================================================================================
400  the body cannot be parsed (malformed JSON, malformed ``.npy``)
413  too large: body bytes above ``max_body_bytes``, or more rows than ``max_request_rows``
415  unsupported ``Content-Type`` (JSON or ``application/x-npy`` only)
422  parsed but invalid: wrong fields, shape / feature count, dtype, NaN/Inf, empty batch,
     bad ``n`` / ``temperature`` / ``seed``
===  ==================================================================================

Dtypes: floats (16/32/64 bit) and integers are accepted and cast to float32; booleans, strings,
``null``, objects, complex numbers and structured / object arrays are refused. Finiteness is
checked *after* the cast, so values beyond the float32 range (e.g. ``1e39``) are refused as Inf.
A ``.npy`` body is parsed from its header first (dtype, shape and byte count checked before any
array is allocated) and never unpickled. A JSON body's rows are counted from its brackets and
commas before it is parsed (``json_row_bound``), so a compact body of millions of zeros under the
byte limit is refused in milliseconds instead of being parsed.
"""
from __future__ import annotations

import ast
import json
import math
import re
import sys
from typing import Any, Callable, Sequence

import numpy as np

from nfkd.errors import InputError
from nfkd.validation import LimitError, check_batch, check_count, check_seed, check_temperature
from nfkd.validation import show_value as show

__all__ = [
    "JSON", "MAX_TEMPERATURE", "NPY", "ApiError", "check_json_row_bound", "check_rows", "json_floats",
    "json_array_bytes", "json_row_bound", "json_rows", "media_type", "npy_bytes", "npy_rows", "parse_json_object",
    "parse_npy",
    "sample_request", "show", "wants_npy",
]

JSON = "application/json"
NPY = "application/x-npy"
NPY_MAGIC = b"\x93NUMPY"
NPY_KEYS = {"descr", "fortran_order", "shape"}  # exactly what np.save writes
NPY_MAX_DIMS = 32  # numpy 1.x's limit; a request needs len(event_shape) + 1
MAX_TEMPERATURE = 10.0  # noise scale; 10 standard deviations is far outside any trained flow's data


class ApiError(Exception):
    """An HTTP error answer: ``status`` and one message, sent as ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = headers


def media_type(header: str | None) -> str:
    """``'application/json; charset=utf-8'`` -> ``'application/json'``."""
    return (header or "").split(";", 1)[0].strip().lower()


def wants_npy(accept: str | None) -> bool:
    return any(media_type(part) == NPY for part in (accept or "").split(","))


def _dims(shape: Sequence[int]) -> str:
    return ", ".join(str(int(v)) for v in shape)


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------
def parse_json_object(body: bytes, example: str) -> dict[str, Any]:
    if not body.strip():
        raise ApiError(400, f"empty request body; expected a JSON object like {example}")
    try:
        obj = json.loads(body)
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"malformed JSON ({exc}); expected a JSON object like {example}") from None
    except ValueError as exc:  # JSONDecodeError, or an integer literal beyond Python's digit limit
        if not isinstance(exc, json.JSONDecodeError) and "digits" in str(exc):
            limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300
            raise ApiError(422, f"the body holds an integer literal with more than {limit} digits, far beyond the "
                                f"float32 range (|v| <= 3.4e38) and every limit of this server; send finite "
                                f"numbers") from None
        raise ApiError(400, f"malformed JSON ({exc}); expected a JSON object like {example}") from None
    except RecursionError:
        raise ApiError(400, f"malformed JSON (nested too deeply); expected a JSON object like {example}") from None
    if not isinstance(obj, dict):
        raise ApiError(422, f"expected a JSON object like {example}, got a JSON {_json_type(obj)}")
    return obj


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _check_fields(obj: dict[str, Any], allowed: Sequence[str], required: Sequence[str], example: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise ApiError(422, f"unknown field(s) {unknown}; expected {', '.join(map(repr, allowed))} as in {example}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ApiError(422, f"missing field {missing[0]!r}; expected a JSON object like {example}")


def _first_non_number(v: Any, depth: int = 0) -> str | None:
    """The JSON type of the first leaf that is not a number (booleans count as not numbers), or None."""
    if isinstance(v, list):
        if depth > 64:
            return "array nested too deeply"
        for item in v:
            bad = _first_non_number(item, depth + 1)
            if bad is not None:
                return bad
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return _json_type(v)
    return None


def _commas_per_row(event_shape: Sequence[int]) -> int:
    """Commas inside one row of shape event_shape written as nested JSON lists."""
    commas = 0
    for d in reversed([int(v) for v in event_shape]):
        commas = (d - 1) + d * commas
    return commas


def json_row_bound(body: bytes, event_shape: Sequence[int]) -> int:
    """How many rows ``{"x": [...]}`` holds, from its commas, without parsing it.

    Exact for a valid body (B rows hold B * (commas_per_row + 1) - 1 commas). For any body it bounds
    the parse's work: every JSON value or list but the last of its list is followed by a comma,
    and lists without commas can only nest (Python's parser stops those at its recursion limit).
    ``bytes.count`` runs at memory speed: a 27 MB body costs a few ms, its parse seconds.
    """
    return -(-(body.count(b",") + 1) // (_commas_per_row(event_shape) + 1))


def check_json_row_bound(body: bytes, event_shape: Sequence[int], max_rows: int) -> None:
    """413 before parsing when the body holds more than ``max_rows`` rows' worth of values."""
    bound = json_row_bound(body, event_shape)
    if bound > max_rows:
        per_row = int(np.prod([int(v) for v in event_shape]))
        raise ApiError(413, f"batch of {bound} rows is above this server's limit of {max_rows} rows per request "
                            f"(counted before parsing, {per_row} values per row); split it into requests of at "
                            f"most {max_rows} rows")


# Large bodies of plain numbers are parsed in slices of rows: each C-level json.loads holds the GIL
# for one slice only, so the event loop (another thread) gets its turn between slices.
SLICED_MIN_BYTES = 64 * 1024
SLICE_ROWS = 2048
_X_ARRAY = re.compile(rb"\A\s*\{\s*\"x\"\s*:\s*\[(.*)\]\s*\}\s*\Z", re.S)
_NUMBER_TEXT = b"0123456789+-.eE,[] \t\r\n"


def _json_rows_sliced(body: bytes, event_shape: Sequence[int]) -> np.ndarray | None:
    """float64 [B, dim] from a large ``{"x": [[numbers], ...]}`` body, parsed SLICE_ROWS rows at a time;
    None for anything else (other shapes, literals, strings, irregular rows), which then takes the
    one-piece parse and gets its exact error message."""
    if len(event_shape) != 1 or len(body) < SLICED_MIN_BYTES:
        return None
    m = _X_ARRAY.match(body)
    if m is None:
        return None
    inner = m.group(1)
    if inner.translate(None, _NUMBER_TEXT):  # only digits, signs, exponents, separators and brackets
        return None
    dim = int(event_shape[0])
    step = max(1, len(inner) * SLICE_ROWS // max(1, json_row_bound(body, event_shape)))
    parts, pos = [], 0
    try:
        while pos < len(inner):
            end = inner.find(b"]", pos + step)
            end = len(inner) if end < 0 else end + 1
            comma = inner.find(b",", end)
            nxt = len(inner) if comma < 0 else comma + 1
            if inner[end:nxt].strip(b", \t\r\n"):
                return None
            part = np.asarray(json.loads(b"[" + inner[pos:end] + b"]"), dtype=np.float64)
            if part.ndim != 2 or part.shape[1] != dim:
                return None
            parts.append(part)
            pos = nxt
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None
    return np.concatenate(parts) if parts else None


def json_rows(body: bytes, event_shape: Sequence[int], max_rows: int) -> np.ndarray:
    """``{"x": [[...], ...]}`` -> validated float32 array [B, *event_shape]; rows bounded before parsing."""
    example = '{"x": [[...], ...]}'
    check_json_row_bound(body, event_shape, max_rows)
    sliced = _json_rows_sliced(body, event_shape)
    if sliced is not None:
        return check_rows(sliced, event_shape, max_rows)
    obj = parse_json_object(body, example)
    _check_fields(obj, ("x",), ("x",), example)
    x = obj["x"]
    if not isinstance(x, list):
        raise ApiError(422, f"x must be an array of rows (shape (batch, {_dims(event_shape)})), got a JSON {_json_type(x)}")
    # Booleans hide inside a float array (np.asarray([[True, 0.5]]) is float64): look for them, but
    # only walk the rows when the literals occur in the body at all.
    if (b"true" in body or b"false" in body) and _first_non_number(x) == "boolean":
        raise ApiError(422, "x contains true/false; booleans are not accepted, send numbers")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError):
        raise ApiError(
            422, f"x is ragged (rows of different lengths or depths); expected shape (batch, {_dims(event_shape)})"
        ) from None
    except RecursionError:
        raise ApiError(422, "x is nested too deeply") from None
    if arr.dtype.kind == "O":  # null / strings / objects mixed with numbers, or integers beyond int64
        bad = _first_non_number(x)
        if bad is not None:
            raise ApiError(422, f"x must contain only numbers, found a {bad}")
        try:
            arr = np.asarray(x, dtype=np.float64)
        except OverflowError:
            raise ApiError(422, "x contains an integer too large for float32; send finite values") from None
        except (ValueError, TypeError):
            raise ApiError(422, f"x is ragged or not numeric; expected shape (batch, {_dims(event_shape)})") from None
    if arr.dtype.kind not in "fiu":  # all strings, or all booleans
        bad = _first_non_number(x)
        raise ApiError(422, f"x must contain only numbers, found a {bad or arr.dtype}")
    return check_rows(arr, event_shape, max_rows)


# --------------------------------------------------------------------------------------------
# .npy
# --------------------------------------------------------------------------------------------
def npy_rows(body: bytes, event_shape: Sequence[int], max_rows: int) -> np.ndarray:
    """A ``np.save`` payload -> validated float32 array; header checked before any allocation, no pickle."""
    arr = parse_npy(body, event_shape, max_rows)
    return check_rows(arr, event_shape, max_rows)


def parse_npy(body: bytes, event_shape: Sequence[int], max_rows: int) -> np.ndarray:
    if not body.startswith(NPY_MAGIC) or len(body) < 10:
        if body[:2] == b"PK":
            raise ApiError(400, "the body is an .npz archive; send one array written with np.save (.npy)")
        raise ApiError(400, "malformed .npy payload (no NUMPY magic); send the bytes written by np.save(f, x)")
    major = body[6]
    if major == 1:
        hlen, start = int.from_bytes(body[8:10], "little"), 10
    elif major in (2, 3):
        if len(body) < 12:
            raise ApiError(400, "malformed .npy payload (truncated header)")
        hlen, start = int.from_bytes(body[8:12], "little"), 12
    else:
        raise ApiError(400, f"malformed .npy payload (unknown format version {major})")
    if hlen > 10000 or start + hlen > len(body):
        raise ApiError(400, "malformed .npy payload (header too long or truncated)")
    try:
        header = ast.literal_eval(body[start : start + hlen].decode("latin1" if major < 3 else "utf8"))
        descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    except Exception:
        raise ApiError(400, "malformed .npy payload (unreadable header)") from None
    if set(header) != NPY_KEYS:
        extra = sorted(map(str, set(header) - NPY_KEYS))
        raise ApiError(400, f"malformed .npy payload (header keys {extra[:5]} beyond {sorted(NPY_KEYS)}; send "
                            f"the bytes written by np.save)")
    # Exactly what np.save writes: int() would turn 2.7 or True into a size, and any string is truthy.
    if not isinstance(shape, tuple) or not all(type(v) is int for v in shape) or type(fortran) is not bool:
        raise ApiError(400, f"malformed .npy payload (shape {str(shape)[:40]} / fortran_order {str(fortran)[:10]}: "
                            "expected a tuple of integers and True/False, as np.save writes)")
    if not isinstance(descr, str):
        raise ApiError(422, "structured arrays are not accepted; send a plain numeric array of shape "
                            f"(batch, {_dims(event_shape)})")
    try:
        dtype = np.dtype(descr)
    except Exception:
        raise ApiError(400, f"malformed .npy payload (unknown dtype {descr!r})") from None
    _check_dtype(dtype)
    if len(shape) > NPY_MAX_DIMS:
        raise ApiError(400, f"malformed .npy payload ({len(shape)} dimensions; this server expects "
                            f"{len(event_shape) + 1}: (batch, {_dims(event_shape)}))")
    if any(v < 0 for v in shape):
        raise ApiError(400, "malformed .npy payload (negative dimension)")
    if 0 in shape:
        raise ApiError(422, f"x is an empty batch (shape {_short(shape)}); send at least one row "
                            f"(shape (batch, {_dims(event_shape)}))")
    if shape and shape[0] > max_rows and tuple(shape[1:]) == tuple(event_shape):
        raise ApiError(413, f"batch of {shape[0]} rows is above this server's limit of {max_rows} rows per request; "
                            f"split it into requests of at most {max_rows} rows")
    data = memoryview(body)[start + hlen :]
    expected = math.prod(shape) * dtype.itemsize  # Python integers: no overflow; every dim >= 1 here
    if len(data) != expected:  # so the shape's product is bounded by the body before numpy sees it
        raise ApiError(400, f"malformed .npy payload: header says shape {_short(shape)} {dtype} "
                            f"({_short(expected)} bytes), body has {len(data)} data bytes")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape))
    return arr.reshape(shape, order="F" if fortran else "C")


def _short(v: Any) -> str:
    """A header value for a message, at most ~80 characters (a shape of 10**20 or 64 dims is not echoed whole)."""
    text = str(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_dtype(dtype: np.dtype) -> None:
    kind = dtype.kind
    if kind in "fiu":
        return
    names = {"b": "bool", "O": "object (pickled)", "U": "string", "S": "bytes", "c": "complex", "V": "structured/void",
             "M": "datetime", "m": "timedelta"}
    raise ApiError(422, f"dtype {dtype} ({names.get(kind, kind)}) is not accepted; send float32/float64 "
                        f"(integers are cast to float32)")


# --------------------------------------------------------------------------------------------
# The checks: nfkd.validation, its InputError mapped to a status
# --------------------------------------------------------------------------------------------
def _validated(check: Callable[..., Any], *args: Any, limit_status: int = 413, **kwargs: Any) -> Any:
    """``check(*args, **kwargs)`` from ``nfkd.validation``; its error as an ApiError (LimitError: ``limit_status``)."""
    try:
        return check(*args, **kwargs)
    except LimitError as exc:
        raise ApiError(limit_status, str(exc)) from None
    except InputError as exc:
        raise ApiError(422, str(exc)) from None


def check_rows(arr: np.ndarray, event_shape: Sequence[int], max_rows: int) -> np.ndarray:
    """A parsed numeric array -> float32 [B, *event_shape], checked by ``nfkd.validation.check_batch``.

    Integers are accepted (cast to float64 first: exact, and the float32-range check sees them)."""
    _check_dtype(arr.dtype)
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    limit = f"this server's limit of {max_rows} rows per request"
    arr = _validated(check_batch, arr, event_shape, "x", max_rows, float32=True, limit=limit)
    return np.ascontiguousarray(arr, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# /sample
# --------------------------------------------------------------------------------------------
def sample_request(body: bytes, max_n: int) -> tuple[int, float, int | None]:
    """``{"n": int, "temperature": float = 1, "seed": int | null}`` -> checked (n, temperature, seed).

    Every number is bounded: ``1 <= n <= max_n``, ``0 <= temperature <= MAX_TEMPERATURE`` (checked
    on the float32 value the model receives), ``0 <= seed <= nfkd.validation.MAX_SEED``; all 422.
    """
    example = '{"n": 100, "temperature": 1.0, "seed": 0}'
    obj = parse_json_object(body, example)
    _check_fields(obj, ("n", "temperature", "seed"), ("n",), example)
    n = _validated(check_count, obj["n"], "n", max_n, limit=f"this server's limit of {max_n} samples per request",
                   limit_status=422)
    t = _validated(check_temperature, obj.get("temperature", 1.0), MAX_TEMPERATURE)
    seed = _validated(check_seed, obj.get("seed"))
    return n, t, seed


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------
def json_floats(arr: np.ndarray) -> Any:
    """Nested lists for JSON; non-finite values (which strict JSON cannot hold) become null."""
    if np.isfinite(arr).all():
        return arr.tolist()
    obj = arr.astype(object)
    obj[~np.isfinite(arr)] = None
    return obj.tolist()


def json_array_bytes(arr: np.ndarray, key: str, extra: dict[str, Any] | None = None) -> bytes:
    """``{"<key>": [...], **extra}`` as compact JSON bytes, encoded SLICE_ROWS rows at a time (the C
    encoder holds the GIL for one slice only); non-finite values become null."""
    parts = [json.dumps(json_floats(arr[i : i + SLICE_ROWS]), separators=(",", ":"), allow_nan=False)[1:-1]
             for i in range(0, len(arr), SLICE_ROWS)]
    tail = json.dumps(extra, separators=(",", ":"), allow_nan=False)[1:-1] if extra else ""
    return ("{" + json.dumps(key) + ":[" + ",".join(parts) + "]" + ("," + tail if tail else "") + "}").encode()


def npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()
