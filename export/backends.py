"""``nfkd.inference`` loaders for the export runtimes (found by name; nfkd never imports export/)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nfkd.errors import InputError

from . import runtime
from .cache import ensure_verified_export, export_flow

__all__ = ["load_onnxruntime", "load_tensorrt"]


def _folder(source, options: dict[str, Any], engines: bool) -> tuple[Path, dict[str, Any] | None]:
    """(export folder, parity re-check or None): the given folder, or one exported (parity-gated)
    into ``export_dir`` / the cache and re-checked against the checkpoint when reused."""
    cache_dir, export_dir = options.get("cache_dir"), options.get("export_dir")
    if source.export_folder is not None:
        return source.export_folder, None
    if source.checkpoint is not None:
        return ensure_verified_export(source.checkpoint, cache_dir, engines=engines, folder=export_dir)
    return export_flow(source.flow, cache_dir, engines=engines, folder=export_dir)


def _note_recheck(runner: runtime.ExportedFlow, recheck: dict[str, Any] | None) -> runtime.ExportedFlow:
    parity = runner.meta.extra["export"]["parity"] = dict(runner.meta.extra["export"]["parity"])
    parity["rechecked"] = recheck is not None
    if recheck is not None:
        parity["recheck"] = recheck
    return runner


def load_onnxruntime(source, device: str, threads: int | None, options: dict[str, Any]) -> runtime.OrtFlow:
    folder, recheck = _folder(source, options, engines=False)
    return _note_recheck(runtime.load(folder, backend="onnxruntime", device=device, intra_op_threads=threads), recheck)


def load_tensorrt(source, device: str, threads: int | None, options: dict[str, Any]) -> runtime.TrtFlow:
    if not device.startswith("cuda"):
        raise InputError("the TensorRT backend runs on the GPU: use device='cuda'")
    folder, recheck = _folder(source, options, engines=True)
    return _note_recheck(runtime.load(folder, backend="tensorrt", device="cuda"), recheck)
