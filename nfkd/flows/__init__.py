"""Flows: one protocol (``nfkd.flows.base.Flow``) for Glow, Glow-1D, MAF and IAF."""
from __future__ import annotations

from .base import Flow, FlowOutput, InverseOutput, standard_normal_logpdf
from .glow import Glow, Glow1D, bits_per_dim
from .iaf import IAF
from .maf import MAF

__all__ = [
    "ARCHITECTURES", "Flow", "FlowOutput", "InverseOutput", "Glow", "Glow1D", "IAF", "MAF",
    "bits_per_dim", "build_flow", "initialize_actnorm", "standard_normal_logpdf",
]

ARCHITECTURES: dict[str, type[Flow]] = {"glow": Glow, "glow1d": Glow1D, "maf": MAF, "iaf": IAF}


def build_flow(arch: str, **config) -> Flow:
    """Rebuild a flow from its architecture name and config (what checkpoints store)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**config)


def initialize_actnorm(flow: Flow, x) -> None:
    """Run the data-dependent ActNorm init on one batch (call before DDP wrapping)."""
    import torch

    was_training = flow.training
    flow.train()
    with torch.no_grad():
        flow(x)
    flow.train(was_training)
