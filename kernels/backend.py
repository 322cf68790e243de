"""The ``triton`` backend of ``nfkd.inference``: the fused kernels over the folded form.

On CUDA the kernels are compiled; under ``TRITON_INTERPRET=1`` they run in Triton's interpreter
on CPU tensors (how the tests check them without a GPU).
"""
from __future__ import annotations

from typing import Any

import torch

from nfkd.errors import InputError
from nfkd.inference.runner import Runner

__all__ = ["TritonRunner", "load_triton"]


class TritonRunner(Runner):
    backend = "triton"

    def __init__(self, folded, meta, device: str, threads: int | None) -> None:
        super().__init__(meta, device, threads)
        self.folded = folded

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        from .dispatch import fast_log_prob, use_kernels

        with use_kernels(True):
            return fast_log_prob(self.folded, x, validate=False)

    def _decode(self, noise: list[torch.Tensor], temperature: float) -> torch.Tensor:
        from .dispatch import fast_sample, use_kernels

        with use_kernels(True):
            return fast_sample(self.folded, noise, temperature)


def load_triton(source, device: str, threads: int | None, options: dict[str, Any]) -> TritonRunner:
    from nfkd.fold import fold

    from .dispatch import _kernel_supported

    if source.flow is None:
        raise InputError("the triton backend runs the folded flow: pass the checkpoint (.pt) or a Flow")
    folded = fold(source.flow, torch.float32).to(device)
    ops = [op for op in ("log_prob", "sample") if _kernel_supported(folded, op)]
    if not ops:
        raise InputError(f"the Triton kernels do not cover this {source.meta.arch} model on {device} (see "
                         f"kernels/README.md for the supported sizes); use backend='folded' or 'auto'")
    runner = TritonRunner(folded, source.meta, device, threads)
    runner.meta.extra["kernel_ops"] = ops  # an op without a checked configuration runs the folded PyTorch path
    return runner
