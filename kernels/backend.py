"""The ``triton`` backend of ``nfkd.inference``: its probe, loader and Runner over the fused kernels.

Everything is decided once, at load: the flow is folded (float32, on the device), its weights
are packed into the kernels' layout (``kernels.tabular.pack`` / ``kernels.glow_step.pack``), and
each direction is bound either to its kernel or, where the kernels have no checked launch
configuration for this flow (``kernels/configs.py``; an IAF's density), to the folded PyTorch
path. A call is then ``Runner._log_prob -> packed launcher -> kernel``: no switch, no cache, no
scan of the parameters. The Runner owns its packed buffers (a snapshot: training the flow after
``load`` does not change it; load again).

On CUDA the kernels are compiled; under ``TRITON_INTERPRET=1`` they run in Triton's interpreter
on CPU tensors (how the tests check them without a GPU).
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable

import torch

from nfkd.errors import InputError
from nfkd.inference import registry
from nfkd.inference.runner import Runner

__all__ = ["TritonRunner", "load_triton", "probe_triton", "kernel_ops"]

OPS = ("log_prob", "sample")


def probe_triton() -> tuple[bool, str, tuple[str, ...]]:
    if not registry.has_module("triton"):
        return False, "triton is not installed (it comes with CUDA builds of torch)", ()
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "Triton kernels in the interpreter (TRITON_INTERPRET=1: CPU tensors, slow)", ("cpu",)
    if "cuda" not in registry.cuda_devices():
        return False, "the Triton kernels need a CUDA GPU (TRITON_INTERPRET=1 runs them slowly on CPU for tests)", ()
    return True, "fused Triton kernels", ("cuda",)


def kernel_ops(folded) -> list[str]:
    """The directions (``"log_prob"``, ``"sample"``) whose kernels run this folded float32 flow on its device."""
    if folded.dtype != torch.float32:
        return []
    if not folded.tabular:  # images: the Glow step kernels
        from .glow_step import supports

        return list(OPS) if supports(folded) else []
    from .tabular import supports

    return [op for op in OPS if supports(folded, (op,))]


def _bind(folded, ops: list[str]) -> tuple[Callable, Callable]:
    """(log_prob(x), decode(noise, temperature)): the packed kernel launchers for ``ops``, PyTorch for the rest."""

    def torch_log_prob(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return folded.log_prob(x)

    def torch_decode(noise: list[torch.Tensor], temperature: float) -> torch.Tensor:
        with torch.no_grad():
            return folded.sample(noise[0].shape[0], temperature=temperature, noise=noise)

    if not ops:
        return torch_log_prob, torch_decode
    if not folded.tabular:  # images: the Glow step kernels
        from .glow_step import glow_log_prob_triton, glow_sample_triton, pack

        gp = pack(folded)
        return partial(glow_log_prob_triton, gp), partial(glow_sample_triton, gp)
    from . import tabular

    p = tabular.pack(folded)
    return (partial(tabular.tabular_log_prob, p) if "log_prob" in ops else torch_log_prob,
            partial(tabular.SAMPLERS[p.arch], p) if "sample" in ops else torch_decode)


class TritonRunner(Runner):
    """The fused kernels over packed buffers it owns (see the module docstring)."""

    backend = "triton"

    def __init__(self, folded, meta, device: str, threads: int | None, ops: list[str]) -> None:
        super().__init__(meta, device, threads)
        self.folded = folded
        self.ops = list(ops)
        self._lp, self._dec = _bind(folded, self.ops)

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self._lp(x)

    def _decode(self, noise: list[torch.Tensor], temperature: float) -> torch.Tensor:
        return self._dec(noise, temperature)


def load_triton(source, device: str, threads: int | None, options: dict[str, Any]) -> TritonRunner:
    from nfkd.fold import fold

    if source.flow is None:
        raise InputError("the triton backend runs the folded flow: pass the checkpoint (.pt) or a Flow")
    folded = fold(source.flow, torch.float32).to(device)
    ops = kernel_ops(folded)
    if not ops:
        raise InputError(f"the Triton kernels do not cover this {source.meta.arch} model on {device} (see "
                         f"kernels/README.md for the supported sizes); use backend='folded' or 'auto'")
    runner = TritonRunner(folded, source.meta, device, threads, ops)
    runner.meta.extra["kernel_ops"] = ops  # an op without a checked configuration runs the folded PyTorch path
    return runner
