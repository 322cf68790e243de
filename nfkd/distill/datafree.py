"""Data-free distillation: the student's training *and* validation rows are the teacher's samples.

``distill --data-free`` never reads the training files: the teacher draws a training set and a
disjoint held-out set (its own samples, different noise), model selection runs on the held-out
samples, and the real test split, when ``--data`` names one, is read only after training, to
report. Teacher samples that overflow (non-finite, or beyond the KD overflow threshold) are dropped
and counted. Image teachers' samples are quantized to the data's intensity levels, so the student
trains with the same uniform dequantization as on real images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..flows import Flow
from ..progress import phase
from ..train import TrainData
from .objective import finite_rows

__all__ = ["TeacherSamples", "default_sample_counts", "teacher_sample_data", "student_like_teacher"]

#: Caps on the teacher-sample training set (rows in memory): tables, images.
MAX_TABLE_SAMPLES = 1_000_000
MAX_IMAGE_SAMPLES = 50_000
OVERFLOW = 1e4


@dataclass(frozen=True)
class TeacherSamples:
    data: TrainData
    n_train: int
    n_val: int
    dropped: int
    temperature: float
    seed: int

    def metadata(self) -> dict[str, Any]:
        return {"data_free": True, "teacher_samples": self.n_train, "validation_teacher_samples": self.n_val,
                "dropped_overflowed_samples": self.dropped, "temperature": self.temperature, "seed": self.seed}


def default_sample_counts(teacher: Flow, steps: int, batch_size: int) -> tuple[int, int]:
    """(train, validation) sample counts: one fresh sample per training row seen, capped; val 10 %."""
    cap = MAX_TABLE_SAMPLES if teacher.tabular else MAX_IMAGE_SAMPLES
    n_train = int(min(cap, max(10_000, steps * batch_size)))
    n_val = int(min(20_000, max(1_000, n_train // 10)))
    return n_train, n_val


@torch.no_grad()
def _draw(teacher: Flow, n: int, gen: torch.Generator, temperature: float, chunk: int) -> tuple[Tensor, int]:
    """n finite teacher samples (float32, CPU) and how many overflowed draws were dropped."""
    ref = next(teacher.parameters())
    parts, have, dropped, tries = [], 0, 0, 0
    while have < n:
        m = min(chunk, n - have)
        noise = [torch.randn(s, generator=gen).to(ref.device, ref.dtype) * temperature for s in teacher.noise_shapes(m)]
        x = teacher.inverse(noise).x
        keep = finite_rows(x, OVERFLOW)
        dropped += int((~keep).sum())
        parts.append(x[keep].float().cpu())
        have += int(keep.sum())
        tries += m
        if tries >= 4 * n + chunk and have < n // 2:
            raise InputError(f"the teacher's samples overflow: {dropped} of {tries} draws were non-finite or "
                             f"beyond {OVERFLOW:g}; check the teacher (or lower --temperature)")
    return torch.cat(parts)[:n], dropped


def _quantize(x: Tensor, n_levels: int) -> Tensor:
    """Images in [-0.5, 0.5] -> integer levels (the form the trainer dequantizes)."""
    k = torch.floor((x.clamp(-0.5, 0.5) + 0.5) * n_levels).clamp(0, n_levels - 1)
    return k.to(torch.uint8 if n_levels <= 256 else torch.int32)


def teacher_sample_data(teacher: Flow, n_train: int, n_val: int, seed: int = 0, temperature: float = 1.0,
                        chunk: int = 4096) -> TeacherSamples:
    """Training and validation sets drawn from the frozen teacher (disjoint noise streams)."""
    for name, v in (("teacher samples", n_train), ("validation teacher samples", n_val)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise InputError(f"--temperature must be a finite number > 0, got {temperature!r}")
    was = teacher.training
    teacher.eval()
    gen = torch.Generator().manual_seed(seed)
    with phase(f"data-free: drawing {n_train:,} + {n_val:,} teacher samples"):
        train, d1 = _draw(teacher, n_train, gen, temperature, chunk)
        val, d2 = _draw(teacher, n_val, gen, temperature, chunk)
    teacher.train(was)
    n_levels = None
    if not teacher.tabular:
        n_levels = int(teacher.config.get("n_levels_data", 256))
        train, val = _quantize(train, n_levels), _quantize(val, n_levels)
    return TeacherSamples(TrainData(train, val, n_levels), n_train, n_val, d1 + d2, float(temperature), seed)


def student_like_teacher(teacher: Flow, config: dict[str, Any]) -> Flow:
    """A student shaped for the teacher's inputs (and, for tables, its data normalization), no data needed."""
    from ..pipeline import shaped_flow

    norm = None
    if teacher.tabular:
        norm = (teacher.normalize.loc.detach().cpu(), teacher.normalize.scale.detach().cpu())
    return shaped_flow(config, tuple(teacher.event_shape), teacher.tabular,
                       int(teacher.config.get("n_levels_data", 256)), norm)
