"""Named distillation recipes: what ``nfkd experiment --methods`` compares and ``nfkd demo`` uses.

A variant is a KD method plus its options (scale, alignment, initialisation). The paper's methods
are kept exactly as published (``lkd``, ``ilkd``, ``skd`` at the paper code's scale); ``:mean``
rows are the same losses at this toolkit's earlier per-dimension-mean scale, for comparison.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InputError
from ..flows import flow_class
from .objective import KDConfig
from .recipe import share_config

__all__ = ["Variant", "demo_recipe", "get_variant", "describe_variants"]


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    kd: dict[str, Any] = field(default_factory=dict)
    about: str = ""
    student_arch: str | None = None  # None: the teacher's architecture; "iaf": a parallel-sampling student
    teacher_share: str | float | None = None  # "rule": maximum likelihood + teacher samples by ``recipe``'s rule
    data_free: bool = False  # train and select on the teacher's samples only (``datafree``)
    size: str = "student"  # "teacher": a student of the teacher's size (``convert``)

    def applies_to(self, arch: str) -> bool:
        """Whether a teacher of this architecture can be distilled with this recipe."""
        return self.student_arch is None or arch in flow_class(self.student_arch).student_of

    @property
    def fresh_only(self) -> bool:
        """Whether the student cannot continue the teacher-architecture base student (warm start)."""
        return self.student_arch is not None or self.data_free or self.size != "student"

    def config(self, n_train: int | None = None, **overrides: Any) -> KDConfig:
        """The KD config; share recipes resolve their teacher share from the training rows."""
        if self.teacher_share is not None:
            if n_train is None:
                raise ValueError(f"variant {self.name!r} needs the number of training rows")
            share = None if self.teacher_share == "rule" else float(self.teacher_share)
            return share_config(n_train, share, seed=overrides.get("seed", 0))
        return replace(KDConfig(**self.kd), **overrides)


#: The score variants' weight λ1 (λ0 = 1). The per-dim squared score gap of a trained student is 40-300 (the
#: teachers' densities are sharp in normalized units), so 1e-3 puts it at 0.05-0.3 nats per dim; chosen on
#: seed 0's *validation* NLL (weights 1e-4 ... 1): the best non-zero weight tried on MAGIC glow1d, MAGIC maf and
#: breast_cancer alike. On test (3 seeds) it changed MAGIC by at most 0.03 nats and lost on breast_cancer
#: (docs/experiments.md, "Score (Sobolev) distillation").
SCORE_WEIGHT = 1e-3

_ALL = [
    Variant("none", "Student (no KD)", {"method": "none"}, "maximum likelihood on the data alone"),
    Variant("lkd", "Student + LKD", {"method": "lkd"}, "paper: final-latent distance, weights (1, 1, 0)"),
    Variant("ilkd", "Student + ILKD", {"method": "ilkd"}, "paper: aligned intermediate latents, (0.9, 0.1, 0)"),
    Variant("skd", "Student + SKD", {"method": "skd"}, "paper: ILKD + samples from shared noise, (0.85, 0.075, 0.075)"),
    Variant("lkd:mean", "LKD, mean scale", {"method": "lkd", "kd_scale": "mean"}, "LKD at the old D-times-stronger scale"),
    Variant("ilkd:mean", "ILKD, mean scale", {"method": "ilkd", "kd_scale": "mean"}, "ILKD at the old scale"),
    Variant("skd:mean", "SKD, mean scale", {"method": "skd", "kd_scale": "mean"}, "SKD at the old scale"),
    Variant("ilkd-aligned", "ILKD, Procrustes", {"method": "ilkd", "align": True, "kd_scale": "mean"},
            "ILKD after an orthogonal map per tap (re-fitted every 50 steps), mean scale"),
    Variant("skd-aligned", "SKD, Procrustes", {"method": "skd", "align": True, "kd_scale": "mean"},
            "SKD with aligned ILKD and rotated noise, mean scale"),
    Variant("density", "Density matching", {"method": "density", "teacher_pool": 50_000},
            "NLL + squared per-dim log-density gap on data and teacher samples"),
    Variant("fkl", "Forward KL (teacher samples)", {"method": "fkl", "teacher_pool": 50_000},
            "half the loss is NLL on a stream of teacher samples (a 50k pool)"),
    Variant("fkl:0.2", "Forward KL, 20 % teacher samples", {"method": "fkl", "teacher_pool": 50_000,
                                                            "weights": (0.8, 0.2, 0.0)},
            "a fifth of the loss is NLL on the teacher's samples, the rest on data"),
    Variant("score", "Score matching (Sobolev)", {"method": "score", "weights": (1.0, SCORE_WEIGHT, 0.0)},
            "NLL + squared gap of the input gradients ∇x log p (student vs teacher, normalized units) on the data "
            "batch: D targets per row (Sobolev training)"),
    Variant("score:0.01", "Score matching, weight 0.01", {"method": "score", "weights": (1.0, 0.01, 0.0)},
            "the score term at 10x the default weight"),
    Variant("score+samples", "Score matching, data + teacher samples",
            {"method": "score", "weights": (1.0, SCORE_WEIGHT, 0.0), "teacher_pool": 50_000},
            "the score gap on the data batch and on as many teacher samples (a 50k pool)"),
    Variant("init", "Init from teacher", {"method": "none", "init_from_teacher": True},
            "no-KD student started from the paired teacher blocks"),
    Variant("fkl+init", "Forward KL + init", {"method": "fkl", "teacher_pool": 50_000, "init_from_teacher": True},
            "forward KL, started from the paired teacher blocks"),
    Variant("iaf", "IAF student (recipe)", {},
            "MAF teacher only: IAF student (one-pass sampling) by maximum likelihood, on the data mixed with teacher "
            "samples by the share rule (0.5 below 1000 training rows, else 0)", student_arch="iaf", teacher_share="rule"),
    Variant("iaf:mle", "IAF student, maximum likelihood on data", {},
            "MAF teacher only: IAF student by maximum likelihood on the data alone", student_arch="iaf",
            teacher_share=0.0),
    Variant("iaf:half", "IAF student, half teacher samples", {},
            "MAF teacher only: IAF student by maximum likelihood, half of every batch teacher samples",
            student_arch="iaf", teacher_share=0.5),
    Variant("iaf:teacher-size", "IAF of the teacher's size (convert)", {},
            "MAF teacher only: an IAF of the teacher's own size by the recipe (python -m nfkd convert --to iaf)",
            student_arch="iaf", teacher_share="rule", size="teacher"),
    Variant("data-free", "Data-free student", {"method": "none"},
            "student of the teacher's architecture, maximum likelihood on teacher samples only (train and select)",
            data_free=True),
    Variant("iaf:data-free", "IAF student, data-free", {"method": "none"},
            "MAF teacher only: IAF student by maximum likelihood on teacher samples only", student_arch="iaf",
            data_free=True),
    Variant("iaf:rkl+skd", "IAF student, reverse KL + SKD", {"method": "rkl+skd", "teacher_pool": 4096},
            "MAF teacher only: IAF student, reverse KL + SKD (4096 cached teacher samples): the issue-17 recipe, "
            "mode-seeking", student_arch="iaf"),
    Variant("iaf+nll", "IAF student, reverse KL + SKD + NLL",
            {"method": "rkl+skd", "teacher_pool": 4096, "weights": (0.1, 1.0, 1.0)},
            "MAF teacher only: IAF student, reverse KL + SKD + 0.1 NLL on data (D passes per step: covers the "
            "data that reverse KL, which seeks modes, leaves out)", student_arch="iaf"),
    Variant("iaf:rkl", "IAF student, reverse KL", {"method": "rkl"},
            "MAF teacher only: IAF student, probability density distillation alone", student_arch="iaf"),
    Variant("iaf:skd", "IAF student, SKD", {"method": "skd", "teacher_pool": 4096},
            "MAF teacher only: IAF student, shared-noise sample distance alone", student_arch="iaf"),
]
VARIANTS: dict[str, Variant] = {v.name: v for v in _ALL}
PAPER_VARIANTS = ["none", "lkd", "ilkd", "skd"]


def demo_recipe(arch: str, n_train: int | None = None) -> tuple[str, str, str]:
    """(method, protocol, why) that ``nfkd demo`` distils with: the defaults table's warm-start row where
    one was measured (the demo trains a no-KD student anyway), else its equal-budget row (``nfkd.defaults``).

    ``n_train`` None: the demo's embedded tables, which are small.
    """
    from ..defaults import recommend

    d = recommend(arch, n_train, "warm-start")
    return d.method, d.protocol, f"{d.why}: {d.measured}"


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise InputError(f"unknown method {name!r}; choose from: {', '.join(VARIANTS)} (list: --methods)")
    return VARIANTS[name]


def describe_variants() -> str:
    width = max(map(len, VARIANTS))
    return "\n".join(f"{v.name:<{width}}  {v.about}" for v in _ALL)
