"""Which teacher tap each student tap is compared with, and in which coordinate order.

Pairing is data (tap names), and every comparison happens in the *canonical* coordinate order of
the input features: a MAF block reverses (or shuffles) its features, so the raw coordinate k of a
student tap can be a different feature than coordinate k of the teacher's. Undoing each flow's
cumulative permutation makes two flows that compute the same map compare equal.
"""
from __future__ import annotations

import math

from torch import Tensor

from ..flows import Flow, Glow

__all__ = ["aligned_teacher_index", "pair_taps", "to_canonical", "from_canonical", "canonical_taps",
    "canonical_latents", "flow_noise"]


def aligned_teacher_index(i: int, k_student: int, k_teacher: int) -> int:
    """Teacher block paired with student block i: round((i+1)·K_t/K_s) − 1 (half rounds up)."""
    return int(math.floor((i + 1) * k_teacher / k_student + 0.5)) - 1


def pair_taps(teacher: Flow, student: Flow) -> list[tuple[str, str]]:
    """(student tap, teacher tap) pairs at aligned points.

    Glow images: the end of every level (teacher and student need the same number of levels).
    Tabular Glow / MAF: student block i <-> teacher block round((i+1)·K_t/K_s) − 1. The final
    block is the final latent, which ILKD adds separately, so it is not listed twice here.
    """
    if teacher.arch != student.arch:
        raise ValueError(f"teacher is {teacher.arch} but student is {student.arch}: taps cannot be aligned")
    if isinstance(student, Glow):
        s_names, t_names = student.tap_names(), teacher.tap_names()
        if len(s_names) != len(t_names):
            raise ValueError(f"Glow teacher has {len(t_names)} levels, student {len(s_names)}: they must match")
        return list(zip(s_names, t_names))
    k_s, k_t = len(student.tap_names()), len(teacher.tap_names())
    if k_s > k_t:
        raise ValueError(f"student has more blocks ({k_s}) than the teacher ({k_t})")
    return [(f"block{i}", f"block{aligned_teacher_index(i, k_s, k_t)}") for i in range(k_s - 1)]


def to_canonical(h: Tensor, order: Tensor | None) -> Tensor:
    """Reorder dim 1 so that column j holds canonical feature j (``order[k]`` = feature of column k)."""
    if order is None:
        return h
    inv = order.argsort().to(h.device)
    return h[:, inv]


def from_canonical(h: Tensor, order: Tensor | None) -> Tensor:
    """The inverse of ``to_canonical``: canonical noise -> a flow's own latent coordinates."""
    if order is None:
        return h
    return h[:, order.to(h.device)]


def canonical_taps(flow: Flow, taps: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    return {n: to_canonical(taps[n], flow.tap_permutation(n)) for n in names}


def canonical_latents(flow: Flow, latents: list[Tensor]) -> list[Tensor]:
    return [to_canonical(z, p) for z, p in zip(latents, flow.latent_permutations())]


def flow_noise(flow: Flow, canonical_noise: list[Tensor]) -> list[Tensor]:
    """Canonical noise in the flow's own latent order (so teacher and student decode the same draw)."""
    return [from_canonical(z, p) for z, p in zip(canonical_noise, flow.latent_permutations())]
