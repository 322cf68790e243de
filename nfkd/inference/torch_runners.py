"""PyTorch backends: ``eager`` (the trained flow), ``folded`` (``nfkd.fold``), ``compile`` (inductor).

All three run the one flow code (``nfkd.flows``); they differ only in which module runs it and
whether torch.compile traces it. Their probes, loaders and Runners live here together (the
registry names them as ``"nfkd.inference.torch_runners:..."``).
"""
from __future__ import annotations

import copy
import shutil
from typing import Any

import torch

from ..flows import Flow
from ..flows.layers import MADE
from . import registry
from .runner import ModelMeta, Runner
from .sources import ModelSource, trained_flow

__all__ = ["TorchRunner", "CompiledRunner", "probe_torch", "probe_compile", "load_eager", "load_folded",
           "load_compiled"]


def probe_torch() -> tuple[bool, str, tuple[str, ...]]:
    return True, "PyTorch", registry.cuda_devices()


def probe_compile() -> tuple[bool, str, tuple[str, ...]]:
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return False, "torch.compile's CPU backend needs a C++ compiler (install g++)", ()
    devs = registry.cuda_devices() if registry.has_module("triton") else ("cpu",)
    return True, "torch.compile (inductor)", devs


class TorchRunner(Runner):
    """A flow (trained or folded) called directly, under ``no_grad``, float32."""

    def __init__(self, model: Flow, meta: ModelMeta, backend: str, device: str, threads: int | None) -> None:
        super().__init__(meta, device, threads)
        self.backend = backend
        self.model = model.to(device=device, dtype=torch.float32).eval()

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.pin_threads()
        with torch.no_grad():
            return self.model.log_prob_unchecked(x)

    def _decode(self, noise: list[torch.Tensor], temperature: float) -> torch.Tensor:
        self.pin_threads()
        with torch.no_grad():
            return self.model.inverse([z * temperature for z in noise]).x


class CompiledRunner(TorchRunner):
    """``torch.compile`` of the folded flow's two directions (dynamic batch, compiled on first call).

    Autoregressive sampling (MADE: D sequential passes per block) compiles the one pass and keeps
    the loop in Python: unrolling blocks x D passes into one graph takes minutes to compile.
    """

    def __init__(self, model: Flow, meta: ModelMeta, device: str, threads: int | None) -> None:
        super().__init__(model, meta, "compile", device, threads)
        self._lp = torch.compile(self.model.log_prob_unchecked, dynamic=True)
        mades = [m for m in self.model.modules() if isinstance(m, MADE)]
        for made in mades:
            made._inverse_pass = torch.compile(made._inverse_pass, dynamic=True)

        def inverse(noise: list[torch.Tensor]) -> torch.Tensor:
            return self.model.inverse(noise).x

        self._inv = inverse if mades else torch.compile(inverse, dynamic=True)

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.pin_threads()
        with torch.no_grad():
            return self._lp(x)

    def _decode(self, noise: list[torch.Tensor], temperature: float) -> torch.Tensor:
        self.pin_threads()
        with torch.no_grad():
            return self._inv([z * temperature for z in noise])


def load_eager(source: ModelSource, device: str, threads: int | None, options: dict[str, Any]) -> TorchRunner:
    return TorchRunner(copy.deepcopy(trained_flow(source, "eager")), source.meta, "eager", device, threads)


def load_folded(source: ModelSource, device: str, threads: int | None, options: dict[str, Any]) -> TorchRunner:
    from ..fold import fold

    return TorchRunner(fold(trained_flow(source, "folded")), source.meta, "folded", device, threads)


def load_compiled(source: ModelSource, device: str, threads: int | None, options: dict[str, Any]) -> CompiledRunner:
    from ..fold import fold

    return CompiledRunner(fold(trained_flow(source, "compile")), source.meta, device, threads)
