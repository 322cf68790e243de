"""``--init-from-teacher``: start the student from the paired teacher blocks.

Like a distilled transformer that starts from every k-th teacher layer: student block i takes the
state of teacher block round((i+1)·K_t/K_s) − 1, one sub-module at a time (ActNorm, LU mixing,
permutation, coupling / MADE net), and only where every tensor of that sub-module has the same
shape; a coupling net of another width keeps its own (zero-output) initialisation. With
K_s = K_t and equal widths the student *is* the teacher. Glow images pair steps within each level
and also take the split priors and the top prior.
"""
from __future__ import annotations

from torch import nn

from ..flows import Flow, Glow
from ..flows.base import ChainFlow
from .pairing import aligned_teacher_index

__all__ = ["copy_matching", "init_from_teacher"]


def copy_matching(dst: nn.Module, src: nn.Module) -> bool:
    """Copy src's state into dst if every entry matches by name and shape; report whether it did."""
    d, s = dst.state_dict(), src.state_dict()
    if d.keys() != s.keys() or any(d[k].shape != s[k].shape for k in d):
        return False
    dst.load_state_dict(s)
    return True


def _copy_block(dst: nn.Module, src: nn.Module, prefix: str, copied: list[str]) -> None:
    children = list(dst.named_children())
    if not children:
        if copy_matching(dst, src):
            copied.append(prefix)
        return
    for name, child in children:
        other = getattr(src, name, None)
        if isinstance(other, nn.Module) and copy_matching(child, other):
            copied.append(f"{prefix}.{name}")


def init_from_teacher(student: Flow, teacher: Flow) -> list[str]:
    """Initialise ``student`` in place from ``teacher``; returns the copied sub-modules (for the log)."""
    if student.arch != teacher.arch:
        raise ValueError(f"teacher is {teacher.arch} but student is {student.arch}: cannot initialise from it")
    copied: list[str] = []
    if isinstance(student, ChainFlow):
        if student.dim != teacher.dim:
            raise ValueError(f"teacher has {teacher.dim} features, student {student.dim}")
        if copy_matching(student.normalize, teacher.normalize):
            copied.append("normalize")
        s_blocks, t_blocks = student.chain(), teacher.chain()
        if len(s_blocks) > len(t_blocks):
            raise ValueError(f"student has more blocks ({len(s_blocks)}) than the teacher ({len(t_blocks)})")
        for i, block in enumerate(s_blocks):
            j = aligned_teacher_index(i, len(s_blocks), len(t_blocks))
            _copy_block(block, t_blocks[j], f"block{i}<-teacher{j}", copied)
        return copied
    if isinstance(student, Glow):
        if len(student.levels) != len(teacher.levels) or student.event_shape != teacher.event_shape:
            raise ValueError("Glow teacher and student need the same image shape and number of levels")
        for lvl, (s_steps, t_steps) in enumerate(zip(student.levels, teacher.levels)):
            for i, step in enumerate(s_steps):
                j = aligned_teacher_index(i, len(s_steps), len(t_steps))
                _copy_block(step, t_steps[j], f"level{lvl}.step{i}<-teacher{j}", copied)
        for lvl, (sp, tp) in enumerate(zip(student.priors, teacher.priors)):
            if copy_matching(sp, tp):
                copied.append(f"prior{lvl}")
        if student.top_mean.shape == teacher.top_mean.shape:
            student.top_mean.data.copy_(teacher.top_mean.data)
            student.top_logs.data.copy_(teacher.top_logs.data)
            copied.append("top")
        return copied
    raise ValueError(f"init from teacher is not defined for {type(student).__name__}")
