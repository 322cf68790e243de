"""``manifest.json``: what an export folder holds, how to call it, and how well it matched eager PyTorch.

One manifest per export folder. It names every graph (and TensorRT engine, once built) with the
SHA-256 of its bytes, so that a runtime refuses a file that was changed after the parity gate.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nfkd.errors import ExportError
from nfkd.folder_files import MAX_MANIFEST_BYTES, read_member

__all__ = ["FORMAT", "MANIFEST_NAME", "Manifest", "reusable_export", "sha256_bytes", "sha256_file"]

FORMAT = "nfkd-export"
FORMAT_VERSION = "1"
MANIFEST_NAME = "manifest.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Manifest:
    """Everything a runtime needs to call the graphs, plus provenance and measured accuracy.

    ``graphs[name]`` = {"file", "sha256", "inputs": [{"name", "shape", "dtype"}], "outputs": [...]}
    with the dynamic batch dimension written as ``"B"``. ``engines`` is filled by ``export.trt``.
    """

    arch: str
    config: dict[str, Any]
    event_shape: list[int]
    noise_shapes: list[list[int]]  # per level, without the batch dimension
    latent_layout: list[dict[str, Any]]  # where each level sits in the flattened `latent` output
    dim: int
    max_batch: int
    opset: int
    fp16: bool
    maf_sampling: str | None  # "loop" | "unrolled": MAF's sampling / IAF's density graph; None otherwise
    graphs: dict[str, dict[str, Any]]
    source: dict[str, Any]  # {"checkpoint": file name, "sha256": of the checkpoint file}
    parity: dict[str, Any]
    tolerance: dict[str, Any]
    versions: dict[str, str]
    created_utc: str
    engines: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: str = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        if data.get("format") != FORMAT:
            raise ExportError(f"not an nfkd export manifest (format {data.get('format')!r}, expected {FORMAT!r})")
        known = {f.name for f in fields(cls)}
        try:
            m = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ExportError(f"manifest is incomplete or malformed ({exc}); re-export the model") from None
        m.check_types()
        return m

    def check_types(self) -> None:
        """Every field a runtime uses has the type the exporter writes: a crafted manifest is one clear
        error here, not a TypeError (or an ONNX Runtime traceback) later."""
        def bad(field_name: str, expected: str) -> ExportError:
            return ExportError(f"manifest.json: {field_name} must be {expected}; re-export the model")

        def dims(v: Any) -> bool:
            return isinstance(v, list) and all(type(d) is int and d >= 1 for d in v)

        if not dims(self.event_shape) or not self.event_shape:
            raise bad("event_shape", "a non-empty list of positive integers")
        if not isinstance(self.noise_shapes, list) or not self.noise_shapes or not all(map(dims, self.noise_shapes)):
            raise bad("noise_shapes", "a non-empty list of lists of positive integers")
        for name in ("dim", "max_batch", "opset"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        if not isinstance(self.graphs, dict) or not all(k in self.graphs for k in ("density", "sample")):
            raise bad("graphs", "an object with the 'density' and 'sample' graphs")
        for name, entry in [*self.graphs.items(), *(self.engines or {}).items()]:
            if name in ("density", "sample") and not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                                                       and isinstance(entry.get("sha256"), str)):
                raise bad(f"the entry of {name!r}", "an object with 'file' and 'sha256' strings")
        for name in ("density", "sample"):
            for side in ("inputs", "outputs"):
                specs = self.graphs[name].get(side)
                if not isinstance(specs, list) or not all(
                        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("shape"), list)
                        and all(d == "B" or (type(d) is int and d >= 1) for d in t["shape"]) for t in specs):
                    raise bad(f"graphs.{name}.{side}", 'a list of {"name", "shape", "dtype"} with integer or "B" dims')
        for name in ("config", "source", "parity", "tolerance", "versions"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "an object")
        if not isinstance(self.engines or {}, dict):
            raise bad("engines", "an object")

    @classmethod
    def load(cls, folder_or_file: str | os.PathLike) -> "Manifest":
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not os.path.lexists(path):
            raise ExportError(
                f"no {MANIFEST_NAME} at {path}; expected an export folder written by "
                f"`python -m export.onnx student.pt -o DIR`"
            )
        raw = read_member(path.parent, path.name, MANIFEST_NAME, MAX_MANIFEST_BYTES)
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ExportError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ExportError(f"{path} is not a JSON object; re-export the model")
        return cls.from_dict(data)

    def save(self, folder: str | os.PathLike) -> Path:
        from nfkd.checkpoint import atomic_write_bytes

        from .file_modes import set_plain_mode

        path = Path(folder) / MANIFEST_NAME
        atomic_write_bytes(path, self.to_json().encode())
        set_plain_mode(path)  # mkstemp made it owner-only; the graphs beside it are not
        return path

    # --- convenience --------------------------------------------------------------------------
    def graph_path(self, folder: str | os.PathLike, name: str) -> Path:
        return Path(folder) / self.graphs[name]["file"]

    def input_names(self, graph: str) -> list[str]:
        return [t["name"] for t in self.graphs[graph]["inputs"]]

    def output_names(self, graph: str) -> list[str]:
        return [t["name"] for t in self.graphs[graph]["outputs"]]


def reusable_export(folder: str | os.PathLike, checkpoint_sha256: str, need_engines: bool = False) -> Manifest | None:
    """The manifest of an intact float32 export of exactly this checkpoint (and its TensorRT
    engines, if asked), or None: a missing/corrupt manifest, another checkpoint, fp16 graphs or any
    file whose bytes no longer match its recorded SHA-256 all mean "export again"."""
    folder = Path(folder)
    if not os.path.lexists(folder / MANIFEST_NAME):
        return None
    try:
        m = Manifest.load(folder)
    except ExportError:
        return None
    if m.source.get("sha256") != checkpoint_sha256 or m.fp16:
        return None
    entries = list(m.graphs.values())
    if need_engines:
        if not all(k in (m.engines or {}) for k in ("density", "sample")):
            return None
        entries += [m.engines["density"], m.engines["sample"]]
    try:
        intact = all(sha256_bytes(read_member(folder, e["file"], "export file")) == e["sha256"] for e in entries)
    except ExportError:
        return None
    return m if intact else None
