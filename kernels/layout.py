"""The packed weight layout of the tabular Triton kernels, described once.

The packer (``kernels.tabular._pack_*``, which writes each matrix) and the kernels (which read them
at compile-time offsets through ``triton.constexpr_function``) both take their offsets from the
field lists below, so the two cannot drift apart; ``unpack`` reads a buffer back by the same lists
(the pack/unpack round-trip test in ``tests/test_kernels_layout.py``).

Every function here is a ``triton.constexpr_function``: a plain Python function when called from
host code, evaluated at compile time when a kernel calls it with constexpr arguments.

Every matrix is stored transposed ([in, out], row-major) and zero-padded: ``DP`` / ``HP`` are the
padded feature / hidden widths (powers of two, >= 16).

* Glow-1D buffer: a header of ``DP`` floats (``[0]`` = constant log-det - D/2 log 2 pi), then one
  ``glow1d_step_fields`` record per step.
* MAF buffer: ``maf_header_fields``, then one block record per block: ``maf_head_fields``, then
  ``NH - 1`` hidden layers of ``maf_hidden_fields``, then ``maf_tail_fields`` (NH, the number of
  hidden layers, is a runtime argument of the kernels, so the tail's offsets are relative to it).
"""
from __future__ import annotations

from typing import Sequence

from . import _env

_env.select_mode()  # before triton's first import (see kernels/_env.py)

from triton import constexpr_function  # noqa: E402  (plain Python in host code, constexpr in kernels)

__all__ = [
    "Fields", "offsets", "size",
    "glow1d_header_size", "glow1d_step_fields",
    "maf_header_fields", "maf_head_fields", "maf_hidden_fields", "maf_tail_fields", "maf_block_size",
]

Fields = Sequence[tuple[str, int]]  # (name, number of floats), in buffer order


@constexpr_function
def offsets(fields: "Fields") -> dict[str, int]:
    """Start of every field, plus ``"SIZE"`` (the record's length)."""
    out, at = {}, 0
    for name, n in fields:
        out[name] = at
        at += n
    out["SIZE"] = at
    return out


@constexpr_function
def size(fields: "Fields") -> int:
    return sum(n for _, n in fields)


# ------------------------------------------------------------------------------------- Glow-1D
@constexpr_function
def glow1d_header_size(DP: int) -> int:
    return DP


@constexpr_function
def glow1d_step_fields(DP: int, HP: int) -> "Fields":
    """One Glow-1D step: folded mixing (ActNorm + LU linear) both ways, then the coupling net
    (3 layers; the last split into the shift and scale halves, written into the b-half columns)."""
    return (
        ("WT", DP * DP), ("B", DP),        # mixing, forward: h @ WT + B
        ("WIT", DP * DP), ("BI", DP),      # mixing, inverse (cached inverse of the folded linear)
        ("W0", DP * HP), ("B0", HP),       # coupling net layer 0 (rows of the b-half are 0)
        ("W1", HP * HP), ("B1", HP),       # layer 1
        ("W2S", HP * DP), ("B2S", DP),     # layer 2, shift half
        ("W2C", HP * DP), ("B2C", DP),     # layer 2, scale half (unused by additive couplings)
    )


# ------------------------------------------------------------------------------------------ MAF
@constexpr_function
def maf_header_fields(DP: int) -> "Fields":
    """The flow's input normalization and its constant log-det."""
    return (("LOC", DP), ("INV_SCALE", DP), ("SCALE", DP), ("CONST", DP))  # CONST: [0] only


@constexpr_function
def maf_head_fields(DP: int, HP: int) -> "Fields":
    """First MADE layer (the block's input permutation folded into its rows)."""
    return (("W0", DP * HP), ("B0", HP))


@constexpr_function
def maf_hidden_fields(HP: int) -> "Fields":
    """One hidden-to-hidden MADE layer (there are NH - 1 of them)."""
    return (("W", HP * HP), ("B", HP))


@constexpr_function
def maf_tail_fields(DP: int, HP: int) -> "Fields":
    """MADE output (mu and alpha halves), the batch-norm after the block as ``u * PS + PSH``, and
    alpha's soft clamp (the same value in every slot)."""
    return (("WMU", HP * DP), ("BMU", DP), ("WA", HP * DP), ("BA", DP), ("PS", DP), ("PSH", DP), ("CL", DP))


@constexpr_function
def maf_block_size(DP: int, HP: int, NH: int) -> int:
    return size(maf_head_fields(DP, HP)) + (NH - 1) * size(maf_hidden_fields(HP)) + size(maf_tail_fields(DP, HP))
