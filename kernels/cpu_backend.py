"""The ``numba`` backend of ``nfkd.inference``: the fused CPU kernels of ``kernels.cpu_engine``.

``load_cpu_engine`` folds the flow (``nfkd.fold``, in float64) and packs its modules into one
contiguous float32 buffer in the kernels' layout (matrices transposed to ``[in, out]`` and
zero-padded to a multiple of 4 columns; see ``kernels/cpu_engine.py``). This is a re-layout of the folded
modules, not a second model: the folded flow's eager code is the reference the tests compare to.

Calls: ``threads=1`` (or a batch of one tile) runs the serial entry point (no thread pool touched);
more threads run the ``prange`` entry point over row tiles under a lock (numba's thread pool runs
one parallel region at a time). Scratch is allocated once per runner (per calling thread for the
serial path), so a call allocates only its output.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np
import torch

from nfkd.errors import InputError
from nfkd.flows import Glow1D
from nfkd.flows.base import LOG_2PI
from nfkd.flows.layers import FixedAffine, made_degrees
from nfkd.inference import registry
from nfkd.inference.runner import Runner

__all__ = ["NumbaRunner", "load_cpu_engine", "pack_glow1d", "pack_maf", "probe_numba"]

F32 = np.float32
ENGINE_ARCHS = ("glow1d", "maf", "iaf")  # nfkd.inference.registry lists the same (it must not import numba)


def probe_numba() -> tuple[bool, str, tuple[str, ...]]:
    """The numba backend's probe (the registry imports this module without numba: cpu_engine is lazy)."""
    if not registry.has_module("numba"):
        return False, "numba is not installed (pip install 'nfkd[cpu]')", ()
    return True, "fused CPU kernels (numba) over the folded form: Glow-1D, MAF and IAF", ("cpu",)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


class _Packer:
    """Appends float64 blocks to one buffer (cast to float32 at the end) and records their offsets."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.size = 0

    def add(self, a: np.ndarray) -> int:
        a = np.ascontiguousarray(a, np.float64).ravel()
        off = self.size
        self.parts.append(a)
        self.size += a.size
        pad = (-self.size) % 16  # keep every block 64-byte aligned relative to the buffer start
        if pad:
            self.parts.append(np.zeros(pad))
            self.size += pad
        return off

    def matrix(self, w: np.ndarray, cols: int) -> int:
        """W [out, in] (PyTorch layout) stored as W^T [in, cols], zero-padded columns."""
        out_f, in_f = w.shape
        m = np.zeros((in_f, cols))
        m[:, :out_f] = w.T
        return self.add(m)

    def vector(self, b: np.ndarray, cols: int) -> int:
        v = np.zeros(cols)
        v[: b.size] = b
        return self.add(v)

    def buffer(self) -> np.ndarray:
        flat = np.concatenate(self.parts + [np.zeros(16)])
        out = _aligned_zeros(flat.shape)  # the same cache-line start in every process (see _aligned_zeros)
        out[:] = flat
        return out


def _linears(net: torch.nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    from nfkd.fold import linear_layers

    return [(_np(w), _np(b)) for w, b in linear_layers(net)]


def _first_net(net: torch.nn.Module) -> tuple[int, int]:
    """(hidden layers, hidden width) of a coupling net / MADE: every step or block of a flow shares them."""
    layers = _linears(net)
    return len(layers) - 1, layers[0][0].shape[0]


def pack_glow1d(folded) -> dict[str, Any]:
    """Buffers of a folded Glow-1D (float64 fold) for ``cpu_engine.glow1d_*``."""
    from .cpu_engine import pad4

    d, steps = folded.dim, list(folded.steps)
    c = steps[0].coupling
    depth, hidden = _first_net(c.net)
    ca, cb = c.c_a, c.c_b
    dp, hp, cb4 = pad4(d), pad4(hidden), pad4(cb)
    op = cb4 if c.additive else 2 * cb4  # the last layer's outputs: shift rows 0.., s rows cb4..
    p = _Packer()
    offs = np.zeros((len(steps), 4 + 2 * (depth + 1)), np.int64)
    for k, step in enumerate(steps):
        mix = step.mix
        offs[k, 0] = p.matrix(_np(mix.weight), dp)
        offs[k, 1] = p.vector(_np(mix.bias), dp)
        offs[k, 2] = p.matrix(_np(mix.weight_inv), dp)
        offs[k, 3] = p.vector(_np(mix.bias_inv), dp)
        layers = _linears(step.coupling.net)
        for li, (w, b) in enumerate(layers[:-1]):
            offs[k, 4 + 2 * li] = p.matrix(w, hp)
            offs[k, 5 + 2 * li] = p.vector(b, hp)
        w, b = layers[-1]  # rows: shift (cb), then s (cb) unless additive
        wp, bp = np.zeros((op, w.shape[1])), np.zeros(op)
        wp[:cb], bp[:cb] = w[:cb], b[:cb]
        if not c.additive:
            wp[cb4: cb4 + cb], bp[cb4: cb4 + cb] = w[cb:], b[cb:]
        o = 4 + 2 * depth
        offs[k, o] = p.matrix(wp, op)
        offs[k, o + 1] = p.vector(bp, op)
    meta = np.array([d, dp, ca, cb, hidden, hp, op, len(steps), depth, int(c.additive)], np.int64)
    return {"w": p.buffer(), "offs": offs, "meta": meta, "const": _log_const(folded), "dp": dp, "hp": hp, "op": op}


def _log_const(folded) -> np.float32:
    """The log-density's constant: the folded flow's constant log-det less D log(2 pi) / 2."""
    from nfkd.fold import constant_logdet

    return F32(float(constant_logdet(folded)) - 0.5 * folded.dim * LOG_2PI)


def pack_maf(folded) -> dict[str, Any]:
    """Buffers of a folded MAF or IAF (float64 fold) for ``cpu_engine.maf_*`` / ``iaf_*``; hidden units in
    MADE-degree order. An IAF's ``InverseMADE`` has the MADE's masks and degrees (only the direction of use
    differs), so the same layout and staircase serve it; it has no batch-norm (identity here)."""
    from .cpu_engine import pad4

    d, blocks = folded.dim, list(folded.blocks)
    nhid, hidden = _first_net(blocks[0].made.net)
    dp, hp = pad4(d), pad4(hidden)
    op = 2 * dp  # mu_j in output column j, alpha_j in column dp + j
    deg = made_degrees(d, hidden, nhid)[1].numpy()
    order = np.argsort(deg, kind="stable")  # same degrees in every hidden layer (made_degrees)
    sorted_deg = deg[order]
    # output j (input degree j + 1) reads hidden units of degree <= j: a prefix in degree order
    nj_row = np.array([int((sorted_deg <= j).sum()) for j in range(d)], np.int64)
    kin = _staircase(sorted_deg, d, nhid, hp, dp)
    if any(b.bn is not None for b in blocks) and not all(isinstance(b.bn, FixedAffine) for b in blocks):
        raise InputError("the numba backend needs the folded MAF (batch-norm as a fixed affine)")
    p = _Packer()
    offs = np.zeros((len(blocks) + 1, 2 * nhid + 8), np.int64)
    for k, blk in enumerate(blocks):
        offs[k] = _pack_made_block(p, blk, order, d, dp, hp, nhid)
    norm = folded.normalize
    offs[len(blocks), 0] = p.vector(_np(norm.loc), dp)
    offs[len(blocks), 1] = p.vector(1.0 / _np(norm.scale), dp)
    offs[len(blocks), 2] = p.vector(_np(norm.scale), dp)
    _check_staircase(p, offs, kin, len(blocks), nhid, d, hidden, hp, op)
    tanh = int(blocks[0].made.activation == "tanh")
    meta = np.array([d, dp, hidden, hp, len(blocks), nhid, tanh, op, kin.shape[1]], np.int64)
    iperms = np.stack([blk.perm.inv_perm.cpu().numpy() for blk in blocks]).astype(np.int64)  # both directions
    # IAF sampling reads unit noise column c into tile row zrow[c] (the last block's inverse permutation, inverted)
    zrow = np.argsort(iperms[-1]).astype(np.int64)
    return {"w": p.buffer(), "offs": offs, "iperms": iperms, "zrow": zrow, "drows": _solve_rows(folded),
            "nj": np.tile(nj_row, (len(blocks), 1)), "kin": kin.ravel(), "meta": meta, "const": _log_const(folded),
            "clamp": F32(blocks[0].made.alpha_clamp), "dp": dp, "hp": hp, "op": op}


def _pack_made_block(p: _Packer, blk, order: np.ndarray, d: int, dp: int, hp: int, nhid: int) -> np.ndarray:
    """One MAF / IAF block into ``p`` (layout: the ``offs`` comment in ``kernels/cpu_engine.py``); its offsets."""
    o = 2 * nhid
    offs = np.zeros(o + 8, np.int64)
    layers = _linears(blk.made.net)
    for li, (w, b) in enumerate(layers[:-1]):  # rows (outputs) in degree order; inputs too after layer 0
        w = w[order] if li == 0 else w[order][:, order]
        offs[2 * li] = p.matrix(w, hp)
        offs[2 * li + 1] = p.vector(b[order], hp)
    w, b = layers[-1]
    w = w[:, order]
    wp, bp = np.zeros((2 * dp, w.shape[1])), np.zeros(2 * dp)
    wp[:d], wp[dp: dp + d], bp[:d], bp[dp: dp + d] = w[:d], w[d:], b[:d], b[d:]
    offs[o] = p.matrix(wp, 2 * dp)
    offs[o + 1] = p.vector(bp, 2 * dp)
    wot = np.zeros((2 * d, hp))
    wot[:, : w.shape[1]] = w
    offs[o + 2] = p.add(wot)
    if blk.bn is not None:
        loc, scale = _np(blk.bn.loc), _np(blk.bn.scale)
    else:
        loc, scale = np.zeros(d), np.ones(d)
    offs[o + 3] = p.vector(loc, dp)
    offs[o + 4] = p.vector(1.0 / scale, dp)
    offs[o + 5] = p.vector(scale, dp)
    fperm = blk.perm.perm.cpu().numpy()
    offs[o + 6] = p.vector(loc[fperm], dp)
    offs[o + 7] = p.vector(1.0 / scale[fperm], dp)
    return offs


def _solve_rows(folded) -> np.ndarray:
    """[blocks, D]: the row each block's inverse-direction output j is written to (``cpu_engine.drows``).

    MAF sampling writes x_j in place (identity). IAF sampling writes block k's x_j where block k - 1
    reads it: that block first applies its inverse permutation (u_i = x[inv_perm[i]]), so x_j goes to
    row perm_{k-1}[j]; block 0's output is in the flow's own order (identity).
    """
    d, blocks = folded.dim, list(folded.blocks)
    rows = np.tile(np.arange(d, dtype=np.int64), (len(blocks), 1))
    if not folded.one_pass_density:  # IAF
        for k in range(1, len(blocks)):
            rows[k] = blocks[k - 1].perm.perm.cpu().numpy()
    return rows


def _staircase(sorted_deg: np.ndarray, d: int, nhid: int, hp: int, dp: int) -> np.ndarray:
    """[nhid + 1, groups]: per layer and 4-output group, the leading inputs whose weights can be non-zero.

    With hidden units sorted by MADE degree m: hidden unit (degree m) reads inputs of degree <= m
    (the first m inputs) and hidden units of degree <= m (a prefix); output j (mu_j at column j,
    alpha_j at dp + j) reads hidden units of degree <= j. A group needs the prefix of its largest
    member; empty (padding) groups need none.
    """
    groups = max(hp, 2 * dp) // 4
    kin = np.zeros((nhid + 1, groups), np.int64)
    for g in range(hp // 4):
        members = sorted_deg[4 * g: 4 * (g + 1)]
        if members.size:
            top = int(members.max())
            kin[0, g] = min(top, d)
            kin[1:nhid, g] = int((sorted_deg <= top).sum())
    for g in range(dp // 4):
        if 4 * g < d:
            need = int((sorted_deg <= min(4 * g + 3, d - 1)).sum())
            kin[nhid, g] = kin[nhid, dp // 4 + g] = need
    return kin


def _check_staircase(p: _Packer, offs: np.ndarray, kin: np.ndarray, blocks: int, nhid: int, d: int, hidden: int,
                     hp: int, op: int) -> None:
    """The inputs the density kernel skips must have exactly zero weights (the masks' structure), or packing
    refuses: a flow whose MADE masks were changed would otherwise be scored wrongly, silently."""
    buf = np.concatenate(p.parts)
    for k in range(blocks):
        for li in range(nhid + 1):
            n_in, width = (d if li == 0 else hidden), (op if li == nhid else hp)
            w = buf[offs[k, 2 * li]: offs[k, 2 * li] + n_in * width].reshape(n_in, width)
            for g in range(width // 4):
                if np.any(w[kin[li, g]:, 4 * g: 4 * (g + 1)] != 0):
                    raise InputError("the numba backend expects MADE masks (a staircase in degree order); "
                                     f"block {k} layer {li} has weights outside it")


class NumbaRunner(Runner):
    """Folded Glow-1D / MAF / IAF on the fused numba kernels (CPU, float32)."""

    backend = "numba"
    native = "numpy"

    def __init__(self, folded, meta, threads: int | None) -> None:
        import numba

        meta = dataclasses.replace(meta, extra={**meta.extra, "numba_threads": 0, "tile_rows": 0, "vector_lanes": 0})
        super().__init__(meta, "cpu", threads)

        from . import cpu_engine as eng

        self._eng = eng
        self._numba = numba
        self.arch, self.kind = folded.arch, type(folded)
        self.packed = pack_glow1d(folded) if isinstance(folded, Glow1D) else pack_maf(folded)
        self.nthreads = min(threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS)
        self._dim = self.meta.dim
        self._local = threading.local()
        self._lock = threading.Lock()
        self._par_bound = None  # the parallel entry points' binding, [threads, ...] scratch (under the lock)
        self.meta.extra["numba_threads"] = self.nthreads
        self.meta.extra["tile_rows"] = eng.TILE
        self.meta.extra["vector_lanes"] = eng.LANES  # float32 lanes of the micro-kernel (16: AVX-512, 8: AVX2)
        self.meta.extra["vector_lanes_why"] = eng.LANES_WHY

    # --- scratch ------------------------------------------------------------------------------
    def _scratch(self, lead: tuple[int, ...]) -> dict[str, np.ndarray]:
        pk, eng = self.packed, self._eng

        def z(width: int) -> np.ndarray:  # [width features, TILE rows], feature-major
            return _aligned_zeros((*lead, width * eng.TILE))

        dp, hp = pk["dp"], pk["hp"]
        s = {"h": z(dp), "h2": z(dp), "t1": z(hp), "t2": z(hp), "ld": z(1)}
        if issubclass(self.kind, Glow1D):
            s.update(sh=z(pk["op"]))
        else:  # MAF and IAF: mo for the full MADE pass, pre for the triangular solve
            s.update(mo=z(pk["op"]), pre=z(hp))
        return s

    def _bind(self, par: bool, s: dict[str, np.ndarray]) -> tuple:
        """(log_prob kernel, its trailing arguments, sample kernel, its trailing arguments): bound once,
        so a call passes a prepared tuple (no dict lookups on the batch-1 path)."""
        pk, eng = self.packed, self._eng
        if issubclass(self.kind, Glow1D):
            return (eng.glow1d_log_prob_par if par else eng.glow1d_log_prob,
                    (pk["w"], pk["offs"], pk["meta"], pk["const"], s["h"], s["h2"], s["t1"], s["t2"], s["sh"],
                     s["ld"]),
                    eng.glow1d_sample_par if par else eng.glow1d_sample,
                    (pk["w"], pk["offs"], pk["meta"], s["h"], s["h2"], s["t1"], s["t2"], s["sh"]))
        if not self.kind.one_pass_density:  # IAF density: the triangular solve; sampling: one full MADE pass per block
            return (eng.iaf_log_prob_par if par else eng.iaf_log_prob,
                    (pk["w"], pk["offs"], pk["iperms"], pk["nj"], pk["kin"], pk["meta"], pk["const"], pk["clamp"], s["h"],
                     s["h2"], s["pre"], s["t1"], s["t2"], s["ld"]),
                    eng.iaf_sample_par if par else eng.iaf_sample,
                    (pk["w"], pk["offs"], pk["zrow"], pk["drows"], pk["kin"], pk["meta"], pk["clamp"], s["h"],
                     s["h2"], s["t1"], s["t2"], s["mo"]))
        return (eng.maf_log_prob_par if par else eng.maf_log_prob,
                (pk["w"], pk["offs"], pk["iperms"], pk["kin"], pk["meta"], pk["const"], pk["clamp"], s["h"], s["h2"],
                 s["t1"], s["t2"], s["mo"], s["ld"]),
                eng.maf_sample_par if par else eng.maf_sample,
                (pk["w"], pk["offs"], pk["iperms"], pk["drows"], pk["nj"], pk["kin"], pk["meta"], pk["clamp"], s["h"], s["h2"],
                 s["pre"], s["t1"], s["t2"], s["ld"]))

    def _serial(self) -> tuple:
        bound = getattr(self._local, "bound", None)
        if bound is None:  # per calling thread: concurrent serial calls never share scratch
            bound = self._local.bound = self._bind(False, self._scratch(()))
        return bound

    def _threaded(self) -> tuple:
        """Call under self._lock: pins numba's thread count and returns the parallel kernels' binding."""
        self._numba.set_num_threads(self.nthreads)
        if self._par_bound is None:
            self._par_bound = self._bind(True, self._scratch((self._numba.config.NUMBA_NUM_THREADS,)))
        return self._par_bound

    # --- the two directions -------------------------------------------------------------------
    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape[0], F32)
        if self.nthreads > 1 and x.shape[0] > self._eng.TILE:
            with self._lock:
                fn, args, _, _ = self._threaded()
                fn(x, out, *args)
        else:
            fn, args, _, _ = self._serial()
            fn(x, out, *args)
        return out

    def _decode(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:
        z = noise[0]
        out = np.empty(z.shape, F32)
        if self.nthreads > 1 and z.shape[0] > self._eng.TILE:
            with self._lock:
                _, _, fn, args = self._threaded()
                fn(z, F32(temperature), out, *args)
        else:
            _, _, fn, args = self._serial()
            fn(z, F32(temperature), out, *args)
        return out

def _aligned_zeros(shape: tuple[int, ...], align: int = 64) -> np.ndarray:
    """float32 zeros whose every last-axis row starts on a cache line (``align`` bytes; rows are multiples of
    TILE floats): numpy only promises 16 bytes, and a vector load that straddles two lines costs two.
    The engine's scratch was aligned by the allocator's luck, differently per array and per process."""
    n = int(np.prod(shape))
    raw = np.zeros(n + align // 4, F32)
    start = (-raw.ctypes.data % align) // 4
    return raw[start: start + n].reshape(shape)


def load_cpu_engine(source, device: str, threads: int | None, options: dict[str, Any]) -> NumbaRunner:
    """``nfkd.inference.load(..., backend="numba")``: Glow-1D, MAF and IAF on CPU."""
    from nfkd.fold import fold

    if device.split(":")[0] != "cpu":
        raise InputError(f"the numba backend runs on the CPU only, not {device}")
    if source.flow is None:
        raise InputError("the numba backend runs the folded flow: pass the checkpoint (.pt) or a Flow, "
                         f"not the export folder {source.export_folder}")
    if source.meta.arch not in ENGINE_ARCHS:
        raise InputError(f"the numba backend covers the tabular flows ({', '.join(ENGINE_ARCHS)}), not "
                         f"{source.meta.arch}; "
                         f"use backend='onnxruntime' or 'folded'")
    folded = fold(source.flow, torch.float64)
    return NumbaRunner(folded, source.meta, threads)

