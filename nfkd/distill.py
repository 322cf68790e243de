"""Knowledge distillation of normalizing flows (Walton et al., eq. 15).

    loss = λ0 · NLL_student(x) + λ1 · (I)LKD + λ2 · SKD

- LKD: distance between teacher and student final latents on data x (all levels, flattened);
- ILKD: the same at aligned intermediate taps, plus the final latents;
- SKD: distance between teacher and student *samples* decoded from the same noise, shared at
  every level (the paper's code shared only the top level), at a temperature.

Scale convention (ours, documented): NLL is in nats per dimension and each distance is a mean
over dimensions, so the λ's of the paper weigh terms of comparable size for any data shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .flows import Flow, Glow

METHODS = ("none", "lkd", "ilkd", "skd")
PAPER_WEIGHTS: dict[str, tuple[float, float, float]] = {
    "none": (1.0, 0.0, 0.0),
    "lkd": (1.0, 1.0, 0.0),  # the paper: λ0 = 1 with LKD at weight 1
    "ilkd": (0.9, 0.1, 0.0),
    "skd": (0.85, 0.075, 0.075),  # SKD runs with ILKD as its latent term
}


def aligned_teacher_index(i: int, k_student: int, k_teacher: int) -> int:
    """Teacher block paired with student block i: round((i+1)·K_t/K_s) − 1 (half rounds up)."""
    return int(math.floor((i + 1) * k_teacher / k_student + 0.5)) - 1


def pair_taps(teacher: Flow, student: Flow) -> list[tuple[str, str]]:
    """(student tap, teacher tap) pairs at aligned points; tap names make pairing data, not code.

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


def distance(a: Tensor, b: Tensor, kind: str = "l1") -> Tensor:
    """Per-sample mean over dimensions of |a−b| (l1) or (a−b)² (mse); shape [B]."""
    diff = (a - b).flatten(1)
    if kind == "l1":
        return diff.abs().mean(1)
    if kind == "mse":
        return diff.pow(2).mean(1)
    raise ValueError(f"distance must be 'l1' or 'mse', got {kind!r}")


def _flat_latents(latents: list[Tensor]) -> Tensor:
    return torch.cat([z.flatten(1) for z in latents], 1)


@dataclass
class KDConfig:
    method: str = "none"
    weights: tuple[float, float, float] | None = None  # (λ0, λ1, λ2); None = the paper's for the method
    latent_distance: str = "l1"  # the paper's code used MSE for (I)LKD: both supported
    sample_distance: str = "l1"
    temperature: float = 1.0  # of the SKD noise
    skd_batch: int | None = None  # samples per step for SKD (default: the data batch size)
    overflow_threshold: float = 1e4  # |x| beyond this (or non-finite) marks a SKD sample as overflowed

    def resolved_weights(self) -> tuple[float, float, float]:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        return tuple(self.weights) if self.weights is not None else PAPER_WEIGHTS[self.method]


@dataclass
class LossTerms:
    total: Tensor
    terms: dict[str, float] = field(default_factory=dict)


class StudentObjective(nn.Module):
    """The whole per-step loss as one module, so DistributedDataParallel can wrap it.

    The teacher is held frozen (eval mode, no grad) and is not a trainable parameter.
    """

    def __init__(self, student: Flow, teacher: Flow | None = None, kd: KDConfig | None = None) -> None:
        super().__init__()
        self.student = student
        self.kd = kd or KDConfig()
        self.weights = self.kd.resolved_weights()
        if self.kd.method != "none" and teacher is None:
            raise ValueError(f"method {self.kd.method!r} needs a teacher")
        self._teacher = [teacher] if teacher is not None else []  # a list keeps it out of parameters()
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self.pairs = pair_taps(teacher, student) if self.kd.method in ("ilkd", "skd") else []

    @property
    def teacher(self) -> Flow | None:
        return self._teacher[0] if self._teacher else None

    def forward(self, x: Tensor, noise: list[Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        from .flows.base import standard_normal_logpdf

        method, (w0, w1, w2) = self.kd.method, self.weights
        need_taps = method in ("ilkd", "skd")
        out = self.student(x, taps=need_taps)
        log_prob = sum(standard_normal_logpdf(z) for z in out.latents) + out.logdet
        nll = -log_prob.mean() / self.student.dim
        terms: dict[str, Tensor] = {"nll": nll.detach()}
        total = w0 * nll
        if method == "none":
            return total, terms
        teacher = self.teacher
        with torch.no_grad():
            t_out = teacher(x, taps=need_taps)
        final = distance(_flat_latents(out.latents), _flat_latents(t_out.latents), self.kd.latent_distance)
        if method == "lkd":
            latent_term = final.mean()
            terms["lkd"] = latent_term.detach()
        else:
            parts = [distance(out.taps[s], t_out.taps[t], self.kd.latent_distance) for s, t in self.pairs]
            latent_term = torch.stack(parts + [final], 0).mean(0).mean()
            terms["ilkd"] = latent_term.detach()
        total = total + w1 * latent_term
        if method == "skd":
            if noise is None:
                raise ValueError("SKD needs noise for every level")
            skd, excluded = self.sample_distance(noise)
            terms["skd"] = skd.detach()
            terms["skd_excluded"] = torch.tensor(float(excluded))
            total = total + w2 * skd
        return total, terms

    def sample_distance(self, noise: list[Tensor]) -> tuple[Tensor, int]:
        """SKD: decode the same (temperature-scaled) noise at every level with both flows.

        Rows whose sample overflows (non-finite or beyond the threshold) in either flow are
        excluded from the mean and counted — never silently zeroed.
        """
        noise = [z * self.kd.temperature for z in noise]
        with torch.no_grad():
            x_t = self.teacher.inverse(noise).x
        x_s = self.student.inverse(noise).x
        lim = self.kd.overflow_threshold

        def finite_rows(x: Tensor) -> Tensor:
            return (torch.isfinite(x) & (x.abs() < lim)).flatten(1).all(1)

        ok = finite_rows(x_t) & finite_rows(x_s.detach())
        excluded = int((~ok).sum())
        if excluded == len(ok):
            return x_s.sum() * 0.0 if bool(torch.isfinite(x_s).all()) else x_s.new_zeros(()), excluded
        if excluded:
            # Decode the good rows again: backpropagating through an overflowed row (0 * inf)
            # would poison the gradient with NaN even if the row is masked out.
            x_s = self.student.inverse([z[ok] for z in noise]).x
            x_t = x_t[ok]
        norm = getattr(self.student, "normalize", None)
        if norm is not None:  # compare in the normalized space: raw feature units would let one column dominate
            x_s, x_t = norm(x_s)[0], norm(x_t)[0]
        return distance(x_s, x_t, self.kd.sample_distance).mean(), excluded
