"""The student's per-step loss: the paper's eq. 15 and the gauge-free alternatives.

    paper:   loss = λ0 · NLL_student(x) + λ1 · (I)LKD + λ2 · SKD
    density: loss = λ0 · NLL_student(x) + λ1 · mean(((log p_s − log p_t) / D)²) on data and teacher samples
    fkl:     loss = λ0 · NLL_student(x) + λ1 · NLL_student(teacher samples)   (forward KL from the teacher)
    score:   loss = λ0 · NLL_student(x) + λ1 · mean(‖∇ log p_s − ∇ log p_t‖² / D)   (Sobolev training)

- LKD: distance between teacher and student final latents on data x (all levels, flattened);
- ILKD: the same at aligned intermediate taps, plus the final latents;
- SKD: distance between teacher and student *samples* decoded from the same noise, shared at
  every level (the paper's code shared only the top level), at a temperature.

Every latent comparison is in canonical feature order (``pairing``), optionally after the student
side is rotated onto the teacher's by Procrustes (``align=True``, see ``align``). Density,
forward-KL and score distillation compare densities, which have no latent gauge at all.

Score (Sobolev) distillation (Czarnecki et al. 2017) matches the input gradient of the log-density,
D targets per row instead of the one scalar of density matching (see ``score_gap``).

Scale (``kd_scale``): NLL is always in nats per dimension. ``"mean"`` adds the distances as means
over dimensions (the λ's then weigh terms of comparable size for any data shape, D times stronger
relative to the NLL than in the paper's code); ``"paper"`` divides them by D, which is the paper
code's ratio (NLL in total nats plus element-mean distances) written per dimension.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..flows import Flow
from ..flows.base import standard_normal_logpdf
from ..flows.layers import BatchNormFlow
from ..progress import phase
from .align import Aligner, rotate_channels
from .pairing import canonical_latents, canonical_taps, flow_noise, pair_taps

__all__ = ["distance", "KDConfig", "LossTerms", "finite_rows", "input_score", "sample_distance", "score_gap",
           "StudentObjective"]

METHODS = ("none", "lkd", "ilkd", "skd", "density", "fkl", "score", "rkl", "rkl+skd")
PAPER_METHODS = ("lkd", "ilkd", "skd")
KD_SCALES = ("paper", "mean")
PAPER_WEIGHTS: dict[str, tuple[float, float, float]] = {
    "none": (1.0, 0.0, 0.0),
    "lkd": (1.0, 1.0, 0.0),  # the paper: λ0 = 1 with LKD at weight 1
    "ilkd": (0.9, 0.1, 0.0),
    "skd": (0.85, 0.075, 0.075),  # SKD runs with ILKD as its latent term
    "density": (1.0, 1.0, 0.0),  # ours: NLL + squared per-dim log-density gap
    "fkl": (0.5, 0.5, 0.0),  # ours: half real data, half teacher samples
    "score": (1.0, 1e-3, 0.0),  # ours: NLL + per-dim squared score gap (Sobolev training); λ1 on validation
    # parallel students (IAF, ``parallel``): (λ0 NLL on data, λ1 reverse KL, λ2 SKD)
    "rkl": (0.0, 1.0, 0.0),
    "rkl+skd": (0.0, 1.0, 1.0),
}


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
    weights: tuple[float, float, float] | None = None  # (λ0, λ1, λ2); None = the defaults for the method
    latent_distance: str = "l1"  # the paper's code used MSE for (I)LKD: both supported
    sample_distance: str = "l1"
    temperature: float = 1.0  # of the SKD noise and of the teacher samples of density / fkl
    skd_batch: int | None = None  # samples per step for SKD / density / fkl (default: the data batch size)
    overflow_threshold: float = 1e4  # |x| beyond this (or non-finite) marks a sample as overflowed
    kd_scale: str = "paper"  # "paper" (distances / D) or "mean" (distances as dimension means)
    align: bool = False  # Procrustes-align student latents to the teacher's inside (I)LKD / SKD
    align_every: int = 50  # steps between Procrustes re-fits
    teacher_pool: int = 0  # density / fkl: draw from a pool of this many teacher samples (0: fresh every step);
    # score: > 0 also matches scores on teacher samples from such a pool (0: on the data batch only)
    init_from_teacher: bool = False  # start the student from the paired teacher blocks (see ``init``)
    seed: int = 0  # of the teacher-sample pool

    def resolved_weights(self) -> tuple[float, float, float]:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.kd_scale not in KD_SCALES:
            raise ValueError(f"kd_scale must be one of {KD_SCALES}, got {self.kd_scale!r}")
        return tuple(self.weights) if self.weights is not None else PAPER_WEIGHTS[self.method]

    @property
    def needs_teacher(self) -> bool:
        return self.method != "none" or self.init_from_teacher

    @property
    def needs_noise(self) -> bool:
        """Whether each step needs fresh unit noise (SKD, or fresh teacher samples)."""
        return self.method in ("skd", "rkl", "rkl+skd") or (self.method in ("density", "fkl") and self.teacher_pool == 0)


def _has_batch_coupling(flow: Flow) -> bool:
    """Whether a row's log-density depends on the other rows of its batch (batch norm in training)."""
    return any(isinstance(m, BatchNormFlow) and m.training for m in flow.modules())


def input_score(flow: Flow, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """(log p(x), ∇x log p(x) in the flow's normalized units), both per row.

    The gradient is taken w.r.t. the model input and multiplied by the flow's fixed normalization
    scale (chain rule for u = (x − loc) / scale), so every feature counts in standard-deviation units
    whatever its raw units; flows without a normalization (Glow on images) score in their own input
    space. ``create_graph`` keeps the graph for a second backward (the student); without it only the
    first-order gradient is built (the teacher, whose parameters are frozen).
    """
    if _has_batch_coupling(flow):
        raise InputError("score distillation needs per-row densities; a flow with batch norm in training mode "
                         "couples the rows of a batch (build the student without batch_norm)")
    with torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        out = flow(xi)
        log_prob = sum(standard_normal_logpdf(z) for z in out.latents) + out.logdet
        (grad,) = torch.autograd.grad(log_prob.sum(), xi, create_graph=create_graph)
    norm = getattr(flow, "normalize", None)
    if norm is not None:
        grad = grad * _view_features(norm.scale, grad)
    return log_prob, grad


def _view_features(v: Tensor, like: Tensor) -> Tensor:
    return v.view(1, -1, *([1] * (like.dim() - 2))).to(like.dtype)


def score_gap(student_score: Tensor, teacher_score: Tensor) -> Tensor:
    """Per-row ‖s_s − s_t‖² / D: the mean over dimensions of the squared score difference; shape [B].

    Scale: the Fisher divergence (without its ½) per dimension, in normalized units, where a standard
    normal has score −u: a per-dimension quantity like the per-dimension NLL it is added to, and already
    per dimension, so ``kd_scale`` does not change it (as for density / fkl). Learned densities are much
    sharper than a unit normal, though: for the trained no-KD students the term is 40-60 (MAGIC) and ~300
    (breast_cancer) against an NLL of ~3 and ~−1 nats per dim, hence the default λ1 = 1e-3 (chosen on
    validation NLL, see ``variants.SCORE_WEIGHT``).
    """
    return (student_score - teacher_score).flatten(1).pow(2).mean(1)


@dataclass
class LossTerms:
    total: Tensor
    terms: dict[str, float] = field(default_factory=dict)


def finite_rows(x: Tensor, limit: float) -> Tensor:
    """Rows that are finite and within ±limit everywhere (the rest counts as overflowed)."""
    return (torch.isfinite(x) & (x.abs() < limit)).flatten(1).all(1)


def sample_distance(
    teacher: Flow, student: Flow, noise: list[Tensor], kd: KDConfig,
    student_noise: list[Tensor] | None = None, teacher_x: Tensor | None = None,
) -> tuple[Tensor, int]:
    """SKD term: mean distance between teacher and student samples decoded from the same canonical noise.

    ``teacher_x`` (the teacher's samples of exactly this noise, e.g. from a cache) skips the
    teacher's decoding. Rows whose sample overflows (non-finite or beyond the threshold) in either
    flow are excluded from the mean and counted, never silently zeroed. Returns (mean, excluded rows).
    """
    s_noise = flow_noise(student, student_noise if student_noise is not None else noise)
    if teacher_x is None:
        with torch.no_grad():
            teacher_x = teacher.inverse(flow_noise(teacher, noise)).x
    x_t = teacher_x
    x_s = student.inverse(s_noise).x
    lim = kd.overflow_threshold
    ok = finite_rows(x_t, lim) & finite_rows(x_s.detach(), lim)
    excluded = int((~ok).sum())
    if excluded == len(ok):
        return x_s.sum() * 0.0 if bool(torch.isfinite(x_s).all()) else x_s.new_zeros(()), excluded
    if excluded:
        # Decode the good rows again: backpropagating through an overflowed row (0 * inf)
        # would poison the gradient with NaN even if the row is masked out.
        x_s = student.inverse([z[ok] for z in s_noise]).x
        x_t = x_t[ok]
    norm = getattr(student, "normalize", None)
    if norm is not None:  # compare in the normalized space: raw feature units would let one column dominate
        x_s, x_t = norm(x_s)[0], norm(x_t)[0]
    return distance(x_s, x_t, kd.sample_distance).mean(), excluded


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
        if self.kd.method == "score" and any(isinstance(m, BatchNormFlow) for m in student.modules()):
            raise InputError("score distillation needs per-row densities; batch norm in training couples the rows "
                             "of a batch (build the student without batch_norm)")
        self._teacher = [teacher] if teacher is not None else []  # a list keeps it out of parameters()
        self.pairs: list[tuple[str, str]] = []
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self.pairs = pair_taps(teacher, student) if self.kd.method in ("ilkd", "skd") else []
        self.aligner = Aligner(self.kd.align_every) if self.kd.align else None
        self._pool: Tensor | None = None
        self._pool_gen = torch.Generator().manual_seed(self.kd.seed)

    @property
    def teacher(self) -> Flow | None:
        return self._teacher[0] if self._teacher else None

    @property
    def needs_noise(self) -> bool:
        return self.kd.needs_noise

    def _kd_factor(self) -> float:
        return 1.0 / self.student.dim if self.kd.kd_scale == "paper" else 1.0

    def _log_prob(self, flow: Flow, x: Tensor, taps: bool = False):
        out = flow(x, taps=taps)
        return sum(standard_normal_logpdf(z) for z in out.latents) + out.logdet, out

    def forward(self, x: Tensor, noise: list[Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        method, (w0, w1, w2) = self.kd.method, self.weights
        need_taps = method in ("ilkd", "skd")
        if method == "score":
            log_prob, s_score = input_score(self.student, x, create_graph=True)
        else:
            log_prob, out = self._log_prob(self.student, x, need_taps)
        nll = -log_prob.mean() / self.student.dim
        terms: dict[str, Tensor] = {"nll": nll.detach()}
        total = w0 * nll
        if method == "none":
            return total, terms
        if method == "score":
            return self._score_terms(x, s_score, total, terms)
        if method in ("density", "fkl"):
            return self._density_terms(x, log_prob, total, terms, noise)
        with torch.no_grad():
            t_out = self.teacher(x, taps=need_taps)
        refit = self.aligner is not None and self.aligner.refit_due()
        latent_term = self._latent_term(out, t_out, refit)
        terms["lkd" if method == "lkd" else "ilkd"] = latent_term.detach()
        total = total + w1 * self._kd_factor() * latent_term
        if method == "skd":
            if noise is None:
                raise ValueError("SKD needs noise for every level")
            skd, excluded = self.sample_distance(noise)
            terms["skd"] = skd.detach()
            terms["skd_excluded"] = torch.tensor(float(excluded))
            total = total + w2 * self._kd_factor() * skd
        if self.aligner is not None:
            self.aligner.tick()
        return total, terms

    # ---- latent terms -----------------------------------------------------------------------------
    def _compare(self, key: str, s: Tensor, t: Tensor, refit: bool) -> Tensor:
        if self.aligner is not None:
            if refit:
                self.aligner.fit(key, s, t)
            s = self.aligner.apply(key, s)
        return distance(s, t, self.kd.latent_distance)

    def _latent_term(self, out, t_out, refit: bool) -> Tensor:
        s_lat = canonical_latents(self.student, out.latents)
        t_lat = canonical_latents(self.teacher, t_out.latents)
        if self.aligner is not None:  # one rotation per latent tensor, then the flattened distance
            parts = [self._compare(f"latent{i}", s, t, refit) * s[0].numel() for i, (s, t) in enumerate(zip(s_lat, t_lat))]
            final = torch.stack(parts, 0).sum(0) / sum(s[0].numel() for s in s_lat)
        else:
            final = distance(_flat_latents(s_lat), _flat_latents(t_lat), self.kd.latent_distance)
        if self.kd.method == "lkd":
            return final.mean()
        s_taps = canonical_taps(self.student, out.taps, [s for s, _ in self.pairs])
        t_taps = canonical_taps(self.teacher, t_out.taps, [t for _, t in self.pairs])
        parts = [self._compare(f"tap:{s}", s_taps[s], t_taps[t], refit) for s, t in self.pairs]
        return torch.stack(parts + [final], 0).mean(0).mean()

    def sample_distance(self, noise: list[Tensor]) -> tuple[Tensor, int]:
        """SKD: decode the same (temperature-scaled, canonical-order) noise at every level with both flows.

        With ``align`` the student decodes the noise rotated by Rᵀ of its final-latent alignment,
        i.e. the point its own gauge maps onto the teacher's. See ``sample_distance``.
        """
        noise = [z * self.kd.temperature for z in noise]
        s_noise = noise
        if self.aligner is not None:
            s_noise = [rotate_channels(z, self.aligner.rotations[f"latent{i}"].T.to(z.dtype))
                       if f"latent{i}" in self.aligner.rotations else z for i, z in enumerate(noise)]
        return sample_distance(self.teacher, self.student, noise, self.kd, student_noise=s_noise)

    # ---- density terms ----------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_samples(self, n: int, noise: list[Tensor] | None, like: Tensor) -> Tensor:
        """n teacher samples at the temperature, overflowed rows dropped (images clamped to the data range)."""
        teacher = self.teacher
        if self.kd.teacher_pool > 0:
            if self._pool is None:
                with phase(f"distill: drawing a pool of {self.kd.teacher_pool:,} teacher samples"):
                    self._pool = self._fill_pool(self.kd.teacher_pool, like)
            idx = torch.randint(0, len(self._pool), (n,), generator=self._pool_gen)
            return self._pool[idx.to(self._pool.device)]
        if noise is None:
            raise ValueError(f"method {self.kd.method!r} without a teacher pool needs noise every step")
        x = teacher.inverse(flow_noise(teacher, [z * self.kd.temperature for z in noise])).x
        return self._clean(x)

    def _clean(self, x: Tensor) -> Tensor:
        x = x[finite_rows(x, self.kd.overflow_threshold)]
        return x if self.teacher.tabular else x.clamp(-0.5, 0.5)

    def _fill_pool(self, size: int, like: Tensor) -> Tensor:
        teacher, chunks, have = self.teacher, [], 0
        while have < size:
            m = min(4096, size - have)
            noise = [z.to(like.device, like.dtype) * self.kd.temperature
                     for z in (torch.randn(s, generator=self._pool_gen) for s in teacher.noise_shapes(m))]
            x = self._clean(teacher.inverse(noise).x)
            if len(x) == 0:
                raise RuntimeError("every teacher sample overflowed; cannot distil from its samples")
            chunks.append(x)
            have += len(x)
        return torch.cat(chunks)[:size]

    def _density_terms(self, x, log_prob, total, terms, noise):
        (_, w1, _), dim = self.weights, self.student.dim
        n = self.kd.skd_batch or len(x)
        xs = self.teacher_samples(n, noise, x)
        if len(xs) == 0:
            return total, terms
        lp_s_samples, _ = self._log_prob(self.student, xs)
        if self.kd.method == "fkl":
            term = -lp_s_samples.mean() / dim
            terms["fkl"] = term.detach()
            return total + w1 * term, terms
        with torch.no_grad():
            lp_t_data, _ = self._log_prob(self.teacher, x)
            lp_t_samples, _ = self._log_prob(self.teacher, xs)
        gap = torch.cat([(log_prob - lp_t_data) / dim, (lp_s_samples - lp_t_samples) / dim])
        term = gap.pow(2).mean()
        terms["density"] = term.detach()
        return total + w1 * term, terms

    # ---- score (Sobolev) term ---------------------------------------------------------------------
    def _score_terms(self, x, s_score, total, terms):
        """λ1 · mean over rows of ‖∇ log p_s − ∇ log p_t‖² / D, on the data (and teacher samples with a pool)."""
        w1 = self.weights[1]
        _, t_score = input_score(self.teacher, x)
        gaps = [score_gap(s_score, t_score.detach())]
        if self.kd.teacher_pool > 0:
            xs = self.teacher_samples(self.kd.skd_batch or len(x), None, x)
            if len(xs):
                _, s_smp = input_score(self.student, xs, create_graph=True)
                _, t_smp = input_score(self.teacher, xs)
                gaps.append(score_gap(s_smp, t_smp.detach()))
        term = torch.cat(gaps).mean()
        terms["score"] = term.detach()
        return total + w1 * term, terms
