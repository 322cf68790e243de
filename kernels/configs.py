"""The launch configurations of the Triton kernels: the ONE list the triton Runner picks from and
``python -m kernels.aot`` compiles for every target architecture (no triton import here).

Why one list: a kernel can pass every interpreter test and still not compile for a GPU, or compile
and then fail to launch because its tile needs more shared memory than the GPU has.  The
launchers (``kernels.tabular``, ``kernels.glow_step``) therefore take block size, warps and
pipeline stages only from ``CONFIGS``, look a record up by the kernel's shape constants (padded
dims) and the device's compute capability, and treat "no record" as "not supported" (the
triton Runner binds that direction to PyTorch at load).  ``python -m kernels.aot`` compiles every record in every flag
combination in ``KERNELS`` for every target the record lists (default: all of ``ARCHS``) and
fails when one does not
compile or does not fit; CI runs it (``tests/test_kernels_aot.py``).

Explicit ``block_b=`` / ``num_warps=`` / ``block_p=`` arguments of the launchers (tests, the
``bench/gpu_check.py`` sweep) bypass the list and are not covered by the check; under the CPU
interpreter the launchers use small blocks for speed (no GPU, nothing to compile).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch

__all__ = ["ARCHS", "CONFIGS", "KERNELS", "Config", "Kernel", "DOT_PRECISION", "device_arch", "lookup",
           "constexprs", "variants"]

DOT_PRECISION = "ieee"  # tl.dot input precision of the Runner's launches (fp32 exact; "tf32x3" = bench option)

# Compute capability -> the most shared memory one thread block may use (bytes; the opt-in maximum,
# after the 1 KB CUDA reserves per block): A100 (sm_80) 163 KB, H100 (sm_90) 227 KB - NVIDIA's
# Ampere / Hopper tuning guides ("Unified Shared Memory/L1/Texture Cache") and the CUDA C++
# Programming Guide's per-compute-capability table.  sm_86 / sm_89 (99 KB) and newer GPUs are not
# listed: the kernels are not checked for them, so the triton Runner uses PyTorch there.
ARCHS: dict[int, int] = {80: 163 * 1024, 90: 227 * 1024}


@dataclass(frozen=True)
class Kernel:
    """One ``@triton.jit`` function and the constants every dispatched launch gives it."""

    module: str  # kernels.<module>
    fn: str  # the @triton.jit function's name
    block_arg: str  # constexpr that takes Config.block
    shape_args: tuple[str, ...]  # constexprs a Config pins (looked up by the launcher)
    fixed: tuple[tuple[str, Any], ...]  # constexprs with one value in every dispatched launch
    flags: tuple[tuple[tuple[str, Any], ...], ...]  # the flag combinations launches use
    types: tuple[tuple[str, str], ...] = ()  # non-default argument types (default: *_ptr -> *fp32, else i32)


@dataclass(frozen=True)
class Config:
    """A launch configuration: kernel, its shape constants, rows/pixels per program, warps, stages."""

    kernel: str  # key of KERNELS
    shape: tuple[tuple[str, Any], ...]
    block: int
    num_warps: int
    num_stages: int
    archs: tuple[int, ...] = tuple(ARCHS)  # the targets this record is for (and is checked on)

    def label(self) -> str:
        k = KERNELS[self.kernel]
        dims = " ".join(f"{n}={int(v) if isinstance(v, bool) else v}" for n, v in self.shape)
        return f"{dims} {k.block_arg}={self.block}"


_B = (False, True)
_TAB_TYPES = (("temperature", "fp32"), ("gidx_ptr", "*i32"))
_TAB_FIXED = (("USE_DOT", True), ("PREC", DOT_PRECISION))
KERNELS: dict[str, Kernel] = {
    "glow1d_log_prob": Kernel("tabular", "_glow1d_log_prob_kernel", "BLOCK_B", ("DP", "HP"), _TAB_FIXED,
                              tuple((("ADDITIVE", a),) for a in _B), _TAB_TYPES),
    "glow1d_sample": Kernel("tabular", "_glow1d_sample_kernel", "BLOCK_B", ("DP", "HP"), _TAB_FIXED,
                            tuple((("ADDITIVE", a),) for a in _B), _TAB_TYPES),
    "maf_log_prob": Kernel("tabular", "_maf_log_prob_kernel", "BLOCK_B", ("DP", "HP"), _TAB_FIXED,
                           tuple((("TANH", t),) for t in _B), _TAB_TYPES),
    "maf_sample": Kernel("tabular", "_maf_sample_kernel", "BLOCK_B", ("DP", "HP"), _TAB_FIXED,
                         tuple((("TANH", t),) for t in _B), _TAB_TYPES),
    "iaf_sample": Kernel("tabular", "_iaf_sample_kernel", "BLOCK_B", ("DP", "HP"), _TAB_FIXED,
                         tuple((("TANH", t),) for t in _B), _TAB_TYPES),
    # a level's prologue (squeeze + first affine), then per step: coupling epilogue + next affine
    # (HAS_AFFINE=False for the level's last step), affine or additive coupling
    "glow_fwd": Kernel("glow_step", "_glow_fwd_kernel", "BLOCK_P", ("CAP", "CBP", "USE_DOT"),
                       (("PREC", DOT_PRECISION),),
                       ((("SQUEEZE_IN", True), ("HAS_COUPLING", False), ("ADDITIVE", False), ("HAS_AFFINE", True)),)
                       + tuple((("SQUEEZE_IN", False), ("HAS_COUPLING", True), ("ADDITIVE", a), ("HAS_AFFINE", h))
                               for a in _B for h in _B)),
    "glow_inv": Kernel("glow_step", "_glow_inv_kernel", "BLOCK_P", ("CAP", "CBP", "USE_DOT"),
                       (("PREC", DOT_PRECISION),),
                       tuple((("ADDITIVE", a), ("UNSQUEEZE_OUT", u)) for a in _B for u in _B)),
}

# Tabular kernels: (DP, HP) -> (BLOCK_B, num_warps, num_stages).  DP = pow2(D) >= 16 and
# HP = pow2(hidden) >= 16, so D <= 64 and hidden <= 128 are supported.  num_stages is the depth of
# Triton's software pipeline over the step loop: each extra stage keeps one more step's weights in
# shared memory.  Triton's default (3) where it fits an A100; 2 or 1 where it does not (measured
# with python -m kernels.aot: e.g. Glow-1D at DP = HP = 64 needs 180,224 bytes with 3 stages,
# 98,304 with 2; the A100 allows 166,912).  Rows per program and warps: 64 rows / 4 warps,
# 32 rows / 8 warps for HP = 128 (unchanged from before the check).
_TABULAR: dict[str, dict[tuple[int, int], tuple[int, int, int]]] = {
    "glow1d": {
        (16, 16): (64, 4, 3), (16, 32): (64, 4, 3), (16, 64): (64, 4, 3), (16, 128): (32, 8, 2),
        (32, 16): (64, 4, 3), (32, 32): (64, 4, 3), (32, 64): (64, 4, 3), (32, 128): (32, 8, 2),
        (64, 16): (64, 4, 3), (64, 32): (64, 4, 3), (64, 64): (64, 4, 2), (64, 128): (32, 8, 1),
    },
    "maf_log_prob": {
        (16, 16): (64, 4, 3), (16, 32): (64, 4, 3), (16, 64): (64, 4, 3), (16, 128): (32, 8, 3),
        (32, 16): (64, 4, 3), (32, 32): (64, 4, 3), (32, 64): (64, 4, 3), (32, 128): (32, 8, 3),
        (64, 16): (64, 4, 3), (64, 32): (64, 4, 3), (64, 64): (64, 4, 3), (64, 128): (32, 8, 3),
    },
    "maf_sample": {
        (16, 16): (64, 4, 3), (16, 32): (64, 4, 3), (16, 64): (64, 4, 3), (16, 128): (32, 8, 2),
        (32, 16): (64, 4, 3), (32, 32): (64, 4, 3), (32, 64): (64, 4, 3), (32, 128): (32, 8, 2),
        (64, 16): (64, 4, 3), (64, 32): (64, 4, 3), (64, 64): (64, 4, 3),
    },
}
# MAF sampling keeps a whole MADE block's weights in shared memory across its D sequential passes:
# at DP = 64, HP = 128 that is 180,224 bytes with 1 or 2 stages (measured; its four weight tiles
# alone are 163,840 bytes whatever the block size), too much for an A100, so this record is for
# sm_90 only (an A100 samples such a MAF with PyTorch; its log p keeps the kernel).
_PER_ARCH = (("maf_sample", 64, 128, (32, 8, 2), (90,)),)
# IAF sampling loads each block's weights once for one MADE pass, as MAF's log p does: its records
# (not yet compiled on a GPU in this change: python -m kernels.aot --representative checks them).
_TABLE_OF = {"glow1d_log_prob": "glow1d", "glow1d_sample": "glow1d", "maf_log_prob": "maf_log_prob",
             "maf_sample": "maf_sample", "iaf_sample": "maf_log_prob"}
# Glow step kernels: the padded half widths CAP = CBP (c_a = c_b in every Glow level), broadcast
# matmul up to 8, tl.dot from 16; CAP 64 covers 3-channel images up to 4 levels.
_GLOW_HALVES = (2, 4, 8, 16, 32, 64)

CONFIGS: tuple[Config, ...] = tuple(
    Config(k, (("DP", dp), ("HP", hp)), *launch)
    for k, table in _TABLE_OF.items() for (dp, hp), launch in _TABULAR[table].items()
) + tuple(
    Config(k, (("DP", dp), ("HP", hp)), *launch, archs=archs) for k, dp, hp, launch, archs in _PER_ARCH
) + tuple(
    Config(k, (("CAP", c), ("CBP", c), ("USE_DOT", c >= 16)), 64, 4, 3)
    for k in ("glow_fwd", "glow_inv") for c in _GLOW_HALVES
)


def device_arch(device: torch.device | str) -> int | None:
    """Compute capability as 80 / 90 of a CUDA device; None for a CPU (interpreter) device."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def lookup(kernel: str, arch: int | None, **shape: Any) -> Config | None:
    """The record of ``kernel`` for these shape constants (None: not supported -> PyTorch).

    ``arch=None`` (interpreter): any record of that shape (the support question only); a CUDA
    arch not in a record's ``archs`` (e.g. one not in ``ARCHS``) has no checked configuration.
    """
    key = tuple(sorted(shape.items()))
    for cfg in CONFIGS:
        if cfg.kernel == kernel and tuple(sorted(cfg.shape)) == key and (arch is None or arch in cfg.archs):
            return cfg
    return None


def constexprs(cfg: Config, flags: Mapping[str, Any]) -> dict[str, Any]:
    """All constexpr arguments of one compiled variant of ``cfg``."""
    k = KERNELS[cfg.kernel]
    return {**dict(k.fixed), **dict(cfg.shape), **dict(flags), k.block_arg: cfg.block}


def variants(cfg: Config) -> Iterator[dict[str, Any]]:
    """The flag combinations a dispatched launch of ``cfg`` can use."""
    for flags in KERNELS[cfg.kernel].flags:
        yield dict(flags)
