"""Inverse Autoregressive Flow (Kingma et al. 2016): the parallel-sampling student of a MAF teacher.

Each block is the MAF block with its MADE used the other way round (``InverseMADE``): sampling is
one MADE pass per block, the density D sequential passes per block (exact). No batch-norm: an IAF
student is trained on its own samples (reverse KL / SKD), where data never flows through the
density direction that would collect batch statistics, and ``maf-paper`` students have none either.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import preset_pair, standard_normal_logpdf
from .layers import InverseMADE
from .maf import MADEChain

__all__ = ["IAF"]


class IAF(MADEChain):
    """IAF on the shared protocol: ``forward`` (x -> z) is sequential, ``inverse`` (z -> x) one pass per block.

    >>> import torch
    >>> flow = IAF(dim=4, blocks=3, hidden=16)
    >>> z = torch.randn(8, 4)
    >>> x, log_q = flow.sample_and_log_prob([z])        # one pass per block, density included
    >>> torch.allclose(flow.log_prob(x), log_q, atol=1e-5)   # the D-pass density direction agrees
    True
    """

    arch = "iaf"
    one_pass_density = False
    student_of = ("maf",)
    samples_with_density = True
    presets = {  # the MAF presets' teachers with an IAF student of the MAF student's size
        "iaf-paper": preset_pair("maf", dict(blocks=6, hidden=32, n_hidden=2), dict(blocks=3, hidden=32, n_hidden=2),
                                 "iaf"),
        "iaf-cpu": preset_pair("maf", dict(blocks=6, hidden=64, n_hidden=2), dict(blocks=2, hidden=16, n_hidden=2),
                               "iaf"),
    }
    default_preset = "iaf-cpu"
    _BESIDE = {"maf-paper": "iaf-paper", "maf-cpu": "iaf-cpu"}

    @classmethod
    def preset_beside(cls, preset: str | None) -> str | None:
        """The IAF student beside a MAF preset's students (same size as its MAF student)."""
        return cls._BESIDE.get(preset, preset)

    def __init__(
        self,
        dim: int,
        blocks: int = 3,
        hidden: int = 32,
        n_hidden: int = 2,
        activation: str = "relu",
        permutation: str = "reverse",
        seed: int = 0,
    ) -> None:
        super().__init__(dim=dim, blocks=blocks, hidden=hidden, n_hidden=n_hidden, activation=activation,
                         permutation=permutation, seed=seed)
        self._build(dim, blocks, hidden, n_hidden, activation, False, permutation, seed, InverseMADE)

    def sample_and_log_prob(self, noise: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Samples x = inverse(noise) and their exact log q(x) from the same single pass per block.

        log q(x) = log N(z) − log|det dx/dz|: what probability density distillation needs on every
        step without the D-pass density direction.
        """
        z = noise[0]
        log_q = standard_normal_logpdf(z)
        h = z
        for block in reversed(self.blocks):
            h = block.perm.inverse(h)
            h, ld = block.made.inverse_and_logdet(h)
            log_q = log_q - ld
        return self.normalize.inverse(h), log_q - torch.log(self.normalize.scale).sum()
