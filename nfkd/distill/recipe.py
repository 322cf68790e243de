"""The student recipes a user deploys: what ``distill --arch iaf``, ``convert`` and ``--data-free`` train with.

A parallel-sampling IAF student is trained by **maximum likelihood** (its D-pass density direction
only at training time), on the data mixed with a stream of the teacher's samples by one rule:

    teacher share = 0.5 below ``SMALL_DATA_ROWS`` training rows, else 0 (data alone),

overridden by ``--teacher-share``. Why, measured (docs/experiments.md, 3 seeds): on MAGIC (12k
training rows) the IAF by maximum likelihood matches the MAF student (-26.22 vs -26.27 nats) and
every share of teacher samples tried cost nats (forward KL on 50k teacher samples alone: -26.49);
on breast_cancer (455 rows) half data, half teacher samples beat the MAF student by several nats,
because there the teacher knows more than the few rows say. Reverse KL and SKD (probability density
distillation) stay available as short fine-tunes (``--method rkl|rkl+skd --init-from iaf.pt``),
never the default: alone they collapse (mode seeking) or over-constrain a small student.
"""
from __future__ import annotations

import inspect
import math
from typing import Any

from ..errors import InputError
from ..flows import ARCHITECTURES
from .objective import KDConfig

__all__ = ["SMALL_DATA_ROWS", "TEACHER_POOL", "default_teacher_share", "share_config", "check_share",
           "describe_share", "teacher_sized_config"]

#: Below this many training rows, half of every batch is drawn from the teacher's samples.
SMALL_DATA_ROWS = 1000
#: Teacher samples drawn once and streamed from (as the ``fkl`` variants do).
TEACHER_POOL = 50_000


def default_teacher_share(n_train: int) -> float:
    """The documented rule: 0.5 when data is scarce (< ``SMALL_DATA_ROWS`` rows), else 0."""
    return 0.5 if n_train < SMALL_DATA_ROWS else 0.0


def check_share(share: float | None) -> None:
    if share is None:
        return
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) \
            or not 0.0 <= share <= 1.0:
        raise InputError(f"--teacher-share must be a number in [0, 1], got {share!r}")


def share_config(n_train: int, share: float | None = None, seed: int = 0, pool: int = TEACHER_POOL,
                 temperature: float = 1.0) -> KDConfig:
    """Maximum likelihood on data (weight 1 − s) plus on teacher samples (weight s): forward KL at share s.

    s = 0 is plain maximum likelihood: no teacher is needed, and none is run.
    """
    check_share(share)
    s = default_teacher_share(n_train) if share is None else float(share)
    if s == 0.0:
        return KDConfig(method="none", seed=seed)
    return KDConfig(method="fkl", weights=(1.0 - s, s, 0.0), teacher_pool=pool, seed=seed, temperature=temperature)


def describe_share(n_train: int, share: float | None) -> str:
    s = default_teacher_share(n_train) if share is None else float(share)
    why = "--teacher-share" if share is not None else (
        f"the rule: {n_train} training rows {'<' if n_train < SMALL_DATA_ROWS else '>='} {SMALL_DATA_ROWS}")
    return f"maximum likelihood, teacher-sample share {s:g} ({why})"


def teacher_sized_config(teacher: Any, to: str) -> dict[str, Any]:
    """The config of a ``to`` flow of the teacher's size: every option of ``to``'s constructor the teacher
    has too (blocks, widths, depth, permutations), for a ``to`` that names the teacher in ``student_of``."""
    targets = [a for a, c in ARCHITECTURES.items() if c.student_of]
    if to not in targets:
        raise InputError(f"convert --to {to!r}: the targets are {targets} (students of another architecture)")
    cls = ARCHITECTURES[to]
    if teacher.arch not in cls.student_of:
        raise InputError(f"convert --to {to} needs a {' or '.join(cls.student_of)} teacher; this checkpoint is a "
                         f"{teacher.arch}")
    keys = [k for k in inspect.signature(cls).parameters if k != "dim"]
    return {"arch": to, **{k: teacher.config[k] for k in keys if k in teacher.config}}
