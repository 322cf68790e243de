"""Fused Glow step kernels for images (both directions), driven by ``fold()`` output.

A folded Glow step is ``y = coupling(W x + b)`` with ActNorm already folded into the per-pixel
c x c matrix W (``FoldedStep.weight``/``bias``).  The coupling network (3x3 conv, 1x1 conv,
3x3 conv) stays as torch convolutions on the folded weights; everything else of a step is ONE
Triton kernel per step:

forward (``_glow_fwd_kernel``), launched once per step after the coupling net of step k ran::

    y_b   = (x_b + shift) * sigmoid(s)           # epilogue of step k's coupling (shift, s = net(x_a))
    ld[b] += sum logsigmoid(s)                    # per-sample log-det, per-block partial sums
    (x_a', x_b') = W_{k+1} [x_a, y_b] + b_{k+1}    # the NEXT step's folded ActNorm + 1x1 conv

so a level of K steps is K+1 launches: a prologue launch (affine of step 0, with the 2x2 squeeze
folded into its load addressing) and one launch per step (the last one writes only y_b).
inverse (``_glow_inv_kernel``), once per step after net(y_a)::

    x_b = y_b / sigmoid(s) - shift ;  (x_a', x_b') = W_k^-1 [y_a, x_b] + W_k^-1-bias

and the last step of a level stores through the 2x2 *un*squeeze addressing directly into the
next-finer level's tensor (or the final image).  Constant log-dets are folded (``logdet_const``).

Design notes
------------
* The concatenated state [x_a, x_b] is never materialised: a and b halves live in two tensors,
  so the coupling convs read x_a as a dense tensor (no channel-slice copy) and the kernel reads
  both halves plus the net output and writes both halves of the next state (in place: each
  element is read and written by the same program).  The half-split channel matmul is four
  small blocks (a->a, b->a, a->b, b->b), zero-padded to powers of two.
* Log-det: program (pixel-block p, sample b) adds its partial sum into its own slot
  ``ld[b, p]`` (load-add-store, launches are stream ordered): deterministic, no atomics; one
  ``sum(1)`` at the end.
* Layout: **NHWC (channels_last) by default.**  The kernel is stride-generic (any 4-D strides, so
  NCHW works too and ``layout="nchw"`` exists for measurement), and for the kernel alone both
  layouts are coalesced: NHWC reads a [pixels, channels] tile as one contiguous run per pixel
  row, NCHW as one run of BLOCK_P pixels per channel.  The choice is decided by the convs, which
  are most of the FLOPs and bytes: cuDNN's fast implicit-GEMM kernels on Ampere/Hopper are NHWC
  kernels, an NCHW conv pays a transpose of its input and output each call.  With channels_last
  tensors end to end (kernel outputs allocated channels_last, the user's NCHW image read once by
  the squeeze-gather and the final sample written NCHW by the unsqueeze-scatter) no layout
  conversion is left.  ``bench/gpu_check.py`` times both layouts on the device to confirm.
* Matmul: ``tl.dot`` when the padded half-width is >= 16 (tensor cores; fp32 with
  ``input_precision="ieee"`` by default for 1e-6-level agreement), else broadcast-multiply +
  ``tl.sum`` (c_a = 6 for RGB after the first squeeze: padding to 16 would waste 7x the math).

The PyTorch reference for one step is ``step_forward_reference`` / ``step_inverse_reference``;
for the whole flow it is ``folded.log_prob`` / ``folded.sample``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _env
from . import configs as _configs
from ._env import alloc, device_fn, next_pow2

_env.select_mode()

import triton  # noqa: E402  (after _env)
import triton.language as tl  # noqa: E402

from nfkd.flows import Glow  # noqa: E402
from nfkd.flows.base import LOG_2PI  # noqa: E402

from ._device import mm as _mm  # noqa: E402
from .configs import DOT_PRECISION  # noqa: E402

__all__ = ["GlowPack", "pack", "glow_log_prob_triton", "glow_sample_triton", "glow_step_forward", "glow_step_inverse",
           "step_forward_reference", "step_inverse_reference", "pack_affine",
           "LAYOUTS", "DEFAULT_LAYOUT"]

LAYOUTS = {"nhwc": torch.channels_last, "nchw": torch.contiguous_format}
DEFAULT_LAYOUT = "nhwc"


@device_fn
def _pixel_tile(pid_p, P, Wq, CA, CB, CAP: tl.constexpr, CBP: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's BLOCK_P pixels (row hh, column ww), both halves' channel ranges and their masks."""
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < P
    hh = p // Wq
    ww = p - hh * Wq
    ka = tl.arange(0, CAP)
    kb = tl.arange(0, CBP)
    return hh, ww, ka, kb, pm[:, None] & (ka < CA)[None, :], pm[:, None] & (kb < CB)[None, :]


@device_fn
def _offsets(b, ch, hh, ww, sb, sc, sh, sw, SQUEEZE: tl.constexpr):
    """Element offsets of a [pixels, channels] tile of sample b; (hh, ww) = squeezed pixel coords.

    SQUEEZE: the tensor is the un-squeezed (2H, 2W) one; squeezed channel k = 4c + 2i + j of pixel
    (h, w) lives at (c, 2h + i, 2w + j) - Glow's squeeze2d ordering.  Only 1-D index math and one
    2-D add (cheap compiled, and fast under the interpreter's overflow-checked integer ops).
    """
    if SQUEEZE:
        chn = (ch // 4) * sc + ((ch // 2) % 2) * sh + (ch % 2) * sw
        pix = b * sb + (2 * hh) * sh + (2 * ww) * sw
    else:
        chn = ch * sc
        pix = b * sb + hh * sh + ww * sw
    return pix[:, None] + chn[None, :]


@device_fn
def _affine_halves(xa, yb, w_ptr, CAP: tl.constexpr, CBP: tl.constexpr, USE_DOT: tl.constexpr,
                   PREC: tl.constexpr):
    """(out_a, out_b) = W [xa, yb] + bias with W packed as four transposed, padded blocks."""
    ka = tl.arange(0, CAP)
    kb = tl.arange(0, CBP)
    o_ba: tl.constexpr = CAP * CAP
    o_ab: tl.constexpr = o_ba + CBP * CAP
    o_bb: tl.constexpr = o_ab + CAP * CBP
    o_bias: tl.constexpr = o_bb + CBP * CBP
    t_aa = tl.load(w_ptr + ka[:, None] * CAP + ka[None, :])
    t_ba = tl.load(w_ptr + o_ba + kb[:, None] * CAP + ka[None, :])
    t_ab = tl.load(w_ptr + o_ab + ka[:, None] * CBP + kb[None, :])
    t_bb = tl.load(w_ptr + o_bb + kb[:, None] * CBP + kb[None, :])
    bias_a = tl.load(w_ptr + o_bias + ka)
    bias_b = tl.load(w_ptr + o_bias + CAP + kb)
    out_a = _mm(xa, t_aa, USE_DOT, PREC) + _mm(yb, t_ba, USE_DOT, PREC) + bias_a[None, :]
    out_b = _mm(xa, t_ab, USE_DOT, PREC) + _mm(yb, t_bb, USE_DOT, PREC) + bias_b[None, :]
    return out_a, out_b


@triton.jit
def _glow_fwd_kernel(
    xa_ptr, xb_ptr, hn_ptr, oa_ptr, ob_ptr, w_ptr, ld_ptr,
    P, Wq, CA, CB, LD_STRIDE,
    xa_sb, xa_sc, xa_sh, xa_sw, xb_sb, xb_sc, xb_sh, xb_sw,
    hn_sb, hn_sc, hn_sh, hn_sw,
    oa_sb, oa_sc, oa_sh, oa_sw, ob_sb, ob_sc, ob_sh, ob_sw,
    SQUEEZE_IN: tl.constexpr, HAS_COUPLING: tl.constexpr, ADDITIVE: tl.constexpr, HAS_AFFINE: tl.constexpr,
    CAP: tl.constexpr, CBP: tl.constexpr, BLOCK_P: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hh, ww, ka, kb, ma, mb = _pixel_tile(pid_p, P, Wq, CA, CB, CAP, CBP, BLOCK_P)
    xa = tl.load(xa_ptr + _offsets(b, ka, hh, ww, xa_sb, xa_sc, xa_sh, xa_sw, SQUEEZE_IN), mask=ma, other=0.0)
    if SQUEEZE_IN:  # both halves come from the one un-squeezed tensor
        xb = tl.load(xb_ptr + _offsets(b, kb + CA, hh, ww, xb_sb, xb_sc, xb_sh, xb_sw, SQUEEZE_IN), mask=mb, other=0.0)
    else:
        xb = tl.load(xb_ptr + _offsets(b, kb, hh, ww, xb_sb, xb_sc, xb_sh, xb_sw, False), mask=mb, other=0.0)
    xa = xa.to(tl.float32)
    xb = xb.to(tl.float32)
    if HAS_COUPLING:
        shift = tl.load(hn_ptr + _offsets(b, kb, hh, ww, hn_sb, hn_sc, hn_sh, hn_sw, False), mask=mb, other=0.0)
        if ADDITIVE:
            yb = xb + shift
        else:
            s = tl.load(hn_ptr + _offsets(b, kb + CB, hh, ww, hn_sb, hn_sc, hn_sh, hn_sw, False), mask=mb, other=0.0)
            yb = (xb + shift) * tl.sigmoid(s)
            ls = tl.minimum(s, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(s)))
            part = tl.sum(tl.sum(tl.where(mb, ls, 0.0), axis=1), axis=0)
            slot = ld_ptr + b * LD_STRIDE + pid_p
            tl.store(slot, tl.load(slot) + part)
    else:
        yb = xb
    if HAS_AFFINE:
        out_a, out_b = _affine_halves(xa, yb, w_ptr, CAP, CBP, USE_DOT, PREC)
        tl.store(oa_ptr + _offsets(b, ka, hh, ww, oa_sb, oa_sc, oa_sh, oa_sw, False), out_a, mask=ma)
        tl.store(ob_ptr + _offsets(b, kb, hh, ww, ob_sb, ob_sc, ob_sh, ob_sw, False), out_b, mask=mb)
    else:  # last step of a level: x_a is unchanged (already in oa), write y_b only
        tl.store(ob_ptr + _offsets(b, kb, hh, ww, ob_sb, ob_sc, ob_sh, ob_sw, False), yb, mask=mb)


@triton.jit
def _glow_inv_kernel(
    ya_ptr, yb_ptr, hn_ptr, oa_ptr, ob_ptr, w_ptr,
    P, Wq, CA, CB,
    ya_sb, ya_sc, ya_sh, ya_sw, yb_sb, yb_sc, yb_sh, yb_sw,
    hn_sb, hn_sc, hn_sh, hn_sw,
    oa_sb, oa_sc, oa_sh, oa_sw, ob_sb, ob_sc, ob_sh, ob_sw,
    ADDITIVE: tl.constexpr, UNSQUEEZE_OUT: tl.constexpr,
    CAP: tl.constexpr, CBP: tl.constexpr, BLOCK_P: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hh, ww, ka, kb, ma, mb = _pixel_tile(pid_p, P, Wq, CA, CB, CAP, CBP, BLOCK_P)
    ya = tl.load(ya_ptr + _offsets(b, ka, hh, ww, ya_sb, ya_sc, ya_sh, ya_sw, False), mask=ma, other=0.0).to(tl.float32)
    yb = tl.load(yb_ptr + _offsets(b, kb, hh, ww, yb_sb, yb_sc, yb_sh, yb_sw, False), mask=mb, other=0.0).to(tl.float32)
    shift = tl.load(hn_ptr + _offsets(b, kb, hh, ww, hn_sb, hn_sc, hn_sh, hn_sw, False), mask=mb, other=0.0)
    if ADDITIVE:
        xb = yb - shift
    else:
        s = tl.load(hn_ptr + _offsets(b, kb + CB, hh, ww, hn_sb, hn_sc, hn_sh, hn_sw, False), mask=mb, other=0.0)
        xb = yb / tl.sigmoid(s) - shift
    xb = tl.where(mb, xb, 0.0)
    out_a, out_b = _affine_halves(ya, xb, w_ptr, CAP, CBP, USE_DOT, PREC)
    if UNSQUEEZE_OUT:  # both halves go into the one un-squeezed tensor
        tl.store(oa_ptr + _offsets(b, ka, hh, ww, oa_sb, oa_sc, oa_sh, oa_sw, True), out_a, mask=ma)
        tl.store(ob_ptr + _offsets(b, kb + CA, hh, ww, ob_sb, ob_sc, ob_sh, ob_sw, True), out_b, mask=mb)
    else:
        tl.store(oa_ptr + _offsets(b, ka, hh, ww, oa_sb, oa_sc, oa_sh, oa_sw, False), out_a, mask=ma)
        tl.store(ob_ptr + _offsets(b, kb, hh, ww, ob_sb, ob_sc, ob_sh, ob_sw, False), out_b, mask=mb)


# ---------------------------------------------------------------------------------------------
# packing and single-step launchers
# ---------------------------------------------------------------------------------------------
def _half_pad(c: int, use_dot: bool | None) -> tuple[int, bool]:
    p = next_pow2(c)
    if use_dot is None:
        use_dot = p > 8
    return (max(p, 16) if use_dot else p), use_dot


def _half_pads(ca: int, cb: int, use_dot: bool | None) -> tuple[int, int, bool]:
    """(CAP, CBP, USE_DOT): both halves padded alike, the dot choice made on the first half."""
    cap, use_dot = _half_pad(ca, use_dot)
    return cap, _half_pad(cb, use_dot)[0], use_dot


def pack_affine(weight: Tensor, bias: Tensor, ca: int, cap: int, cbp: int) -> Tensor:
    """W (C x C), b -> [T_aa | T_ba | T_ab | T_bb | b_a | b_b] (transposed, zero padded, float32)."""
    w = weight.detach().double().cpu()
    bb = bias.detach().double().cpu()
    C = w.shape[0]
    cb = C - ca

    def blk(m: Tensor, r: int, c: int) -> Tensor:
        out = torch.zeros(r, c, dtype=torch.float64)
        out[: m.shape[0], : m.shape[1]] = m
        return out.reshape(-1)

    parts = [
        blk(w[:ca, :ca].T, cap, cap),  # in a -> out a
        blk(w[:ca, ca:].T, cbp, cap),  # in b -> out a
        blk(w[ca:, :ca].T, cap, cbp),  # in a -> out b
        blk(w[ca:, ca:].T, cbp, cbp),  # in b -> out b
        blk(bb[:ca][None], 1, cap),
        blk(bb[ca:][None], 1, cbp),
    ]
    del cb
    return torch.cat(parts).float().to(weight.device)


def _strides(t: Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())  # type: ignore[return-value]


def _check_launch(kernel, t: Tensor) -> None:
    if not _env.can_launch(kernel, t.device):
        mode = "interpreted (CPU tensors)" if _env.is_interpreted(kernel) else "compiled (CUDA tensors)"
        raise RuntimeError(f"Triton kernels are {mode}; got a tensor on {t.device}")


_KERNEL_NAMES = {"_glow_fwd_kernel": "glow_fwd", "_glow_inv_kernel": "glow_inv"}


def _launch_cfg(kernel, CA: int, CB: int, use_dot: bool | None, device: torch.device,
                block_p: int | None = None) -> tuple[int, int, int]:
    """(BLOCK_P, num_warps, num_stages): the checked record of kernels/configs.py for this kernel,
    these padded half widths and the device's architecture.  An explicit ``block_p`` / ``use_dot``
    without a record (tests, benchmarks) is launched as given; the CPU interpreter uses 16."""
    if _env.is_interpreted(kernel):
        return block_p or 16, 4, 1
    cap, cbp, ud = _half_pads(CA, CB, use_dot)
    cfg = _configs.lookup(_KERNEL_NAMES[kernel.__name__], _configs.device_arch(device), CAP=cap, CBP=cbp,
                          USE_DOT=ud)
    if cfg is None:
        if block_p is None and use_dot is None:
            raise ValueError(f"no checked launch configuration for {kernel.__name__} with CAP={cap}, CBP={cbp} "
                             f"on {device} (kernels/configs.py); the triton Runner uses PyTorch for this flow")
        return block_p or 64, 4, 3
    return block_p or cfg.block, cfg.num_warps, cfg.num_stages


def supports(folded) -> bool:
    """Whether every level's step kernels have a checked configuration on the flow's device."""
    if not isinstance(folded, Glow) or not all(len(steps) > 0 for steps in folded.levels):
        return False
    dev = _configs.device_arch(folded.top_logs.device)
    for c, ca, _h, _w in _level_shapes(folded):
        cap, cbp, ud = _half_pads(ca, c - ca, None)
        if any(_configs.lookup(k, dev, CAP=cap, CBP=cbp, USE_DOT=ud) is None for k in ("glow_fwd", "glow_inv")):
            return False
    return True


def _geometry(kernel, like: Tensor, C: int, CA: int, Hq: int, Wq: int, block_p: int | None, use_dot: bool | None,
              precision: str | None) -> tuple[tuple[int, int], int, int, dict]:
    """(grid, pixels P, CB, the launch keywords) of one step kernel over ``like``'s batch and device."""
    CB = C - CA
    cap, cbp, use_dot = _half_pads(CA, CB, use_dot)
    P = Hq * Wq
    bp, nw, ns = _launch_cfg(kernel, CA, CB, use_dot, like.device, block_p)
    return (triton.cdiv(P, bp), like.shape[0]), P, CB, dict(
        CAP=cap, CBP=cbp, BLOCK_P=bp, USE_DOT=use_dot, PREC=precision or DOT_PRECISION, num_warps=nw, num_stages=ns)


def _launch_fwd(src_a, src_b, hn, out_a, out_b, wpack, ld, *, C, CA, Hq, Wq, squeeze_in, has_coupling,
                additive, has_affine, block_p, use_dot, precision):
    grid, P, CB, cfg = _geometry(_glow_fwd_kernel, out_b, C, CA, Hq, Wq, block_p, use_dot, precision)
    hn_ = hn if hn is not None else out_b
    w_ = wpack if wpack is not None else out_b
    ld_ = ld if ld is not None else out_b
    _glow_fwd_kernel[grid](
        src_a, src_b, hn_, out_a, out_b, w_, ld_,
        P, Wq, CA, CB, ld.stride(0) if ld is not None else 0,
        *_strides(src_a), *_strides(src_b), *_strides(hn_), *_strides(out_a), *_strides(out_b),
        SQUEEZE_IN=squeeze_in, HAS_COUPLING=has_coupling, ADDITIVE=additive, HAS_AFFINE=has_affine,
        **cfg,
    )


def _launch_inv(ya, yb, hn, out_a, out_b, wpack, *, C, CA, Hq, Wq, additive, unsqueeze_out, block_p, use_dot,
                precision):
    grid, P, CB, cfg = _geometry(_glow_inv_kernel, ya, C, CA, Hq, Wq, block_p, use_dot, precision)
    _glow_inv_kernel[grid](
        ya, yb, hn, out_a, out_b, wpack, P, Wq, CA, CB,
        *_strides(ya), *_strides(yb), *_strides(hn), *_strides(out_a), *_strides(out_b),
        ADDITIVE=additive, UNSQUEEZE_OUT=unsqueeze_out,
        **cfg,
    )


def glow_step_forward(xa: Tensor, xb: Tensor, hnet: Tensor | None, weight: Tensor | None, bias: Tensor | None, *,
                      additive: bool = False, out: tuple[Tensor, Tensor] | None = None, ld: Tensor | None = None,
                      block_p: int | None = None, use_dot: bool | None = None, precision: str | None = None):
    """One fused launch: coupling epilogue (if ``hnet`` is given) then the affine (if ``weight``).

    Returns ``(out_a, out_b, ld)``: ``ld`` [B] is the sum of logsigmoid(s) of this call (zeros when
    additive / no coupling).  With ``weight=None`` out_a is ``xa`` itself and only y_b is written.
    """
    _check_launch(_glow_fwd_kernel, xa)
    B, CA, Hq, Wq = xa.shape
    C = CA + xb.shape[1]
    bp = _launch_cfg(_glow_fwd_kernel, CA, C - CA, use_dot, xa.device, block_p)[0]
    nblk = triton.cdiv(Hq * Wq, bp)
    ld_part = torch.zeros(B, nblk, device=xa.device, dtype=torch.float32)
    if out is None:
        oa = alloc(xa.shape, xa.device) if weight is not None else xa
        ob = alloc(xb.shape, xb.device)
    else:
        oa, ob = out
    wp = None
    if weight is not None:
        cap, cbp, ud = _half_pads(CA, C - CA, use_dot)
        wp = pack_affine(weight, bias, CA, cap, cbp)
    _launch_fwd(xa, xb, hnet, oa, ob, wp, ld_part, C=C, CA=CA, Hq=Hq, Wq=Wq, squeeze_in=False,
                has_coupling=hnet is not None, additive=additive, has_affine=weight is not None,
                block_p=block_p, use_dot=use_dot, precision=precision)
    total = ld_part.sum(1)
    if ld is not None:
        ld.add_(total)
    return oa, ob, total


def glow_step_inverse(ya: Tensor, yb: Tensor, hnet: Tensor, weight_inv: Tensor, bias_inv: Tensor, *,
                      additive: bool = False, out: tuple[Tensor, Tensor] | None = None, block_p: int | None = None,
                      use_dot: bool | None = None, precision: str | None = None):
    """One fused launch: inverse coupling epilogue then W^-1 [y_a, x_b] + b_inv. Returns (x_a', x_b')."""
    _check_launch(_glow_inv_kernel, ya)
    B, CA, Hq, Wq = ya.shape
    C = CA + yb.shape[1]
    oa, ob = out if out is not None else (alloc(ya.shape, ya.device), alloc(yb.shape, yb.device))
    cap, cbp, ud = _half_pads(CA, C - CA, use_dot)
    wp = pack_affine(weight_inv, bias_inv, CA, cap, cbp)
    _launch_inv(ya, yb, hnet, oa, ob, wp, C=C, CA=CA, Hq=Hq, Wq=Wq, additive=additive, unsqueeze_out=False,
                block_p=block_p, use_dot=use_dot, precision=precision)
    return oa, ob


def step_forward_reference(xa, xb, hnet, weight, bias, additive=False):
    """PyTorch: the epilogue + next affine that ``glow_step_forward`` fuses."""
    if hnet is not None:
        cb = xb.shape[1]
        if additive:
            yb, ld = xb + hnet[:, :cb], xb.new_zeros(xb.shape[0])
        else:
            s = hnet[:, cb:]
            yb, ld = (xb + hnet[:, :cb]) * torch.sigmoid(s), F.logsigmoid(s).flatten(1).sum(1)
    else:
        yb, ld = xb, xb.new_zeros(xb.shape[0])
    if weight is None:
        return xa, yb, ld
    h = F.conv2d(torch.cat([xa, yb], 1), weight.view(*weight.shape, 1, 1), bias)
    ca = xa.shape[1]
    return h[:, :ca], h[:, ca:], ld


def step_inverse_reference(ya, yb, hnet, weight_inv, bias_inv, additive=False):
    cb = yb.shape[1]
    xb = yb - hnet[:, :cb] if additive else yb / torch.sigmoid(hnet[:, cb:]) - hnet[:, :cb]
    h = F.conv2d(torch.cat([ya, xb], 1), weight_inv.view(*weight_inv.shape, 1, 1), bias_inv)
    ca = ya.shape[1]
    return h[:, :ca], h[:, ca:]


# ---------------------------------------------------------------------------------------------
# whole folded Glow
# ---------------------------------------------------------------------------------------------
def _level_shapes(folded) -> list[tuple[int, int, int, int]]:
    """(C, CA, H, W) of every level's squeezed state (CA: the coupling's a-half)."""
    out = []
    c, h, w = folded.event_shape
    for lvl in range(len(folded.levels)):
        c, h, w = c * 4, h // 2, w // 2
        out.append((c, c // 2, h, w))
        if lvl < len(folded.levels) - 1:
            c = c // 2
    return out


class GlowPack:
    """A folded Glow's step matrices in the kernels' layout, with the folded flow whose coupling
    nets and priors run between the launches (a snapshot: the triton Runner packs once, at load)."""

    def __init__(self, folded, use_dot: bool | None) -> None:
        self.folded, self.use_dot = folded, use_dot
        self.levels = []  # per level: list of (fwd_pack, inv_pack) per step, plus (C, CA)
        for steps, (c, ca, h, w) in zip(folded.levels, _level_shapes(folded)):
            cap, cbp, ud = _half_pads(ca, c - ca, use_dot)
            packs = [(pack_affine(st.mix.weight, st.mix.bias, ca, cap, cbp),
                      pack_affine(st.mix.weight_inv, st.mix.bias_inv, ca, cap, cbp))
                     for st in steps]
            additive = [bool(st.coupling.additive) for st in steps]
            self.levels.append(dict(C=c, CA=ca, H=h, W=w, packs=packs, additive=additive))
        from nfkd.fold import constant_logdet

        self.const = constant_logdet(folded).float().to(folded.top_logs.device) - 0.5 * math.prod(folded.event_shape) * LOG_2PI
        self.top_inv_std = torch.exp(-folded.top_logs)


def pack(folded, use_dot: bool | None = None) -> GlowPack:
    """Pack a folded float32 Glow for ``glow_log_prob_triton`` / ``glow_sample_triton``
    (``use_dot``: None lets each level choose ``tl.dot`` by its padded width)."""
    from nfkd.fold import is_folded

    if not isinstance(folded, Glow) or not is_folded(folded):
        raise ValueError("expected a folded Glow (nfkd.fold.fold(glow))")
    if folded.dtype != torch.float32:
        raise ValueError("the Glow kernels run float32: fold(flow, torch.float32)")
    with torch.no_grad():
        return GlowPack(folded, use_dot)


def _check_device(pk: GlowPack, t: Tensor) -> None:
    if pk.folded.top_logs.device != t.device:
        raise ValueError(f"folded flow is on {pk.folded.top_logs.device}, input on {t.device}")


def glow_log_prob_triton(pk: GlowPack, x: Tensor, *, layout: str = DEFAULT_LAYOUT, block_p: int | None = None,
                         precision: str | None = None) -> Tensor:
    """``folded.log_prob(x)`` of a packed Glow (``pack(folded)``) with one fused kernel per step (float32)."""
    folded, use_dot = pk.folded, pk.use_dot
    _check_device(pk, x)
    _check_launch(_glow_fwd_kernel, x)
    mf = LAYOUTS[layout]
    if x.dtype != torch.float32:
        x = x.float()
    B = x.shape[0]
    nmax = max(triton.cdiv(lv["H"] * lv["W"], _launch_cfg(_glow_fwd_kernel, lv["CA"], lv["C"] - lv["CA"], use_dot,
                                                           x.device, block_p)[0]) for lv in pk.levels)
    ld = torch.zeros(B, nmax, device=x.device, dtype=torch.float32)
    extra = torch.zeros(B, device=x.device, dtype=torch.float32)
    kw = dict(block_p=block_p, use_dot=use_dot, precision=precision)
    src = x
    L = len(folded.levels)
    with torch.no_grad():
        for lvl, (steps, lv) in enumerate(zip(folded.levels, pk.levels)):
            C, CA, Hq, Wq = lv["C"], lv["CA"], lv["H"], lv["W"]
            xa = alloc((B, CA, Hq, Wq), x.device, memory_format=mf)
            xb = alloc((B, C - CA, Hq, Wq), x.device, memory_format=mf)
            geo = dict(C=C, CA=CA, Hq=Hq, Wq=Wq)
            _launch_fwd(src, src, None, xa, xb, lv["packs"][0][0], ld, squeeze_in=True, has_coupling=False,
                        additive=False, has_affine=True, **geo, **kw)
            for k, st in enumerate(steps):
                hn = st.coupling.net(xa)
                last = k == len(steps) - 1
                _launch_fwd(xa, xb, hn, xa, xb, None if last else lv["packs"][k + 1][0], ld, squeeze_in=False,
                            has_coupling=True, additive=lv["additive"][k], has_affine=not last, **geo, **kw)
            if lvl < L - 1:
                mean, logs = folded.priors[lvl](xa)
                eps = (xb - mean) * torch.exp(-logs)
                extra -= 0.5 * eps.square().flatten(1).sum(1) + logs.flatten(1).sum(1)
                src = xa
            else:
                ea = (xa - folded.top_mean[:CA]) * pk.top_inv_std[:CA]
                eb = (xb - folded.top_mean[CA:]) * pk.top_inv_std[CA:]
                extra -= 0.5 * (ea.square().flatten(1).sum(1) + eb.square().flatten(1).sum(1))
    return pk.const + ld.sum(1) + extra


def glow_sample_triton(pk: GlowPack, noise: Sequence[Tensor], temperature: float | Tensor = 1.0, *,
                       layout: str = DEFAULT_LAYOUT, out: Tensor | None = None, block_p: int | None = None,
                       precision: str | None = None) -> Tensor:
    """``folded.sample(noise, temperature)`` of a packed Glow with one fused kernel per step."""
    folded, use_dot = pk.folded, pk.use_dot
    noise = list(noise)
    _check_device(pk, noise[0])
    _check_launch(_glow_inv_kernel, noise[0])
    mf = LAYOUTS[layout]
    noise = [z.float() * temperature for z in noise]
    B = noise[0].shape[0]
    dev = noise[0].device
    kw = dict(block_p=block_p, use_dot=use_dot, precision=precision)
    L = len(folded.levels)
    z1 = None
    dest = None
    with torch.no_grad():
        for lvl in reversed(range(L)):
            lv = pk.levels[lvl]
            C, CA, Hq, Wq = lv["C"], lv["CA"], lv["H"], lv["W"]
            geo = dict(C=C, CA=CA, Hq=Hq, Wq=Wq)
            if lvl == L - 1:
                top = noise[-1] / pk.top_inv_std + folded.top_mean
                ya = top[:, :CA].contiguous(memory_format=mf)
                yb = top[:, CA:].contiguous(memory_format=mf)
            else:
                ya = z1
                mean, logs = folded.priors[lvl](ya)
                yb = (noise[lvl] * torch.exp(logs) + mean).contiguous(memory_format=mf)
            steps = folded.levels[lvl]
            for k in reversed(range(len(steps))):
                hn = steps[k].coupling.net(ya)
                if k > 0:
                    _launch_inv(ya, yb, hn, ya, yb, lv["packs"][k][1], additive=lv["additive"][k],
                                unsqueeze_out=False, **geo, **kw)
                else:
                    shape = (B, C // 4, Hq * 2, Wq * 2)
                    if lvl == 0:
                        dest = out if out is not None else alloc(shape, dev)  # user-facing: NCHW contiguous
                    else:
                        dest = alloc(shape, dev, memory_format=mf)
                    _launch_inv(ya, yb, hn, dest, dest, lv["packs"][0][1], additive=lv["additive"][0],
                                unsqueeze_out=True, **geo, **kw)
            z1 = dest
    return dest
