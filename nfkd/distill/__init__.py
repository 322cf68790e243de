"""Knowledge distillation of normalizing flows (Walton et al., eq. 15) and gauge-free alternatives.

- ``objective``: the per-step student loss (NLL, (I)LKD, SKD, density matching, forward KL, score matching);
- ``pairing``: which taps are compared, in canonical feature order;
- ``align``: Procrustes alignment of latents (the rotation gauge);
- ``init``: ``--init-from-teacher``;
- ``parallel``: reverse KL / SKD for a parallel-sampling (IAF) student of a MAF teacher;
- ``variants``: the named recipes that ``nfkd experiment --methods`` compares.
"""
from __future__ import annotations

from .align import Aligner, procrustes
from .init import init_from_teacher
from .objective import KD_SCALES, METHODS, PAPER_WEIGHTS, KDConfig, LossTerms, StudentObjective, distance
from .pairing import aligned_teacher_index, pair_taps
from .parallel import PARALLEL_METHODS, ParallelObjective, build_objective, default_weights, reverse_kl

__all__ = [
    "Aligner", "KDConfig", "KD_SCALES", "LossTerms", "METHODS", "PAPER_WEIGHTS", "PARALLEL_METHODS",
    "ParallelObjective", "StudentObjective", "aligned_teacher_index", "build_objective", "default_weights",
    "distance", "init_from_teacher", "pair_taps", "procrustes", "reverse_kl",
]
