"""The export cache: one parity-gated export folder per checkpoint, reused while intact.

Used by ``nfkd.inference`` (the onnxruntime / tensorrt backends given a checkpoint or a flow) and
by the service. Folders are keyed on the checkpoint's SHA-256.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from nfkd.errors import InputError

from .manifest import MANIFEST_NAME, reusable_export

log = logging.getLogger("nfkd.export")

__all__ = ["default_cache_dir", "ensure_export", "export_flow", "is_export_folder"]


def default_cache_dir() -> Path:
    root = os.environ.get("NFKD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "nfkd"
    )
    return Path(root) / "exports"


def is_export_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / MANIFEST_NAME).exists()


def ensure_export(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  engines: bool = False, folder: str | os.PathLike | None = None) -> Path:
    """The export folder of a checkpoint (``folder``, or one in the cache keyed by its SHA-256): reused
    when it is an intact export of exactly this checkpoint, else exported (parity gate)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise InputError(f"model not found: {checkpoint} (expected a checkpoint .pt or an export folder)")
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    if folder is None:
        root = Path(cache_dir) if cache_dir else default_cache_dir()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the export cache folder {root} ({exc.strerror}); "
                             f"pass a writable cache folder (NFKD_CACHE_DIR or --cache-dir)") from None
        folder = root / f"{checkpoint.stem}-{sha[:16]}"
    folder = Path(folder)
    if reusable_export(folder, sha, engines) is not None:
        log.info("reusing export", extra={"folder": str(folder)})
        return folder
    if engines:
        from .trt import build_engines

        log.info("building TensorRT engines", extra={"checkpoint": str(checkpoint), "folder": str(folder)})
        build_engines(checkpoint, folder)
    else:
        from .onnx import export_onnx

        log.info("exporting to ONNX (parity-gated)", extra={"checkpoint": str(checkpoint), "folder": str(folder)})
        export_onnx(checkpoint, folder)
    return folder


def _flow_key(flow) -> str:
    """A content key of an in-memory flow: architecture, config and every tensor's bytes."""
    h = hashlib.sha256(json.dumps([flow.arch, flow.config], sort_keys=True).encode())
    for name, t in sorted(flow.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_flow(flow, cache_dir: str | os.PathLike | None = None, engines: bool = False,
                folder: str | os.PathLike | None = None) -> Path:
    """ensure_export for an in-memory flow: saved once as a checkpoint keyed by its content, then exported."""
    import nfkd

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    kept = root / "flows" / f"{flow.arch}-{_flow_key(flow)[:16]}.pt"
    if not kept.exists():
        nfkd.save(flow, kept)  # atomic
    return ensure_export(kept, root, engines, folder)
