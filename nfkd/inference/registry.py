"""The one list of backends: what each needs, whether it is available here, and how to load it.

Backends outside ``nfkd/`` (ONNX Runtime and TensorRT in ``export/``, Triton kernels in
``kernels/``) are named by ``"module:function"`` and imported only when asked for, so ``nfkd``
never imports them at module level.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import InputError

__all__ = ["BackendSpec", "BackendStatus", "BACKENDS", "backends", "status", "ranking"]


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why not, when unavailable; what it runs on, when available
    devices: tuple[str, ...]


@dataclass(frozen=True)
class BackendSpec:
    name: str
    loader: str  # "module:function" taking (source, device, threads, options) -> Runner
    description: str
    probe: Callable[[], tuple[bool, str, tuple[str, ...]]]
    archs: tuple[str, ...] | None = None  # the architectures it runs (None: all)

    def runs(self, arch: str) -> bool:
        return self.archs is None or arch in self.archs


def _cuda() -> bool:
    return torch.cuda.is_available()


def _devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if _cuda() else ("cpu",)


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _probe_torch() -> tuple[bool, str, tuple[str, ...]]:
    return True, "PyTorch", _devices()


def _probe_compile() -> tuple[bool, str, tuple[str, ...]]:
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return False, "torch.compile's CPU backend needs a C++ compiler (install g++)", ()
    devs = ("cpu", "cuda") if _cuda() and _has("triton") else ("cpu",)
    return True, "torch.compile (inductor)", devs


def _probe_onnxruntime() -> tuple[bool, str, tuple[str, ...]]:
    if not _has("onnxruntime"):
        return False, "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu)", ()
    if not _has("export"):
        return False, "the export package (ONNX export) is not importable", ()
    devs = ["cpu"]
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers() and _cuda():
            devs.append("cuda")
    except Exception as exc:  # a broken install: say so
        return False, f"onnxruntime cannot be imported: {exc}", ()
    return True, "ONNX Runtime (exported, parity-gated graphs)", tuple(devs)


def _probe_tensorrt() -> tuple[bool, str, tuple[str, ...]]:
    if not _has("tensorrt"):
        return False, "TensorRT is not installed (the gpu extra: pip install 'nfkd[gpu]', on a CUDA machine)", ()
    if not _cuda():
        return False, "TensorRT needs a CUDA GPU; none is visible", ()
    return True, "TensorRT engines (export.trt)", ("cuda",)


def _probe_triton() -> tuple[bool, str, tuple[str, ...]]:
    if not _has("triton") or not _has("kernels"):
        return False, "triton is not installed (it comes with CUDA builds of torch)", ()
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "Triton kernels in the interpreter (TRITON_INTERPRET=1: CPU tensors, slow)", ("cpu",)
    if not _cuda():
        return False, "the Triton kernels need a CUDA GPU (TRITON_INTERPRET=1 runs them slowly on CPU for tests)", ()
    return True, "fused Triton kernels", ("cuda",)


def _probe_numba() -> tuple[bool, str, tuple[str, ...]]:
    if not _has("numba"):
        return False, "numba is not installed (pip install 'nfkd[cpu]')", ()
    if not _has("kernels"):
        return False, "the kernels package (kernels.cpu_engine) is not importable", ()
    return True, "fused CPU kernels (numba) over the folded form: Glow-1D, MAF and IAF", ("cpu",)


BACKENDS: dict[str, BackendSpec] = {s.name: s for s in (
    BackendSpec("eager", "nfkd.inference.sources:load_eager", "the trained flow as it is", _probe_torch),
    BackendSpec("folded", "nfkd.inference.sources:load_folded", "nfkd.fold's inference form in PyTorch", _probe_torch),
    BackendSpec("compile", "nfkd.inference.sources:load_compiled", "torch.compile of the folded form", _probe_compile),
    BackendSpec("onnxruntime", "export.backends:load_onnxruntime", "ONNX Runtime over the exported graphs",
                _probe_onnxruntime),
    BackendSpec("tensorrt", "export.backends:load_tensorrt", "TensorRT engines built by export.trt", _probe_tensorrt),
    BackendSpec("triton", "kernels.backend:load_triton", "fused Triton kernels over the folded form", _probe_triton,
                archs=("glow", "glow1d", "maf", "iaf")),
    BackendSpec("numba", "kernels.cpu_backend:load_cpu_engine", "fused numba CPU kernels over the folded form "
                "(Glow-1D, MAF, IAF)", _probe_numba, archs=("glow1d", "maf", "iaf")),
)}


def status(name: str) -> BackendStatus:
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)} or 'auto'")
    ok, why, devs = BACKENDS[name].probe()
    return BackendStatus(name, ok, why, devs)


def backends() -> list[BackendStatus]:
    """Every backend with whether it can run here and, if not, why."""
    return [status(name) for name in BACKENDS]


def loader(name: str) -> Callable[..., Any]:
    module, func = BACKENDS[name].loader.split(":")
    return getattr(importlib.import_module(module), func)


_RANKING_FILE = Path(__file__).with_name("ranking.json")


def ranking(device: str, arch: str) -> list[str]:
    """Backends fastest first for a device and architecture, from the recorded benchmark (ranking.json)."""
    data = json.loads(_RANKING_FILE.read_text())
    per_device = data["ranking"].get(device.split(":")[0], {})
    order = per_device.get(arch) or per_device.get("default") or []
    return [*order, *(b for b in ("folded", "eager") if b not in order)]
