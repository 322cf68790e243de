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
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ExportError(f"manifest is incomplete or malformed ({exc}); re-export the model") from None

    @classmethod
    def load(cls, folder_or_file: str | os.PathLike) -> "Manifest":
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.exists():
            raise ExportError(
                f"no {MANIFEST_NAME} at {path}; expected an export folder written by "
                f"`python -m export.onnx student.pt -o DIR`"
            )
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ExportError(f"{path} is not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def save(self, folder: str | os.PathLike) -> Path:
        from nfkd.checkpoint import atomic_write_bytes

        path = Path(folder) / MANIFEST_NAME
        atomic_write_bytes(path, self.to_json().encode())
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
    if not (folder / MANIFEST_NAME).exists():
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
    intact = all((folder / e["file"]).exists() and sha256_file(folder / e["file"]) == e["sha256"] for e in entries)
    return m if intact else None
