"""Checks of user-supplied training settings, run before data is loaded or anything is written.

``--batch-size 0`` or ``--lr nan`` used to surface as a deep traceback (or, for ``--steps -5``, as
an untrained model.pt and exit 0). Each check here raises one InputError that names the flag,
the value and what is expected; ``python -m nfkd`` prints it as one line with exit code 2.
"""
from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..validation import MAX_SEED
from ..validation import check_seed as validate_seed

__all__ = ["check_train_config", "check_seed", "check_device", "check_out_dir", "check_cli_run",
    "check_teacher", "check_distill_flags", "OVERRIDE_MAX"]

#: TrainConfig integer fields and their smallest valid value.
_MIN_INT = {"steps": 1, "batch_size": 1, "warmup": 0, "eval_every": 1, "patience": 1, "checkpoint_every": 1,
            "snapshot_every": 1, "eval_batch": 1, "max_bad_steps": 0}
#: TrainConfig float fields: (smallest, largest, smallest allowed?)
_FLOAT_RANGE = {"lr": (0.0, math.inf, False), "weight_decay": (0.0, math.inf, True),
                "clip_grad": (0.0, math.inf, False), "min_lr_ratio": (0.0, 1.0, True),
                "select_trim": (0.0, 0.49, True)}
SEED_MAX = MAX_SEED  # the one seed range (nfkd.validation): numpy's RandomState takes 0 .. 2**32 - 1
#: Largest architecture overrides: ``--hidden 100000000`` allocated until torch failed with a traceback.
#: The paper's widest model has hidden 512 and the deepest 32 steps per level.
OVERRIDE_MAX = {"hidden": 16_384, "steps_arch": 1_024}
#: ``distill`` loss weights: finite and >= 0 (NaN silently dropped a term, or trained nothing).
_LAMBDAS = ("lambda_nll", "lambda_kd", "lambda_skd")
MAX_TEMPERATURE = 1e3  # as nfkd.validation: noise * T stays far from float32 overflow


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_train_config(cfg: Any) -> None:
    """Every numeric TrainConfig field finite and in range; the device one torch can use."""
    values = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    for name, low in _MIN_INT.items():
        if name in values and (not _is_int(values[name]) or values[name] < low):
            what = "a positive integer" if low == 1 else "an integer >= 0"
            raise InputError(f"{_flag(name)} must be {what}, got {values[name]!r}")
    for name, (low, high, closed) in _FLOAT_RANGE.items():
        if name not in values:
            continue
        v = values[name]
        ok = isinstance(v, (int, float)) and math.isfinite(v) and (v >= low if closed else v > low) and v <= high
        if not ok:
            bound = f"{'>=' if closed else '>'} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
            raise InputError(f"{_flag(name)} must be a finite number {bound}, got {v!r}")
    check_seed(values.get("seed", 0))
    check_device(values.get("device", "cpu"))


def check_seed(seed: Any) -> None:
    """``--seed``: required, in ``nfkd.validation.check_seed``'s one range (0 .. MAX_SEED)."""
    validate_seed(seed, "--seed", optional=False)


def check_device(device: Any) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"--device {device!r} is not a torch device ({exc}); use cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} asks for CUDA, which this machine's torch cannot use; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device}: training runs on cpu or cuda, not {dev.type}")


def check_out_dir(out: str | Path) -> None:
    """The output folder may exist (resume) but must be a folder, and creatable."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {path} is an existing file; --out names a folder (model.pt, metrics.jsonl, ... "
                         "go inside it): pick another path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"--out {path}: {parent} is a file, so the folder cannot be created")
            break


def check_cli_run(cfg: Any, out: str | Path, threads: Any = None, overrides: dict[str, Any] | None = None) -> None:
    """All checks of a ``train`` / ``distill`` command line, before any data is loaded."""
    check_train_config(cfg)
    check_out_dir(out)
    if threads is not None and (not _is_int(threads) or threads < 1):
        raise InputError(f"--threads must be a positive integer, got {threads!r}")
    for name, value in (overrides or {}).items():
        if value is not None and (not _is_int(value) or value < 1):
            raise InputError(f"{_flag(name)} must be a positive integer, got {value!r}")
        if value is not None and value > OVERRIDE_MAX.get(name, value):
            raise InputError(f"{_flag(name)} = {value} is above the largest supported {OVERRIDE_MAX[name]:,}")


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_distill_flags(args: Any) -> None:
    """``distill``'s own flags, before any work: a NaN weight or temperature used to train silently wrong."""
    for name in _LAMBDAS:
        v = getattr(args, name, None)
        if v is not None and (not _finite_number(v) or v < 0):
            raise InputError(f"{_flag(name)} must be a finite number >= 0, got {v!r}")
    t = getattr(args, "temperature", 1.0)
    if not _finite_number(t) or not 0 < t <= MAX_TEMPERATURE:
        raise InputError(f"--temperature must be a finite number > 0 and <= {MAX_TEMPERATURE:g}, got {t!r}")
    every = getattr(args, "align_every", 1)
    if not _is_int(every) or every < 1:
        raise InputError(f"--align-every must be a positive integer, got {every!r}")
    pool = getattr(args, "teacher_pool", 0)
    if not _is_int(pool) or pool < 0:
        raise InputError(f"--teacher-pool must be an integer >= 0 (0: fresh teacher samples every step), got {pool!r}")


def check_teacher(teacher: Any, data: Any) -> None:
    """The teacher must model the same kind of rows/images the student is trained on."""
    shape = tuple(data.shape) if hasattr(data, "train") and hasattr(data.train, "images") else (int(data.dim),)
    if tuple(teacher.event_shape) != shape:
        what = "x".join(map(str, shape))
        raise InputError(
            f"the teacher models {'x'.join(map(str, teacher.event_shape))} inputs but dataset {data.name!r} has "
            f"{what}: distill with a teacher trained on {data.name} (its metadata names "
            f"{getattr(teacher, 'checkpoint_metadata', {}).get('dataset', 'no dataset')!r})"
        )
