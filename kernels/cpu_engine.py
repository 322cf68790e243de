"""Fused CPU kernels (numba) for the folded tabular flows: Glow-1D, MAF and IAF, density + sampling.

The reference is the folded flow's eager PyTorch code (``nfkd.fold.fold`` output, ``log_prob`` /
``sample``); ``kernels.cpu_backend`` packs its modules into one float32 buffer and checks nothing
else. Why it is fast where PyTorch is not (issue #14): a tile of ``TILE`` rows goes through the
*whole* flow while its activations stay in L1/L2, and the tile is stored **feature-major**
([features, TILE], the rows of one feature contiguous). Every dense layer is an explicitly
vectorized 4-feature x 2-vector register-blocked micro-kernel (``<LANES x float>`` FMAs, ``_dense``;
LANES = 16 on AVX-512, 8 on AVX2, chosen at import: ``choose_lanes``),
so layers are padded to a multiple of 4 features, not of a vector width (a D = 6 MAF's 12 outputs
cost 12, not 32), and every epilogue (bias, activation, coupling affine, sigmoid / log-sigmoid, MADE
scale, log-det, permutation) is a loop over one feature's contiguous rows: it vectorizes with no
scalar remainder, and the polynomial ``exp`` / ``log1p`` / ``tanh`` below need no libm calls.
The copies between the caller's rows and the feature-major tile are LANES x LANES blocks transposed in
registers (``_transpose``: masked vector loads, shuffles, masked stores), not one strided element at a time.
float32 everywhere, no allocation per call beyond the output (scratch is passed in, 64-byte aligned).

MADE masks: hidden units are reordered by MADE degree, so every masked weight matrix is a staircase;
density reads, per group of 4 outputs, only the leading inputs that can be non-zero (``kin``), about
half of the dense arithmetic. MAF sampling is exact and needs no D full MADE passes: output j
depends only on a prefix of ``nj[j]`` units in every hidden layer; per coordinate the first layer's
pre-activation is updated by one rank-1 term (``x_j * W0[j, :]``) and only the prefixes of the
deeper layers and the one output pair (mu_j, alpha_j) are computed (``_made_solve``).

IAF (the student whose point is one-pass sampling): its ``InverseMADE`` has the MADE's masks, so it
packs like a MAF. Sampling is one full MADE pass per block through the MAF density's tile path
(``_made_net``, staircase included) with the affine inverted; its density is the same incremental
triangular solve as MAF sampling, with z in place of x (``_made_solve(..., density=True)``).

Packed layout (written by ``kernels.cpu_backend``): every matrix is stored transposed, ``[in, out]``
row-major, its output width zero-padded to a multiple of 4 (``pad4``); ``offs`` holds int64 offsets
into ``wbuf``, ``meta`` the sizes (see the ``G_*`` / ``M_*`` indices).
"""
from __future__ import annotations

import os

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

__all__ = [
    "LANES", "TILE", "choose_lanes", "glow1d_log_prob", "glow1d_log_prob_par", "glow1d_sample", "glow1d_sample_par",
    "iaf_log_prob", "iaf_log_prob_par", "iaf_sample", "iaf_sample_par",
    "maf_log_prob", "maf_log_prob_par", "maf_sample", "maf_sample_par", "pad4",
]

TILE = 128  # rows per tile, both directions; a multiple of 64 (the 16-lane micro-kernel's rows); chosen by measurement

# meta indices, Glow-1D
G_D, G_DP, G_CA, G_CB, G_H, G_HP, G_OP, G_STEPS, G_DEPTH, G_ADD = range(10)
# meta indices, MAF
M_D, M_DP, M_H, M_HP, M_BLOCKS, M_NHID, M_TANH, M_OP, M_GROUPS = range(9)

F32 = np.float32
_ZERO = F32(0.0)
_ONE = F32(1.0)
_HALF = F32(0.5)
_TWO = F32(2.0)
LANES_ENV = "NFKD_CPU_LANES"


def choose_lanes(features: dict[str, bool] | None = None, env: str | None = None) -> tuple[int, str]:
    """(float32 lanes of the micro-kernel's vectors, why): 16 on AVX-512, else 8; ``NFKD_CPU_LANES`` overrides.

    ``features``: the host CPU's LLVM features (``llvmlite.binding.get_host_cpu_features``), the ones numba
    compiles for. Forcing 16 lanes on an AVX2 host is exact, only slower (LLVM splits each vector in two);
    forcing 8 on AVX-512 leaves half of each register unused. Tests force both widths."""
    if features is None:
        from llvmlite import binding

        features = dict(binding.get_host_cpu_features())
    native = 16 if features.get("avx512f") else 8
    env = os.environ.get(LANES_ENV, "") if env is None else env
    if env.strip() == "":
        return native, "avx512f" if native == 16 else "no avx512f"
    if env.strip() not in ("8", "16"):
        raise ValueError(f"{LANES_ENV} must be 8 or 16, not {env!r}")
    return int(env), f"{LANES_ENV}={env.strip()}"


LANES, LANES_WHY = choose_lanes()
# numba's cache is keyed on the source and the CPU, not on LANES: cache only the host's own width, so a
# forced width (tests) compiles afresh and never reads, or leaves behind, kernels of the other width.
_CACHE = LANES == choose_lanes(env="")[0]
STEP = 2 * LANES  # rows of one micro-kernel block; a tile's rows are padded to a multiple of it (zeros)


def pad4(n: int) -> int:
    """Features padded to the micro-kernel's 4-output blocks (at least one block)."""
    return max(4, (n + 3) // 4 * 4)


# ---------------------------------------------------------------------------------------------
# <LANES x float> values for the micro-kernel (LLVM vector type; mem2reg keeps them in registers)
# ---------------------------------------------------------------------------------------------
class _FV(types.Type):
    def __init__(self) -> None:
        super().__init__(name="FV")


fv = _FV()
_VT = ir.VectorType(ir.FloatType(), LANES)


@register_model(_FV)
class _FVModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VT)


def _vptr(context, builder, aty, arr, idx):
    a = context.make_array(aty)(context, builder, arr)
    return builder.bitcast(builder.gep(a.data, [idx]), ir.PointerType(_VT))


@intrinsic
def _vload(typingctx, arr, idx):
    def codegen(context, builder, sig, args):
        return builder.load(_vptr(context, builder, sig.args[0], args[0], args[1]), align=4)

    return fv(arr, types.intp), codegen


@intrinsic
def _vstore(typingctx, arr, idx, v):
    def codegen(context, builder, sig, args):
        builder.store(args[2], _vptr(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()

    return types.none(arr, types.intp, fv), codegen


@intrinsic
def _sload(typingctx, arr, idx):
    """arr[idx] with no negative-index wraparound (numba adds a compare + select to every computed index)."""
    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.load(builder.gep(a.data, [args[1]]))

    return types.float32(arr, types.intp), codegen


@intrinsic
def _vsplat(typingctx, x):
    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_VT, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, ir.Constant(_VT, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))

    return fv(types.float32), codegen


@intrinsic
def _vfma(typingctx, a, b, c):
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VT, [_VT, _VT, _VT]), f"llvm.fma.v{LANES}f32")
        return builder.call(fn, list(args))

    return fv(fv, fv, fv), codegen


@intrinsic
def _vrelu(typingctx, a):
    def codegen(context, builder, sig, args):
        z = ir.Constant(_VT, [0.0] * LANES)
        return builder.select(builder.fcmp_ordered(">", args[0], z), args[0], z)

    return fv(fv), codegen


@intrinsic
def _pow2i(typingctx, k):
    """2**k as float32 for integer k in [-126, 127] (exponent bits; vectorizes, unlike ldexp)."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        e = builder.shl(builder.add(builder.trunc(args[0], i32) if args[0].type != i32 else args[0],
                                    ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(e, ir.FloatType())

    return types.float32(k), codegen


def _fop(name: str):
    """An element-wise <LANES x float> op, LLVM's ``name`` instruction with the ``fast`` flags (contraction,
    reciprocal: ``fdiv`` becomes a reciprocal estimate + a Newton step, as numba's fastmath scalar loops get)."""
    @intrinsic
    def op(typingctx, a, b):
        def codegen(context, builder, sig, args):
            ins = getattr(builder, name)(args[0], args[1])
            ins.flags.append("fast")
            return ins

        return fv(fv, fv), codegen

    return op


def _llvm_vfn(builder, name: str, nargs: int):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VT, [_VT] * nargs), f"llvm.{name}.v{LANES}f32")


def _fcall2(name: str):
    """An element-wise binary <LANES x float> LLVM intrinsic (``llvm.<name>.v<LANES>f32``), fast-math flags on."""
    @intrinsic
    def op(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return builder.call(_llvm_vfn(builder, name, 2), list(args), fastmath=("fast",))

        return fv(fv, fv), codegen

    return op


@intrinsic
def _vfloor(typingctx, a):
    def codegen(context, builder, sig, args):
        return builder.call(_llvm_vfn(builder, "floor", 1), list(args), fastmath=("fast",))

    return fv(fv), codegen


def _lanewise(ir_fn):
    """A <LANES x float> -> <LANES x float> intrinsic whose LLVM IR is ``ir_fn(builder, a, vi)`` (vi: the
    <LANES x i32> type, for the exponent-bit tricks)."""
    @intrinsic
    def op(typingctx, a):
        def codegen(context, builder, sig, args):
            return ir_fn(builder, args[0], ir.VectorType(ir.IntType(32), LANES))

        return fv(fv), codegen

    op.__doc__ = ir_fn.__doc__
    return op


def _i32s(vi, v):
    return ir.Constant(vi, [v] * LANES)


def _exponent_ir(b, a, vi):
    """floor(log2 a) per lane as float, for positive normal a (the exponent bits less the bias)."""
    return b.sitofp(b.sub(b.lshr(b.bitcast(a, vi), _i32s(vi, 23)), _i32s(vi, 127)), _VT)


def _mantissa_ir(b, a, vi):
    """a / 2^floor(log2 a) in [1, 2) per lane, for positive normal a (the exponent bits set to the bias)."""
    return b.bitcast(b.or_(b.and_(b.bitcast(a, vi), _i32s(vi, 0x007FFFFF)), _i32s(vi, 0x3F800000)), _VT)


def _pow2i_ir(b, k, vi):
    """2**k per lane for integral float k in [-126, 127] (exponent bits), the vector ``_pow2i``."""
    return b.bitcast(b.shl(b.add(b.fptosi(k, vi), _i32s(vi, 127)), _i32s(vi, 23)), _VT)


_vexponent, _vmantissa, _vpow2i = _lanewise(_exponent_ir), _lanewise(_mantissa_ir), _lanewise(_pow2i_ir)


_vadd, _vsub, _vmul, _vdiv = _fop("fadd"), _fop("fsub"), _fop("fmul"), _fop("fdiv")

_vmin, _vmax = _fcall2("minnum"), _fcall2("maxnum")


@intrinsic
def _vabs(typingctx, a):
    def codegen(context, builder, sig, args):
        return builder.call(_llvm_vfn(builder, "fabs", 1), list(args))

    return fv(fv), codegen


@intrinsic
def _vsel_nonneg(typingctx, s, a, b):
    """a where s >= 0 else b, per lane (a blend, no branch)."""
    def codegen(context, builder, sig, args):
        cond = builder.fcmp_ordered(">=", args[0], ir.Constant(_VT, [0.0] * LANES))
        return builder.select(cond, args[1], args[2])

    return fv(fv, fv, fv), codegen


def _transpose_codegen(context, builder, sig, args):
    """LANES x LANES block transpose: LANES masked vector loads, log2(LANES) stages of two-input shuffles
    (each swaps the off-diagonal b x b sub-blocks of every 2b x 2b block, b = LANES / 2 .. 1), LANES masked
    vector stores. Masked lanes and vectors are neither read nor written (no access past an array's end)."""
    src, so, lds, nsrc, slanes, dst, dmap, dmo, do, ldd, ndst, dlanes = args
    i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
    vi, vb = ir.VectorType(i32, LANES), ir.VectorType(i1, LANES)
    lane = ir.Constant(vi, list(range(LANES)))
    none = ir.Constant(vb, [0] * LANES)
    zero = ir.Constant(_VT, [0.0] * LANES)
    align = ir.Constant(i32, 4)

    def lanes_below(n):
        v = builder.insert_element(ir.Constant(vi, ir.Undefined), builder.trunc(n, i32), ir.Constant(i32, 0))
        return builder.icmp_signed("<", lane, builder.shuffle_vector(v, ir.Constant(vi, ir.Undefined),
                                                                     ir.Constant(vi, [0] * LANES)))

    vptr = ir.PointerType(_VT)
    load = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VT, [vptr, i32, vb, _VT]),
                                          f"llvm.masked.load.v{LANES}f32.p0")
    store = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [_VT, vptr, i32, vb]),
                                           f"llvm.masked.store.v{LANES}f32.p0")
    sdata = context.make_array(sig.args[0])(context, builder, src).data
    ddata = context.make_array(sig.args[5])(context, builder, dst).data
    mdata = context.make_array(sig.args[6])(context, builder, dmap).data
    smask, dmask = lanes_below(slanes), lanes_below(dlanes)
    v = []
    for k in range(LANES):
        kk = ir.Constant(i64, k)
        mask = builder.select(builder.icmp_signed("<", kk, nsrc), smask, none)
        ptr = builder.bitcast(builder.gep(sdata, [builder.add(so, builder.mul(kk, lds))]), vptr)
        v.append(builder.call(load, [ptr, align, mask, zero]))
    b = LANES // 2
    while b >= 1:
        new = list(v)
        for i in range(LANES):
            if not i & b:
                j = i + b
                mi = [lo if not lo & b else LANES + lo - b for lo in range(LANES)]
                mj = [lo + b if not lo & b else LANES + lo for lo in range(LANES)]
                new[i] = builder.shuffle_vector(v[i], v[j], ir.Constant(vi, mi))
                new[j] = builder.shuffle_vector(v[i], v[j], ir.Constant(vi, mj))
        v, b = new, b // 2
    for m in range(LANES):
        mm = ir.Constant(i64, m)
        ok = builder.icmp_signed("<", mm, ndst)
        row = builder.load(builder.gep(mdata, [builder.select(ok, builder.add(dmo, mm), dmo)]))
        ptr = builder.bitcast(builder.gep(ddata, [builder.add(do, builder.mul(row, ldd))]), vptr)
        builder.call(store, [v[m], ptr, align, builder.select(ok, dmask, none)])
    return context.get_dummy_value()


@intrinsic
def _transpose(typingctx, src, so, lds, nsrc, slanes, dst, dmap, dmo, do, ldd, ndst, dlanes):
    """dst[do + dmap[dmo + m] * ldd + l] = src[so + l * lds + m] for l < nsrc, lanes m < slanes, and m < ndst,
    l < dlanes: one LANES x LANES block of a C-contiguous float32 array, transposed in registers (the tile's
    feature-major <-> row-major copies; ``dmap`` places the output vectors, e.g. a permutation)."""
    for a in (src, dst):
        if not (isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C"):
            return None
    if not (isinstance(dmap, types.Array) and dmap.dtype == types.int64 and dmap.ndim == 1):
        return None
    return types.none(src, types.intp, types.intp, types.intp, types.intp, dst, dmap, types.intp, types.intp,
                      types.intp, types.intp, types.intp), _transpose_codegen


_IOTA = np.arange(LANES, dtype=np.int64)  # ``_transpose``'s dmap for plain strided stores (m -> m)

_NO_KIN = np.zeros(1, np.int64)  # ``_dense(..., _NO_KIN, -1)``: every input row of W is used

# error_model="numpy": no ZeroDivisionError branch on float division, which would block vectorization
_JIT = dict(fastmath=True, cache=_CACHE, nogil=True, error_model="numpy")


# ---------------------------------------------------------------------------------------------
# scalar math that vectorizes (float32 polynomials; no libm calls in the hot loops)
# ---------------------------------------------------------------------------------------------
@nb.njit(inline="always", **_JIT)
def _horner(x, c):
    """c[0] x^(n-1) + ... + c[n-1] (coefficients highest degree first; a constant tuple: LLVM unrolls it)."""
    s = c[0]
    for i in range(1, len(c)):
        s = c[i] + x * s
    return s


_LOG2E = F32(1.4426950408889634)
_LN2_HI = F32(0.693359375)
_LN2_LO = F32(-2.12194440e-4)
_EXP_LO, _EXP_HI = F32(-87.0), F32(88.0)
_EXP_SERIES = (F32(1 / 5040), F32(1 / 720), F32(1 / 120), F32(1 / 24), F32(1 / 6), F32(1 / 2), _ONE, _ONE)  # e^r, r^7 first


@nb.njit(inline="always", **_JIT)
def _exp(x):
    """exp(x) in float32, relative error ~2 ulp; clamped to [e^-87, e^88] (finite, like the eager limits)."""
    x = min(max(x, _EXP_LO), _EXP_HI)
    k = np.floor(x * _LOG2E + _HALF)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _horner(r, _EXP_SERIES)
    return p * _pow2i(np.int32(k))


_L3, _L5, _L7, _L9, _L11, _L13, _L15, _L17 = (F32(1 / 3), F32(1 / 5), F32(1 / 7), F32(1 / 9), F32(1 / 11),
                                              F32(1 / 13), F32(1 / 15), F32(1 / 17))


_LOG1P_SERIES = (_L17, _L15, _L13, _L11, _L9, _L7, _L5, _L3, _ONE)


@nb.njit(inline="always", **_JIT)
def _log1p_unit(e):
    """log(1 + e) for e in [0, 1]: 2 atanh(t), t = e / (2 + e) <= 1/3 (series to t^17: < 1e-8)."""
    t = e / (_TWO + e)
    return _TWO * t * _horner(t * t, _LOG1P_SERIES)


# tanh as a rational minimax fit x P(x^2) / Q(x^2) on |x| <= 7.905 (the float32 coefficients of Eigen's
# ptanh_float; beyond the clamp float32 tanh is 1 within 3e-7): 11 FMAs and one division, no exp,
# no select. Max error 3.5e-7 absolute / relative against float64 tanh (measured on 2M points).
_TANH_CLAMP = F32(7.90531110763549805)
_TA1, _TA3, _TA5, _TA7 = F32(4.89352455891786e-03), F32(6.37261928875436e-04), F32(1.48572235717979e-05), \
    F32(5.12229709037114e-08)
_TA9, _TA11, _TA13 = F32(-8.60467152213735e-11), F32(2.00018790482477e-13), F32(-2.76076847742355e-16)
_TB0, _TB2, _TB4, _TB6 = F32(4.89352518554385e-03), F32(2.26843463243900e-03), F32(1.18534705686654e-04), \
    F32(1.19825839466702e-06)


_TANH_P = (_TA13, _TA11, _TA9, _TA7, _TA5, _TA3, _TA1)
_TANH_Q = (_TB6, _TB4, _TB2, _TB0)


@nb.njit(inline="always", **_JIT)
def _tanh(y):
    """tanh in float32 (rational approximation above; vectorizes: no branch, no libm call)."""
    x = min(max(y, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    return x * _horner(x2, _TANH_P) / _horner(x2, _TANH_Q)


# The same three functions on <LANES x float> values, for epilogues written as explicit vector code: rows
# are a multiple of STEP, so a loop over vectors has no remainder, no alias check and no scalar fallback
# (LLVM's auto-vectorized row loops carry all three, measured as most of the MAF density epilogue's cost).
@nb.njit(inline="always", **_JIT)
def _vhorner(x, c):
    s = _vsplat(c[0])
    for i in range(1, len(c)):
        s = _vfma(x, s, _vsplat(c[i]))
    return s


@nb.njit(inline="always", **_JIT)
def _vexp(x):
    """``_exp`` per lane (same clamp, reduction and polynomial)."""
    x = _vmin(_vmax(x, _vsplat(_EXP_LO)), _vsplat(_EXP_HI))
    k = _vfloor(_vfma(x, _vsplat(_LOG2E), _vsplat(_HALF)))
    r = _vfma(k, _vsplat(-_LN2_LO), _vfma(k, _vsplat(-_LN2_HI), x))
    return _vmul(_vhorner(r, _EXP_SERIES), _vpow2i(k))


@nb.njit(inline="always", **_JIT)
def _vlog1p_unit(e):
    """``_log1p_unit`` per lane."""
    t = _vdiv(e, _vadd(_vsplat(_TWO), e))
    return _vmul(_vmul(_vsplat(_TWO), t), _vhorner(_vmul(t, t), _LOG1P_SERIES))


@nb.njit(inline="always", **_JIT)
def _vlog_ge1(p):
    """log p per lane for p in [1, 2^126]: k ln 2 + log1p(m - 1), p = m 2^k, m in [1, 2) (ln 2 split in two
    so k ln 2 stays exact to float32)."""
    k = _vexponent(p)
    return _vfma(k, _vsplat(_LN2_HI), _vfma(k, _vsplat(_LN2_LO), _vlog1p_unit(_vsub(_vmantissa(p), _vsplat(_ONE)))))


@nb.njit(inline="always", **_JIT)
def _vtanh(y):
    """``_tanh`` per lane (same clamp and rational fit; the division is a reciprocal estimate + Newton step)."""
    x = _vmin(_vmax(y, _vsplat(-_TANH_CLAMP)), _vsplat(_TANH_CLAMP))
    x2 = _vmul(x, x)
    return _vdiv(_vmul(x, _vhorner(x2, _TANH_P)), _vhorner(x2, _TANH_Q))


# ---------------------------------------------------------------------------------------------
# the dense micro-kernel (feature-major: activations are [features, TILE], rows contiguous)
# ---------------------------------------------------------------------------------------------
@nb.njit(inline="always", **_JIT)
def _block2(X, xi, n_in, W, wi, ldw, c0, c1, c2, c3, Y, yi, relu):
    """4 features x 2 vectors of rows: Y[f, r] for the block at X[.., xi], Y[.., yi] (8 accumulators)."""
    a00 = c0
    a01 = c0
    a10 = c1
    a11 = c1
    a20 = c2
    a21 = c2
    a30 = c3
    a31 = c3
    for _i in range(n_in):
        x0 = _vload(X, xi)
        x1 = _vload(X, xi + LANES)
        v = _vsplat(_sload(W, wi))
        a00 = _vfma(v, x0, a00)
        a01 = _vfma(v, x1, a01)
        v = _vsplat(_sload(W, wi + 1))
        a10 = _vfma(v, x0, a10)
        a11 = _vfma(v, x1, a11)
        v = _vsplat(_sload(W, wi + 2))
        a20 = _vfma(v, x0, a20)
        a21 = _vfma(v, x1, a21)
        v = _vsplat(_sload(W, wi + 3))
        a30 = _vfma(v, x0, a30)
        a31 = _vfma(v, x1, a31)
        xi += TILE
        wi += ldw
    if relu:
        a00, a01, a10, a11 = _vrelu(a00), _vrelu(a01), _vrelu(a10), _vrelu(a11)
        a20, a21, a30, a31 = _vrelu(a20), _vrelu(a21), _vrelu(a30), _vrelu(a31)
    _vstore(Y, yi, a00)
    _vstore(Y, yi + LANES, a01)
    _vstore(Y, yi + TILE, a10)
    _vstore(Y, yi + TILE + LANES, a11)
    _vstore(Y, yi + 2 * TILE, a20)
    _vstore(Y, yi + 2 * TILE + LANES, a21)
    _vstore(Y, yi + 3 * TILE, a30)
    _vstore(Y, yi + 3 * TILE + LANES, a31)


@nb.njit(inline="always", **_JIT)
def _block4(X, xi, n_in, W, wi, ldw, c0, c1, c2, c3, Y, yi, relu):
    """4 features x 4 vectors of rows (16 accumulators: AVX-512's 32 registers hold them): per input, four
    loads of X and four broadcast weights feed 16 FMAs, half the broadcasts per FMA of ``_block2``."""
    a00, a01, a02, a03 = c0, c0, c0, c0
    a10, a11, a12, a13 = c1, c1, c1, c1
    a20, a21, a22, a23 = c2, c2, c2, c2
    a30, a31, a32, a33 = c3, c3, c3, c3
    for _i in range(n_in):
        x0 = _vload(X, xi)
        x1 = _vload(X, xi + LANES)
        x2 = _vload(X, xi + 2 * LANES)
        x3 = _vload(X, xi + 3 * LANES)
        v = _vsplat(_sload(W, wi))
        a00, a01, a02, a03 = _vfma(v, x0, a00), _vfma(v, x1, a01), _vfma(v, x2, a02), _vfma(v, x3, a03)
        v = _vsplat(_sload(W, wi + 1))
        a10, a11, a12, a13 = _vfma(v, x0, a10), _vfma(v, x1, a11), _vfma(v, x2, a12), _vfma(v, x3, a13)
        v = _vsplat(_sload(W, wi + 2))
        a20, a21, a22, a23 = _vfma(v, x0, a20), _vfma(v, x1, a21), _vfma(v, x2, a22), _vfma(v, x3, a23)
        v = _vsplat(_sload(W, wi + 3))
        a30, a31, a32, a33 = _vfma(v, x0, a30), _vfma(v, x1, a31), _vfma(v, x2, a32), _vfma(v, x3, a33)
        xi += TILE
        wi += ldw
    if relu:
        a00, a01, a02, a03 = _vrelu(a00), _vrelu(a01), _vrelu(a02), _vrelu(a03)
        a10, a11, a12, a13 = _vrelu(a10), _vrelu(a11), _vrelu(a12), _vrelu(a13)
        a20, a21, a22, a23 = _vrelu(a20), _vrelu(a21), _vrelu(a22), _vrelu(a23)
        a30, a31, a32, a33 = _vrelu(a30), _vrelu(a31), _vrelu(a32), _vrelu(a33)
    for f, (b0, b1, b2, b3) in enumerate(((a00, a01, a02, a03), (a10, a11, a12, a13), (a20, a21, a22, a23),
                                          (a30, a31, a32, a33))):
        _vstore(Y, yi + f * TILE, b0)
        _vstore(Y, yi + f * TILE + LANES, b1)
        _vstore(Y, yi + f * TILE + 2 * LANES, b2)
        _vstore(Y, yi + f * TILE + 3 * LANES, b3)


@nb.njit(**_JIT)
def _dense(X, xo, nin, W, wo, ldw, nout, B, bo, Y, yo, rows, relu, kin, ko):
    """Y[f, :rows] = act(sum_i W[i, f] X[i, :rows] + B[f]) for f < nout (feature-major, row stride TILE).

    ``W`` is stored [in, out] with row stride ``ldw``; ``nout`` a multiple of 4, ``rows`` of ``STEP``.
    A block of 4 features x 2 vectors of rows keeps 8 accumulators in registers through the reduction
    (``_block2``): per input, two vector loads of X and four broadcast weights feed 8 FMAs. ``ko >= 0``:
    feature group g (4 outputs) reads only the first ``kin[ko + g]`` inputs (a MADE's masks in degree
    order are a staircase; the rest are structural zeros); ``ko < 0``: all ``nin``.
    """
    for f in range(0, nout, 4):
        n_in = nin if ko < 0 else min(nin, kin[ko + f // 4])
        c0 = _vsplat(_sload(B, bo + f))
        c1 = _vsplat(_sload(B, bo + f + 1))
        c2 = _vsplat(_sload(B, bo + f + 2))
        c3 = _vsplat(_sload(B, bo + f + 3))
        y0 = yo + f * TILE
        r = 0
        if LANES == 16:  # a compile-time constant: the 16-accumulator block only where 32 registers hold it
            while r + 4 * LANES <= rows:
                _block4(X, xo + r, n_in, W, wo + f, ldw, c0, c1, c2, c3, Y, y0 + r, relu)
                r += 4 * LANES
        while r < rows:
            _block2(X, xo + r, n_in, W, wo + f, ldw, c0, c1, c2, c3, Y, y0 + r, relu)
            r += 2 * LANES


@nb.njit(inline="always", **_JIT)
def _row(a, f):
    """Feature f's TILE rows as a view. Loops index views by the range variable alone: numba then knows the
    index is non-negative and LLVM vectorizes; a computed index (f * TILE + r) gets a wraparound select per
    element that kept these loops scalar (measured 6-10x slower)."""
    return a[f * TILE: (f + 1) * TILE]


@nb.njit(**_JIT)
def _tanh_rows(Y, nfeat, rows):
    """Y[f, :rows] = tanh(Y[f, :rows]) for f < nfeat (contiguous rows: vectorizes without remainder)."""
    for f in range(nfeat):
        y = _row(Y, f)
        for r in range(rows):
            y[r] = _tanh(y[r])


@nb.njit(**_JIT)
def _rows_to_tile(x, r0, n, rows, h, D, dst, permuted):
    """h[row(c), r] = x[r0 + r, c] for r < n, 0 up to ``rows``; row(c) = dst[c] if ``permuted`` else c.

    LANES x LANES blocks transposed in registers (``_transpose``: rows past n load as zeros); a column block
    narrower than LANES / 2 goes per column (measured faster than half-empty registers)."""
    xt = x[r0: r0 + n]
    for c0 in range(0, D, LANES):
        nc = min(LANES, D - c0)
        if 2 * nc < LANES:
            for c in range(c0, D):
                hc = _row(h, dst[c] if permuted else c)
                for r in range(n):
                    hc[r] = xt[r, c]
                for r in range(n, rows):
                    hc[r] = _ZERO
            continue
        for rb in range(0, rows, LANES):
            nr = max(0, min(LANES, n - rb))
            if permuted:
                _transpose(x, (r0 + rb) * D + c0, D, nr, nc, h, dst, c0, rb, TILE, nc, LANES)
            else:
                _transpose(x, (r0 + rb) * D + c0, D, nr, nc, h, _IOTA, 0, c0 * TILE + rb, TILE, nc, LANES)


@nb.njit(**_JIT)
def _to_tile(x, r0, n, rows, h, D, w, loc, inv, t):
    """h[c, r] = (x[r0 + r, c] - w[loc + c]) * w[inv + c] * t (loc < 0: x * t) for r < n; 0 up to ``rows``.

    The tile's transpose (``_rows_to_tile``), then the affine per feature on the real rows."""
    _rows_to_tile(x, r0, n, rows, h, D, _IOTA, False)
    if loc >= 0 or t != _ONE:
        for c in range(D):
            hc = _row(h, c)
            shift, scale = (w[loc + c], w[inv + c] * t) if loc >= 0 else (_ZERO, t)
            for r in range(n):
                hc[r] = (hc[r] - shift) * scale


@nb.njit(**_JIT)
def _from_tile(h, r0, n, out, D, w, loc, scale):
    """out[r0 + r, c] = h[c, r] * w[scale + c] + w[loc + c] (loc < 0: h[c, r]) for r < n (back to rows).

    The affine in place on the tile (it is scratch by now), then LANES x LANES transposed blocks."""
    if loc >= 0:
        for c in range(D):
            hc = _row(h, c)
            a, b = w[scale + c], w[loc + c]
            for r in range(n):
                hc[r] = hc[r] * a + b
    ot = out[r0: r0 + n]
    for c0 in range(0, D, LANES):
        nc = min(LANES, D - c0)
        if 2 * nc < LANES:
            for c in range(c0, D):
                hc = _row(h, c)
                for r in range(n):
                    ot[r, c] = hc[r]
            continue
        for rb in range(0, n, LANES):
            nr = min(LANES, n - rb)
            _transpose(h, c0 * TILE + rb, TILE, nc, nr, out, _IOTA, 0, (r0 + rb) * D + c0, D, nr, nc)


@nb.njit(**_JIT)
def _finish_log_prob(h, ld, n, D, const, out, r0):
    """log p = const + log|det| - |z|^2 / 2 for the tile's n rows (the shared epilogue of both flows)."""
    for r in range(n):
        ld[r] = const + ld[r]
    for c in range(D):
        hc = _row(h, c)
        for r in range(n):
            ld[r] -= _HALF * hc[r] * hc[r]
    for r in range(n):
        out[r0 + r] = ld[r]


# ---------------------------------------------------------------------------------------------
# Glow-1D
# ---------------------------------------------------------------------------------------------
# offs columns per step: W^T, b, W^-1^T, b_inv, then (W^T, b) of the coupling net's layers; the last
# layer's outputs: shift in rows 0..CB-1, s in rows CB4..CB4+CB-1 (CB4 = pad4(CB); additive: shift
# only). Row NSTEPS holds the input normalization (loc, 1 / scale) in slots 0, 1 (zeros: identity).
@nb.njit(**_JIT)
def _g1d_net(h, w, offs, k, meta, t1, t2, net_out, rows):
    """The coupling net of step k on h[:CA] -> net_out (shift rows 0.., s rows CB4..)."""
    CA, HP, H, depth, OP = meta[G_CA], meta[G_HP], meta[G_H], meta[G_DEPTH], meta[G_OP]
    _dense(h, 0, CA, w, offs[k, 4], HP, HP, w, offs[k, 5], t1, 0, rows, True, _NO_KIN, -1)
    a, b = t1, t2
    for li in range(1, depth):
        _dense(a, 0, H, w, offs[k, 4 + 2 * li], HP, HP, w, offs[k, 5 + 2 * li], b, 0, rows, True, _NO_KIN, -1)
        a, b = b, a
    o = 4 + 2 * depth
    _dense(a, 0, H, w, offs[k, o], OP, OP, w, offs[k, o + 1], net_out, 0, rows, False, _NO_KIN, -1)


_LOG_RUN = 64  # features per product of (1 + e_j) in ``_g1d_affine``: at most 2^64, far from float32's 2^128


@nb.njit(**_JIT)
def _g1d_affine(h, sh, ld, CA, CB, cb4, rows):
    """The affine coupling's density half: y_j = (x_j + shift_j) sigmoid(s_j) for the CB rows after CA, and
    ld += sum_j log sigmoid(s_j). One pass of explicit vector code (the log-det in a register), as the MAF's
    ``_made_scale``: sigmoid and log sigmoid from e = exp(-|s|), stable for any s. log sigmoid(s) =
    min(s, 0) - log(1 + e): the logs are summed as one log of the product of the (1 + e) the sigmoid needs
    anyway (``_LOG_RUN`` factors in (1, 2] per log), ~16 fewer vector ops per element than a log1p each."""
    one, zero = _vsplat(_ONE), _vsplat(_ZERO)
    for r in range(0, rows, LANES):
        acc = _vload(ld, r)
        for j0 in range(0, CB, _LOG_RUN):
            prod = one  # prod_j (1 + e_j), each factor in (1, 2]: one log per run of features, not one per feature
            for j in range(j0, min(CB, j0 + _LOG_RUN)):
                s = _vload(sh, (cb4 + j) * TILE + r)
                e = _vexp(_vsub(zero, _vabs(s)))
                ope = _vadd(one, e)
                prod = _vmul(prod, ope)
                acc = _vadd(acc, _vmin(s, zero))
                sig = _vmul(_vdiv(one, ope), _vsel_nonneg(s, one, e))
                y = (CA + j) * TILE + r
                _vstore(h, y, _vmul(_vadd(_vload(h, y), _vload(sh, j * TILE + r)), sig))
            acc = _vsub(acc, _vlog_ge1(prod))
        _vstore(ld, r, acc)


@nb.njit(**_JIT)
def _g1d_lp_tile(x, r0, n, out, w, offs, meta, const, h, h2, t1, t2, sh, ld):
    D, DP, CA, CB, steps, additive, OP = (meta[G_D], meta[G_DP], meta[G_CA], meta[G_CB], meta[G_STEPS],
                                          meta[G_ADD], meta[G_OP])
    cb4 = OP // 2
    rows = (n + STEP - 1) // STEP * STEP
    for r in range(rows):
        ld[r] = _ZERO
    _to_tile(x, r0, n, rows, h, D, w, -1, -1, _ONE)
    for k in range(steps):
        # folded ActNorm + LU (+ input normalization at step 0): h2 = W h + b
        _dense(h, 0, D, w, offs[k, 0], DP, DP, w, offs[k, 1], h2, 0, rows, False, _NO_KIN, -1)
        _g1d_net(h2, w, offs, k, meta, t1, t2, sh, rows)
        if additive:
            for j in range(CB):
                hj, shift = _row(h2, CA + j), _row(sh, j)
                for r in range(rows):
                    hj[r] += shift[r]
        else:
            _g1d_affine(h2, sh, ld, CA, CB, cb4, rows)
        h, h2 = h2, h
    _finish_log_prob(h, ld, n, D, const, out, r0)


@nb.njit(**_JIT)
def _g1d_sample_tile(z, r0, n, temperature, out, w, offs, meta, h, h2, t1, t2, sh):
    D, DP, CA, CB, steps, additive, OP = (meta[G_D], meta[G_DP], meta[G_CA], meta[G_CB], meta[G_STEPS],
                                          meta[G_ADD], meta[G_OP])
    cb4 = OP // 2
    rows = (n + STEP - 1) // STEP * STEP
    _to_tile(z, r0, n, rows, h, D, w, -1, -1, temperature)
    for kk in range(steps):
        k = steps - 1 - kk
        _g1d_net(h, w, offs, k, meta, t1, t2, sh, rows)
        for j in range(CB):
            hj, shift = _row(h, CA + j), _row(sh, j)
            if additive:
                for r in range(rows):
                    hj[r] -= shift[r]
            else:
                s = _row(sh, cb4 + j)
                for r in range(rows):  # x = y / sigmoid(s) - shift, 1 / sigmoid(s) = 1 + exp(-s)
                    hj[r] = hj[r] * (_ONE + _exp(-s[r])) - shift[r]
        _dense(h, 0, D, w, offs[k, 2], DP, DP, w, offs[k, 3], h2, 0, rows, False, _NO_KIN, -1)
        h, h2 = h2, h
    _from_tile(h, r0, n, out, D, w, -1, -1)


@nb.njit(**_JIT)
def glow1d_log_prob(x, out, w, offs, meta, const, h, h2, t1, t2, sh, ld):
    """One thread: tiles in order (scratch for one tile: see ``kernels.cpu_backend``)."""
    B = x.shape[0]
    for r0 in range(0, B, TILE):
        _g1d_lp_tile(x, r0, min(TILE, B - r0), out, w, offs, meta, const, h, h2, t1, t2, sh, ld)


@nb.njit(parallel=True, **_JIT)
def glow1d_log_prob_par(x, out, w, offs, meta, const, h, h2, t1, t2, sh, ld):
    """Threads over row tiles; scratch has one row per thread (numba.get_thread_id)."""
    B = x.shape[0]
    for t in nb.prange((B + TILE - 1) // TILE):
        i = nb.get_thread_id()
        r0 = t * TILE
        _g1d_lp_tile(x, r0, min(TILE, B - r0), out, w, offs, meta, const, h[i], h2[i], t1[i], t2[i], sh[i],
                     ld[i])


@nb.njit(**_JIT)
def glow1d_sample(z, temperature, out, w, offs, meta, h, h2, t1, t2, sh):
    B = z.shape[0]
    for r0 in range(0, B, TILE):
        _g1d_sample_tile(z, r0, min(TILE, B - r0), temperature, out, w, offs, meta, h, h2, t1, t2, sh)


@nb.njit(parallel=True, **_JIT)
def glow1d_sample_par(z, temperature, out, w, offs, meta, h, h2, t1, t2, sh):
    B = z.shape[0]
    for t in nb.prange((B + TILE - 1) // TILE):
        i = nb.get_thread_id()
        r0 = t * TILE
        _g1d_sample_tile(z, r0, min(TILE, B - r0), temperature, out, w, offs, meta, h[i], h2[i], t1[i],
                         t2[i], sh[i])


# ---------------------------------------------------------------------------------------------
# MAF
# ---------------------------------------------------------------------------------------------
# offs columns per block: W0^T, b0, [W_l^T, b_l for hidden layers 1..], then at o = 2 nhid: the
# output layer W^T [H, 2 D4] (mu_j in column j, alpha_j in column D4 + j; D4 = pad4(D)) and its
# bias; at o + 2: WoT ([2 D, HP]: row j = mu_j's weights, row D + j = alpha_j's; sampling); then
# batch-norm loc, inverse scale, scale (identity without batch-norm), and loc and inverse scale again
# in the block's permuted order (density). Row BLOCKS: the input normalization's loc, inverse scale,
# scale. Hidden units are in MADE-degree order. ``iperms``: the blocks' inverse permutations (density
# writes u_j to row iperm[j]; sampling reads row iperm[j]). ``kin`` [(nhid + 1) *
# GROUPS]: per layer and 4-feature group, how many leading inputs can have non-zero weights.
@nb.njit(**_JIT)
def _made_scale(h, mo, ld, D, d4, rows, clamp, out, iperm, w, loc, inv):
    """u_j = (x_j - mu_j) exp(-alpha_j), alpha_j = c tanh(raw_j / c); ld -= sum_j alpha_j; and u_j goes
    straight to its row after the block's permutation and batch-norm: out[iperm[j]] = (u_j - loc) * inv.

    Explicit vector code in two passes: alpha (tanh, the log-det kept in a register; -alpha back in place of
    raw alpha), then u (exp, batch-norm). One pass kept ~30 polynomial constants live and LLVM shuffled them
    through the 32 registers on every vector; two passes hold ~15 each (1.07-1.10x at D = 63, bit-identical)."""
    nc, ic = _vsplat(-clamp), _vsplat(_ONE / clamp)
    for r in range(0, rows, LANES):
        acc = _vload(ld, r)
        for j in range(D):
            a = (d4 + j) * TILE + r
            na = _vmul(nc, _vtanh(_vmul(_vload(mo, a), ic)))  # -alpha_j, back in place of raw alpha_j
            acc = _vadd(acc, na)
            _vstore(mo, a, na)
        _vstore(ld, r, acc)
    for r in range(0, rows, LANES):
        for j in range(D):
            c = iperm[j]
            u = _vmul(_vsub(_vload(h, j * TILE + r), _vload(mo, j * TILE + r)), _vexp(_vload(mo, (d4 + j) * TILE + r)))
            _vstore(out, c * TILE + r, _vmul(_vsub(u, _vsplat(_sload(w, loc + c))), _vsplat(_sload(w, inv + c))))


@nb.njit(**_JIT)
def _made_net(h, w, offs, k, kin, meta, t1, t2, mo, rows):
    """One full MADE pass of block k on h[:D] -> mo (mu_j in row j, raw alpha_j in row DP + j).

    The pass MAF density and IAF sampling share: hidden layers skip the staircase's zeros (``kin``)."""
    D, H, HP, nhid, tanh_act, OP, G = (meta[M_D], meta[M_H], meta[M_HP], meta[M_NHID], meta[M_TANH], meta[M_OP],
                                       meta[M_GROUPS])
    o = 2 * nhid
    _dense(h, 0, D, w, offs[k, 0], HP, HP, w, offs[k, 1], t1, 0, rows, not tanh_act, kin, 0)
    if tanh_act:
        _tanh_rows(t1, H, rows)
    a, b = t1, t2
    for li in range(1, nhid):
        _dense(a, 0, H, w, offs[k, 2 * li], HP, HP, w, offs[k, 2 * li + 1], b, 0, rows, not tanh_act, kin,
               li * G)
        if tanh_act:
            _tanh_rows(b, H, rows)
        a, b = b, a
    _dense(a, 0, H, w, offs[k, o], OP, OP, w, offs[k, o + 1], mo, 0, rows, False, kin, nhid * G)


@nb.njit(**_JIT)
def _made_shift(h, mo, D, d4, rows, clamp, out, drow):
    """IAF sampling's epilogue: x_j = u_j exp(alpha_j) + mu_j, written straight to row ``drow[j]`` (the next
    block's input order: no separate permutation copy).

    Explicit vector code in two passes (alpha in place of raw alpha, then the affine), as ``_made_scale``."""
    pc, ic = _vsplat(clamp), _vsplat(_ONE / clamp)
    for r in range(0, rows, LANES):
        for j in range(D):
            a = (d4 + j) * TILE + r
            _vstore(mo, a, _vmul(pc, _vtanh(_vmul(_vload(mo, a), ic))))
    for r in range(0, rows, LANES):
        for j in range(D):
            al = _vload(mo, (d4 + j) * TILE + r)
            _vstore(out, drow[j] * TILE + r, _vfma(_vload(h, j * TILE + r), _vexp(al), _vload(mo, j * TILE + r)))


@nb.njit(inline="always", **_JIT)
def _solve_output(a, m, w, wm, wa, bm, ba, src, si, dst, di, ld, pre, HP, w0j, clamp, rows, density):
    """``_made_solve``'s step for one coordinate j, per vector of rows in registers: mu_j and alpha_j from
    the m hidden units of ``a``, the coordinate (MAF sampling: x = u exp(alpha) + mu; IAF density:
    z = (x - mu) exp(-alpha), ld -= alpha) to ``dst`` at ``di``, and its rank-1 term into the first layer's
    pre-activation ``pre`` (HP units). Explicit vector code, as ``_made_scale``."""
    pc, ic = _vsplat(clamp), _vsplat(_ONE / clamp)
    for r in range(0, rows, LANES):
        vm, va = _vsplat(bm), _vsplat(ba)
        for c in range(m):
            ac = _vload(a, c * TILE + r)
            vm = _vfma(ac, _vsplat(_sload(w, wm + c)), vm)
            va = _vfma(ac, _vsplat(_sload(w, wa + c)), va)
        alpha = _vmul(pc, _vtanh(_vmul(va, ic)))
        sv = _vload(src, si + r)
        if density:
            _vstore(ld, r, _vsub(_vload(ld, r), alpha))
            d = _vmul(_vsub(sv, vm), _vexp(_vsub(_vsplat(_ZERO), alpha)))
        else:
            d = _vfma(sv, _vexp(alpha), vm)
        _vstore(dst, di + r, d)
        for c in range(m, HP):  # the first m units have degree <= j: x_j's weights to them are masked zeros
            _vstore(pre, c * TILE + r, _vfma(d, _vsplat(_sload(w, w0j + c)), _vload(pre, c * TILE + r)))


@nb.njit(**_JIT)
def _made_solve(src, dst, drow, ld, w, offs, k, nj, kin, meta, clamp, pre, t1, t2, rows, density):
    """The triangular direction of block k's MADE, one coordinate at a time; the conditioner reads ``dst``.

    MAF sampling (``density`` false): x_j = u_j exp(alpha_j) + mu_j; IAF density (true):
    z_j = (x_j - mu_j) exp(-alpha_j), ld -= alpha_j. src_j is row j, the result goes to row drow[j].
    Exact without D full passes: output j depends only on a prefix of ``nj[k, j]`` hidden units per
    layer; the first layer's pre-activation ``pre`` gets one rank-1 term per solved coordinate.
    """
    D, HP, nhid, tanh_act, G = meta[M_D], meta[M_HP], meta[M_NHID], meta[M_TANH], meta[M_GROUPS]
    o = 2 * nhid
    ob0, oW0, oWoT, obo = offs[k, 1], offs[k, 0], offs[k, o + 2], offs[k, o + 1]
    d4 = meta[M_OP] // 2
    for c in range(HP):
        pc, bc = _row(pre, c), w[ob0 + c]
        for r in range(rows):
            pc[r] = bc
    for j in range(D):
        m = nj[k, j]  # hidden units (a prefix, in degree order) that output j depends on
        m4 = (m + 3) // 4 * 4
        for c in range(m4):
            tc, pc = _row(t1, c), _row(pre, c)
            for r in range(rows):
                tc[r] = max(pc[r], _ZERO) if not tanh_act else pc[r]
        if tanh_act:
            _tanh_rows(t1, m4, rows)
        a, b = t1, t2
        for li in range(1, nhid):
            _dense(a, 0, m, w, offs[k, 2 * li], HP, m4, w, offs[k, 2 * li + 1], b, 0, rows, not tanh_act,
                   kin, li * G)  # the staircase's zeros skipped, as in the full pass
            if tanh_act:
                _tanh_rows(b, m4, rows)
            a, b = b, a
        _solve_output(a, m, w, oWoT + j * HP, oWoT + (D + j) * HP, w[obo + j], w[obo + d4 + j], src, j * TILE,
                      dst, drow[j] * TILE, ld, pre, HP, oW0 + j * HP, clamp, rows, density)


@nb.njit(**_JIT)
def _maf_lp_tile(x, r0, n, out, w, offs, iperms, kin, meta, const, clamp, h, h2, t1, t2, mo, ld):
    D, DP, blocks, nhid = meta[M_D], meta[M_DP], meta[M_BLOCKS], meta[M_NHID]
    rows = (n + STEP - 1) // STEP * STEP
    for r in range(rows):
        ld[r] = _ZERO
    _to_tile(x, r0, n, rows, h, D, w, offs[blocks, 0], offs[blocks, 1], _ONE)
    o = 2 * nhid
    for k in range(blocks):
        _made_net(h, w, offs, k, kin, meta, t1, t2, mo, rows)
        # alpha_j in row DP + j; batch-norm loc, 1 / scale in the permuted order at o + 6, o + 7
        _made_scale(h, mo, ld, D, DP, rows, clamp, h2, iperms[k], w, offs[k, o + 6], offs[k, o + 7])
        h, h2 = h2, h
    _finish_log_prob(h, ld, n, D, const, out, r0)


@nb.njit(**_JIT)
def _maf_sample_tile(z, r0, n, temperature, out, w, offs, iperms, drows, nj, kin, meta, clamp, u, xs, pre, t1, t2,
                     ld):
    D, blocks, nhid = meta[M_D], meta[M_BLOCKS], meta[M_NHID]
    rows = (n + STEP - 1) // STEP * STEP
    o = 2 * nhid
    _to_tile(z, r0, n, rows, xs, D, w, -1, -1, temperature)
    for kk in range(blocks):
        k = blocks - 1 - kk
        pinv = iperms[k]
        bl, bsc = offs[k, o + 3], offs[k, o + 5]
        # inverse permutation, then the inverse batch-norm affine: u = y[inv_perm] * scale + loc
        for j in range(D):
            uj, src, sj, lj = _row(u, j), _row(xs, pinv[j]), w[bsc + j], w[bl + j]
            for r in range(rows):
                uj[r] = src[r] * sj + lj
        # (no log-det in this direction: ld is scratch, untouched)
        _made_solve(u, xs, drows[k], ld, w, offs, k, nj, kin, meta, clamp, pre, t1, t2, rows, False)
    oloc, osc = offs[blocks, 0], offs[blocks, 2]
    _from_tile(xs, r0, n, out, D, w, oloc, osc)


@nb.njit(**_JIT)
def maf_log_prob(x, out, w, offs, iperms, kin, meta, const, clamp, h, h2, t1, t2, mo, ld):
    B = x.shape[0]
    for r0 in range(0, B, TILE):
        _maf_lp_tile(x, r0, min(TILE, B - r0), out, w, offs, iperms, kin, meta, const, clamp, h, h2, t1, t2, mo, ld)


@nb.njit(parallel=True, **_JIT)
def maf_log_prob_par(x, out, w, offs, iperms, kin, meta, const, clamp, h, h2, t1, t2, mo, ld):
    B = x.shape[0]
    for t in nb.prange((B + TILE - 1) // TILE):
        i = nb.get_thread_id()
        r0 = t * TILE
        _maf_lp_tile(x, r0, min(TILE, B - r0), out, w, offs, iperms, kin, meta, const, clamp, h[i], h2[i], t1[i],
                     t2[i], mo[i], ld[i])


@nb.njit(**_JIT)
def maf_sample(z, temperature, out, w, offs, iperms, drows, nj, kin, meta, clamp, u, xs, pre, t1, t2, ld):
    B = z.shape[0]
    for r0 in range(0, B, TILE):
        _maf_sample_tile(z, r0, min(TILE, B - r0), temperature, out, w, offs, iperms, drows, nj, kin, meta, clamp,
                         u, xs, pre, t1, t2, ld)


@nb.njit(parallel=True, **_JIT)
def maf_sample_par(z, temperature, out, w, offs, iperms, drows, nj, kin, meta, clamp, u, xs, pre, t1, t2, ld):
    B = z.shape[0]
    for t in nb.prange((B + TILE - 1) // TILE):
        i = nb.get_thread_id()
        r0 = t * TILE
        _maf_sample_tile(z, r0, min(TILE, B - r0), temperature, out, w, offs, iperms, drows, nj, kin, meta, clamp,
                         u[i], xs[i], pre[i], t1[i], t2[i], ld[i])


# ---------------------------------------------------------------------------------------------
# IAF: the MAF block's MADE used the other way round (packed by ``pack_maf``: same masks, no batch-norm)
# ---------------------------------------------------------------------------------------------
# Sampling is the MAF density's tile path (one full MADE pass per block, staircase-skipping dense
# layers) with the affine inverted; the density is MAF sampling's incremental triangular solve with
# the affine inverted. ``drows[k]``: where block k's sampling output x_j goes, the input order of
# block k - 1 (its forward permutation; identity for block 0, which the input normalization follows).
@nb.njit(**_JIT)
def _to_tile_perm(x, r0, n, rows, h, D, dst, t):
    """h[dst[c], r] = x[r0 + r, c] * t for r < n, 0 up to ``rows``: the tile's transpose (``_rows_to_tile``),
    each column stored straight to its permuted row (``dst``: the packed ``zrow``)."""
    _rows_to_tile(x, r0, n, rows, h, D, dst, True)
    if t != _ONE:
        for j in range(D):
            hj = _row(h, j)
            for r in range(n):
                hj[r] = hj[r] * t


@nb.njit(**_JIT)
def _iaf_sample_tile(z, r0, n, temperature, out, w, offs, zrow, drows, kin, meta, clamp, h, h2, t1, t2, mo):
    D, DP, blocks = meta[M_D], meta[M_DP], meta[M_BLOCKS]
    rows = (n + STEP - 1) // STEP * STEP
    _to_tile_perm(z, r0, n, rows, h, D, zrow, temperature)  # z's column c to row zrow[c]: the last block's order
    for kk in range(blocks):
        k = blocks - 1 - kk
        _made_net(h, w, offs, k, kin, meta, t1, t2, mo, rows)
        _made_shift(h, mo, D, DP, rows, clamp, h2, drows[k])
        h, h2 = h2, h
    _from_tile(h, r0, n, out, D, w, offs[blocks, 0], offs[blocks, 2])


@nb.njit(**_JIT)
def _iaf_lp_tile(x, r0, n, out, w, offs, iperms, nj, kin, meta, const, clamp, h, h2, pre, t1, t2, ld):
    D, blocks = meta[M_D], meta[M_BLOCKS]
    rows = (n + STEP - 1) // STEP * STEP
    for r in range(rows):
        ld[r] = _ZERO
    _to_tile(x, r0, n, rows, h, D, w, offs[blocks, 0], offs[blocks, 1], _ONE)
    for k in range(blocks):
        # z_j goes to row iperm[j]: the block's forward permutation, applied on the way
        _made_solve(h, h2, iperms[k], ld, w, offs, k, nj, kin, meta, clamp, pre, t1, t2, rows, True)
        h, h2 = h2, h
    _finish_log_prob(h, ld, n, D, const, out, r0)


@nb.njit(**_JIT)
def iaf_sample(z, temperature, out, w, offs, zrow, drows, kin, meta, clamp, h, h2, t1, t2, mo):
    """``zrow``: the tile row of each noise column (the last block's inverse permutation, inverted at packing)."""
    B = z.shape[0]
    for r0 in range(0, B, TILE):
        _iaf_sample_tile(z, r0, min(TILE, B - r0), temperature, out, w, offs, zrow, drows, kin, meta, clamp,
                         h, h2, t1, t2, mo)


@nb.njit(parallel=True, **_JIT)
def iaf_sample_par(z, temperature, out, w, offs, zrow, drows, kin, meta, clamp, h, h2, t1, t2, mo):
    B = z.shape[0]
    for t in nb.prange((B + TILE - 1) // TILE):
        i = nb.get_thread_id()
        r0 = t * TILE
        _iaf_sample_tile(z, r0, min(TILE, B - r0), temperature, out, w, offs, zrow, drows, kin, meta, clamp,
                         h[i], h2[i], t1[i], t2[i], mo[i])


@nb.njit(**_JIT)
def iaf_log_prob(x, out, w, offs, iperms, nj, kin, meta, const, clamp, h, h2, pre, t1, t2, ld):
    B = x.shape[0]
    for r0 in range(0, B, TILE):
        _iaf_lp_tile(x, r0, min(TILE, B - r0), out, w, offs, iperms, nj, kin, meta, const, clamp, h, h2, pre, t1, t2,
                     ld)


@nb.njit(parallel=True, **_JIT)
def iaf_log_prob_par(x, out, w, offs, iperms, nj, kin, meta, const, clamp, h, h2, pre, t1, t2, ld):
    B = x.shape[0]
    for t in nb.prange((B + TILE - 1) // TILE):
        i = nb.get_thread_id()
        r0 = t * TILE
        _iaf_lp_tile(x, r0, min(TILE, B - r0), out, w, offs, iperms, nj, kin, meta, const, clamp, h[i], h2[i], pre[i],
                     t1[i], t2[i], ld[i])
