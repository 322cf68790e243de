"""The flow protocol shared by every architecture.

A flow is a bijection from data x to a list of per-level *standard normal* noise tensors
(learned priors are folded into the bijection), so that

    log p(x) = sum_levels log N(eps_l; 0, I) + log|det d eps / d x|

and sampling from given noise is simply ``inverse(noise)``.  Distillation needs the same noise to
drive teacher and student at every level, and export needs noise as a graph input: both follow
from this one convention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..noise import SampleCount, draw_noise, sample_shape
from ..validation import check_batch, check_noise, check_seed

__all__ = ["FlowOutput", "InverseOutput", "standard_normal_logpdf", "check_finite_input", "preset_pair", "Flow",
    "ChainFlow"]

LOG_2PI = math.log(2 * math.pi)


@dataclass
class FlowOutput:
    """Result of the data -> noise direction."""

    latents: list[Tensor]  # standardized noise per level, N(0, I) under the model
    logdet: Tensor  # [B] log|det J| of the whole map x -> latents
    taps: dict[str, Tensor] = field(default_factory=dict)  # named intermediate states


@dataclass
class InverseOutput:
    """Result of the noise -> data direction."""

    x: Tensor
    taps: dict[str, Tensor] = field(default_factory=dict)


def standard_normal_logpdf(z: Tensor) -> Tensor:
    """Per-sample log N(z; 0, I), summed over all non-batch dimensions."""
    return -0.5 * (z.pow(2).flatten(1).sum(1) + z[0].numel() * LOG_2PI)


def check_finite_input(x: Tensor, event_shape: Sequence[int], what: str = "x", float32: bool = False) -> Tensor:
    """One clear error for the bad inputs users actually send (never a NaN later on).

    ``float32=True``: x will be cast to float32, so values beyond its range are refused too."""
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(x).__name__} (torch.as_tensor(x) converts "
                         f"a numpy array; nfkd.inference.load(flow) accepts numpy directly)")
    return check_batch(x, event_shape, what, float32=float32)


def preset_pair(arch: str, teacher: dict, student: dict, student_arch: str | None = None) -> dict[str, dict]:
    """One ``Flow.presets`` entry: the teacher's and the student's configs (the student's arch defaults to ``arch``)."""
    return {"teacher": {"arch": arch, **teacher}, "student": {"arch": student_arch or arch, **student}}


class Flow(nn.Module):
    """Base class: subclasses implement ``forward``, ``inverse``, ``noise_shapes``, ``tap_names``.

    >>> import torch
    >>> from nfkd.flows import MAF
    >>> flow = MAF(dim=3, blocks=2, hidden=8)
    >>> x = torch.randn(4, 3)
    >>> out = flow(x, taps=True)                  # latents (one per level), log|det J|, named taps
    >>> [z.shape for z in out.latents], sorted(out.taps)
    ([torch.Size([4, 3])], ['block0', 'block1'])
    >>> torch.allclose(flow.inverse(out.latents).x, x, atol=1e-5)
    True
    >>> flow.log_prob(x).shape, flow.sample(5, temperature=0.7).shape
    (torch.Size([4]), torch.Size([5, 3]))
    """

    # --- what the rest of nfkd knows about an architecture (read these, never compare ``arch``) ---
    arch: str = "flow"  #: the name in ``nfkd.flows.ARCHITECTURES`` (and in checkpoints)
    tabular: bool = True  #: event [D] with a fixed input normalization; False: images [C, H, W] in [-0.5, 0.5]
    depth_key: str = "steps"  #: the config key that counts flow steps (what a smaller student has fewer of)
    one_pass_density: bool = True  #: log_prob is one pass per block (False: IAF's D sequential passes)
    one_pass_sampling: bool = True  #: sample is one pass per block (False: MAF's D sequential passes)
    #: teacher architectures (besides its own) a student of this architecture is distilled from
    student_of: tuple[str, ...] = ()
    #: ``sample_and_log_prob`` gives log q of its own samples in the same one pass (what reverse KL needs)
    samples_with_density: bool = False
    min_dim: int = 1  #: the fewest features a tabular flow of this class models
    #: named size presets: {preset: {"teacher": config with "arch", "student": config with "arch"}}
    presets: dict[str, dict[str, dict]] = {}
    default_preset: str | None = None  #: the preset used when none is named (None: the class defaults)
    #: fold: the input normalization joins the first FlowStep's affine (only where x itself is not needed)
    fold_normalize_into_first_step: bool = False

    @classmethod
    def sequential_direction(cls) -> str | None:
        """'density' or 'sample': the direction that costs D sequential passes per block (None: neither)."""
        return "density" if not cls.one_pass_density else "sample" if not cls.one_pass_sampling else None

    @classmethod
    def for_event(cls, event_shape: Sequence[int], n_levels: int = 256, **config) -> Flow:
        """A flow of this class shaped for data of ``event_shape`` ([D] for tables; images override)."""
        return cls(dim=int(event_shape[0]), **config)

    @classmethod
    def preset_beside(cls, preset: str | None) -> str | None:
        """The preset of a student of this architecture under a teacher's preset (default: the same name)."""
        return preset

    def affine_positions(self, affine: nn.Module) -> int:
        """How many positions a folded per-channel affine acts on (its log-det counts once per position)."""
        return 1

    def constant_prior_logdet(self) -> Tensor:
        """The x-independent log-det of a learned prior folded into the bijection (float64; 0: none)."""
        return torch.zeros((), dtype=torch.float64)

    def __init__(self, **config) -> None:
        super().__init__()
        self.config = dict(config)

    # --- to implement -------------------------------------------------------------------------
    @property
    def event_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def forward(self, x: Tensor, taps: bool = False) -> FlowOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, noise: Sequence[Tensor], taps: bool = False) -> InverseOutput:  # pragma: no cover
        raise NotImplementedError

    def noise_shapes(self, batch: int) -> list[tuple[int, ...]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def tap_names(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def tap_permutation(self, name: str) -> Tensor | None:
        """Feature bookkeeping of a tap: entry k is the canonical (input-order) index of its coordinate k.

        None means the tap is already in canonical order. Distillation compares teacher and student
        taps (and feeds SKD noise) in canonical order, so fixed permutations never count as a mismatch.
        """
        return None

    def latent_permutations(self) -> list[Tensor | None]:
        """The same bookkeeping for each latent (noise) tensor."""
        return [None] * len(self.noise_shapes(1))

    # --- shared API ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype the flow computes in (of its first parameter or buffer)."""
        for t in (*self.parameters(), *self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _ref(self) -> Tensor:
        return next(iter(self.parameters()))

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) in nats per sample, in the user's units (input normalization included)."""
        check_finite_input(x, self.event_shape)
        return self.log_prob_unchecked(x)

    def log_prob_unchecked(self, x: Tensor) -> Tensor:
        out = self.forward(x)
        return sum(standard_normal_logpdf(z) for z in out.latents) + out.logdet

    def sample_noise(
        self, n: int, *, temperature: float = 1.0, seed: int | None = None, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """Noise per level, times ``temperature``: from ``seed`` as every Runner draws it (``nfkd.noise.draw_noise``),
        else from ``generator`` (training code's torch generators), else from torch's global generator."""
        ref = self._ref()
        if seed is not None:
            if generator is not None:
                raise InputError("pass seed (numpy noise, as every backend draws it) or generator, not both")
            unit = draw_noise([s[1:] for s in self.noise_shapes(n)], n, check_seed(seed))
            return [torch.from_numpy(z).to(device=ref.device, dtype=ref.dtype) * temperature for z in unit]
        return [
            torch.randn(s, generator=generator, device=ref.device, dtype=ref.dtype) * temperature
            for s in self.noise_shapes(n)
        ]

    def check_noise(self, noise: Sequence[Tensor] | Tensor) -> list[Tensor]:
        """Given unit noise, checked as every Runner checks it (``nfkd.validation.check_noise``)."""
        return check_noise(noise, [s[1:] for s in self.noise_shapes(1)])

    def sample(self, n: SampleCount = None, *, temperature: float = 1.0, seed: int | None = None,
               noise: Sequence[Tensor] | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Draw samples at a temperature, or decode the given per-level (unit) noise; no autograd graph.

        The signature of every ``sample`` in nfkd (Runners too); ``seed`` draws the noise exactly as the
        Runners do, so ``flow.sample(n, seed=s)`` and ``inference.load(flow, b).sample(n, seed=s)`` agree
        on every backend; ``generator`` (a torch generator, for training code) is this method's extra.
        ``n`` is a count (-> [n, *event_shape]) or, as in torch.distributions, a sample shape
        (``(3,)`` -> [3, *event_shape]; ``()`` or nothing -> one sample of event_shape; with ``noise``,
        nothing -> one sample per noise row). Like
        ``torch.distributions``, ``sample`` is detached; ``rsample`` keeps the graph for losses.
        """
        with torch.no_grad():
            return self.rsample(n, temperature=temperature, seed=seed, noise=noise, generator=generator)

    def rsample(self, n: SampleCount = None, *, temperature: float = 1.0, seed: int | None = None,
                noise: Sequence[Tensor] | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``sample`` with the reparameterized graph kept (gradients reach the parameters)."""
        shape = sample_shape(() if n is None and noise is None else n)
        if noise is None:
            count = math.prod(shape) if shape is not None else n
            if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
                raise InputError(f"n must be a positive integer or a sample shape of positive sizes, got {n!r}")
            noise = self.sample_noise(count, temperature=temperature, seed=seed, generator=generator)
        else:
            noise = [z * temperature for z in self.check_noise(noise)]
            if shape is not None and math.prod(shape) != noise[0].shape[0]:
                raise InputError(f"sample shape {tuple(shape)} asks for {math.prod(shape)} samples but the noise has "
                                 f"{noise[0].shape[0]} rows")
        x = self.inverse(noise).x
        return x.reshape(*shape, *x.shape[1:]) if shape is not None else x


class ChainFlow(Flow):
    """Tabular flows: a fixed input normalization, then a chain of blocks with a tap after each."""

    _dim: int
    normalize: nn.Module

    def chain(self) -> nn.ModuleList:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self._dim,)

    def noise_shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch, self._dim)]

    def tap_names(self) -> list[str]:
        return [f"block{i}" for i in range(len(self.chain()))]

    def _cumulative_orders(self) -> list[Tensor]:
        """After each block, the canonical index of every coordinate (blocks with a ``perm`` move them)."""
        order = torch.arange(self._dim)
        orders = []
        for block in self.chain():
            perm = getattr(getattr(block, "perm", None), "perm", None)
            if perm is not None:
                order = order[perm.cpu()]
            orders.append(order)
        return orders

    def tap_permutation(self, name: str) -> Tensor | None:
        names = self.tap_names()
        if name not in names:
            raise KeyError(f"no tap {name!r}; taps are {names}")
        order = self._cumulative_orders()[names.index(name)]
        return None if bool((order == torch.arange(self._dim)).all()) else order

    def latent_permutations(self) -> list[Tensor | None]:
        return [self.tap_permutation(self.tap_names()[-1])]

    def forward(self, x: Tensor, taps: bool = False) -> FlowOutput:
        # normalize is None in the folded form of Glow-1D (folded into the first step's affine)
        h, logdet = self.normalize(x) if self.normalize is not None else (x, x.new_zeros(x.shape[0]))
        named: dict[str, Tensor] = {}
        for i, block in enumerate(self.chain()):
            h, ld = block(h)
            logdet = logdet + ld
            if taps:
                named[f"block{i}"] = h
        return FlowOutput([h], logdet, named)

    def inverse(self, noise: Sequence[Tensor], taps: bool = False) -> InverseOutput:
        h = noise[0]
        named: dict[str, Tensor] = {}
        blocks = self.chain()
        for i in reversed(range(len(blocks))):
            if taps:
                named[f"block{i}"] = h
            h = blocks[i].inverse(h)
        return InverseOutput(self.normalize.inverse(h) if self.normalize is not None else h, named)
