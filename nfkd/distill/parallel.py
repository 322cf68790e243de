"""Distilling a parallel-sampling student (IAF) from an autoregressive teacher (MAF): every step parallel.

    loss = λ0 · NLL_student(x) + λ1 · RKL + λ2 · SKD        (λ0 = 0 by default: NLL costs D passes)

- RKL, probability density distillation (Parallel WaveNet): E_z[log q_s(x_s(z)) − log p_t(x_s(z))]
  per dimension. The student gives x_s and log q_s = log N(z) − log|det dx_s/dz| in its one-pass
  sampling direction; the frozen teacher (eval mode, no parameter gradients) scores x_s in its
  one-pass density direction, and the gradient reaches the student through x_s.
- SKD with shared noise: L1 (or MSE) between the teacher's sequential samples t⁻¹(z) and the
  student's one-pass samples of the same canonical noise, in normalized units. ``teacher_pool`` > 0
  caches (noise, teacher sample) pairs once, so the teacher's D passes per block are paid once.
- The student's NLL on data (D passes) is the trainer's occasional validation evaluation, which
  selects the model; it enters the loss only if λ0 > 0.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..flows import Flow, flow_class
from ..progress import phase
from .objective import KDConfig, sample_distance

__all__ = ["PARALLEL_METHODS", "PARALLEL_WEIGHTS", "ParallelObjective", "build_objective", "default_weights",
           "is_parallel", "reverse_kl"]

PARALLEL_METHODS = ("rkl", "skd", "rkl+skd")
PARALLEL_WEIGHTS: dict[str, tuple[float, float, float]] = {
    "rkl": (0.0, 1.0, 0.0),
    "skd": (0.0, 0.0, 1.0),
    "rkl+skd": (0.0, 1.0, 1.0),
}


def is_parallel(student: Flow, kd: KDConfig) -> bool:
    """Whether this student / method pair trains through the sampling direction only."""
    return kd.method in ("rkl", "rkl+skd") or (not student.one_pass_density and kd.method == "skd")


def default_weights(method: str, student_arch: str) -> tuple[float, float, float]:
    """(λ0, λ1, λ2) of a method for a student architecture (what ``--lambda-*`` overrides)."""
    from .objective import PAPER_WEIGHTS

    if not flow_class(student_arch).one_pass_density and method in PARALLEL_WEIGHTS:
        return PARALLEL_WEIGHTS[method]
    return PAPER_WEIGHTS[method]


def reverse_kl(student: Flow, teacher: Flow, noise: list[Tensor]) -> Tensor:
    """Per-sample (log q_s(x_s) − log p_t(x_s)) / D on the student's samples of ``noise``; shape [B]."""
    x_s, log_q = student.sample_and_log_prob(noise)
    log_p = teacher.log_prob_unchecked(x_s)
    return (log_q - log_p) / student.dim


class ParallelObjective(nn.Module):
    """The per-step loss of a parallel student, with the ``StudentObjective`` call signature."""

    def __init__(self, student: Flow, teacher: Flow | None, kd: KDConfig) -> None:
        super().__init__()
        if kd.method not in PARALLEL_METHODS:
            raise InputError(f"a parallel student trains with one of {PARALLEL_METHODS}, not {kd.method!r}")
        if teacher is None:
            raise InputError(f"method {kd.method!r} needs a teacher")
        if not hasattr(student, "sample_and_log_prob"):
            raise InputError(f"method {kd.method!r} needs a student that knows its density on its own samples "
                             f"in one pass (--arch iaf); a {student.arch} student does not")
        if teacher.dim != student.dim:
            raise InputError(f"teacher has {teacher.dim} features, student {student.dim}")
        if kd.align:
            raise InputError("--align does not apply to a parallel student (it has no latent terms)")
        self.student, self.kd = student, kd
        self.weights = tuple(kd.weights) if kd.weights is not None else PARALLEL_WEIGHTS[kd.method]
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._teacher = [teacher]  # a list keeps it out of parameters()
        self._pool: tuple[Tensor, Tensor] | None = None
        self._pool_gen = torch.Generator().manual_seed(kd.seed)

    @property
    def teacher(self) -> Flow:
        return self._teacher[0]

    @property
    def needs_noise(self) -> bool:
        return True

    def forward(self, x: Tensor, noise: list[Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        w0, w1, w2 = self.weights
        if noise is None:
            raise ValueError(f"method {self.kd.method!r} needs noise every step")
        total = x.new_zeros(())
        terms: dict[str, Tensor] = {}
        if w0:
            nll = -self.student.log_prob_unchecked(x).mean() / self.student.dim
            terms["nll"] = nll.detach()
            total = total + w0 * nll
        if w1:
            rkl = reverse_kl(self.student, self.teacher, noise).mean()
            terms["rkl"] = rkl.detach()
            total = total + w1 * rkl
        if w2:
            skd, excluded = self._skd(noise)
            terms["skd"] = skd.detach()
            terms["skd_excluded"] = torch.tensor(float(excluded))
            total = total + w2 * skd
        return total, terms

    def _skd(self, noise: list[Tensor]) -> tuple[Tensor, int]:
        n = noise[0].shape[0]
        if self.kd.teacher_pool <= 0:
            return sample_distance(self.teacher, self.student, [z * self.kd.temperature for z in noise], self.kd)
        if self._pool is None:
            with phase(f"distill: drawing a pool of {self.kd.teacher_pool:,} teacher samples"):
                self._pool = self._fill_pool(self.kd.teacher_pool, noise[0])
        pool_noise, pool_x = self._pool
        idx = torch.randint(0, len(pool_x), (n,), generator=self._pool_gen).to(pool_x.device)
        return sample_distance(self.teacher, self.student, [pool_noise[idx]], self.kd, teacher_x=pool_x[idx])

    @torch.no_grad()
    def _fill_pool(self, size: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(canonical noise at the temperature, the teacher's samples of it), drawn once."""
        from .pairing import flow_noise

        noises, xs = [], []
        for start in range(0, size, 4096):
            m = min(4096, size - start)
            z = torch.randn(m, self.student.dim, generator=self._pool_gen).to(like.device, like.dtype)
            z = z * self.kd.temperature
            noises.append(z)
            xs.append(self.teacher.inverse(flow_noise(self.teacher, [z])).x)
        return torch.cat(noises), torch.cat(xs)


def build_objective(student: Flow, teacher: Flow | None, kd: KDConfig) -> nn.Module:
    """The per-step loss module for a student and method: parallel (IAF) or the paper's eq. 15 family."""
    from .objective import StudentObjective

    if is_parallel(student, kd):
        return ParallelObjective(student, teacher, kd)
    return StudentObjective(student, teacher, kd)
