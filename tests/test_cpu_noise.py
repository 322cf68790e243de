"""kernels.cpu_noise draws numpy's float32 normals bit for bit; nfkd.noise.draw_noise uses it only where allowed.

Reference: numpy itself (``default_rng(seed).standard_normal(..., dtype=float32)``), on many seeds, odd sizes,
a Generator continued across draws (the buffered 32-bit half-word), and the state left behind.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba is not installed (pip install 'nfkd[cpu]')")

from kernels import cpu_noise  # noqa: E402
from nfkd import noise  # noqa: E402


def _numpy(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def test_self_check_passes_here():
    assert cpu_noise.self_check() is None
    assert cpu_noise.available()


@pytest.mark.parametrize("seed", [0, 1, 17, 123, 2**31 - 1, 20240601, 987654321987])
def test_many_draws_equal_numpy_bit_for_bit(seed):
    got = cpu_noise.standard_normal_f32(np.random.default_rng(seed), (1_500_001,))
    want = _numpy(seed, (1_500_001,))
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want), f"first difference at {np.argmax(got != want)}"
    # the rare branches ran: values beyond the ziggurat's base layer come from the tail algorithm
    assert (np.abs(got) > cpu_noise.ziggurat_nor_r_f).sum() > 0


@pytest.mark.parametrize("shape", [(0,), (1,), (2,), (3, 1), (7, 3), (4096, 63), (5, 4, 3)])
def test_shapes(shape):
    got = cpu_noise.standard_normal_f32(np.random.default_rng(3), shape)
    assert got.shape == shape and np.array_equal(got, _numpy(3, shape))


def test_a_continued_generator_and_its_state_match_numpy():
    a, b = np.random.default_rng(11), np.random.default_rng(11)
    for shape in [(1,), (3,), (2, 2), (5,), (10_001,), (1,), (64, 7)]:  # odd counts leave a buffered half-word
        assert np.array_equal(cpu_noise.standard_normal_f32(a, shape), b.standard_normal(shape, dtype=np.float32))
        assert a.bit_generator.state == b.bit_generator.state
    assert np.array_equal(a.random(9), b.random(9))
    assert np.array_equal(a.integers(0, 1000, 9), b.integers(0, 1000, 9))
    # and numpy draws in between, then numba again
    assert np.array_equal(cpu_noise.standard_normal_f32(a, (33,)), b.standard_normal(33, dtype=np.float32))


def test_an_unseeded_generator_continues_its_own_stream():
    a = np.random.default_rng()
    b = np.random.default_rng()
    b.bit_generator.state = a.bit_generator.state
    assert np.array_equal(cpu_noise.standard_normal_f32(a, (999,)), b.standard_normal(999, dtype=np.float32))


def test_other_bit_generators_are_left_to_numpy():
    assert cpu_noise.standard_normal_f32(np.random.Generator(np.random.Philox(1)), (10,)) is None
    assert cpu_noise.standard_normal_f32(np.random.Generator(np.random.PCG64DXSM(1)), (10,)) is None


def test_a_failed_self_check_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(cpu_noise, "_status", [])
    monkeypatch.setattr(cpu_noise, "_draw", lambda rng, shape: np.zeros(shape, np.float32))
    with pytest.warns(RuntimeWarning, match="draws noise with numpy"):
        assert cpu_noise.standard_normal_f32(np.random.default_rng(0), (5,)) is None
    assert not cpu_noise.available()
    monkeypatch.setenv(noise.NOISE_ENV, "numba")
    shapes = [(63,)]
    assert np.array_equal(noise.draw_noise(shapes, 4096, 8)[0], _numpy(8, (4096, 63)))


@pytest.mark.parametrize("mode", ["numba", "numpy", ""])
def test_draw_noise_gives_numpys_values_in_every_mode(monkeypatch, mode):
    monkeypatch.setenv(noise.NOISE_ENV, mode)
    shapes = [(12, 16, 16), (3,), (48, 8, 8)]  # levels drawn one after another from one Generator
    got = noise.draw_noise(shapes, 300, 5)
    rng = np.random.default_rng(5)
    for g, s in zip(got, shapes):
        assert np.array_equal(g, rng.standard_normal((300, *s), dtype=np.float32))


def test_draw_noise_uses_numba_only_where_allowed(monkeypatch):
    calls = []

    class Spy:
        @staticmethod
        def standard_normal_f32(rng, shape):
            calls.append(shape)
            return cpu_noise.standard_normal_f32(rng, shape)

    monkeypatch.setattr(noise, "_fast_noise", lambda: Spy)
    big, small = noise.FAST_NOISE_MIN, noise.FAST_NOISE_MIN - 1
    monkeypatch.setenv(noise.NOISE_ENV, "numpy")
    noise.draw_noise([(1,)], big, 0)
    assert calls == []
    monkeypatch.setenv(noise.NOISE_ENV, "")  # auto: numba is imported in this process (this test imports it)
    noise.draw_noise([(1,)], small, 0)
    assert calls == []
    noise.draw_noise([(1,)], big, 0)
    assert calls == [(big, 1)]


def test_a_copy_that_cannot_compile_falls_back_to_numpy(monkeypatch):
    monkeypatch.setattr(cpu_noise, "_status", [])

    def broken(rng, shape):
        raise RuntimeError("LLVM ERROR: pretend the JIT failed")

    monkeypatch.setattr(cpu_noise, "_draw", broken)
    with pytest.warns(RuntimeWarning, match="failed to compile or run: RuntimeError"):
        assert cpu_noise.standard_normal_f32(np.random.default_rng(0), (5,)) is None
    monkeypatch.setenv(noise.NOISE_ENV, "numba")
    assert np.array_equal(noise.draw_noise([(63,)], 4096, 9)[0], _numpy(9, (4096, 63)))
