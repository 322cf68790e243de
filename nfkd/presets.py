"""Architectures of teachers and students: the paper's configurations and small CPU versions.

Paper (Walton et al., Tables 3 and 5): tabular Glow L=1 with teacher hidden 64 / student hidden
32 (the official code: teacher K=5 h=32, student K=3 h=16); MAF teacher K=6 / student K=3,
hidden 32; CIFAR-10 Glow teacher K=32 / student K=8, hidden 512, L=3 (the official config).
For CelebA-64 we keep K and hidden and use L=4 (64 = 4 x the 16-pixel CIFAR top after 3 levels
... halved once more), a choice of ours: the paper does not fix it in the text we follow.
"""
from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # name -> {"teacher": config, "student": config}; "dim"/"in_shape" come from the data.
    "glow1d-paper": {
        "teacher": {"arch": "glow1d", "steps": 5, "hidden": 64},
        "student": {"arch": "glow1d", "steps": 3, "hidden": 32},
    },
    "glow1d-official": {
        "teacher": {"arch": "glow1d", "steps": 5, "hidden": 32},
        "student": {"arch": "glow1d", "steps": 3, "hidden": 16},
    },
    "maf-paper": {
        "teacher": {"arch": "maf", "blocks": 6, "hidden": 32, "n_hidden": 2},
        "student": {"arch": "maf", "blocks": 3, "hidden": 32, "n_hidden": 2},
    },
    "glow-cifar10-paper": {
        "teacher": {"arch": "glow", "levels": 3, "steps": 32, "hidden": 512},
        "student": {"arch": "glow", "levels": 3, "steps": 8, "hidden": 512},
    },
    "glow-celeba-paper": {
        "teacher": {"arch": "glow", "levels": 4, "steps": 32, "hidden": 512},
        "student": {"arch": "glow", "levels": 4, "steps": 8, "hidden": 512},
    },
    # Same shapes, sized for 2 CPU cores.
    "glow1d-cpu": {
        "teacher": {"arch": "glow1d", "steps": 8, "hidden": 64},
        "student": {"arch": "glow1d", "steps": 2, "hidden": 16},
    },
    "maf-cpu": {
        "teacher": {"arch": "maf", "blocks": 6, "hidden": 64, "n_hidden": 2},
        "student": {"arch": "maf", "blocks": 2, "hidden": 16, "n_hidden": 2},
    },
    "glow-cpu": {
        "teacher": {"arch": "glow", "levels": 3, "steps": 4, "hidden": 64},
        "student": {"arch": "glow", "levels": 3, "steps": 2, "hidden": 32},
    },
}

DEFAULT_PRESET = {"glow1d": "glow1d-cpu", "maf": "maf-cpu", "glow": "glow-cpu"}


def resolve(arch: str, role: str, preset: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config (with 'arch') for a role ('teacher' or 'student') of a preset."""
    name = preset or DEFAULT_PRESET.get(arch)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    if role not in ("teacher", "student"):
        raise ValueError("role must be 'teacher' or 'student'")
    cfg = dict(PRESETS[name][role])
    if cfg["arch"] != arch:
        raise ValueError(f"preset {name!r} is for {cfg['arch']}, not {arch}")
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cfg
