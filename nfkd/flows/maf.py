"""Masked Autoregressive Flow (Papamakarios et al. 2017) on the shared flow protocol."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ChainFlow, preset_pair
from .layers import MADE, BatchNormFlow, FixedAffine, Permutation

__all__ = ["MAFBlock", "block_permutations", "MADEChain", "MAF"]


class MAFBlock(nn.Module):
    """MADE, optional batch-norm, then a fixed permutation (order reversal by default)."""

    def __init__(self, dim: int, hidden: int, n_hidden: int, activation: str, batch_norm: bool, perm: Tensor,
                 made: type[MADE] = MADE) -> None:
        super().__init__()
        self.made = made(dim, hidden, n_hidden, activation)
        self.bn = BatchNormFlow(dim) if batch_norm else None
        self.perm = Permutation(perm)

    def layers(self) -> list[nn.Module]:
        return [m for m in (self.made, self.bn, self.perm) if m is not None]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers():
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor) -> Tensor:
        for layer in reversed(self.layers()):
            y = layer.inverse(y)
        return y


def block_permutations(dim: int, blocks: int, activation: str, permutation: str, seed: int) -> list[Tensor]:
    """The fixed permutation after each block (checks the shared MAF / IAF options too)."""
    if activation not in ("relu", "tanh"):
        raise ValueError("activation must be 'relu' or 'tanh'")
    if permutation not in ("reverse", "random"):
        raise ValueError("permutation must be 'reverse' or 'random'")
    g = torch.Generator().manual_seed(seed)
    return [
        torch.arange(dim - 1, -1, -1) if permutation == "reverse" else torch.randperm(dim, generator=g)
        for _ in range(blocks)
    ]


class MADEChain(ChainFlow):
    """MAF and IAF: a fixed input normalization, then blocks of [MADE (either way round), batch-norm, permutation]."""

    depth_key = "blocks"

    def _build(self, dim: int, blocks: int, hidden: int, n_hidden: int, activation: str, batch_norm: bool,
               permutation: str, seed: int, made: type[MADE]) -> None:
        self._dim = dim
        self.normalize = FixedAffine(dim)
        self.blocks = nn.ModuleList(
            [MAFBlock(dim, hidden, n_hidden, activation, batch_norm, p, made=made)
             for p in block_permutations(dim, blocks, activation, permutation, seed)]
        )

    def chain(self) -> nn.ModuleList:
        return self.blocks


class MAF(MADEChain):
    """Masked Autoregressive Flow: density in one pass per block, sampling in D passes per block.

    >>> import torch
    >>> flow = MAF(dim=4, blocks=3, hidden=16, batch_norm=True)
    >>> x = torch.randn(8, 4)
    >>> lp = flow.eval().log_prob(x)
    >>> torch.allclose(flow.inverse(flow(x).latents).x, x, atol=1e-4)
    True
    """

    arch = "maf"
    one_pass_sampling = False
    presets = {
        "maf-paper": preset_pair("maf", dict(blocks=6, hidden=32, n_hidden=2), dict(blocks=3, hidden=32, n_hidden=2)),
        "maf-cpu": preset_pair("maf", dict(blocks=6, hidden=64, n_hidden=2), dict(blocks=2, hidden=16, n_hidden=2)),
    }
    default_preset = "maf-cpu"

    def __init__(
        self,
        dim: int,
        blocks: int = 6,
        hidden: int = 32,
        n_hidden: int = 2,
        activation: str = "relu",
        batch_norm: bool = False,
        permutation: str = "reverse",
        seed: int = 0,
    ) -> None:
        super().__init__(dim=dim, blocks=blocks, hidden=hidden, n_hidden=n_hidden, activation=activation,
                         batch_norm=batch_norm, permutation=permutation, seed=seed)
        self._build(dim, blocks, hidden, n_hidden, activation, batch_norm, permutation, seed, MADE)
