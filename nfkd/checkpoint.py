"""One-file model checkpoints that cannot run code when loaded.

The file is a safetensors container (weights) whose JSON header carries the architecture, its
config and free-form metadata (dataset, normalization statistics, training summary) plus a
SHA-256 of the header and the tensor bytes (format 2; format 1 files, whose checksum covers only
the tensor bytes, are still read). The config is checked against the stored tensors before any
model is built (:mod:`nfkd.checkpoint_header`), so a crafted header cannot make loading allocate
more than the file holds, and its structural buffers (MADE masks, permutations) are checked
against the config before anything is scored (:mod:`nfkd.checkpoint_structure`): the checksum is
written by whoever wrote the file, so it cannot vouch for them.  Loading parses JSON and raw tensor bytes only: a pickle (what
``torch.save`` writes) is refused before any of it is interpreted.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .checkpoint_header import check_config, covered_digest, entries_of, loads_json, parse_header, stored_float_dtype
from .checkpoint_structure import check_structure
from .errors import CheckpointError, StorageError
from .flows import Flow, build_flow

__all__ = ["Checkpoint", "atomic_write_bytes", "save", "load_checkpoint", "load", "describe"]

FORMAT = "nfkd-checkpoint"
FORMAT_VERSION = "2"  # 2: the checksum covers the header (config, metadata, tensor table) too
READABLE_VERSIONS = ("1", "2")  # 1: checksum of the tensor bytes only, still read
MAX_HEADER = 64 * 1024 * 1024


@dataclass
class Checkpoint:
    flow: Flow
    arch: str
    config: dict[str, Any]
    metadata: dict[str, Any]
    sha256: str  # of the whole file, for export manifests and serving


#: errno values meaning "no room": reported as one StorageError line instead of a traceback.
_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG})


def _no_room(exc: BaseException, path: Path) -> StorageError | None:
    """A disk-full / quota error as one clear line (the caller's previous file is untouched)."""
    if not isinstance(exc, OSError) or exc.errno not in _FULL:
        return None
    return StorageError(f"cannot write {path}: {os.strerror(exc.errno)}; the previous {path.name} is kept "
                        "(free some space, then run again: training continues with --resume)")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    from export.file_modes import plain_mode

    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, plain_mode())  # mkstemp's 0600 -> what open() gives under the umask, like every file we write
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        full = _no_room(exc, path)
        if full is not None:
            raise full from None
        raise


def save(flow: Flow, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Save a flow (config + weights + metadata) to one file, atomically."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in flow.state_dict().items()}
    payload = st_save(tensors)  # header + data: the tensor table and bytes the digest covers
    header_len = struct.unpack("<Q", payload[:8])[0]
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": flow.arch,
        "config": json.dumps(flow.config, sort_keys=True),
        "metadata": json.dumps(metadata or {}, sort_keys=True, default=_jsonable),
        "num_parameters": str(flow.num_parameters()),
    }
    meta["sha256"] = covered_digest(meta, entries_of(payload), memoryview(payload)[8 + header_len :])
    atomic_write_bytes(path, st_save(tensors, metadata=meta))
    return Path(path)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _read_verified(path: Path) -> tuple[bytes, dict[str, str], dict]:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected an nfkd checkpoint file (e.g. student.pt)")
    data = path.read_bytes()
    hint = "expected an nfkd checkpoint (safetensors container written by nfkd.save)"
    header_len = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
    looks_safetensors = len(data) >= 10 and 0 < header_len <= MAX_HEADER and data[8:9] == b"{"
    if not looks_safetensors:
        if data[:2] == b"PK" or (data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
            raise CheckpointError(
                f"{path} is a pickle / torch.save file; nfkd refuses to unpickle files because loading a pickle "
                f"can run arbitrary code ({hint})"
            )
        if len(data) < 10:
            raise CheckpointError(f"{path} is truncated or empty ({len(data)} bytes); {hint}")
        raise CheckpointError(f"{path} is not an nfkd checkpoint: its header is unreadable; {hint}")
    if 8 + header_len > len(data):
        raise CheckpointError(f"{path} is truncated: header says {header_len} bytes, file has {len(data) - 8}")
    entries, meta = parse_header(path, data, header_len)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an nfkd checkpoint (no '{FORMAT}' marker)")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} is nfkd checkpoint format {str(version)[:20]!r}; this nfkd reads formats "
                              f"{', '.join(READABLE_VERSIONS)} (upgrade nfkd, or re-save the model with this one)")
    body = memoryview(data)[8 + header_len :]
    if version == "1":
        ok = hashlib.sha256(body).hexdigest() == meta.get("tensor_sha256")
    else:
        ok = covered_digest(meta, entries, body) == meta.get("sha256")
    if not ok:
        raise CheckpointError(f"{path} is corrupt: its header or tensor bytes do not match the checksum stored in it")
    return data, meta, entries


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read, verify and rebuild; every failure is one CheckpointError with the reason."""
    path = Path(path)
    data, meta, entries = _read_verified(path)
    for key in ("arch", "config"):
        if key not in meta:
            raise CheckpointError(f"{path}: its header has no '{key}'; it was not written by nfkd.save")
    arch = meta["arch"]
    config = loads_json(meta["config"], path, "config")
    metadata = loads_json(meta.get("metadata", "{}"), path, "metadata")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: its metadata is a JSON {type(metadata).__name__}; expected an object")
    check_config(path, arch, config, entries)  # before anything real is allocated
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    try:
        flow = build_flow(arch, **config).to(stored_float_dtype(entries))  # float64 flows load as float64
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model from its config ({exc})") from None
    missing, unexpected = _compare_keys(flow, tensors)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match its {arch} config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    check_structure(path, flow, tensors, metadata)  # masks, permutations, statistics: before anything is scored
    try:
        flow.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path} does not match its {arch} config: {first}") from None
    flow.to(map_location).eval()
    flow.checkpoint_metadata = metadata
    return Checkpoint(flow, arch, config, metadata, hashlib.sha256(data).hexdigest())


def _compare_keys(flow: Flow, tensors: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(flow.state_dict())
    return sorted(expected - set(tensors)), sorted(set(tensors) - expected)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Flow:
    """Load a flow from an nfkd checkpoint file (eval mode)."""
    return load_checkpoint(path, map_location).flow


def describe(ckpt: Checkpoint) -> str:
    """Human-readable summary for ``python -m nfkd info``."""
    flow = ckpt.flow
    lines = [
        f"architecture : {ckpt.arch}",
        f"config       : {json.dumps(ckpt.config, sort_keys=True)}",
        f"event shape  : {tuple(flow.event_shape)}  (dim {flow.dim})",
        f"noise shapes : {[tuple(s[1:]) for s in flow.noise_shapes(1)]}",
        f"parameters   : {flow.num_parameters():,}",
        f"taps         : {', '.join(flow.tap_names())}",
        f"sha256       : {ckpt.sha256}",
    ]
    for key, value in sorted(ckpt.metadata.items()):
        text = json.dumps(value, default=str)
        lines.append(f"{key:<13}: {text if len(text) < 200 else text[:197] + '...'}")
    return "\n".join(lines)
