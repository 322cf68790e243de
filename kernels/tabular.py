"""Whole-flow Triton kernels for the tabular students (Glow-1D and MAF; D <= 64, hidden <= 128).

One launch computes a whole flow for BLOCK_B rows per program: the state of those rows stays in
registers from the input load to the final store (no intermediate tensor in global memory), and
each program reads every weight once per step/block from one packed buffer (L2-resident; reused
across its BLOCK_B rows).  The packed buffer is derived once from ``fold()`` output by ``pack``
(the triton Runner packs at load and owns the result; the launchers take it) - it is a
re-layout, not a second model:

* the layout (which field sits where) is described once, in ``kernels/layout.py``: the packer
  writes by it and the kernels read their compile-time offsets from it;
* every matrix is stored transposed ([in, out], row-major) and zero-padded to powers of two
  (DP = pow2(D) >= 16, HP = pow2(hidden) >= 16, so ``tl.dot`` shapes are legal); the zero padding
  keeps padded columns exactly 0 through the whole flow, masks handle the tails of rows/columns;
* **Glow-1D**: the coupling split needs no slicing in registers: the first coupling layer's rows
  for the b-half are zero (the net sees only x_a), and the last layer writes shift / scale straight
  into the b-half columns; ``where(col is b-half, (h + shift) * sigmoid(s), h)`` is the coupling;
* **MAF**: each block's permutation is folded into the *next* block's weights (columns of the first
  MADE layer, rows of mu/alpha and of the batch-norm affine), so the state is never permuted in
  registers.  log p needs only |z|^2 (permutation invariant); sampling gathers the noise once
  through the accumulated inverse permutation on load;
* the constant log-det (normalization, ActNorm, LU, batch-norm) plus ``-D/2 log 2 pi`` is one
  float in the buffer header (no host sync per call).

MAF sampling runs ALL blocks x D sequential MADE passes in one launch (``maf_sample``). IAF
sampling (``iaf_sample``) packs an IAF exactly like a MAF and runs ONE MADE pass per block on the
block's input (the MAF density kernel's work with the affine direction flipped); an IAF's density
(D sequential passes) has no kernel and runs the folded PyTorch path.

PyTorch reference: ``folded.log_prob`` / ``folded.sample`` of the same ``fold()`` output.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import _env
from . import configs as _configs
from ._env import alloc, device_fn, next_pow2

_env.select_mode()

import triton  # noqa: E402  (after _env: the interpreter switch must precede @triton.jit)
import triton.language as tl  # noqa: E402

from nfkd.flows import IAF, MAF, Glow1D  # noqa: E402
from nfkd.flows.base import LOG_2PI  # noqa: E402

from . import layout  # noqa: E402
from ._device import mm as _mm  # noqa: E402
from .configs import DOT_PRECISION  # noqa: E402  fp32 exact; "tf32x3" is the tensor-core alternative (bench)

__all__ = ["Packed", "SAMPLERS", "tabular_log_prob", "maf_sample", "iaf_sample", "glow1d_sample", "tabular_sample", "pack", "unpack",
           "supports"]

# the widest padded dims with a checked launch configuration (kernels/configs.py); wider: PyTorch
MAX_D = max(dict(c.shape)["DP"] for c in _configs.CONFIGS if c.kernel in ("glow1d_log_prob", "maf_log_prob"))
MAX_HIDDEN = max(dict(c.shape)["HP"] for c in _configs.CONFIGS if c.kernel in ("glow1d_log_prob", "maf_log_prob"))


# ---------------------------------------------------------------------------------------------
# shared device helpers
# ---------------------------------------------------------------------------------------------
@device_fn
def _mat_idx(R: tl.constexpr, C: tl.constexpr):
    """Row-major offsets of an R x C block (computed once per kernel, outside the loops)."""
    return tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]


@device_fn
def _load_vec(ptr, N: tl.constexpr):
    return tl.load(ptr + tl.arange(0, N))


@device_fn
def _row_tile(B, D, BLOCK_B: tl.constexpr, DP: tl.constexpr):
    """This program's BLOCK_B rows and the DP padded columns, with their in-bounds masks."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, DP)
    return rows, cols, rows < B, cols < D


@device_fn
def _mlp_idx(DP: tl.constexpr, HP: tl.constexpr):
    """Block offsets of the in (D x H), hidden (H x H) and out (H x D) weight matrices."""
    return _mat_idx(DP, HP), _mat_idx(HP, HP), _mat_idx(HP, DP)


@device_fn
def _tanh(x):
    # tanh from exp (no libdevice dependency; exact limits +-1 at overflow)
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@device_fn
def _logsigmoid(s):
    return tl.minimum(s, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(s)))


@device_fn
def _act(x, TANH: tl.constexpr):
    if TANH:
        y = _tanh(x)
    else:
        y = tl.maximum(x, 0.0)
    return y


# ---------------------------------------------------------------------------------------------
# Glow-1D
# ---------------------------------------------------------------------------------------------
@triton.constexpr_function
def _g1d(name: str, DP: int, HP: int) -> int:
    """Offset of a Glow-1D step field (``"SIZE"``: the step's length), from ``kernels.layout``."""
    return layout.offsets(layout.glow1d_step_fields(DP, HP))[name]


@device_fn
def _g1d_net(h, base, i_dh, i_hh, i_hd, DP: tl.constexpr, HP: tl.constexpr, ADDITIVE: tl.constexpr,
             USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """Coupling net of one Glow-1D step on the full padded state; shift/s live in b-half columns."""
    O_W0: tl.constexpr = _g1d("W0", DP, HP)
    O_B0: tl.constexpr = _g1d("B0", DP, HP)
    O_W1: tl.constexpr = _g1d("W1", DP, HP)
    O_B1: tl.constexpr = _g1d("B1", DP, HP)
    O_W2S: tl.constexpr = _g1d("W2S", DP, HP)
    O_B2S: tl.constexpr = _g1d("B2S", DP, HP)
    O_W2C: tl.constexpr = _g1d("W2C", DP, HP)
    O_B2C: tl.constexpr = _g1d("B2C", DP, HP)
    t = _mm(h, tl.load(base + O_W0 + i_dh), USE_DOT, PREC) + _load_vec(base + O_B0, HP)[None, :]
    t = tl.maximum(t, 0.0)
    t = _mm(t, tl.load(base + O_W1 + i_hh), USE_DOT, PREC) + _load_vec(base + O_B1, HP)[None, :]
    t = tl.maximum(t, 0.0)
    shift = _mm(t, tl.load(base + O_W2S + i_hd), USE_DOT, PREC) + _load_vec(base + O_B2S, DP)[None, :]
    if ADDITIVE:
        s = shift
    else:
        s = _mm(t, tl.load(base + O_W2C + i_hd), USE_DOT, PREC) + _load_vec(base + O_B2C, DP)[None, :]
    return shift, s


@triton.jit
def _glow1d_log_prob_kernel(
    x_ptr, out_ptr, w_ptr, B, D, CA, n_steps, sxb, sxd,
    ADDITIVE: tl.constexpr, DP: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr,
    USE_DOT: tl.constexpr, PREC: tl.constexpr,
):
    STEP: tl.constexpr = _g1d("SIZE", DP, HP)
    HDR: tl.constexpr = _g1d_header(DP)
    rows, cols, rm, cm = _row_tile(B, D, BLOCK_B, DP)
    is_b = (cols >= CA) & cm
    h = tl.load(x_ptr + rows[:, None].to(tl.int64) * sxb + cols[None, :] * sxd,
                mask=rm[:, None] & cm[None, :], other=0.0).to(tl.float32)
    i_dd = _mat_idx(DP, DP)
    i_dh, i_hh, i_hd = _mlp_idx(DP, HP)
    ld = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k in range(n_steps):
        base = w_ptr + HDR + k * STEP
        h = _mm(h, tl.load(base + _g1d("WT", DP, HP) + i_dd), USE_DOT, PREC) \
            + _load_vec(base + _g1d("B", DP, HP), DP)[None, :]
        shift, s = _g1d_net(h, base, i_dh, i_hh, i_hd, DP, HP, ADDITIVE, USE_DOT, PREC)
        if ADDITIVE:
            h = h + shift  # shift is exactly 0 outside the b-half (zero-padded weights)
        else:
            h = tl.where(is_b[None, :], (h + shift) * tl.sigmoid(s), h)
            ld += tl.sum(tl.where(is_b[None, :], _logsigmoid(s), 0.0), axis=1)
    const = tl.load(w_ptr)
    lp = ld + const - 0.5 * tl.sum(h * h, axis=1)
    tl.store(out_ptr + rows, lp, mask=rm)


@triton.jit
def _glow1d_sample_kernel(
    z_ptr, out_ptr, w_ptr, B, D, CA, n_steps, temperature, szb, szd, sob, sod,
    ADDITIVE: tl.constexpr, DP: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr,
    USE_DOT: tl.constexpr, PREC: tl.constexpr,
):
    STEP: tl.constexpr = _g1d("SIZE", DP, HP)
    HDR: tl.constexpr = _g1d_header(DP)
    rows, cols, rm, cm = _row_tile(B, D, BLOCK_B, DP)
    is_b = (cols >= CA) & cm
    m2 = rm[:, None] & cm[None, :]
    h = tl.load(z_ptr + rows[:, None].to(tl.int64) * szb + cols[None, :] * szd, mask=m2, other=0.0)
    h = h.to(tl.float32) * temperature
    i_dd = _mat_idx(DP, DP)
    i_dh, i_hh, i_hd = _mlp_idx(DP, HP)
    for kk in range(n_steps):
        base = w_ptr + HDR + (n_steps - 1 - kk) * STEP
        shift, s = _g1d_net(h, base, i_dh, i_hh, i_hd, DP, HP, ADDITIVE, USE_DOT, PREC)
        if ADDITIVE:
            h = h - shift
        else:
            h = tl.where(is_b[None, :], h / tl.sigmoid(s) - shift, h)
        h = _mm(h, tl.load(base + _g1d("WIT", DP, HP) + i_dd), USE_DOT, PREC) \
            + _load_vec(base + _g1d("BI", DP, HP), DP)[None, :]
    tl.store(out_ptr + rows[:, None].to(tl.int64) * sob + cols[None, :] * sod, h, mask=m2)


# ---------------------------------------------------------------------------------------------
# MAF
# ---------------------------------------------------------------------------------------------
@triton.constexpr_function
def _g1d_header(DP: int) -> int:
    return layout.glow1d_header_size(DP)


@triton.constexpr_function
def _maf_hdr(name: str, DP: int) -> int:
    """Offset of a MAF header field (``"SIZE"``: the header's length)."""
    return layout.offsets(layout.maf_header_fields(DP))[name]


@triton.constexpr_function
def _maf_head(name: str, DP: int, HP: int) -> int:
    return layout.offsets(layout.maf_head_fields(DP, HP))[name]


@triton.constexpr_function
def _maf_hidden(name: str, HP: int) -> int:
    return layout.offsets(layout.maf_hidden_fields(HP))[name]


@triton.constexpr_function
def _maf_tail(name: str, DP: int, HP: int) -> int:
    """Offset of a MAF tail field, relative to the end of the block's hidden layers."""
    return layout.offsets(layout.maf_tail_fields(DP, HP))[name]


@device_fn
def _tail_base(base, NH, DP: tl.constexpr, HP: tl.constexpr):
    """Start of a MAF block's tail fields (after its NH - 1 hidden layers)."""
    return base + _maf_head("SIZE", DP, HP) + (NH - 1) * _maf_hidden("SIZE", HP)


@device_fn
def _maf_block_size(NH, DP: tl.constexpr, HP: tl.constexpr):
    """Packed length of one MAF block with NH hidden layers (the stride between blocks)."""
    return _maf_head("SIZE", DP, HP) + (NH - 1) * _maf_hidden("SIZE", HP) + _maf_tail("SIZE", DP, HP)


@device_fn
def _undo_batch_norm(h, tail, DP: tl.constexpr, HP: tl.constexpr):
    """u from a block's output h: the inverse of its folded batch-norm h = u * PS + PSH."""
    return (h - _load_vec(tail + _maf_tail("PSH", DP, HP), DP)[None, :]) \
        / _load_vec(tail + _maf_tail("PS", DP, HP), DP)[None, :]


@device_fn
def _permuted_noise(z_ptr, gidx_ptr, rows, cols, m2, szb, szd, temperature):
    """The tile of noise z * temperature, its columns gathered through the accumulated inverse
    permutation at ``gidx_ptr`` (padded with 0) so the blocks run in the folded order."""
    g = tl.load(gidx_ptr + cols)
    h = tl.load(z_ptr + rows[:, None].to(tl.int64) * szb + g[None, :] * szd, mask=m2, other=0.0)
    return h.to(tl.float32) * temperature


@device_fn
def _store_denormalized(out_ptr, h, w_ptr, rows, cols, m2, sob, sod, DP: tl.constexpr):
    """Store h * SCALE + LOC: the data-space rows, undoing the flow's input normalisation."""
    h = h * _load_vec(w_ptr + _maf_hdr("SCALE", DP), DP)[None, :] + _load_vec(w_ptr + _maf_hdr("LOC", DP), DP)[None, :]
    tl.store(out_ptr + rows[:, None].to(tl.int64) * sob + cols[None, :] * sod, h, mask=m2)


@device_fn
def _made(x, base, NH, i_dh, i_hh, i_hd, DP: tl.constexpr, HP: tl.constexpr, TANH: tl.constexpr,
          USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """mu and soft-clamped alpha of one (permutation-folded) MADE block."""
    t = _mm(x, tl.load(base + _maf_head("W0", DP, HP) + i_dh), USE_DOT, PREC) \
        + _load_vec(base + _maf_head("B0", DP, HP), HP)[None, :]
    t = _act(t, TANH)
    for j in range(NH - 1):
        hb = base + _maf_head("SIZE", DP, HP) + j * _maf_hidden("SIZE", HP)
        t = _act(_mm(t, tl.load(hb + _maf_hidden("W", HP) + i_hh), USE_DOT, PREC)
                 + _load_vec(hb + _maf_hidden("B", HP), HP)[None, :], TANH)
    tail = _tail_base(base, NH, DP, HP)
    mu = _mm(t, tl.load(tail + _maf_tail("WMU", DP, HP) + i_hd), USE_DOT, PREC) \
        + _load_vec(tail + _maf_tail("BMU", DP, HP), DP)[None, :]
    raw = _mm(t, tl.load(tail + _maf_tail("WA", DP, HP) + i_hd), USE_DOT, PREC) \
        + _load_vec(tail + _maf_tail("BA", DP, HP), DP)[None, :]
    c = _load_vec(tail + _maf_tail("CL", DP, HP), DP)  # clamp (same value in every slot)
    alpha = c[None, :] * _tanh(raw / c[None, :])
    return mu, alpha


@triton.jit
def _maf_log_prob_kernel(
    x_ptr, out_ptr, w_ptr, B, D, n_blocks, NH, sxb, sxd,
    TANH: tl.constexpr, DP: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr,
    USE_DOT: tl.constexpr, PREC: tl.constexpr,
):
    HDR: tl.constexpr = _maf_hdr("SIZE", DP)
    rows, cols, rm, cm = _row_tile(B, D, BLOCK_B, DP)
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * sxb + cols[None, :] * sxd,
                mask=rm[:, None] & cm[None, :], other=0.0).to(tl.float32)
    h = (x - _load_vec(w_ptr + _maf_hdr("LOC", DP), DP)[None, :]) \
        * _load_vec(w_ptr + _maf_hdr("INV_SCALE", DP), DP)[None, :]
    h = tl.where(cm[None, :], h, 0.0)
    bstep = _maf_block_size(NH, DP, HP)
    i_dh, i_hh, i_hd = _mlp_idx(DP, HP)
    ld = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k in range(n_blocks):
        base = w_ptr + HDR + k * bstep
        mu, alpha = _made(h, base, NH, i_dh, i_hh, i_hd, DP, HP, TANH, USE_DOT, PREC)
        tail = _tail_base(base, NH, DP, HP)
        u = (h - mu) * tl.exp(-alpha)
        h = u * _load_vec(tail + _maf_tail("PS", DP, HP), DP)[None, :] \
            + _load_vec(tail + _maf_tail("PSH", DP, HP), DP)[None, :]
        ld -= tl.sum(tl.where(cm[None, :], alpha, 0.0), axis=1)
    const = tl.load(w_ptr + _maf_hdr("CONST", DP))
    lp = ld + const - 0.5 * tl.sum(h * h, axis=1)
    tl.store(out_ptr + rows, lp, mask=rm)


@triton.jit
def _maf_sample_kernel(
    z_ptr, out_ptr, w_ptr, gidx_ptr, B, D, n_blocks, NH, temperature, szb, szd, sob, sod,
    TANH: tl.constexpr, DP: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr,
    USE_DOT: tl.constexpr, PREC: tl.constexpr,
):
    HDR: tl.constexpr = _maf_hdr("SIZE", DP)
    rows, cols, rm, cm = _row_tile(B, D, BLOCK_B, DP)
    m2 = rm[:, None] & cm[None, :]
    h = _permuted_noise(z_ptr, gidx_ptr, rows, cols, m2, szb, szd, temperature)
    bstep = _maf_block_size(NH, DP, HP)
    i_dh, i_hh, i_hd = _mlp_idx(DP, HP)
    for kk in range(n_blocks):
        base = w_ptr + HDR + (n_blocks - 1 - kk) * bstep
        u = _undo_batch_norm(h, _tail_base(base, NH, DP, HP), DP, HP)
        x = tl.zeros([BLOCK_B, DP], dtype=tl.float32)
        for _it in range(D):  # pass i fixes coordinate i (autoregressive order); D passes in all
            mu, alpha = _made(x, base, NH, i_dh, i_hh, i_hd, DP, HP, TANH, USE_DOT, PREC)
            x = u * tl.exp(alpha) + mu
        h = x
    _store_denormalized(out_ptr, h, w_ptr, rows, cols, m2, sob, sod, DP)


@triton.jit
def _iaf_sample_kernel(
    z_ptr, out_ptr, w_ptr, gidx_ptr, B, D, n_blocks, NH, temperature, szb, szd, sob, sod,
    TANH: tl.constexpr, DP: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr,
    USE_DOT: tl.constexpr, PREC: tl.constexpr,
):
    """IAF sampling: ``_maf_sample_kernel`` with its D passes per block replaced by ONE pass on the
    block's input, x = u * exp(alpha(u)) + mu(u) (``nfkd.flows.layers.InverseMADE``); same packed
    layout (an IAF block is a MAF block without batch-norm: PS = 1, PSH = 0)."""
    HDR: tl.constexpr = _maf_hdr("SIZE", DP)
    rows, cols, rm, cm = _row_tile(B, D, BLOCK_B, DP)
    m2 = rm[:, None] & cm[None, :]
    h = _permuted_noise(z_ptr, gidx_ptr, rows, cols, m2, szb, szd, temperature)
    h = tl.where(cm[None, :], h, 0.0)
    bstep = _maf_block_size(NH, DP, HP)
    i_dh, i_hh, i_hd = _mlp_idx(DP, HP)
    for kk in range(n_blocks):
        base = w_ptr + HDR + (n_blocks - 1 - kk) * bstep
        u = _undo_batch_norm(h, _tail_base(base, NH, DP, HP), DP, HP)
        mu, alpha = _made(u, base, NH, i_dh, i_hh, i_hd, DP, HP, TANH, USE_DOT, PREC)
        h = u * tl.exp(alpha) + mu  # padded columns: u = 0, mu = alpha = 0 (zero-padded weights)
    _store_denormalized(out_ptr, h, w_ptr, rows, cols, m2, sob, sod, DP)


# ---------------------------------------------------------------------------------------------
# packing (once, at load: the Runner owns the result) and launchers
# ---------------------------------------------------------------------------------------------
class Packed:
    """Padded weight buffer of one folded tabular flow plus its launch constants."""

    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)


def _coupling_layers(step) -> list[tuple[Tensor, Tensor]]:
    from nfkd.fold import linear_layers

    return linear_layers(step.coupling.net)


def _made_layers(block) -> list[tuple[Tensor, Tensor]]:
    from nfkd.fold import linear_layers

    return linear_layers(block.made.net)


def supports(folded, ops: Sequence[str] = ("log_prob", "sample")) -> bool:
    """Whether the tabular kernels handle this folded flow (else use the PyTorch folded path): the
    structure fits and its kernels for ``ops`` have a checked configuration on the flow's device."""
    from nfkd.fold import is_folded

    arch = getattr(folded, "arch", "")
    if not is_folded(folded):
        return False
    if isinstance(folded, Glow1D):
        d = folded.event_shape[0]
        ok = all(len(_coupling_layers(s)) == 3 for s in folded.steps)
        hidden = _coupling_layers(folded.steps[0])[0][0].shape[0]
        device = folded.steps[0].mix.weight.device
    elif isinstance(folded, (MAF, IAF)):  # an IAF block packs like a MAF block (its MADE runs the other way)
        d = folded.event_shape[0]
        b0 = folded.blocks[0]
        ok = all(len(_made_layers(b)) >= 2 and b.made.activation == b0.made.activation for b in folded.blocks)
        hidden = _made_layers(b0)[0][0].shape[0]
        device = folded.normalize.loc.device
    else:
        return False
    dev = _configs.device_arch(device)
    shape = dict(DP=next_pow2(d, 16), HP=next_pow2(hidden, 16))
    return ok and all(_configs.lookup(f"{arch}_{op}", dev, **shape) is not None for op in ops)


def _put(buf: Tensor, off: int, mat: Tensor, rows: int, cols: int) -> None:
    """Write mat (r x c) zero-padded into a rows x cols row-major block at off."""
    blk = torch.zeros(rows, cols, dtype=buf.dtype)
    blk[: mat.shape[0], : mat.shape[1]] = mat
    buf[off: off + rows * cols] = blk.reshape(-1)


def _pack_glow1d(folded) -> Packed:
    from nfkd.fold import constant_logdet

    D = folded.event_shape[0]
    c0 = folded.steps[0].coupling
    H = _coupling_layers(folded.steps[0])[0][0].shape[0]
    DP, HP = next_pow2(D, 16), next_pow2(H, 16)
    o = layout.offsets(layout.glow1d_step_fields(DP, HP))
    hdr = layout.glow1d_header_size(DP)
    K = len(folded.steps)
    buf = torch.zeros(hdr + K * o["SIZE"], dtype=torch.float64)
    buf[0] = float(constant_logdet(folded)) - 0.5 * D * LOG_2PI
    ca = c0.c_a
    cb = D - ca
    for k, st in enumerate(folded.steps):
        base = hdr + k * o["SIZE"]
        cp = st.coupling
        (w0, b0), (w1, b1), (w2, b2) = [(w.detach().double().cpu(), b.detach().double().cpu())
                                        for w, b in _coupling_layers(st)]
        mix = st.mix
        _put(buf, base + o["WT"], mix.weight.double().cpu().T, DP, DP)
        _put(buf, base + o["B"], mix.bias.double().cpu()[None], 1, DP)
        _put(buf, base + o["WIT"], mix.weight_inv.double().cpu().T, DP, DP)
        _put(buf, base + o["BI"], mix.bias_inv.double().cpu()[None], 1, DP)
        _put(buf, base + o["W0"], w0.T, DP, HP)  # rows >= c_a stay 0: the net sees x_a only
        _put(buf, base + o["B0"], b0[None], 1, HP)
        _put(buf, base + o["W1"], w1.T, HP, HP)
        _put(buf, base + o["B1"], b1[None], 1, HP)
        ws = torch.zeros(H, D, dtype=torch.float64)
        ws[:, ca:] = w2[:cb].T
        bs = torch.zeros(1, D, dtype=torch.float64)
        bs[0, ca:] = b2[:cb]
        _put(buf, base + o["W2S"], ws, HP, DP)
        _put(buf, base + o["B2S"], bs, 1, DP)
        if not cp.additive:
            wc = torch.zeros(H, D, dtype=torch.float64)
            wc[:, ca:] = w2[cb:].T
            bc = torch.zeros(1, D, dtype=torch.float64)
            bc[0, ca:] = b2[cb:]
            _put(buf, base + o["W2C"], wc, HP, DP)
            _put(buf, base + o["B2C"], bc, 1, DP)
    dev = folded.steps[0].mix.weight.device
    return Packed(arch="glow1d", kind=type(folded), buf=buf.float().to(dev), D=D, DP=DP, HP=HP, H=H, CA=ca, n=K,
                  additive=bool(c0.additive))


def _pack_maf(folded) -> Packed:
    from nfkd.fold import constant_logdet

    D = folded.event_shape[0]
    b0 = folded.blocks[0]
    H = _made_layers(b0)[0][0].shape[0]
    NH = len(_made_layers(b0)) - 1
    if any(len(_made_layers(b)) - 1 != NH for b in folded.blocks):
        raise ValueError("all MADE blocks must have the same depth")
    DP, HP = next_pow2(D, 16), next_pow2(H, 16)
    hd = layout.offsets(layout.maf_header_fields(DP))
    head = layout.offsets(layout.maf_head_fields(DP, HP))
    hid = layout.offsets(layout.maf_hidden_fields(HP))
    tail = layout.offsets(layout.maf_tail_fields(DP, HP))
    step = layout.maf_block_size(DP, HP, NH)
    K = len(folded.blocks)
    buf = torch.zeros(hd["SIZE"] + K * step, dtype=torch.float64)
    scale = folded.normalize.scale.double().cpu()
    buf[hd["LOC"]: hd["LOC"] + D] = folded.normalize.loc.double().cpu()
    buf[hd["INV_SCALE"]: hd["INV_SCALE"] + D] = 1.0 / scale
    buf[hd["SCALE"]: hd["SCALE"] + D] = scale
    buf[hd["CONST"]] = float(constant_logdet(folded)) - 0.5 * D * LOG_2PI
    q = torch.arange(D)  # block k input x_k[j] = state[q[j]]
    qs = []
    for k, blk in enumerate(folded.blocks):
        qs.append(q.clone())
        base = hd["SIZE"] + k * step
        t0 = base + head["SIZE"] + (NH - 1) * hid["SIZE"]  # start of the tail fields
        inv_q = torch.argsort(q)
        ws = [(w.detach().double().cpu(), b.detach().double().cpu()) for w, b in _made_layers(blk)]
        w0, bb0 = ws[0]
        _put(buf, base + head["W0"], w0[:, inv_q].T, DP, HP)
        _put(buf, base + head["B0"], bb0[None], 1, HP)
        for j in range(NH - 1):
            wh, bh = ws[1 + j]
            off = base + head["SIZE"] + j * hid["SIZE"]
            _put(buf, off + hid["W"], wh.T, HP, HP)
            _put(buf, off + hid["B"], bh[None], 1, HP)
        wl, bl = ws[-1]
        _put(buf, t0 + tail["WMU"], wl[:D][inv_q].T, HP, DP)
        _put(buf, t0 + tail["BMU"], bl[:D][inv_q][None], 1, DP)
        _put(buf, t0 + tail["WA"], wl[D:][inv_q].T, HP, DP)
        _put(buf, t0 + tail["BA"], bl[D:][inv_q][None], 1, DP)
        # eval batch-norm (folded to (u - loc) / scale) as u * post_scale + post_shift
        post_scale, post_shift = torch.ones(D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64)
        if blk.bn is not None:
            post_scale = 1.0 / blk.bn.scale.double().cpu()
            post_shift = -blk.bn.loc.double().cpu() * post_scale
        ps = torch.ones(DP, dtype=torch.float64)
        ps[:D] = post_scale[inv_q]
        buf[t0 + tail["PS"]: t0 + tail["PS"] + DP] = ps
        _put(buf, t0 + tail["PSH"], post_shift[inv_q][None], 1, DP)
        buf[t0 + tail["CL"]: t0 + tail["CL"] + DP] = float(blk.made.alpha_clamp)
        q = q[blk.perm.perm.cpu()]
    gidx = torch.zeros(DP, dtype=torch.int32)
    gidx[:D] = torch.argsort(q).to(torch.int32)
    dev = folded.normalize.loc.device
    return Packed(arch=folded.arch, kind=type(folded), buf=buf.float().to(dev), gidx=gidx.to(dev), D=D, DP=DP, HP=HP, H=H, NH=NH, n=K, qs=qs,
                  tanh=b0.made.activation == "tanh")


def pack(folded) -> Packed:
    """The packed weights of a folded Glow-1D / MAF / IAF (a snapshot: pack again after changing it)."""
    op = "log_prob" if getattr(folded, "one_pass_density", True) else "sample"  # IAF: a sampling kernel only
    if not supports(folded, (op,)):  # structure and dims; each launcher also checks its op's record
        raise ValueError(f"tabular kernels do not support this {getattr(folded, 'arch', '?')} flow")
    with torch.no_grad():
        return _pack_glow1d(folded) if isinstance(folded, Glow1D) else _pack_maf(folded)


def _get(buf: Tensor, off: int, rows: int, cols: int) -> Tensor:
    """The rows x cols row-major block at off (the inverse of ``_put``, padding included)."""
    return buf[off: off + rows * cols].reshape(rows, cols)


def unpack(p: Packed) -> dict:
    """Read a packed buffer back, by the same ``kernels.layout``, into the folded flow's own
    tensors and coordinates (float32, CPU): ``{"const", "steps"/"blocks": [...]}`` with, per step or
    block, the (weight, bias) of every linear layer as ``nfkd.fold.linear_layers`` lists them.
    The pack/unpack round-trip test compares this with the folded module."""
    buf = p.buf.detach().cpu()
    D, DP, HP, H = p.D, p.DP, p.HP, p.H
    if issubclass(p.kind, Glow1D):
        o = layout.offsets(layout.glow1d_step_fields(DP, HP))
        hdr = layout.glow1d_header_size(DP)
        ca, steps = p.CA, []
        for k in range(p.n):
            b = hdr + k * o["SIZE"]
            def vec(name: str, n: int, b: int = b) -> Tensor:
                return buf[b + o[name]: b + o[name] + n]
            w2 = _get(buf, b + o["W2S"], HP, DP)[:H, ca:D].T
            b2 = vec("B2S", D)[ca:]
            if not p.additive:
                w2 = torch.cat([w2, _get(buf, b + o["W2C"], HP, DP)[:H, ca:D].T])
                b2 = torch.cat([b2, vec("B2C", D)[ca:]])
            steps.append({
                "mix": (_get(buf, b + o["WT"], DP, DP)[:D, :D].T, vec("B", D)),
                "mix_inv": (_get(buf, b + o["WIT"], DP, DP)[:D, :D].T, vec("BI", D)),
                "net": [(_get(buf, b + o["W0"], DP, HP)[:ca, :H].T, vec("B0", H)),
                        (_get(buf, b + o["W1"], HP, HP)[:H, :H].T, vec("B1", H)), (w2, b2)],
            })
        return {"const": float(buf[0]), "steps": steps}
    hd = layout.offsets(layout.maf_header_fields(DP))
    head = layout.offsets(layout.maf_head_fields(DP, HP))
    hid = layout.offsets(layout.maf_hidden_fields(HP))
    tail = layout.offsets(layout.maf_tail_fields(DP, HP))
    blocks = []
    for k in range(p.n):
        b = hd["SIZE"] + k * layout.maf_block_size(DP, HP, p.NH)
        t0 = b + head["SIZE"] + (p.NH - 1) * hid["SIZE"]
        q = p.qs[k]  # the packer stored row j of block k's input side at q[j]'s place: undo it
        layers = [(_get(buf, b + head["W0"], DP, HP)[:D, :H].T[:, q], buf[b + head["B0"]: b + head["B0"] + H])]
        for j in range(p.NH - 1):
            off = b + head["SIZE"] + j * hid["SIZE"]
            layers.append((_get(buf, off + hid["W"], HP, HP)[:H, :H].T, buf[off + hid["B"]: off + hid["B"] + H]))
        wl = torch.cat([_get(buf, t0 + tail["WMU"], HP, DP)[:H, :D].T[q], _get(buf, t0 + tail["WA"], HP, DP)[:H, :D].T[q]])
        bl = torch.cat([buf[t0 + tail["BMU"]: t0 + tail["BMU"] + D][q], buf[t0 + tail["BA"]: t0 + tail["BA"] + D][q]])
        layers.append((wl, bl))
        ps = buf[t0 + tail["PS"]: t0 + tail["PS"] + D][q]
        psh = buf[t0 + tail["PSH"]: t0 + tail["PSH"] + D][q]
        blocks.append({"made": layers, "post_scale": ps, "post_shift": psh,
                       "alpha_clamp": float(buf[t0 + tail["CL"]])})
    return {"const": float(buf[hd["CONST"]]), "loc": buf[hd["LOC"]: hd["LOC"] + D],
            "scale": buf[hd["SCALE"]: hd["SCALE"] + D], "blocks": blocks}


def _launch_cfg(p: Packed, kernel, op: str, device: torch.device, block_b: int | None,
                num_warps: int | None) -> tuple[int, int, int]:
    """(BLOCK_B, num_warps, num_stages): the checked record of kernels/configs.py for this kernel,
    these padded dims and the device's architecture (explicit block_b / num_warps override it;
    the CPU interpreter uses 16-row blocks for speed)."""
    if _env.is_interpreted(kernel):
        return block_b or 16, num_warps or 4, 1
    cfg = _configs.lookup(f"{p.arch}_{op}", _configs.device_arch(device), DP=p.DP, HP=p.HP)
    if cfg is None:
        raise ValueError(f"no checked launch configuration for {p.arch}_{op} with DP={p.DP}, HP={p.HP} on {device} "
                         f"(kernels/configs.py); use the PyTorch path (the triton Runner falls back to it at load)")
    return block_b or cfg.block, num_warps or cfg.num_warps, cfg.num_stages


def _check_device(kernel, x: Tensor, p: Packed) -> None:
    if not _env.can_launch(kernel, x.device):
        mode = "interpreted (CPU tensors)" if _env.is_interpreted(kernel) else "compiled (CUDA tensors)"
        raise RuntimeError(f"Triton kernels are {mode}; got a tensor on {x.device}")
    if p.buf.device != x.device:
        raise ValueError(f"folded flow is on {p.buf.device}, input on {x.device}")


def tabular_log_prob(p: Packed, x: Tensor, *, out: Tensor | None = None, block_b: int | None = None,
                     num_warps: int | None = None, use_dot: bool = True, precision: str | None = None) -> Tensor:
    """log p(x) [B] of a packed Glow-1D or MAF (``pack(folded)``) in one launch (float32)."""
    if not p.kind.one_pass_density:
        raise ValueError("no Triton density kernel for an IAF (its density is D sequential passes per block); "
                         "use folded.log_prob (the triton Runner does)")
    kernel = _glow1d_log_prob_kernel if issubclass(p.kind, Glow1D) else _maf_log_prob_kernel
    _check_device(kernel, x, p)
    if x.dim() != 2 or x.shape[1] != p.D:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, {p.D})")
    B = x.shape[0]
    if x.dtype != torch.float32:  # one compiled input type per configuration (python -m kernels.aot checks them)
        x = x.float()
    out = alloc((B,), x.device) if out is None else out
    block_b, num_warps, stages = _launch_cfg(p, kernel, "log_prob", x.device, block_b, num_warps)
    prec = precision or DOT_PRECISION
    grid = (triton.cdiv(B, block_b),)
    if issubclass(p.kind, Glow1D):
        kernel[grid](x, out, p.buf, B, p.D, p.CA, p.n, x.stride(0), x.stride(1),
                     ADDITIVE=p.additive, DP=p.DP, HP=p.HP, BLOCK_B=block_b, USE_DOT=use_dot, PREC=prec,
                     num_warps=num_warps, num_stages=stages)
    else:
        kernel[grid](x, out, p.buf, B, p.D, p.n, p.NH, x.stride(0), x.stride(1),
                     TANH=p.tanh, DP=p.DP, HP=p.HP, BLOCK_B=block_b, USE_DOT=use_dot, PREC=prec,
                     num_warps=num_warps, num_stages=stages)
    return out


def _noise_temperature(noise, temperature) -> tuple[Tensor, float]:
    z = noise[0] if isinstance(noise, (list, tuple)) else noise
    if isinstance(temperature, Tensor):  # per-row / tensor temperature: multiply in torch
        return z * temperature, 1.0
    if z.dtype != torch.float32:  # as in tabular_log_prob
        z = z.float()
    return z, float(temperature)


def _sample(p: Packed, noise, temperature, out, block_b, num_warps, use_dot, precision, arch) -> Tensor:
    if p.arch != arch:
        raise ValueError(f"expected a folded {arch}, got {p.arch}")
    z, t = _noise_temperature(noise, temperature)
    kernel = {"glow1d": _glow1d_sample_kernel, "maf": _maf_sample_kernel, "iaf": _iaf_sample_kernel}[arch]
    _check_device(kernel, z, p)
    if z.dim() != 2 or z.shape[1] != p.D:
        raise ValueError(f"noise has shape {tuple(z.shape)}; expected (batch, {p.D})")
    B = z.shape[0]
    out = alloc((B, p.D), z.device) if out is None else out
    block_b, num_warps, stages = _launch_cfg(p, kernel, "sample", z.device, block_b, num_warps)
    prec = precision or DOT_PRECISION
    grid = (triton.cdiv(B, block_b),)
    if issubclass(p.kind, Glow1D):
        kernel[grid](z, out, p.buf, B, p.D, p.CA, p.n, t, z.stride(0), z.stride(1), out.stride(0), out.stride(1),
                     ADDITIVE=p.additive, DP=p.DP, HP=p.HP, BLOCK_B=block_b, USE_DOT=use_dot, PREC=prec,
                     num_warps=num_warps, num_stages=stages)
    else:
        kernel[grid](z, out, p.buf, p.gidx, B, p.D, p.n, p.NH, t, z.stride(0), z.stride(1),
                     out.stride(0), out.stride(1),
                     TANH=p.tanh, DP=p.DP, HP=p.HP, BLOCK_B=block_b, USE_DOT=use_dot, PREC=prec,
                     num_warps=num_warps, num_stages=stages)
    return out


def maf_sample(p: Packed, noise: Tensor | Sequence[Tensor], temperature: float | Tensor = 1.0, *,
               out: Tensor | None = None, block_b: int | None = None, num_warps: int | None = None,
               use_dot: bool = True, precision: str | None = None) -> Tensor:
    """``folded.sample(noise, temperature)`` of a packed MAF: all blocks x D MADE passes, one launch."""
    return _sample(p, noise, temperature, out, block_b, num_warps, use_dot, precision, "maf")


def iaf_sample(p: Packed, noise: Tensor | Sequence[Tensor], temperature: float | Tensor = 1.0, *,
               out: Tensor | None = None, block_b: int | None = None, num_warps: int | None = None,
               use_dot: bool = True, precision: str | None = None) -> Tensor:
    """``folded.sample(noise, temperature)`` of a packed IAF: one MADE pass per block, one launch."""
    return _sample(p, noise, temperature, out, block_b, num_warps, use_dot, precision, "iaf")


def glow1d_sample(p: Packed, noise: Tensor | Sequence[Tensor], temperature: float | Tensor = 1.0, *,
                  out: Tensor | None = None, block_b: int | None = None, num_warps: int | None = None,
                  use_dot: bool = True, precision: str | None = None) -> Tensor:
    """``folded.sample(noise, temperature)`` of a packed Glow-1D in one launch."""
    return _sample(p, noise, temperature, out, block_b, num_warps, use_dot, precision, "glow1d")


#: The sampling launcher of each packed architecture (the triton Runner binds one at load).
SAMPLERS = {"glow1d": glow1d_sample, "maf": maf_sample, "iaf": iaf_sample}


def tabular_sample(p: Packed, noise, temperature=1.0, **kw) -> Tensor:
    """The sampling kernel of a packed Glow-1D, MAF or IAF."""
    return SAMPLERS[p.arch](p, noise, temperature, **kw)
