"""Strict reading of a checkpoint's header, and the config-vs-tensors check done before any build.

A checkpoint's header is attacker-controlled JSON: every field is type-checked here so that a
crafted file gets one CheckpointError, never a KeyError or a RecursionError. The config decides
how big a model ``build_flow`` allocates, so it is checked against the tensors actually stored
before a real model is built: its sizes are bounded by the stored element count, then the model
is built on the ``meta`` device (no memory) under an operation budget, and its parameter names,
shapes and dtypes must equal the stored ones. The work is bounded by the number of tensors, not
bytes: a file lists at most ``MAX_TENSORS`` (8,192) tensors, and the build stops as soon as it
registers more parameters + buffers (or modules) than the stored tensors explain.

Cost: most of torch's meta kernels (and any ``TorchDispatchMode``) are Python code whose first call
imports ``torch._dynamo``: 3-12 s once per process on a 2-core box. The build therefore runs under
``_Skeleton``, a ``TorchFunctionMode`` (no such import) that counts operations against the budget
and answers the few that nfkd's constructors use on values (elementwise, cat, eye, triangles,
casts, arange, sort / argsort, QR / LU of the mixing init) with empty meta tensors of the right shape and dtype;
factories, views and in-place initialisers go to torch's C++ meta kernels. A tabular check takes
milliseconds (tested in a fresh process: ``torch._dynamo`` stays unimported).
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch
from torch.nn.modules import module as _module
from torch.overrides import TorchFunctionMode

from .errors import CheckpointError
from .flows import ARCHITECTURES, Flow, build_flow

__all__ = ["TensorEntry", "loads_json", "parse_header", "covered_digest", "entries_of", "stored_float_dtype",
    "check_config"]

#: safetensors dtype names -> (bytes per element, torch dtype)
DTYPES: dict[str, tuple[int, torch.dtype]] = {
    "F64": (8, torch.float64), "F32": (4, torch.float32), "F16": (2, torch.float16), "BF16": (2, torch.bfloat16),
    "I64": (8, torch.int64), "I32": (4, torch.int32), "I16": (2, torch.int16), "I8": (1, torch.int8),
    "U8": (1, torch.uint8), "BOOL": (1, torch.bool),
}
_DTYPE_NAMES = {dt: name for name, (_, dt) in DTYPES.items()}
#: Config sizes up to this are always allowed (e.g. Glow's n_levels_data=256 in a tiny model).
MIN_SIZE_BOUND = 1 << 16
SEED_KEYS = frozenset({"seed"})  # seeds are not sizes: any 64-bit value
#: Dispatcher operations allowed while building the model on the meta device, per stored tensor.
OPS_PER_TENSOR, OPS_BASE = 20, 2_000  # measured: 2-3.2 operations per stored tensor (presets)
#: Most tensors a checkpoint may store. The largest preset (CelebA Glow, 4 levels x 32 steps) stores 2,187;
#: a crafted file of 100,000 empty tensors (6.7 MB) kept ``nfkd info`` busy for 68 s before this bound.
MAX_TENSORS = 8_192
#: While building the skeleton, at most this many parameters + buffers beyond the stored tensors, and
#: modules per stored tensor (measured: <= 0.9 per tensor for every architecture) plus a constant.
SLACK_TENSORS, MODULES_PER_TENSOR, SLACK_MODULES = 64, 2, 64


class TensorEntry(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def loads_json(text: bytes | str, path: Path, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{path} is corrupt or crafted: its {what} is JSON nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt: its {what} is not valid JSON ({exc})") from None


def parse_header(path: Path, data: bytes, header_len: int) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """(tensor table, __metadata__) of a safetensors container, every field checked."""
    header = loads_json(data[8 : 8 + header_len], path, "header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is corrupt: its header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path} is corrupt: '__metadata__' must map names to strings")
    if len(header) - ("__metadata__" in header) > MAX_TENSORS:
        raise CheckpointError(f"{path} lists {len(header) - ('__metadata__' in header):,} tensors; nfkd checkpoints "
                              f"hold at most {MAX_TENSORS:,}: the header is corrupt or crafted")
    available = len(data) - 8 - header_len
    entries: dict[str, TensorEntry] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        bad = f"{path} is corrupt: header entry {name[:80]!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise CheckpointError(f"{bad} is not a tensor (needs dtype, shape and data_offsets)")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise CheckpointError(f"{bad} has dtype {str(dtype)[:20]!r}; expected one of {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(_is_int(v) and v >= 0 for v in shape):
            raise CheckpointError(f"{bad} has shape {str(shape)[:60]}; expected a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(v) for v in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{bad} has data_offsets {str(offsets)[:60]}; expected [begin, end], 0 <= begin <= end")
        if offsets[1] > available:
            raise CheckpointError(f"{path} is truncated: tensor data ends before the offsets its header lists")
        if math.prod(shape) * DTYPES[dtype][0] != offsets[1] - offsets[0]:
            raise CheckpointError(f"{bad}: shape {shape} {dtype} does not fit its {offsets[1] - offsets[0]} bytes")
        entries[name] = TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])
    return entries, meta


def covered_digest(meta: dict[str, str], entries: dict[str, TensorEntry], tensor_bytes: bytes | memoryview) -> str:
    """SHA-256 over the header (metadata but the digest itself, the tensor table) and the tensor bytes.

    Covering the config means a damaged or edited header fails the checksum like damaged weights.
    """
    covered = json.dumps(
        {"metadata": {k: v for k, v in meta.items() if k != "sha256"},
         "tensors": {k: [e.dtype, list(e.shape), e.begin, e.end] for k, e in entries.items()}},
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    ).encode()
    h = hashlib.sha256(struct.pack("<Q", len(covered)))
    h.update(covered)
    h.update(tensor_bytes)
    return h.hexdigest()


def entries_of(payload: bytes) -> dict[str, TensorEntry]:
    """The tensor table of a safetensors payload that nfkd itself just wrote."""
    (n,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8 : 8 + n])
    return {k: TensorEntry(v["dtype"], tuple(v["shape"]), *v["data_offsets"])
            for k, v in header.items() if k != "__metadata__"}


def _walk_sizes(path: Path, config: dict[str, Any], bound: int) -> None:
    """Every integer in the config is a size or count, bounded by the stored element count (seeds aside)."""
    for key, value in config.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise CheckpointError(f"{path}: config {key}={v} is not finite; the header is corrupt or crafted")
            if not _is_int(v):
                if not isinstance(v, (str, bool, float)) and v is not None:
                    raise CheckpointError(f"{path}: config {key} holds a {type(v).__name__}; expected numbers/strings")
                continue
            limit = (1 << 64) - 1 if key in SEED_KEYS else bound
            if not 0 <= v <= limit:
                raise CheckpointError(
                    f"{path}: config {key}={v} is outside 0..{limit:,} (the checkpoint stores {bound:,} values at "
                    "most, so no size in its config can be larger); the header is corrupt or crafted"
                )


class _OverBudget(Exception):
    pass


def _meta(shape, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def _shape_of(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else ()


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting (``torch.broadcast_shapes`` would import sympy: ~1 s)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b, strict=True)):
        raise ValueError(f"shapes {a} and {b} do not broadcast")
    return tuple(y if x == 1 else x for x, y in zip(a, b, strict=True))


_ARITH = {"add", "sub", "mul", "div", "remainder", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__",
          "__rmul__", "__truediv__", "__mod__"}
_COMPARE = {"ge", "gt", "le", "lt", "__ge__", "__gt__", "__le__", "__lt__"}
_SAME = {"abs", "sign", "log", "exp", "neg", "__neg__", "tril", "triu", "clone", "sqrt", "reciprocal"}
_CAST = {"float": torch.float32, "double": torch.float64, "long": torch.int64, "bool": torch.bool}


class _Skeleton(TorchFunctionMode):
    """Builds a model's skeleton on ``meta``: counts every torch call against a budget (a config that
    loops far more than its stored tensors explain is refused) and computes only shapes and dtypes
    for the value operations listed above."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.ops = limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        if self.ops > self.limit:
            raise _OverBudget()
        name = getattr(func, "__name__", "")
        a = args[0] if args else None
        if name in _ARITH or name in _COMPARE:
            shape = _broadcast(_shape_of(args[0]), _shape_of(args[1]))
            return _meta(shape, torch.bool if name in _COMPARE else torch.result_type(args[0], args[1]))
        if isinstance(a, torch.Tensor) and (name in _SAME or name in _CAST):
            return _meta(a.shape, _CAST.get(name, a.dtype))
        if name == "cat":
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            parts = [t for t in a if t.dim() > 1 or t.numel()]  # cat skips empty 1-d tensors
            shape = list(parts[0].shape)
            shape[dim] = sum(t.shape[dim] for t in parts)
            return _meta(shape, parts[0].dtype)
        if name in ("randn", "rand"):
            shape = args[0] if len(args) == 1 and not isinstance(args[0], int) else args
            return _meta(shape, kwargs.get("dtype") or torch.get_default_dtype())
        if name == "arange" and all(isinstance(v, (int, float)) for v in args):
            start, end, step = (0, args[0], 1) if len(args) == 1 else (*args[:2], args[2] if len(args) > 2 else 1)
            ints = all(isinstance(v, int) for v in (start, end, step))
            return _meta((max(0, math.ceil((end - start) / step)),),
                         kwargs.get("dtype") or (torch.int64 if ints else torch.get_default_dtype()))
        if name == "eye":
            n = args[0]
            m = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("m", n)
            return _meta((n, m), kwargs.get("dtype") or torch.get_default_dtype())
        if name == "argsort" and isinstance(a, torch.Tensor):
            return _meta(a.shape, torch.int64)
        if name == "sort" and isinstance(a, torch.Tensor):
            return torch.return_types.sort((_meta(a.shape, a.dtype), _meta(a.shape, torch.int64)))
        if name in ("linalg_qr", "linalg_lu") and isinstance(a, torch.Tensor):
            *batch, m, n = a.shape
            k = min(m, n)
            if name == "linalg_qr":
                return torch.return_types.linalg_qr((_meta((*batch, m, k), a.dtype), _meta((*batch, k, n), a.dtype)))
            return torch.return_types.linalg_lu((_meta((*batch, m, m), a.dtype), _meta((*batch, m, k), a.dtype),
                                                 _meta((*batch, k, n), a.dtype)))
        return func(*args, **kwargs)


@contextmanager
def _registration_budget(tensors: int) -> Iterator[None]:
    """Abort the skeleton build (``_OverBudget``) once it registers more parameters + buffers, or
    modules, than the stored tensors explain: the cost of a crafted config is bounded by the tensors
    in the file, not by its bytes or by the sizes in its config."""
    me = threading.get_ident()
    counts = {"tensors": 0, "modules": 0}
    limits = {"tensors": tensors + SLACK_TENSORS, "modules": MODULES_PER_TENSOR * tensors + SLACK_MODULES}

    def counter(kind: str):
        def hook(module, name, value):
            if threading.get_ident() == me and value is not None:
                counts[kind] += 1
                if counts[kind] > limits[kind]:
                    raise _OverBudget()
        return hook

    handles = [_module.register_module_parameter_registration_hook(counter("tensors")),
               _module.register_module_buffer_registration_hook(counter("tensors")),
               _module.register_module_module_registration_hook(counter("modules"))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


_FLOAT_NAMES = ("F64", "F32", "F16", "BF16")


def stored_float_dtype(entries: dict[str, TensorEntry]) -> torch.dtype:
    """The one floating dtype of the stored tensors (a flow saved after ``.double()`` is float64),
    float32 when none is stored or they are mixed."""
    kinds = {e.dtype for e in entries.values() if e.dtype in _FLOAT_NAMES}
    return DTYPES[kinds.pop()][1] if len(kinds) == 1 else torch.float32


def check_config(path: Path, arch: Any, config: Any, entries: dict[str, TensorEntry]) -> None:
    """Refuse a config whose model would not have exactly the stored tensors, without allocating it."""
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown architecture {str(arch)[:40]!r}; expected one of {sorted(ARCHITECTURES)}")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: config is a JSON {type(config).__name__}; expected an object")
    stored = sum(math.prod(e.shape) for e in entries.values())
    _walk_sizes(path, config, max(stored, MIN_SIZE_BOUND))
    try:
        with torch.device("meta"), _registration_budget(len(entries)), \
                _Skeleton(OPS_PER_TENSOR * len(entries) + OPS_BASE):
            skeleton: Flow = build_flow(arch, **config)
    except _OverBudget:
        raise CheckpointError(
            f"{path}: its {arch} config {json.dumps(config)[:200]} implies a far larger model than the "
            f"{len(entries)} stored tensors; the header is corrupt or crafted"
        ) from None
    except Exception as exc:  # only nfkd's own constructors run here: any failure means a bad config
        raise CheckpointError(f"{path}: cannot rebuild the model from its config "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
    floats = _DTYPE_NAMES[stored_float_dtype(entries)]  # the skeleton is float32; the flow may have been cast
    want = {k: (floats if v.dtype == torch.float32 else _DTYPE_NAMES.get(v.dtype, str(v.dtype)), tuple(v.shape))
            for k, v in skeleton.state_dict().items()}
    have = {k: (e.dtype, e.shape) for k, e in entries.items()}
    if want == have:
        return
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    differ = [f"{k}: stored {have[k][1]} {have[k][0]}, config implies {want[k][1]} {want[k][0]}"
              for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    raise CheckpointError(
        f"{path} does not match its {arch} config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        + (f", {'; '.join(differ[:3])}" if differ else "")
    )
