"""The one list of backends: what each can do, whether it is available here, and how to load it.

Every backend lives in one module that holds its ``probe`` (can it run here, and on which
devices), its loader ``load(source, device, threads, options) -> Runner`` and its Runner. The
registry names both as ``"module:function"`` and imports them only when asked, so ``nfkd`` never
imports ``export/`` or ``kernels/`` at module level. Everything else that needs to know about
backends (``load``, the service's ``--backend``, the benchmark suite and its ranking, the
trade-off table) reads the capabilities below instead of comparing names: adding a backend is its
module plus one line in ``BACKENDS`` (or ``register(spec)`` at run time).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..errors import InputError

__all__ = ["BackendSpec", "BackendStatus", "BACKENDS", "INPUTS", "NAMES", "backends", "status", "loader", "ranking",
           "register", "unregister", "canonical", "spec", "names", "has_module", "cuda_devices"]

#: What a backend may be given: a Flow object, a checkpoint file, an export folder (manifest.json).
INPUTS = ("flow", "checkpoint", "export")


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why not, when unavailable; what it runs on, when available
    devices: tuple[str, ...]


@dataclass(frozen=True)
class BackendSpec:
    """A backend's capabilities (static: true on every machine) and where its code lives."""

    name: str
    loader: str  # "module:function" taking (source, device, threads, options) -> Runner
    probe: str  # "module:function" -> (available, reason, devices where it runs here)
    description: str
    devices: tuple[str, ...] = ("cpu", "cuda")  # where it runs natively (a probe may add an emulated one)
    aliases: tuple[str, ...] = ()  # other names accepted for it (the service's historical "torch")
    inputs: tuple[str, ...] = ("flow", "checkpoint")  # + "export": runs export folders (a checkpoint is exported)
    native: str = "torch"  # the array kind its Runner computes on: "torch" or "numpy"
    archs: tuple[str, ...] | None = None  # the architectures it runs (None: all)
    compiles_per_model: bool = False  # traces and compiles each model on its first call (a long warm-up)
    uses_threads: bool = True  # takes a CPU thread count (False: a GPU engine ignores it)
    label: str = ""  # its name in tables and plots (default: the name)

    @property
    def title(self) -> str:
        return self.label or self.name

    def runs(self, arch: str) -> bool:
        return self.archs is None or arch in self.archs

    def accepts(self, kind: str) -> bool:
        """Whether it can be given a ``kind`` of model (one of ``INPUTS``)."""
        return kind in self.inputs

    @property
    def runs_exports(self) -> bool:
        """It runs an export (ONNX graphs / engines): a checkpoint or Flow is exported (parity-gated) first."""
        return "export" in self.inputs


_TORCH = "nfkd.inference.torch_runners"
BACKENDS: dict[str, BackendSpec] = {s.name: s for s in (
    BackendSpec("eager", f"{_TORCH}:load_eager", f"{_TORCH}:probe_torch", "the trained flow as it is",
                aliases=("torch",), label="eager PyTorch"),
    BackendSpec("folded", f"{_TORCH}:load_folded", f"{_TORCH}:probe_torch", "nfkd.fold's inference form in PyTorch",
                label="folded PyTorch"),
    BackendSpec("compile", f"{_TORCH}:load_compiled", f"{_TORCH}:probe_compile", "torch.compile of the folded form",
                compiles_per_model=True, label="torch.compile"),
    BackendSpec("onnxruntime", "export.runtime:load_onnxruntime", "export.runtime:probe_onnxruntime",
                "ONNX Runtime over the exported graphs", inputs=INPUTS, native="numpy", label="ONNX Runtime"),
    BackendSpec("tensorrt", "export.runtime:load_tensorrt", "export.runtime:probe_tensorrt",
                "TensorRT engines built by export.trt", devices=("cuda",), inputs=INPUTS, native="numpy",
                uses_threads=False, label="TensorRT"),
    BackendSpec("triton", "kernels.backend:load_triton", "kernels.backend:probe_triton",
                "fused Triton kernels over the folded form", devices=("cuda",), label="Triton kernels"),
    BackendSpec("numba", "kernels.cpu_backend:load_cpu_engine", "kernels.cpu_backend:probe_numba",
                "fused numba CPU kernels over the folded form (Glow-1D, MAF, IAF)", devices=("cpu",),
                native="numpy", archs=("glow1d", "maf", "iaf"), label="numba engine"),
)}


class _Names:
    """A live, read-only view of the registered names (argparse ``choices``, membership, iteration)."""

    def __init__(self, auto: bool, aliases: bool) -> None:
        self.auto, self.aliases = auto, aliases

    def _all(self) -> tuple[str, ...]:
        out = ["auto"] if self.auto else []
        for s in BACKENDS.values():
            out += [s.name, *(s.aliases if self.aliases else ())]
        return tuple(out)

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __len__(self) -> int:
        return len(self._all())

    def __getitem__(self, i):
        return self._all()[i]

    def __repr__(self) -> str:
        return repr(self._all())


def names(auto: bool = False, aliases: bool = False) -> _Names:
    """Every registered backend name (live: a later ``register`` shows), with 'auto' and aliases if asked."""
    return _Names(auto, aliases)


#: What a user may type for a backend: 'auto', every name and every alias (live).
NAMES = names(auto=True, aliases=True)


def canonical(name: str) -> str:
    """The registered name for ``name`` or one of its aliases ('auto' as it is); an unknown name is refused."""
    if name == "auto" or name in BACKENDS:
        return name
    for s in BACKENDS.values():
        if name in s.aliases:
            return s.name
    raise InputError(f"unknown backend {name!r}; choose 'auto' or one of {list(names(aliases=True))}")


def spec(name: str) -> BackendSpec:
    """The spec of a backend by name or alias."""
    return BACKENDS[canonical(name)]


def register(new: BackendSpec, replace: bool = False) -> None:
    """Add a backend (its module holds probe, loader and Runner); ``replace`` swaps one of the same name."""
    taken = {a: s.name for s in BACKENDS.values() for a in (s.name, *s.aliases) if s.name != new.name or not replace}
    clash = [n for n in (new.name, *new.aliases) if n in taken or n == "auto"]
    if clash:
        raise ValueError(f"backend name(s) {clash} are taken")
    for field_name, value in (("loader", new.loader), ("probe", new.probe)):
        if value.count(":") != 1:
            raise ValueError(f"{field_name} must be 'module:function', got {value!r}")
    if new.native not in ("torch", "numpy") or set(new.inputs) - set(INPUTS):
        raise ValueError(f"native must be 'torch' or 'numpy' and inputs among {INPUTS}")
    BACKENDS[new.name] = new


def unregister(name: str) -> None:
    BACKENDS.pop(name, None)


def _function(ref: str) -> Callable[..., Any]:
    module, func = ref.split(":")
    return getattr(importlib.import_module(module), func)


def status(name: str) -> BackendStatus:
    s = spec(name)
    try:
        probe = _function(s.probe)
    except ImportError as exc:  # its package is absent from this install (e.g. export/ without onnx)
        return BackendStatus(s.name, False, f"{s.probe.split(':')[0]} cannot be imported here: {exc}", ())
    ok, why, devs = probe()
    return BackendStatus(s.name, ok, why, tuple(devs))


def backends() -> list[BackendStatus]:
    """Every backend with whether it can run here and, if not, why."""
    return [status(name) for name in BACKENDS]


def loader(name: str) -> Callable[..., Any]:
    return _function(spec(name).loader)


# --- helpers the probes share ------------------------------------------------------------------
def has_module(module: str) -> bool:
    """Whether ``module`` is installed (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cuda_devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


_RANKING_FILE = Path(__file__).with_name("ranking.json")


def ranking(device: str, arch: str) -> list[str]:
    """Backends fastest first for a device and architecture, from the recorded benchmark (ranking.json)."""
    data = json.loads(_RANKING_FILE.read_text())
    per_device = data["ranking"].get(device.split(":")[0], {})
    order = per_device.get(arch) or per_device.get("default") or []
    return [*order, *(b for b in ("folded", "eager") if b not in order)]
