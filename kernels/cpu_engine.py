"""Fused CPU kernels (numba) for the folded tabular flows: Glow-1D density + sampling, MAF density + sampling.

The reference is the folded flow's eager PyTorch code (``nfkd.fold.fold`` output, ``log_prob`` /
``sample``); ``kernels.cpu_backend`` packs its modules into one float32 buffer and checks nothing
else. Why it is fast where PyTorch is not (issue #14): a tile of rows (``TILE``) goes through the
*whole* flow while its activations stay in L1/L2; every dense layer is an explicitly vectorized
4-row x 16-column register-blocked micro-kernel (AVX2 ``<8 x float>`` FMAs, ``_dense``), and the
epilogues (bias, activation, coupling affine, sigmoid / log-sigmoid, MADE scale, log-det) are fused
loops over the tile with polynomial ``exp`` / ``log1p`` / ``tanh`` that vectorize (no libm calls).
float32 everywhere, no allocation per call beyond the output (scratch is passed in).

Packed layout (written by ``kernels.cpu_backend``): every matrix is stored transposed, ``[in, out]``
row-major, its output width zero-padded to a multiple of 16 (``pad16``) so the micro-kernel needs no
column tail; the zero padding keeps padded columns exactly 0. ``offs`` holds int64 offsets into
``wbuf``, ``meta`` the sizes (see the ``G_*`` / ``M_*`` indices).

Vectorization rule learnt by measurement: loops with ``exp`` / ``tanh`` run *flat* over a whole
contiguous tile buffer (``rows * width`` iterations); a short per-row loop (e.g. D = 63) leaves a
scalar remainder of up to 31 elements whose scalar transcendentals cost more than the vector part.

MAF sampling is exact and needs no D full MADE passes: hidden units are reordered by MADE degree,
so output j depends only on a prefix of ``nj[j]`` units in every hidden layer; per coordinate the
first layer's pre-activation is updated by one rank-1 term (``x_j * W0[j, :]``) and only the
prefixes of the deeper layers and the one output pair (mu_j, alpha_j) are computed.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

__all__ = [
    "TILE", "SAMPLE_TILE", "glow1d_log_prob", "glow1d_log_prob_par", "glow1d_sample", "glow1d_sample_par",
    "maf_log_prob", "maf_log_prob_par", "maf_sample", "maf_sample_par", "pad16",
]

TILE = 64  # rows per tile (density); multiple of 4 (micro-kernel rows); chosen by measurement
SAMPLE_TILE = 64  # rows per tile (sampling)

# meta indices, Glow-1D
G_D, G_DP, G_CA, G_CB, G_H, G_HP, G_OP, G_STEPS, G_DEPTH, G_ADD = range(10)
# meta indices, MAF
M_D, M_DP, M_H, M_HP, M_BLOCKS, M_NHID, M_TANH, M_OP, M_GROUPS = range(9)

F32 = np.float32
_ZERO = F32(0.0)
_ONE = F32(1.0)
_HALF = F32(0.5)
_TWO = F32(2.0)


def pad16(n: int) -> int:
    return max(16, (n + 15) // 16 * 16)


# ---------------------------------------------------------------------------------------------
# <8 x float> values for the micro-kernel (LLVM vector type; mem2reg keeps them in registers)
# ---------------------------------------------------------------------------------------------
class _F8(types.Type):
    def __init__(self) -> None:
        super().__init__(name="F8")


f8 = _F8()
_VT = ir.VectorType(ir.FloatType(), 8)


@register_model(_F8)
class _F8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VT)


def _vptr(context, builder, aty, arr, idx):
    a = context.make_array(aty)(context, builder, arr)
    return builder.bitcast(builder.gep(a.data, [idx]), ir.PointerType(_VT))


@intrinsic
def _vload(typingctx, arr, idx):
    def codegen(context, builder, sig, args):
        return builder.load(_vptr(context, builder, sig.args[0], args[0], args[1]), align=4)

    return f8(arr, types.intp), codegen


@intrinsic
def _vstore(typingctx, arr, idx, v):
    def codegen(context, builder, sig, args):
        builder.store(args[2], _vptr(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()

    return types.none(arr, types.intp, f8), codegen


@intrinsic
def _vsplat(typingctx, x):
    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_VT, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, ir.Constant(_VT, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8))

    return f8(types.float32), codegen


@intrinsic
def _vfma(typingctx, a, b, c):
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VT, [_VT, _VT, _VT]), "llvm.fma.v8f32")
        return builder.call(fn, list(args))

    return f8(f8, f8, f8), codegen


@intrinsic
def _vrelu(typingctx, a):
    def codegen(context, builder, sig, args):
        z = ir.Constant(_VT, [0.0] * 8)
        return builder.select(builder.fcmp_ordered(">", args[0], z), args[0], z)

    return f8(f8), codegen


@intrinsic
def _pow2i(typingctx, k):
    """2**k as float32 for integer k in [-126, 127] (exponent bits; vectorizes, unlike ldexp)."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        e = builder.shl(builder.add(builder.trunc(args[0], i32) if args[0].type != i32 else args[0],
                                    ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(e, ir.FloatType())

    return types.float32(k), codegen


_NO_KIN = np.zeros(1, np.int64)  # ``_dense(..., _NO_KIN, -1)``: every input row of W is used

# error_model="numpy": no ZeroDivisionError branch on float division, which would block vectorization
_JIT = dict(fastmath=True, cache=True, nogil=True, error_model="numpy")


# ---------------------------------------------------------------------------------------------
# scalar math that vectorizes (float32 polynomials; no libm calls in the hot loops)
# ---------------------------------------------------------------------------------------------
_LOG2E = F32(1.4426950408889634)
_LN2_HI = F32(0.693359375)
_LN2_LO = F32(-2.12194440e-4)
_EXP_LO, _EXP_HI = F32(-87.0), F32(88.0)
_C2, _C3, _C4, _C5, _C6, _C7 = (F32(1 / 2), F32(1 / 6), F32(1 / 24), F32(1 / 120), F32(1 / 720), F32(1 / 5040))


@nb.njit(inline="always", **_JIT)
def _exp(x):
    """exp(x) in float32, relative error ~2 ulp; clamped to [e^-87, e^88] (finite, like the eager limits)."""
    x = min(max(x, _EXP_LO), _EXP_HI)
    k = np.floor(x * _LOG2E + _HALF)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _ONE + r * (_ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7))))))
    return p * _pow2i(np.int32(k))


_L3, _L5, _L7, _L9, _L11, _L13, _L15, _L17 = (F32(1 / 3), F32(1 / 5), F32(1 / 7), F32(1 / 9), F32(1 / 11),
                                              F32(1 / 13), F32(1 / 15), F32(1 / 17))


@nb.njit(inline="always", **_JIT)
def _log1p_unit(e):
    """log(1 + e) for e in [0, 1]: 2 atanh(t), t = e / (2 + e) <= 1/3 (series to t^17: < 1e-8)."""
    t = e / (_TWO + e)
    t2 = t * t
    s = _L15 + t2 * _L17
    s = _L13 + t2 * s
    s = _L11 + t2 * s
    s = _L9 + t2 * s
    s = _L7 + t2 * s
    s = _L5 + t2 * s
    s = _L3 + t2 * s
    return _TWO * t * (_ONE + t2 * s)


_T3, _T5, _T7, _T9, _T11 = (F32(-1 / 3), F32(2 / 15), F32(-17 / 315), F32(62 / 2835), F32(-1382 / 155925))
_TANH_SMALL = F32(0.25)


@nb.njit(inline="always", **_JIT)
def _tanh(y):
    """tanh in float32: odd series for |y| < 1/4, (1 - e) / (1 + e) with e = exp(-2|y|) beyond."""
    a = abs(y)
    y2 = y * y
    small = y * (_ONE + y2 * (_T3 + y2 * (_T5 + y2 * (_T7 + y2 * (_T9 + y2 * _T11)))))
    e = _exp(-_TWO * a)
    big = math.copysign((_ONE - e) / (_ONE + e), y)  # branch-free: a branch here blocks vectorization
    return small if a < _TANH_SMALL else big


# ---------------------------------------------------------------------------------------------
# the dense micro-kernel
# ---------------------------------------------------------------------------------------------
@nb.njit(**_JIT)
def _finish_log_prob(h, ld, n, D, DP, const, out, r0):
    """log p = const + log|det| - |z|^2 / 2 for the tile's n rows (the shared epilogue of both flows)."""
    for r in range(n):
        sq = _ZERO
        for c in range(D):
            v = h[r * DP + c]
            sq += v * v
        out[r0 + r] = const + ld[r] - _HALF * sq


@nb.njit(**_JIT)
def _dense(X, xo, ldx, nin, W, wo, ldw, nout, B, bo, Y, yo, ldy, rows, relu, kin, ko):
    """Y[r, :nout] = act(X[r, :nin] @ W[:nin, :nout] + B[:nout]) for r < rows (flat arrays + offsets).

    ``nout`` a multiple of 16, ``rows`` a multiple of 4; 4 rows x 16 columns of accumulators stay in
    8 AVX2 registers through the whole reduction (one W load per 4 FMAs, no Y traffic inside it).
    ``ko >= 0``: column group g reads only the first ``kin[ko + g]`` inputs (the rows of W below are
    structurally zero: a MADE's masks in degree order are a staircase); ``ko < 0``: all ``nin``.
    """
    for o in range(0, nout, 16):
        n_in = nin if ko < 0 else min(nin, kin[ko + o // 16])
        b0 = _vload(B, bo + o)
        b1 = _vload(B, bo + o + 8)
        for r in range(0, rows, 4):
            a00 = b0
            a01 = b1
            a10 = b0
            a11 = b1
            a20 = b0
            a21 = b1
            a30 = b0
            a31 = b1
            x0 = xo + r * ldx
            for i in range(n_in):
                wi = wo + i * ldw + o
                w0 = _vload(W, wi)
                w1 = _vload(W, wi + 8)
                v = _vsplat(X[x0 + i])
                a00 = _vfma(v, w0, a00)
                a01 = _vfma(v, w1, a01)
                v = _vsplat(X[x0 + ldx + i])
                a10 = _vfma(v, w0, a10)
                a11 = _vfma(v, w1, a11)
                v = _vsplat(X[x0 + 2 * ldx + i])
                a20 = _vfma(v, w0, a20)
                a21 = _vfma(v, w1, a21)
                v = _vsplat(X[x0 + 3 * ldx + i])
                a30 = _vfma(v, w0, a30)
                a31 = _vfma(v, w1, a31)
            if relu:
                a00 = _vrelu(a00)
                a01 = _vrelu(a01)
                a10 = _vrelu(a10)
                a11 = _vrelu(a11)
                a20 = _vrelu(a20)
                a21 = _vrelu(a21)
                a30 = _vrelu(a30)
                a31 = _vrelu(a31)
            y0 = yo + r * ldy + o
            _vstore(Y, y0, a00)
            _vstore(Y, y0 + 8, a01)
            _vstore(Y, y0 + ldy, a10)
            _vstore(Y, y0 + ldy + 8, a11)
            _vstore(Y, y0 + 2 * ldy, a20)
            _vstore(Y, y0 + 2 * ldy + 8, a21)
            _vstore(Y, y0 + 3 * ldy, a30)
            _vstore(Y, y0 + 3 * ldy + 8, a31)


@nb.njit(**_JIT)
def _tanh_inplace(Y, n):
    """Y[:n] = tanh(Y[:n]): one flat loop (padded columns hold 0 or finite stale values: harmless)."""
    for i in range(n):
        Y[i] = _tanh(Y[i])


# ---------------------------------------------------------------------------------------------
# Glow-1D
# ---------------------------------------------------------------------------------------------
# offs columns per step: W^T, b, W^-1^T, b_inv, then (W, b) of the coupling net's layers; the last
# layer's outputs are interleaved (shift_j, s_j) in one OP = pad16(2 CB) wide matrix (additive:
# shift only, pad16(CB)), so a narrow coupling pays for one padded group, not two
@nb.njit(**_JIT)
def _g1d_net(h, w, offs, k, meta, t1, t2, net_out, rows):
    """The coupling net of step k on h[:, :CA] -> net_out [rows, OP] (shift_j at 2j, s_j at 2j + 1)."""
    DP, CA, HP, H, depth, OP = meta[G_DP], meta[G_CA], meta[G_HP], meta[G_H], meta[G_DEPTH], meta[G_OP]
    _dense(h, 0, DP, CA, w, offs[k, 4], HP, HP, w, offs[k, 5], t1, 0, HP, rows, True, _NO_KIN, -1)
    a, b = t1, t2
    for li in range(1, depth):
        _dense(a, 0, HP, H, w, offs[k, 4 + 2 * li], HP, HP, w, offs[k, 5 + 2 * li], b, 0, HP, rows, True,
               _NO_KIN, -1)
        a, b = b, a
    o = 4 + 2 * depth
    _dense(a, 0, HP, H, w, offs[k, o], OP, OP, w, offs[k, o + 1], net_out, 0, OP, rows, False, _NO_KIN, -1)


@nb.njit(**_JIT)
def _g1d_lp_tile(x, r0, n, out, w, offs, meta, const, h, h2, t1, t2, sh, sc, ls, ld):
    D, DP, CA, CB, steps, additive, OP = (meta[G_D], meta[G_DP], meta[G_CA], meta[G_CB], meta[G_STEPS],
                                          meta[G_ADD], meta[G_OP])
    rows = (n + 3) // 4 * 4
    for r in range(rows):
        ld[r] = _ZERO
        for c in range(D):
            h[r * DP + c] = x[r0 + r, c] if r < n else _ZERO
    for k in range(steps):
        # folded ActNorm + LU (+ input normalization at step 0): h2 = h @ W^T + b
        _dense(h, 0, DP, D, w, offs[k, 0], DP, DP, w, offs[k, 1], h2, 0, DP, rows, False, _NO_KIN, -1)
        _g1d_net(h2, w, offs, k, meta, t1, t2, sh, rows)
        if additive:
            for r in range(rows):
                for j in range(CB):
                    h2[r * DP + CA + j] += sh[r * OP + j]
        else:
            for r in range(rows):  # s into a compact [rows, CB] buffer: the transcendentals skip padding
                for j in range(CB):
                    sc[r * CB + j] = sh[r * OP + 2 * j + 1]
            for i in range(rows * CB):  # flat: sigmoid(s) -> sc, log sigmoid(s) -> ls
                s = sc[i]
                e = _exp(-abs(s))
                inv1pe = _ONE / (_ONE + e)
                sc[i] = inv1pe if s >= _ZERO else e * inv1pe
                ls[i] = min(s, _ZERO) - _log1p_unit(e)
            for r in range(rows):
                acc = _ZERO
                for j in range(CB):
                    h2[r * DP + CA + j] = (h2[r * DP + CA + j] + sh[r * OP + 2 * j]) * sc[r * CB + j]
                    acc += ls[r * CB + j]
                ld[r] += acc
        h, h2 = h2, h
    _finish_log_prob(h, ld, n, D, DP, const, out, r0)


@nb.njit(**_JIT)
def _g1d_sample_tile(z, r0, n, temperature, out, w, offs, meta, h, h2, t1, t2, sh, sc):
    D, DP, CA, CB, steps, additive, OP = (meta[G_D], meta[G_DP], meta[G_CA], meta[G_CB], meta[G_STEPS],
                                          meta[G_ADD], meta[G_OP])
    rows = (n + 3) // 4 * 4
    for r in range(rows):
        for c in range(D):
            h[r * DP + c] = z[r0 + r, c] * temperature if r < n else _ZERO
    for kk in range(steps):
        k = steps - 1 - kk
        _g1d_net(h, w, offs, k, meta, t1, t2, sh, rows)
        if additive:
            for r in range(rows):
                for j in range(CB):
                    h[r * DP + CA + j] -= sh[r * OP + j]
        else:
            for r in range(rows):
                for j in range(CB):
                    sc[r * CB + j] = sh[r * OP + 2 * j + 1]
            for i in range(rows * CB):  # 1 / sigmoid(s) = 1 + exp(-s)
                sc[i] = _ONE + _exp(-sc[i])
            for r in range(rows):
                for j in range(CB):
                    h[r * DP + CA + j] = h[r * DP + CA + j] * sc[r * CB + j] - sh[r * OP + 2 * j]
        _dense(h, 0, DP, D, w, offs[k, 2], DP, DP, w, offs[k, 3], h2, 0, DP, rows, False, _NO_KIN, -1)
        h, h2 = h2, h
    for r in range(n):
        for c in range(D):
            out[r0 + r, c] = h[r * DP + c]


@nb.njit(**_JIT)
def glow1d_log_prob(x, out, w, offs, meta, const, h, h2, t1, t2, sh, sc, ls, ld):
    """One thread: tiles in order (scratch for one tile: see ``kernels.cpu_backend``)."""
    B = x.shape[0]
    for r0 in range(0, B, TILE):
        _g1d_lp_tile(x, r0, min(TILE, B - r0), out, w, offs, meta, const, h, h2, t1, t2, sh, sc, ls, ld)


@nb.njit(parallel=True, **_JIT)
def glow1d_log_prob_par(x, out, w, offs, meta, const, h, h2, t1, t2, sh, sc, ls, ld):
    """Threads over row tiles; scratch has one row per thread (numba.get_thread_id)."""
    B = x.shape[0]
    for t in nb.prange((B + TILE - 1) // TILE):
        i = nb.get_thread_id()
        r0 = t * TILE
        _g1d_lp_tile(x, r0, min(TILE, B - r0), out, w, offs, meta, const, h[i], h2[i], t1[i], t2[i], sh[i], sc[i],
                     ls[i], ld[i])


@nb.njit(**_JIT)
def glow1d_sample(z, temperature, out, w, offs, meta, h, h2, t1, t2, sh, sc):
    B = z.shape[0]
    for r0 in range(0, B, SAMPLE_TILE):
        _g1d_sample_tile(z, r0, min(SAMPLE_TILE, B - r0), temperature, out, w, offs, meta, h, h2, t1, t2, sh, sc)


@nb.njit(parallel=True, **_JIT)
def glow1d_sample_par(z, temperature, out, w, offs, meta, h, h2, t1, t2, sh, sc):
    B = z.shape[0]
    for t in nb.prange((B + SAMPLE_TILE - 1) // SAMPLE_TILE):
        i = nb.get_thread_id()
        r0 = t * SAMPLE_TILE
        _g1d_sample_tile(z, r0, min(SAMPLE_TILE, B - r0), temperature, out, w, offs, meta, h[i], h2[i], t1[i],
                         t2[i], sh[i], sc[i])


# ---------------------------------------------------------------------------------------------
# MAF
# ---------------------------------------------------------------------------------------------
# offs columns per block: W0, b0, [W_l, b_l for hidden layers 1..], then at o = 2 nhid: the output
# layer with (mu_j, alpha_j) interleaved in columns (2j, 2j + 1), OP = pad16(2D) wide (density); the
# mu and alpha biases (DP wide, sampling) at o + 1 / o + 3, the interleaved bias at o + 2; WoT
# ([2D, HP]: row j = mu_j's weights, row D + j = alpha_j's; sampling) at o + 4; batch-norm loc,
# inverse scale, scale (identity without batch-norm), then loc and inverse scale again in the block's
# permuted order (density); the last row: the input normalization's loc, inverse scale, scale.
# Padded columns of every per-feature vector are 0 (so padded u are 0). ``perms``: the blocks'
# forward permutations (density: a gather), ``iperms``: their inverses (sampling). ``kin``
# [(nhid + 1) * GROUPS]: per layer and 16-column group, how many leading input rows of W can be
# non-zero (hidden units in degree order make every MADE mask a staircase; density skips the rest).
@nb.njit(**_JIT)
def _maf_lp_tile(x, r0, n, out, w, offs, perms, kin, meta, const, clamp, h, h2, t1, t2, mo, mu, al, ld):
    D, DP, H, HP, blocks, nhid, tanh_act, OP, G = (meta[M_D], meta[M_DP], meta[M_H], meta[M_HP], meta[M_BLOCKS],
                                                   meta[M_NHID], meta[M_TANH], meta[M_OP], meta[M_GROUPS])
    rows = (n + 3) // 4 * 4
    inv_clamp = _ONE / clamp
    oloc, oinv = offs[blocks, 0], offs[blocks, 1]
    for r in range(rows):
        ld[r] = _ZERO
        for c in range(DP):
            h[r * DP + c] = (x[r0 + r, c] - w[oloc + c]) * w[oinv + c] if (r < n and c < D) else _ZERO
    o = 2 * nhid
    for k in range(blocks):
        _dense(h, 0, DP, D, w, offs[k, 0], HP, HP, w, offs[k, 1], t1, 0, HP, rows, not tanh_act, kin, 0)
        if tanh_act:
            _tanh_inplace(t1, rows * HP)
        a, b = t1, t2
        for li in range(1, nhid):
            _dense(a, 0, HP, H, w, offs[k, 2 * li], HP, HP, w, offs[k, 2 * li + 1], b, 0, HP, rows, not tanh_act,
                   kin, li * G)
            if tanh_act:
                _tanh_inplace(b, rows * HP)
            a, b = b, a
        _dense(a, 0, HP, H, w, offs[k, o], OP, OP, w, offs[k, o + 2], mo, 0, OP, rows, False, kin, nhid * G)
        for r in range(rows):  # x - mu and raw alpha into compact [rows, D] buffers (no padded columns)
            for j in range(D):
                mu[r * D + j] = h[r * DP + j] - mo[r * OP + 2 * j]
                al[r * D + j] = mo[r * OP + 2 * j + 1]
        for i in range(rows * D):  # flat: alpha = c tanh(raw / c) -> al, u = (x - mu) exp(-alpha) -> mu
            alpha = clamp * _tanh(al[i] * inv_clamp)
            al[i] = alpha
            mu[i] = mu[i] * _exp(-alpha)
        bl, bi = offs[k, o + 8], offs[k, o + 9]  # batch-norm loc, 1 / scale, in the permuted order
        fperm = perms[k]
        for r in range(rows):
            acc = _ZERO
            for j in range(D):
                acc += al[r * D + j]
            ld[r] -= acc
            for c in range(D):  # the block's permutation as a gather (vectorizes; a scatter does not)
                h2[r * DP + c] = (mu[r * D + fperm[c]] - w[bl + c]) * w[bi + c]
        h, h2 = h2, h
    _finish_log_prob(h, ld, n, D, DP, const, out, r0)


@nb.njit(**_JIT)
def _maf_sample_tile(z, r0, n, temperature, out, w, offs, perms, nj, meta, clamp, u, xs, pre, t1, t2, mu, al):
    D, DP, HP, blocks, nhid, tanh_act = (meta[M_D], meta[M_DP], meta[M_HP], meta[M_BLOCKS], meta[M_NHID],
                                         meta[M_TANH])
    rows = (n + 3) // 4 * 4
    inv_clamp = _ONE / clamp
    o = 2 * nhid
    for r in range(rows):
        for c in range(D):
            xs[r * DP + c] = z[r0 + r, c] * temperature if r < n else _ZERO
    for kk in range(blocks):
        k = blocks - 1 - kk
        pinv = perms[k]
        bl, bsc = offs[k, o + 5], offs[k, o + 7]
        # inverse permutation, then the inverse batch-norm affine: u = y[:, inv_perm] * scale + loc
        for r in range(rows):
            for j in range(D):
                u[r * DP + j] = xs[r * DP + pinv[j]] * w[bsc + j] + w[bl + j]
        # MADE inverse, one coordinate at a time; pre = first-layer pre-activation of the known x_<j
        ob0, oW0, oWoT = offs[k, 1], offs[k, 0], offs[k, o + 4]
        obmu, obal = offs[k, o + 1], offs[k, o + 3]
        for r in range(rows):
            for c in range(HP):
                pre[r * HP + c] = w[ob0 + c]
        for j in range(D):
            m = nj[k, j]  # hidden units (a prefix, in degree order) that output j depends on
            mp = (m + 15) // 16 * 16
            if tanh_act:
                for i in range(rows * HP):
                    t1[i] = _tanh(pre[i])
            else:
                for i in range(rows * HP):
                    t1[i] = max(pre[i], _ZERO)
            a, b = t1, t2
            for li in range(1, nhid):
                _dense(a, 0, HP, m, w, offs[k, 2 * li], HP, mp, w, offs[k, 2 * li + 1], b, 0, HP, rows,
                       not tanh_act, _NO_KIN, -1)
                if tanh_act:
                    _tanh_inplace(b, rows * HP)
                a, b = b, a
            wm = oWoT + j * HP
            wa = oWoT + (D + j) * HP
            bm, ba = w[obmu + j], w[obal + j]
            for r in range(rows):
                smu = bm
                sal = ba
                for c in range(m):
                    hv = a[r * HP + c]
                    smu += hv * w[wm + c]
                    sal += hv * w[wa + c]
                mu[r] = smu
                al[r] = sal
            for r in range(rows):  # vectorizes over the tile's rows
                xj = u[r * DP + j] * _exp(clamp * _tanh(al[r] * inv_clamp)) + mu[r]
                xs[r * DP + j] = xj
                al[r] = xj
            w0j = oW0 + j * HP
            for r in range(rows):
                xj = al[r]
                for c in range(HP):
                    pre[r * HP + c] += xj * w[w0j + c]
    oloc, osc = offs[blocks, 0], offs[blocks, 2]
    for r in range(n):
        for c in range(D):
            out[r0 + r, c] = xs[r * DP + c] * w[osc + c] + w[oloc + c]


@nb.njit(**_JIT)
def maf_log_prob(x, out, w, offs, perms, kin, meta, const, clamp, h, h2, t1, t2, mo, mu, al, ld):
    B = x.shape[0]
    for r0 in range(0, B, TILE):
        _maf_lp_tile(x, r0, min(TILE, B - r0), out, w, offs, perms, kin, meta, const, clamp, h, h2, t1, t2, mo, mu,
                     al, ld)


@nb.njit(parallel=True, **_JIT)
def maf_log_prob_par(x, out, w, offs, perms, kin, meta, const, clamp, h, h2, t1, t2, mo, mu, al, ld):
    B = x.shape[0]
    for t in nb.prange((B + TILE - 1) // TILE):
        i = nb.get_thread_id()
        r0 = t * TILE
        _maf_lp_tile(x, r0, min(TILE, B - r0), out, w, offs, perms, kin, meta, const, clamp, h[i], h2[i], t1[i],
                     t2[i], mo[i], mu[i], al[i], ld[i])


@nb.njit(**_JIT)
def maf_sample(z, temperature, out, w, offs, perms, nj, meta, clamp, u, xs, pre, t1, t2, mu, al):
    B = z.shape[0]
    for r0 in range(0, B, SAMPLE_TILE):
        _maf_sample_tile(z, r0, min(SAMPLE_TILE, B - r0), temperature, out, w, offs, perms, nj, meta, clamp,
                         u, xs, pre, t1, t2, mu, al)


@nb.njit(parallel=True, **_JIT)
def maf_sample_par(z, temperature, out, w, offs, perms, nj, meta, clamp, u, xs, pre, t1, t2, mu, al):
    B = z.shape[0]
    for t in nb.prange((B + SAMPLE_TILE - 1) // SAMPLE_TILE):
        i = nb.get_thread_id()
        r0 = t * SAMPLE_TILE
        _maf_sample_tile(z, r0, min(SAMPLE_TILE, B - r0), temperature, out, w, offs, perms, nj, meta, clamp,
                         u[i], xs[i], pre[i], t1[i], t2[i], mu[i], al[i])
