"""``nfkd.inference`` loaders for the export runtimes (found by name; nfkd never imports export/)."""
from __future__ import annotations

from typing import Any

from nfkd.errors import InputError

from . import runtime
from .cache import ensure_export, export_flow

__all__ = ["load_onnxruntime", "load_tensorrt"]


def _folder(source, options: dict[str, Any], engines: bool):
    """The export folder to run: given, or exported (parity-gated) into export_dir / the cache."""
    cache_dir, export_dir = options.get("cache_dir"), options.get("export_dir")
    if source.export_folder is not None:
        return source.export_folder
    if source.checkpoint is not None:
        return ensure_export(source.checkpoint, cache_dir, engines=engines, folder=export_dir)
    return export_flow(source.flow, cache_dir, engines=engines, folder=export_dir)


def load_onnxruntime(source, device: str, threads: int | None, options: dict[str, Any]) -> runtime.OrtFlow:
    folder = _folder(source, options, engines=False)
    return runtime.load(folder, backend="onnxruntime", device=device, intra_op_threads=threads)


def load_tensorrt(source, device: str, threads: int | None, options: dict[str, Any]) -> runtime.TrtFlow:
    if device != "cuda":
        raise InputError("the TensorRT backend runs on the GPU: use device='cuda'")
    folder = _folder(source, options, engines=True)
    return runtime.load(folder, backend="tensorrt", device=device)
