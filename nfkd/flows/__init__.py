"""Flows: one protocol (``nfkd.flows.base.Flow``) for Glow, Glow-1D, MAF and IAF.

A new architecture is one ``Flow`` subclass (its class attributes say what the rest of nfkd needs:
``tabular``, ``depth_key``, ``one_pass_density`` / ``one_pass_sampling``, ``student_of``, ``presets``)
plus one line here or one ``register_architecture(MyFlow)`` call. Nothing else compares names.
"""
from __future__ import annotations

from .base import Flow, FlowOutput, InverseOutput, standard_normal_logpdf
from .glow import Glow, Glow1D, bits_per_dim
from .iaf import IAF
from .maf import MAF

__all__ = [
    "ARCHITECTURES", "Flow", "FlowOutput", "InverseOutput", "Glow", "Glow1D", "IAF", "MAF",
    "bits_per_dim", "build_flow", "initialize_actnorm", "register_architecture", "standard_normal_logpdf",
    "flow_class", "architectures",
]

ARCHITECTURES: dict[str, type[Flow]] = {"glow": Glow, "glow1d": Glow1D, "maf": MAF, "iaf": IAF}


def register_architecture(cls: type[Flow]) -> type[Flow]:
    """Make a ``Flow`` subclass buildable by its ``arch`` name (CLI choices, checkpoints, presets, fold, export).

    Usable as a class decorator. A name taken by a different class is refused (one clear error);
    re-registering the same class is a no-op. The one line a new architecture needs.
    """
    if not (isinstance(cls, type) and issubclass(cls, Flow)):
        raise TypeError(f"register_architecture expects a Flow subclass, got {cls!r}")
    name = cls.arch
    if not name or name == Flow.arch:
        raise ValueError(f"{cls.__name__} needs a class attribute arch = '<name>'")
    if ARCHITECTURES.get(name, cls) is not cls:
        raise ValueError(f"architecture {name!r} is already {ARCHITECTURES[name].__name__}")
    ARCHITECTURES[name] = cls
    return cls


def flow_class(arch: str) -> type[Flow]:
    """The class registered under ``arch`` (one clear error for an unknown name)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def architectures(tabular: bool | None = None, teacher: bool | None = None) -> list[str]:
    """Registered names, optionally only tabular (or image) ones, or only those that train as teachers
    (a student-only architecture, such as IAF, names its teachers in ``student_of``): CLI choices."""
    return [name for name, cls in ARCHITECTURES.items()
            if (tabular is None or cls.tabular == tabular) and (teacher is None or (not cls.student_of) == teacher)]


def build_flow(arch: str, **config) -> Flow:
    """Rebuild a flow from its architecture name and config (what checkpoints store)."""
    return flow_class(arch)(**config)


def initialize_actnorm(flow: Flow, x) -> None:
    """Run the data-dependent ActNorm init on one batch (call before DDP wrapping)."""
    import torch

    was_training = flow.training
    flow.train()
    with torch.no_grad():
        flow(x)
    flow.train(was_training)
