"""Architectures of teachers and students: the paper's configurations and small CPU versions.

Paper (Walton et al., Tables 3 and 5): tabular Glow L=1 with teacher hidden 64 / student hidden
32 and, as in the paper's code, couplings with 5 hidden layers: ``glow1d-paper`` then has exactly
the paper's Table 2 sizes at D = 6 (student 13.8k, teacher 86.7k parameters, counting the
strictly triangular LU entries only; ``effective_parameters``). The official code's own config
(teacher K=5 h=32, student K=3 h=16, same depth) is ``glow1d-official``. MAF teacher K=6 / student K=3,
hidden 32 (``iaf-paper``: the same MAF teacher with an IAF student of the MAF student's size); CIFAR-10
Glow teacher K=32 / student K=8, hidden 512, L=3 (the official config).
For CelebA-64 we keep K and hidden and use L=4 (64 = 4 x the 16-pixel CIFAR top after 3 levels
... halved once more), a choice of ours: the paper does not fix it in the text we follow.

The tables hang off the flow classes (``Glow1D.presets``, ``MAF.presets`` ...): a registered
architecture brings its own, and ``PRESETS`` reads them all.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["student_preset", "resolve", "effective_parameters", "parameter_table"]


class _Presets(Mapping):
    """Every registered architecture's ``presets`` (class attribute), read live: a registered flow's show up."""

    def _table(self) -> dict[str, dict[str, dict[str, Any]]]:
        from .flows import ARCHITECTURES

        return {name: p for cls in ARCHITECTURES.values() for name, p in cls.presets.items()}

    def __getitem__(self, name: str) -> dict[str, dict[str, Any]]:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


#: name -> {"teacher": config, "student": config} ("dim"/"in_shape" come from the data); on the flow classes.
PRESETS: Mapping[str, dict[str, dict[str, Any]]] = _Presets()


def student_preset(preset: str | None, student_arch: str) -> str | None:
    """The preset of a student of ``student_arch`` under a teacher preset (an IAF beside a MAF preset)."""
    from .flows import flow_class

    return flow_class(student_arch).preset_beside(preset)


def resolve(arch: str, role: str, preset: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config (with 'arch') for a role ('teacher' or 'student') of a preset."""
    from .flows import flow_class

    if role not in ("teacher", "student"):
        raise ValueError("role must be 'teacher' or 'student'")
    name = preset or flow_class(arch).default_preset
    if name is None:  # an architecture without presets: its class defaults
        cfg: dict[str, Any] = {"arch": arch}
    elif name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    else:
        cfg = dict(PRESETS[name][role])
        if cfg["arch"] != arch:
            raise ValueError(f"preset {name!r} is for {cfg['arch']}, not {arch}")
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cfg


#: The paper's tabular dimensionalities (POWER, GAS, HEPMASS, MINIBOONE, BSDS300).
PAPER_DIMS = (6, 8, 21, 43, 63)


def effective_parameters(flow: torch.nn.Module) -> int:
    """Trainable parameters that can change the map: the LU factors' masked-out entries do not count.

    ``LUInvertibleLinear`` stores full C x C ``lower``/``upper`` tensors but uses only their strict
    triangles (C(C−1) entries together); the paper's parameter counts are of this kind.
    """
    from .flows.layers import LUInvertibleLinear

    n = sum(p.numel() for p in flow.parameters())
    for m in flow.modules():
        if isinstance(m, LUInvertibleLinear):
            c = m.log_s.numel()
            n -= m.lower.numel() + m.upper.numel() - c * (c - 1)
    return n


def parameter_table(names: list[str] | None = None, dims: tuple[int, ...] = PAPER_DIMS) -> str:
    """Teacher and student sizes of tabular presets at each D (effective / stored parameters)."""
    from .flows import build_flow, flow_class

    names = names or [n for n, p in PRESETS.items() if flow_class(p["teacher"]["arch"]).tabular]
    lines = ["| preset | D | student params | teacher params |", "|---|---:|---:|---:|"]
    for name in names:
        for d in dims:
            cells = []
            for role in ("student", "teacher"):
                cfg = dict(PRESETS[name][role])
                flow = build_flow(cfg.pop("arch"), dim=d, **cfg)
                cells.append(f"{effective_parameters(flow) / 1000:.1f}k ({flow.num_parameters():,})")
            lines.append(f"| {name} | {d} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"
