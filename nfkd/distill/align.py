"""Alignment-invariant latent distances: an orthogonal map per tap, fitted by Procrustes.

A standard normal is rotation invariant and the LU mixing layers can absorb any rotation, so an
independently trained student's latents equal the teacher's only up to an orthogonal map. Instead
of asking the student to reproduce the teacher's arbitrary orientation, the loss compares
``student @ R`` with the teacher, where R (channels x channels) is the least-squares orthogonal
map on a batch, re-estimated every N steps without gradient and applied inside the loss only.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["channels_last_rows", "procrustes", "rotate_channels", "Aligner"]


def channels_last_rows(h: Tensor) -> Tensor:
    """(B, C, ...) -> (B·positions, C): every position is one sample of the channel vector."""
    return h.movedim(1, -1).reshape(-1, h.shape[1])


def procrustes(source: Tensor, target: Tensor) -> Tensor:
    """The orthogonal R minimising ||source @ R − target||_F (rows are samples): R = U Vᵀ of sourceᵀ target."""
    m = (source.double().T @ target.double())
    u, _, vh = torch.linalg.svd(m)
    return (u @ vh).to(source.dtype)


def rotate_channels(h: Tensor, r: Tensor) -> Tensor:
    """Apply R to the channel axis (dim 1) of a (B, C) or (B, C, H, W) tensor."""
    return (h.movedim(1, -1) @ r).movedim(-1, 1)


class Aligner:
    """One rotation per key, re-fitted every ``every`` calls of ``maybe_refit`` (identity at first)."""

    def __init__(self, every: int = 50) -> None:
        if every < 1:
            raise ValueError(f"align_every must be >= 1, got {every}")
        self.every = every
        self.rotations: dict[str, Tensor] = {}
        self.calls = 0

    def refit_due(self) -> bool:
        return self.calls % self.every == 0

    @torch.no_grad()
    def fit(self, key: str, student: Tensor, teacher: Tensor) -> None:
        self.rotations[key] = procrustes(channels_last_rows(student.detach()), channels_last_rows(teacher))

    def apply(self, key: str, student: Tensor) -> Tensor:
        r = self.rotations.get(key)
        return student if r is None else rotate_channels(student, r.to(student.dtype))

    def tick(self) -> None:
        self.calls += 1
