"""The numba CPU engine (kernels/cpu_engine.py) equals the eager flow in float64, both directions.

Reference: the original (unfolded) flow in float64 on the same float32 inputs / the same unit noise,
at the export gate's float32 tolerances (export.parity.TOLERANCE), as in tests/test_inference.py.
Random perturbed flows (nfkd.testing.perturb) with a non-trivial input normalization; dims 1-64,
batch 1, odd batches and batches that leave a partial row tile; every engine path: Glow-1D affine
and additive couplings and depths, MAF with/without batch-norm, ReLU/tanh, 1-3 hidden layers,
reversed and random orders; the serial and the threaded entry points.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from export.parity import TOLERANCE
from nfkd import inference
from nfkd.errors import InputError
from nfkd.flows import IAF, MAF, Glow, Glow1D
from nfkd.testing import perturb

numba = pytest.importorskip("numba", reason="numba is not installed (pip install 'nfkd[cpu]')")

TOL = TOLERANCE["float32"]
BATCHES = (1, 7, 67, 131, 259)  # 67 a partial tile; 131, 259: a partial tile after full tiles of TILE = 128 rows


def _normalized(flow, seed: int):
    g = torch.Generator().manual_seed(seed)
    flow.normalize.set(2 * torch.randn(flow.dim, generator=g), torch.rand(flow.dim, generator=g) + 0.5)
    return perturb(flow, scale=0.1, seed=seed + 1).eval()


def _data(flow, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (flow.normalize.loc + flow.normalize.scale * torch.randn(n, flow.dim, generator=g)).float()


def _check(flow, runner, n: int, seed: int) -> None:
    ref = copy.deepcopy(flow).double()
    x = _data(flow, n, seed)
    with torch.no_grad():
        want = ref.log_prob(x.double())
    got = torch.as_tensor(runner.log_prob(x)).double()
    err = ((got - want).abs() / want.abs().clamp_min(1.0)).max().item()
    assert err <= TOL["log_prob_rel"], f"log_prob rel err {err:.3g}"
    noise = inference.draw_noise(runner.noise_shapes, n, seed=seed + 100)
    with torch.no_grad():
        xs_ref = ref.sample(n, temperature=0.8, noise=[torch.from_numpy(z).double() for z in noise])
    xs = torch.from_numpy(runner.sample(noise=noise, temperature=0.8)).double()
    bound = TOL["sample_abs"] + TOL["sample_rel"] * xs_ref.abs()
    assert ((xs - xs_ref).abs() <= bound).all(), f"sample err {(xs - xs_ref).abs().max():.3g}"


GLOW_CASES = [  # (dim, steps, hidden, additive, depth)
    (2, 2, 8, False, 1), (3, 3, 16, False, 2), (5, 2, 12, True, 2), (8, 3, 32, False, 5), (13, 2, 20, False, 3),
    (21, 3, 32, False, 5), (33, 2, 40, True, 2), (43, 3, 32, False, 2), (64, 2, 64, False, 3),
]


@pytest.mark.parametrize("dim,steps,hidden,additive,depth", GLOW_CASES, ids=[f"d{c[0]}" for c in GLOW_CASES])
def test_glow1d_matches_eager_float64(dim, steps, hidden, additive, depth):
    torch.manual_seed(dim)
    flow = _normalized(Glow1D(dim, steps=steps, hidden=hidden, additive=additive, depth=depth), seed=dim)
    runner = inference.load(flow, backend="numba", threads=1)
    assert runner.backend == "numba"
    for i, n in enumerate(BATCHES if dim in (3, 21, 64) else ((1, 67) if dim % 2 else (7, 131))):
        _check(flow, runner, n, seed=10 * dim + i)


MAF_CASES = [  # (dim, blocks, hidden, n_hidden, activation, batch_norm, permutation)
    (1, 2, 8, 2, "relu", False, "reverse"), (2, 3, 16, 2, "relu", True, "reverse"),
    (3, 2, 12, 1, "tanh", False, "random"), (5, 3, 32, 2, "relu", True, "random"),
    (8, 2, 20, 3, "relu", False, "reverse"), (13, 3, 32, 2, "tanh", True, "reverse"),
    (21, 3, 32, 2, "relu", False, "reverse"), (33, 2, 48, 2, "relu", True, "random"),
    (43, 3, 32, 2, "relu", False, "reverse"), (64, 2, 32, 3, "tanh", True, "random"),
]


@pytest.mark.parametrize("dim,blocks,hidden,n_hidden,activation,batch_norm,permutation", MAF_CASES,
                         ids=[f"d{c[0]}-{c[4]}-h{c[3]}" for c in MAF_CASES])
def test_maf_matches_eager_float64(dim, blocks, hidden, n_hidden, activation, batch_norm, permutation):
    torch.manual_seed(dim)
    flow = _normalized(MAF(dim, blocks=blocks, hidden=hidden, n_hidden=n_hidden, activation=activation,
                           batch_norm=batch_norm, permutation=permutation, seed=dim), seed=dim)
    runner = inference.load(flow, backend="numba", threads=1)
    for i, n in enumerate(BATCHES if dim in (1, 21, 64) else ((1, 67) if dim % 2 else (7, 131))):
        _check(flow, runner, n, seed=10 * dim + i)


IAF_CASES = [  # (dim, blocks, hidden, n_hidden, activation, permutation)
    (1, 2, 8, 2, "relu", "reverse"), (2, 3, 16, 2, "relu", "random"), (3, 2, 12, 1, "tanh", "random"),
    (5, 3, 32, 2, "relu", "random"), (8, 2, 20, 3, "relu", "reverse"), (13, 3, 32, 2, "tanh", "reverse"),
    (21, 3, 32, 2, "relu", "reverse"), (33, 2, 48, 2, "relu", "random"), (43, 3, 32, 2, "relu", "reverse"),
    (64, 2, 32, 3, "tanh", "random"),
]


@pytest.mark.parametrize("dim,blocks,hidden,n_hidden,activation,permutation", IAF_CASES,
                         ids=[f"d{c[0]}-{c[4]}-h{c[3]}-{c[5]}" for c in IAF_CASES])
def test_iaf_matches_eager_float64(dim, blocks, hidden, n_hidden, activation, permutation):
    """IAF: sampling through the MAF density's tile path, density through the incremental triangular solve."""
    torch.manual_seed(dim)
    flow = _normalized(IAF(dim, blocks=blocks, hidden=hidden, n_hidden=n_hidden, activation=activation,
                           permutation=permutation, seed=dim), seed=dim)
    runner = inference.load(flow, backend="numba", threads=1)
    assert runner.backend == "numba" and runner.info()["arch"] == "iaf"
    for i, n in enumerate(BATCHES if dim in (1, 21, 64) else ((1, 67) if dim % 2 else (7, 131))):
        _check(flow, runner, n, seed=10 * dim + i)


def _small(arch: str, dim: int = 9):
    if arch == "glow1d":
        return Glow1D(dim, steps=2, hidden=16)
    return (MAF if arch == "maf" else IAF)(dim, blocks=2, hidden=16, permutation="random", seed=2)


@pytest.mark.parametrize("arch", ["glow1d", "maf", "iaf"])
def test_threads_give_the_same_result(arch):
    """The threaded entry point (prange over row tiles) equals the serial one."""
    torch.manual_seed(0)
    flow = _normalized(_small(arch), seed=3)
    one = inference.load(flow, backend="numba", threads=1)
    two = inference.load(flow, backend="numba", threads=2)
    x = _data(flow, 300, seed=1).numpy()
    np.testing.assert_allclose(two.log_prob(x), one.log_prob(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(two.sample(300, seed=4).numpy(), one.sample(300, seed=4).numpy(), rtol=1e-6, atol=1e-6)
    _check(flow, two, 300, seed=5)


def test_numpy_and_torch_in_and_out():
    torch.manual_seed(0)
    flow = _normalized(MAF(4, blocks=2, hidden=8), seed=0)
    runner = inference.load(flow, backend="numba", threads=1)
    x = _data(flow, 5, seed=0)
    out_np, out_t = runner.log_prob(x.numpy()), runner.log_prob(x)
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
    np.testing.assert_array_equal(out_np, out_t.numpy())
    x64 = runner.log_prob(x.double())  # float64 input: computed in float32 like every runner
    np.testing.assert_allclose(x64.numpy(), out_np, rtol=1e-6)
    noncontig = torch.stack([x, x], 2).reshape(5, 8)[:, ::2]  # a strided view of the same values
    np.testing.assert_allclose(runner.log_prob(noncontig).numpy(), out_np, rtol=1e-6)



def _record(runner, name: str, seen: dict) -> None:
    """Wrap runner.<name> (the backend's own entry) to record what it was given and what it returned."""
    inner = getattr(runner, name)

    def wrapped(a, *rest):
        seen["in"] = a[0] if isinstance(a, list) else a
        seen["out"] = inner(a, *rest)
        return seen["out"]

    setattr(runner, name, wrapped)


@pytest.mark.parametrize("arch", ["maf", "iaf"])
def test_torch_tensor_at_the_door_costs_what_numpy_costs(arch, monkeypatch):
    """A contiguous float32 CPU tensor reaches the engine as a view of its memory, is checked for finiteness
    by the same single numpy pass as a numpy array (no torch.isfinite: three passes, ~20x slower), and the
    result comes back as a tensor on the engine's output buffer: no copy, conversion or second check."""
    torch.manual_seed(0)
    flow = _normalized((MAF if arch == "maf" else IAF)(6, blocks=2, hidden=12), seed=0)
    runner = inference.load(flow, backend="numba", threads=1)
    x = _data(flow, 131, seed=0)
    want = runner.log_prob(x.numpy().copy())
    calls = []
    real_isfinite = np.isfinite
    monkeypatch.setattr(np, "isfinite", lambda a, *k, **kw: calls.append(1) or real_isfinite(a, *k, **kw))

    def no_torch_check(*a, **k):
        raise AssertionError("torch.isfinite ran on a CPU tensor")

    monkeypatch.setattr(torch, "isfinite", no_torch_check)
    seen: dict = {}
    _record(runner, "_log_prob", seen)
    views = []
    real_numpy = torch.Tensor.numpy
    monkeypatch.setattr(torch.Tensor, "numpy", lambda t, *a, **k: views.append(1) or real_numpy(t, *a, **k))
    got = runner.log_prob(x)
    assert len(views) == 1, "the tensor was viewed as numpy more than once"  # checks and engine share one view
    monkeypatch.setattr(torch.Tensor, "numpy", real_numpy)
    assert isinstance(got, torch.Tensor) and len(calls) == 1
    assert np.shares_memory(seen["in"], x.numpy()), "the input was copied"
    assert np.shares_memory(got.numpy(), seen["out"]), "the output was copied"
    np.testing.assert_array_equal(got.numpy(), want)
    runner.log_prob(x.numpy())
    assert len(calls) == 2  # numpy input: the same one pass
    z = torch.randn(67, 6)
    _record(runner, "_decode", seen)
    xs = runner.sample(noise=[z])
    assert np.shares_memory(seen["in"], z.numpy()) and np.shares_memory(xs.numpy(), seen["out"])
    np.testing.assert_array_equal(xs.numpy(), runner.sample(noise=[z.numpy()]))


def test_a_tensor_gets_the_same_errors_as_an_array():
    runner = inference.load(MAF(3, blocks=1, hidden=8), backend="numba", threads=1)
    bad = np.zeros((4, 3), np.float32)
    bad[2, 1] = np.nan
    for x in (bad, torch.from_numpy(bad)):
        with pytest.raises(InputError, match=r"NaN or Inf \(first bad rows: \[2\]\)"):
            runner.log_prob(x)
    for x in (np.zeros((4, 5), np.float32), torch.zeros(4, 5)):
        with pytest.raises(InputError, match="x has 5 features per row; this model expects 3"):
            runner.log_prob(x)
    big = torch.full((2, 3), 1e39, dtype=torch.float64)
    with pytest.raises(InputError, match="beyond the float32 range"):
        runner.log_prob(big)
    with pytest.raises(InputError, match=r"dtype torch.int64.*x.float\(\)"):
        runner.log_prob(torch.zeros(2, 3, dtype=torch.int64))


def test_tensors_numpy_cannot_view_are_still_checked():
    """bfloat16 (no numpy dtype) keeps the torch check: the same clear error."""
    from nfkd.validation import check_batch

    bad = torch.tensor([[0.0, float("nan")]], dtype=torch.bfloat16)
    with pytest.raises(InputError, match="NaN or Inf"):
        check_batch(bad, (2,))
    ok = torch.zeros(3, 2, dtype=torch.bfloat16)
    assert check_batch(ok, (2,)) is ok


BAD = [
    (lambda r: r.log_prob(np.zeros((2, 3), np.float32)), "features per row"),
    (lambda r: r.log_prob(np.array([[np.nan] * 4], np.float32)), "NaN or Inf"),
    (lambda r: r.log_prob(torch.tensor([[0.0, float("inf"), 0.0, 0.0]])), "NaN or Inf"),
    (lambda r: r.log_prob(np.zeros((2, 4), np.int64)), "floating-point"),
    (lambda r: r.log_prob(np.zeros((0, 4), np.float32)), "empty batch"),
    (lambda r: r.log_prob(np.zeros(4, np.float32)), "without a batch dimension"),
    (lambda r: r.sample(0), "positive integer"),
    (lambda r: r.sample(2, temperature=float("nan")), "temperature"),
    (lambda r: r.sample(noise=[np.full((2, 4), np.nan, np.float32)]), "NaN or Inf"),
    (lambda r: r.sample(noise=[np.zeros((2, 5), np.float32)]), "features per row"),
]


@pytest.mark.parametrize("arch", ["maf", "iaf"])
@pytest.mark.parametrize("call,match", BAD, ids=[m for _, m in BAD])
def test_bad_input_same_clear_error_as_eager(call, match, arch):
    torch.manual_seed(0)
    flow = _normalized((MAF if arch == "maf" else IAF)(4, blocks=2, hidden=8), seed=0)
    for backend in ("eager", "numba"):
        with pytest.raises(InputError, match=match):
            call(inference.load(flow, backend=backend, threads=1))


def test_covers_tabular_flows_only():
    with pytest.raises(InputError, match="runs glow1d, maf, iaf models, not glow"):
        inference.load(Glow((2, 4, 4), levels=2, steps=1, hidden=8), backend="numba")
    with pytest.raises(InputError, match="does not run on cuda"):
        inference.load(MAF(3, blocks=1, hidden=8), backend="numba", device="cuda")


def test_vectorized_math_matches_float64():
    """The engine's own exp / tanh / log1p (polynomial and rational fits, float32) against numpy float64."""
    import numba as nb
    import numpy as np

    from kernels import cpu_engine as eng

    @nb.njit
    def apply(x, which):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = eng._exp(x[i]) if which == 0 else (eng._tanh(x[i]) if which == 1 else eng._log1p_unit(x[i]))
        return out

    def f32(a):  # the inputs as the kernels see them; the references at exactly those points
        return a.astype(np.float32)

    x = f32(np.linspace(-30, 30, 200_001))
    assert np.abs(apply(x, 1) - np.tanh(x.astype(np.float64))).max() < 5e-7
    tiny = f32(np.logspace(-30, -1, 301))
    ref = np.tanh(tiny.astype(np.float64))
    assert (np.abs(apply(tiny, 1) - ref) / ref).max() < 5e-7  # relative, near 0
    e = f32(np.linspace(-80, 80, 200_001))
    ref = np.exp(e.astype(np.float64))
    assert (np.abs(apply(e, 0) - ref) / ref).max() < 1e-6
    u = f32(np.linspace(0, 1, 100_001))
    assert np.abs(apply(u, 2) - np.log1p(u.astype(np.float64))).max() < 3e-7


@pytest.mark.parametrize("arch", ["maf", "iaf"])
def test_packing_refuses_weights_outside_the_made_masks(arch):
    """The density kernel (IAF: the sampling kernel) skips a MADE's masked inputs; a folded flow with a non-zero
    weight there (masks changed after training) must be refused, not scored wrongly."""
    import torch

    from kernels.cpu_backend import pack_maf
    from nfkd.errors import InputError
    from nfkd.fold import fold, linear_layers

    flow = _normalized((MAF if arch == "maf" else IAF)(7, blocks=2, hidden=16), seed=5)
    folded = fold(flow, torch.float64)
    pack_maf(folded)  # the masks' structure: accepted
    first, _ = linear_layers(folded.blocks[1].made.net)[0]  # folded: a plain Linear, masks applied
    with torch.no_grad():
        first[0, -1] = 0.5  # hidden unit 0 (degree 1) may read input 0 only; give it the last input
    with pytest.raises(InputError, match="MADE masks"):
        pack_maf(folded)


def test_iaf_packs_in_the_made_degree_order():
    """An InverseMADE has the MADE's masks (only its direction of use differs): the packed staircase and the
    per-output prefixes are the MAF's, and every output j reads exactly the hidden units of degree <= j."""
    from kernels.cpu_backend import pack_maf
    from nfkd.flows.layers import made_degrees
    from nfkd.fold import fold

    maf, iaf = MAF(6, blocks=2, hidden=12, seed=1), IAF(6, blocks=2, hidden=12, seed=1)
    pm, pi = pack_maf(fold(maf, torch.float64)), pack_maf(fold(iaf, torch.float64))
    np.testing.assert_array_equal(pm["kin"], pi["kin"])
    np.testing.assert_array_equal(pm["nj"], pi["nj"])
    deg = made_degrees(6, 12, 2)[1].numpy()
    assert pi["nj"][0].tolist() == [int((deg <= j).sum()) for j in range(6)]
    for a, b in zip(iaf.blocks[0].made.net, maf.blocks[0].made.net):
        if hasattr(a, "mask"):
            assert torch.equal(a.mask, b.mask)
    # IAF sampling writes block k's output to block k - 1's input order; block 0's to the flow's own order
    assert pi["drows"][0].tolist() == list(range(6))
    assert pi["drows"][1].tolist() == iaf.blocks[0].perm.perm.tolist()
    # and reads noise column c into row zrow[c]: where the last block's inverse permutation takes it from
    assert [pi["iperms"][-1][pi["zrow"][c]] for c in range(6)] == list(range(6))


def test_vector_width_follows_the_cpu_and_the_override():
    """AVX-512 -> 16 lanes, otherwise 8; NFKD_CPU_LANES=8|16 overrides; anything else is one clear error."""
    from kernels.cpu_engine import choose_lanes

    assert choose_lanes({"avx512f": True, "avx2": True}, "")[0] == 16
    assert choose_lanes({"avx512f": False, "avx2": True}, "")[0] == 8
    assert choose_lanes({"avx2": True}, "")[0] == 8
    assert choose_lanes({"avx2": True}, "16") == (16, "NFKD_CPU_LANES=16")
    assert choose_lanes({"avx512f": True}, " 8 ")[0] == 8
    for bad in ("4", "32", "avx"):
        with pytest.raises(ValueError, match="NFKD_CPU_LANES must be 8 or 16"):
            choose_lanes({"avx2": True}, bad)


def test_info_records_the_vector_width():
    """``info()`` says which width the kernels were compiled for (and why): the one the environment asked for."""
    import os

    from kernels import cpu_engine as eng

    want = int(os.environ.get("NFKD_CPU_LANES") or eng.choose_lanes()[0])
    info = inference.load(_small("maf"), backend="numba", threads=1).info()
    assert info["vector_lanes"] == eng.LANES == want
    assert info["vector_lanes_why"] == eng.LANES_WHY


@pytest.mark.parametrize("lanes", [8, 16])
def test_the_other_vector_width_is_exact_too(lanes):
    """The width this host does not pick (16 on AVX2: LLVM splits each vector, slower but exact; 8 on AVX-512),
    forced with NFKD_CPU_LANES in a child pytest: the float64 equality tests above, the info test, the threads
    test, at that width (the child compiles afresh: a forced width is never cached)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from kernels import cpu_engine as eng

    if os.environ.get("NFKD_CPU_LANES"):
        pytest.skip("already the child run")
    if lanes == eng.choose_lanes(env="")[0]:
        pytest.skip(f"{lanes} lanes is this host's own width: the tests above ran it")
    root = Path(__file__).resolve().parents[1]
    pick = ("(glow1d_matches and (d3 or d21 or d64)) or (maf_matches and (d1- or d21 or d64 or d13)) or "
            "(iaf_matches and (d1- or d21 or d64)) or threads or info_records")
    env = {**os.environ, "NFKD_CPU_LANES": str(lanes), "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", __file__, "-k", pick],
                         cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and " failed" not in res.stdout, res.stdout[-2000:]


def test_block_transpose_matches_numpy():
    """kernels.cpu_engine._transpose (the tile <-> rows copies) on random blocks: partial rows and lanes, a
    permuted destination; masked lanes are neither read past the array nor written (sentinels stay)."""
    import numba as nb

    from kernels import cpu_engine as eng

    @nb.njit
    def tr(src, so, lds, nsrc, slanes, dst, dmap, dmo, do, ldd, ndst, dlanes):
        eng._transpose(src, so, lds, nsrc, slanes, dst, dmap, dmo, do, ldd, ndst, dlanes)

    L, rng = eng.LANES, np.random.default_rng(0)
    for trial in range(300):
        R, C = (int(v) for v in rng.integers(1, 3 * L, 2))
        src = rng.standard_normal((R, C)).astype(np.float32)
        nsrc, slanes = int(rng.integers(0, min(L, R) + 1)), int(rng.integers(0, min(L, C) + 1))
        r0, c0 = int(rng.integers(0, R - nsrc + 1)), int(rng.integers(0, C - slanes + 1))
        dst = np.full((C + 3, R + 5), -7.0, np.float32)
        perm = rng.permutation(C + 3).astype(np.int64)
        dmo = int(rng.integers(0, C + 3 - slanes + 1))
        tr(src, r0 * C + c0, C, nsrc, slanes, dst, perm, dmo, 2, R + 5, slanes, nsrc)
        want = np.full_like(dst, -7.0)
        want[perm[dmo: dmo + slanes], 2: 2 + nsrc] = src[r0: r0 + nsrc, c0: c0 + slanes].T
        assert np.array_equal(dst, want), trial


def test_scratch_and_weights_start_on_cache_lines():
    from kernels.cpu_backend import _aligned_zeros

    for shape in [(1,), (64,), (3, 4096), (7, 5)]:
        a = _aligned_zeros(shape)
        assert a.shape == shape and a.dtype == np.float32 and a.ctypes.data % 64 == 0 and not a.any()
    runner = inference.load(MAF(5, blocks=2, hidden=8), backend="numba", threads=1)
    _, args, _, _ = runner._serial()
    assert all(a.ctypes.data % 64 == 0 for a in args if isinstance(a, np.ndarray) and a.dtype == np.float32)


def test_glow1d_affine_epilogue_matches_float64_at_extremes():
    """kernels.cpu_engine._g1d_affine (the log-det summed as one log per run of (1 + e) factors) against float64
    numpy, with |s| up to 95 (sigmoid at float32's ends) and more coupling features than one run holds."""
    import numba as nb

    from kernels import cpu_engine as eng

    @nb.njit
    def affine(h, sh, ld, CA, CB, cb4, rows):
        eng._g1d_affine(h, sh, ld, CA, CB, cb4, rows)

    T, rng = eng.TILE, np.random.default_rng(1)
    for CA, CB, scale in [(1, 1, None), (3, 5, None), (31, 32, None), (70, 2 * eng._LOG_RUN + 3, None),
                          (9, 3 * eng._LOG_RUN + 1, 1e-3)]:  # s ~ 0: every factor 1 + e ~ 2, a run's product ~2^64
        cb4 = -(-CB // 4) * 4
        s = rng.standard_normal((2 * cb4, T)) * (scale or rng.choice([0.1, 3.0, 40.0], size=(2 * cb4, 1)))
        if scale is None:
            s[cb4: cb4 + CB: 7] = 95.0 * np.sign(s[cb4: cb4 + CB: 7])
        x = rng.standard_normal((CA + CB, T))
        ld0 = rng.standard_normal(T)
        h, sh, ld = x.astype(np.float32).ravel(), s.astype(np.float32).ravel(), ld0.astype(np.float32)
        affine(h, sh, ld, CA, CB, cb4, T)
        s64 = s.astype(np.float32).astype(np.float64)
        sc = s64[cb4: cb4 + CB]
        sig = 1.0 / (1.0 + np.exp(-sc))
        want_h = (x.astype(np.float32)[CA:] + s64[:CB]) * sig
        want_ld = ld0.astype(np.float32) + np.sum(np.minimum(sc, 0) - np.log1p(np.exp(-np.abs(sc))), axis=0)
        got_h = h.reshape(CA + CB, T)[CA:]
        assert np.allclose(got_h, want_h, rtol=2e-6, atol=1e-30), (CA, CB)
        assert np.allclose(h.reshape(CA + CB, T)[:CA], x.astype(np.float32)[:CA])  # the first half untouched
        assert np.max(np.abs(ld - want_ld) / np.maximum(1.0, np.abs(want_ld))) < 2e-6, (CA, CB)
