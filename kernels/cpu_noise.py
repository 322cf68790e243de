"""numpy's float32 standard normals, bit for bit, at 1.8-3.3x numpy's speed (numba): the sampling noise of nfkd.

Why: every nfkd sampler draws its unit noise with ``numpy.random.default_rng(seed).standard_normal(...,
dtype=float32)`` (``nfkd.noise.draw_noise``), so a seed gives the same samples on every backend. numpy
calls its bit generator through a function pointer per draw: ~10 ns per normal on an AVX-512 Xeon, as
long as the IAF student's whole one-pass sampler at D = 63 (bench/results/cpu-engine.md). This module
runs the same two algorithms inlined in one loop:

* PCG64 (XSL-RR 128/64, numpy's ``PCG64``: the state advances before each output; a 32-bit draw
  takes the low half of a 64-bit output and buffers the high half, numpy's ``has_uint32``), with the
  128-bit multiply as one LLVM ``i128`` operation;
* numpy's float32 ziggurat (``random_standard_normal_f``: 256 layers, the same tables, the tail by
  ``log1pf``, the wedge test in double precision, as numpy's C code promotes it), compiled without
  fast-math so no operation is contracted or reordered.

The reference is numpy itself: ``standard_normal_f32`` reads the Generator's state, fills the array and
writes the advanced state back, so a later draw from the same Generator continues exactly where numpy's
would. The first call checks itself against numpy (seeds, odd sizes, a continued state; ~10 ms once);
on any difference, or a bit generator other than PCG64, the caller falls back to numpy
(``nfkd.noise.draw_noise``). tests/test_cpu_noise.py compares 10.5 M draws over 7 seeds, odd sizes and a
continued Generator. 1.8-3.3x: through ``draw_noise`` in bench.cpu_engine (1.8-2.3x) and the bare call (2.3-3.3x),
4096 x 63 values, on the Xeon above.
"""
from __future__ import annotations

import math
import threading
import warnings

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["available", "self_check", "standard_normal_f32"]

# numpy's ziggurat tables for float32 (numba keeps a copy of numpy's ziggurat_constants.h); the self-check
# below is what vouches for them against the installed numpy
try:
    from numba.np.random._constants import fi_float, ki_float, wi_float, ziggurat_nor_inv_r_f, ziggurat_nor_r_f
except ImportError:  # pragma: no cover - an older or newer numba without the module: numpy draws instead
    wi_float = None

_PCG64_MULT = 0x2360ED051FC65DA44385DF649FCCF645  # PCG_DEFAULT_MULTIPLIER_128
_M64 = (1 << 64) - 1
_U64, _U32, _F32 = np.uint64, np.uint32, np.float32
_U24 = _F32(1.0 / 16777216.0)  # next_float: (u32 >> 8) * 2^-24


@intrinsic
def _pcg_step(typingctx, hi, lo, inc_hi, inc_lo):
    """The PCG64 state update state * MULT + inc (mod 2^128) on (high, low) 64-bit halves."""
    sig = types.UniTuple(types.uint64, 2)(types.uint64, types.uint64, types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        i128, i64 = ir.IntType(128), ir.IntType(64)

        def join(h, lo_):
            return builder.or_(builder.shl(builder.zext(h, i128), ir.Constant(i128, 64)), builder.zext(lo_, i128))

        s = builder.add(builder.mul(join(args[0], args[1]), ir.Constant(i128, _PCG64_MULT)), join(args[2], args[3]))
        return context.make_tuple(builder, signature.return_type,
                                  (builder.trunc(builder.lshr(s, ir.Constant(i128, 64)), i64), builder.trunc(s, i64)))

    return sig, codegen


@nb.njit(inline="always")
def _xsl_rr(hi, lo):
    """PCG64's output function: rotate (hi ^ lo) right by the state's top 6 bits."""
    v = hi ^ lo
    rot = hi >> _U64(58)
    return (v >> rot) | (v << ((_U64(64) - rot) & _U64(63)))


@nb.njit(inline="always")
def _next_u32(hi, lo, inc_hi, inc_lo, has, buf):
    """numpy's buffered 32-bit draw: the buffered high half if there is one, else a fresh 64-bit output's low half."""
    if has:
        return hi, lo, _U64(0), buf, _U32(buf)
    hi, lo = _pcg_step(hi, lo, inc_hi, inc_lo)
    o = _xsl_rr(hi, lo)
    return hi, lo, _U64(1), o >> _U64(32), _U32(o & _U64(0xFFFFFFFF))


@nb.njit(inline="always")
def _fast(r, wi, ki):
    """The ziggurat's common case for 32-bit word r: (the normal, whether it is accepted without more words)."""
    idx = r & _U32(0xFF)
    rabs = (r >> _U32(9)) & _U32(0x7FFFFF)
    x = _F32(rabs) * wi[idx]
    if (r >> _U32(8)) & _U32(1):
        x = -x
    return x, rabs < ki[idx]


@nb.njit(nogil=True, cache=True)  # not inlined: the hot loop keeps its registers
def _slow(r, hi, lo, inc_hi, inc_lo, has, buf, wi, ki, fi, r_f, inv_r_f):
    """numpy's ``random_standard_normal_f`` for a first word r that missed the common case: the tail or the
    wedge, drawing more words (and fresh first words after a rejection) from the stream.
    Returns the normal and the advanced stream."""
    while True:
        idx = r & _U32(0xFF)
        rabs = (r >> _U32(9)) & _U32(0x7FFFFF)
        x = _F32(rabs) * wi[idx]
        if (r >> _U32(8)) & _U32(1):
            x = -x
        if rabs < ki[idx]:
            return x, hi, lo, has, buf
        if idx == 0:  # the tail beyond r: Marsaglia's exponential rejection, float32 and log1pf as numpy
            while True:
                hi, lo, has, buf, r1 = _next_u32(hi, lo, inc_hi, inc_lo, has, buf)
                xx = -inv_r_f * _F32(math.log1p(-(_F32(r1 >> _U32(8)) * _U24)))
                hi, lo, has, buf, r2 = _next_u32(hi, lo, inc_hi, inc_lo, has, buf)
                yy = -_F32(math.log1p(-(_F32(r2 >> _U32(8)) * _U24)))
                if yy + yy > xx * xx:
                    return (-(r_f + xx) if (rabs >> _U32(8)) & _U32(1) else r_f + xx), hi, lo, has, buf
        else:  # the wedge: a float32 uniform against the density, which numpy's C evaluates in double
            hi, lo, has, buf, r1 = _next_u32(hi, lo, inc_hi, inc_lo, has, buf)
            y = (fi[idx - 1] - fi[idx]) * (_F32(r1 >> _U32(8)) * _U24) + fi[idx]
            xd = np.float64(x)
            if np.float64(y) < math.exp(-0.5 * xd * xd):
                return x, hi, lo, has, buf
        hi, lo, has, buf, r = _next_u32(hi, lo, inc_hi, inc_lo, has, buf)  # rejected: numpy's for (;;) again


@nb.njit(nogil=True, cache=True)
def _fill(st, out, wi, ki, fi, r_f, inv_r_f):
    """out[:] = numpy's float32 standard normals from PCG64 state ``st`` = [state hi, lo, inc hi, lo,
    has_uint32, uinteger]; ``st`` is advanced in place. No fast-math: bit-exact float32/float64 steps.

    The common case takes both halves of one 64-bit output with no buffer bookkeeping; any word that needs
    the tail or the wedge goes through ``_slow`` with the buffered half-word exactly where numpy keeps it."""
    hi, lo, inc_hi, inc_lo, has, buf = st[0], st[1], st[2], st[3], st[4], st[5]
    i, n = 0, out.size
    while i < n:
        if has or i + 2 > n:
            hi, lo, has, buf, r = _next_u32(hi, lo, inc_hi, inc_lo, has, buf)
            x, ok = _fast(r, wi, ki)
            if not ok:
                x, hi, lo, has, buf = _slow(r, hi, lo, inc_hi, inc_lo, has, buf, wi, ki, fi, r_f, inv_r_f)
            out[i] = x
            i += 1
            continue
        hi, lo = _pcg_step(hi, lo, inc_hi, inc_lo)
        o = _xsl_rr(hi, lo)
        buf = o >> _U64(32)  # numpy's uinteger holds the high half even once it is used (its state compares so)
        r1, r2 = _U32(o & _U64(0xFFFFFFFF)), _U32(buf)
        x1, ok1 = _fast(r1, wi, ki)
        x2, ok2 = _fast(r2, wi, ki)
        if ok1 and ok2:
            out[i] = x1
            out[i + 1] = x2
            i += 2
            continue
        has = _U64(1)  # r2 is the buffered half-word while r1 is resolved
        if not ok1:
            x1, hi, lo, has, buf = _slow(r1, hi, lo, inc_hi, inc_lo, has, buf, wi, ki, fi, r_f, inv_r_f)
        out[i] = x1
        i += 1
        # r2 is consumed next only if r1 left it in the buffer; the loop's buffered branch takes it from there
    st[0], st[1], st[4], st[5] = hi, lo, has, buf


def _state_in(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    s = rng.bit_generator.state
    pcg = s["state"]
    st = np.array([pcg["state"] >> 64, pcg["state"] & _M64, pcg["inc"] >> 64, pcg["inc"] & _M64,
                   s["has_uint32"], s["uinteger"]], np.uint64)
    return st, s


def _state_out(rng: np.random.Generator, st: np.ndarray, s: dict) -> None:
    rng.bit_generator.state = {"bit_generator": "PCG64",
                               "state": {"state": (int(st[0]) << 64) | int(st[1]), "inc": s["state"]["inc"]},
                               "has_uint32": int(st[4]), "uinteger": int(st[5])}


def _draw(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    st, s = _state_in(rng)
    out = np.empty(shape, np.float32)
    _fill(st, out.reshape(-1), wi_float, ki_float, fi_float, _F32(ziggurat_nor_r_f), _F32(ziggurat_nor_inv_r_f))
    _state_out(rng, st, s)
    return out


def self_check() -> str | None:
    """None when this module draws exactly numpy's normals (several seeds, odd sizes, one Generator
    continued across draws of odd and even length, so a buffered half-word is carried); else what differs."""
    if wi_float is None:
        return "numba has no copy of numpy's ziggurat tables (numba.np.random._constants)"
    for seed in (0, 17, 20240601):
        want = np.random.default_rng(seed).standard_normal(100_003, dtype=np.float32)
        got = _draw(np.random.default_rng(seed), (100_003,))
        if not np.array_equal(got, want):
            k = int(np.argmax(got != want))
            return f"seed {seed}: draw {k} is {got[k]!r}, numpy's {want[k]!r}"
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    for shape in ((7, 3), (1,), (64, 5), (3,)):
        if not np.array_equal(_draw(a, shape), b.standard_normal(shape, dtype=np.float32)):
            return f"a continued Generator differs at a draw of shape {shape}"
    if a.bit_generator.state != b.bit_generator.state:
        return "the Generator's state after the draws differs from numpy's"
    return None


_lock = threading.Lock()
_status: list[str | None] = []  # [] until checked; then [None] (exact) or [the reason it is not used]


def available() -> bool:
    """Whether ``standard_normal_f32`` may be used (the self-check runs once, on the first call)."""
    if not _status:
        with _lock:
            if not _status:
                try:
                    why = self_check()
                except Exception as exc:  # numba could not compile it here (an LLVM or numba quirk): numpy draws
                    why = f"it failed to compile or run: {type(exc).__name__}: {str(exc)[:200]}"
                if why is not None:
                    warnings.warn(f"nfkd draws noise with numpy: its numba copy is not exact here ({why})",
                                  RuntimeWarning, stacklevel=3)
                _status.append(why)
    return _status[0] is None


def standard_normal_f32(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray | None:
    """``rng.standard_normal(shape, dtype=np.float32)`` bit for bit, advancing ``rng`` as numpy would;
    None when it cannot be guaranteed here (a bit generator other than PCG64, or the self-check failed)."""
    if type(rng.bit_generator) is not np.random.PCG64 or not available():
        return None
    return _draw(rng, tuple(shape))
