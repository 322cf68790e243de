"""Image loaders on the shared real files (CIFAR-10, CelebA), on small folders, and quantization."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nfkd.data import (
    ImageSet,
    default_data_root,
    dequantize,
    load_celeba,
    load_cifar10,
    load_dataset,
    load_digits_images,
    load_image_folder,
    quantize,
    reduce_bits,
    split_images,
)
from nfkd.data.images import celeba_crop_side
from nfkd.errors import DataError, InputError

ROOT = default_data_root()
needs_cifar = pytest.mark.skipif(not (ROOT / "cifar10").is_dir(), reason=f"no cifar10/ under {ROOT}")
needs_celeba = pytest.mark.skipif(not (ROOT / "celeba").is_dir(), reason=f"no celeba/ under {ROOT}")


# ------------------------------------------------------------------------------- CIFAR-10

@pytest.fixture(scope="module")
def cifar_train() -> ImageSet:
    return load_cifar10(ROOT, "train")


@needs_cifar
def test_cifar10_train_batch(cifar_train):
    s = cifar_train
    assert s.images.shape == (10000, 3, 32, 32) and s.images.dtype == np.uint8 and s.images.flags.c_contiguous
    assert s.labels.dtype == np.int64 and s.labels.shape == (10000,)
    assert np.bincount(s.labels, minlength=10).tolist() == [1000] * 10
    assert s.images.min() == 0 and s.images.max() == 255
    assert (s.n_bits, s.n_levels) == (8, 256)
    # channel means from the shared README (pixels in [0, 1]): (0.4902, 0.4815, 0.4466)
    means = s.images.mean(axis=(0, 2, 3)) / 255
    np.testing.assert_allclose(means, [0.4902, 0.4815, 0.4466], atol=5e-4)


@needs_cifar
def test_cifar10_test_batch_and_root_forms(cifar_train):
    t = load_cifar10(ROOT, "test")
    assert t.images.shape == (10000, 3, 32, 32) and t.images.dtype == np.uint8
    assert np.bincount(t.labels, minlength=10).tolist() == [1000] * 10
    for root in (ROOT / "cifar10", ROOT / "cifar10" / "cifar-10-batches-py"):
        np.testing.assert_array_equal(load_cifar10(root, "train").images[:5], cifar_train.images[:5])


@needs_cifar
def test_cifar10_registry_splits():
    ds = load_dataset("cifar10", seed=1)
    assert ds.sizes == (9000, 1000, 10000) and ds.shape == (3, 32, 32)
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10


def _write_batch(folder: Path, name: str, obj) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return folder / name


def test_cifar10_bad_files(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    with pytest.raises(DataError, match=r"cifar-10-batches-py(.|\n)*cs.toronto.edu"):
        load_cifar10(tmp_path)
    good = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 9]}
    _write_batch(folder, "test_batch", good)
    with pytest.raises(DataError, match=r"data_batch_1\.\.5 \(at least one\)"):
        load_cifar10(tmp_path, "train")
    assert load_cifar10(tmp_path, "test").labels.tolist() == [0, 1, 2, 9]
    _write_batch(folder, "data_batch_1", {b"data": np.zeros((4, 1000), np.uint8), b"labels": [0] * 4})
    with pytest.raises(DataError, match=r"must be uint8 \(N, 3072\), found uint8 \(4, 1000\)"):
        load_cifar10(tmp_path)
    _write_batch(folder, "data_batch_1", {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]})
    with pytest.raises(DataError, match=r"labels must be in 0..9, found 0..10"):
        load_cifar10(tmp_path)
    (folder / "data_batch_1").write_bytes(b"\x80\x02 truncated")
    with pytest.raises(DataError, match="data_batch_1: cannot read it as a CIFAR-10 python batch"):
        load_cifar10(tmp_path)
    _write_batch(folder, "data_batch_1", {b"data": Path("x"), b"labels": []})  # not an array: refused
    with pytest.raises(DataError, match="refusing to load pathlib"):
        load_cifar10(tmp_path)
    _write_batch(folder, "data_batch_2", good)  # a second batch is concatenated once batch 1 is good
    _write_batch(folder, "data_batch_1", good)
    assert len(load_cifar10(tmp_path)) == 8


# --------------------------------------------------------------------------------- CelebA

@needs_celeba
def test_celeba_shared_copy():
    s = load_celeba(ROOT, size=64, limit=64)
    assert s.images.shape == (64, 3, 64, 64) and s.images.dtype == np.uint8 and s.labels is None
    assert s.images.min() < 20 and s.images.max() > 235 and 80 < s.images.mean() < 160
    # 89x109 copy: crop side round(148/178 * 89) = 74 at (8, 18) (torchvision rounding), bicubic to 64
    first = Image.open(ROOT / "celeba" / "img_align_celeba" / "000001.jpg").convert("RGB")
    want = np.asarray(first.crop((8, 18, 82, 92)).resize((64, 64), Image.BICUBIC)).transpose(2, 0, 1)
    np.testing.assert_array_equal(s.images[0], want)


def test_celeba_crop_rule_on_original_size(tmp_path):
    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    pics = [Image.fromarray(rng.randint(0, 256, (218, 178, 3), dtype=np.uint8)) for _ in range(3)]
    for i, im in enumerate(pics):
        im.save(folder / f"{3 - i:06d}.png")  # png: lossless, and not picked up (CelebA is *.jpg)
        im.save(folder / f"{3 - i:06d}.jpg", quality=95)
    assert celeba_crop_side(178, 218) == 148 and celeba_crop_side(89, 109) == 74
    s = load_celeba(tmp_path, size=32, limit=2)
    assert s.images.shape == (2, 3, 32, 32)
    first = Image.open(folder / "000001.jpg").convert("RGB")  # name-sorted: 000001 first
    want = np.asarray(first.crop((15, 35, 163, 183)).resize((32, 32), Image.BICUBIC)).transpose(2, 0, 1)
    np.testing.assert_array_equal(s.images[0], want)


def test_celeba_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match=r"celeba/img_align_celeba(.|\n)*CelebA"):
        load_celeba(tmp_path)
    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    (folder / "000001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="000001.jpg: cannot read it as an image"):
        load_celeba(tmp_path)


# ---------------------------------------------------------------------------- image folder

def test_image_folder(tmp_path):
    rng = np.random.RandomState(1)
    for name in ("b.png", "a.PNG", "c.jpg"):
        Image.fromarray(rng.randint(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("ignored")
    s = load_image_folder(tmp_path)
    assert s.images.shape == (3, 3, 12, 10) and s.n_levels == 256
    np.testing.assert_array_equal(s.images[0], np.asarray(Image.open(tmp_path / "a.PNG")).transpose(2, 0, 1))
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "d.png")  # grey, other size
    with pytest.raises(DataError, match="different sizes"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=8).images.shape == (4, 3, 8, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .png/.jpg/.jpeg images"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "e.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match="e.jpg: cannot read it as an image"):
        load_image_folder(tmp_path, size=8)


# --------------------------------------------------------------------------------- digits

def test_digits_images_and_split():
    s = load_digits_images()
    assert s.images.shape == (1797, 1, 8, 8) and s.images.dtype == np.uint8
    assert s.images.max() == 16 and s.n_levels == 17 and s.n_bits == 5
    sp = split_images(s, seed=3)
    assert sp.sizes == (1457, 161, 179)
    together = np.concatenate([sp.train.images, sp.val.images, sp.test.images]).reshape(1797, -1)
    assert len(np.unique(together, axis=0)) == len(np.unique(s.images.reshape(1797, -1), axis=0))
    perm = np.random.RandomState(3).permutation(1797)
    np.testing.assert_array_equal(sp.test.labels, s.labels[perm[-179:]])
    assert load_dataset("digits_images", seed=3).sizes == (1457, 161, 179)
    with pytest.raises(InputError, match="uint8"):
        ImageSet("bad", s.images.astype(np.int64), None, n_bits=5)
    shuffled = load_digits_images(seed=0)
    np.testing.assert_array_equal(shuffled.labels, s.labels[np.random.RandomState(0).permutation(1797)])


# --------------------------------------------------------------------------- quantization

def test_dequantize_quantize():
    k = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    x = dequantize(k, 256, generator=g)
    assert x.dtype == torch.float32 and x.shape == k.shape
    assert float(x.min()) >= -0.5 and float(x.max()) < 0.5
    assert torch.equal(x, dequantize(k, 256, generator=torch.Generator().manual_seed(0)))
    diff = (quantize(x, 256).to(torch.int16) - k.to(torch.int16)).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3  # float32 rounding at bin edges only
    centres = (k.double() + 0.5) / 256 - 0.5
    assert torch.equal(quantize(centres.float(), 256), k)
    top = dequantize(torch.full((10000,), 16, dtype=torch.uint8), 17)
    assert float(top.max()) < 0.5 and quantize(torch.tensor([0.7, -0.9]), 17).tolist() == [16, 0]
    assert quantize(torch.zeros(2), 1000).dtype == torch.int64
    with pytest.raises(InputError):
        dequantize(k.float(), 256)
    with pytest.raises(InputError, match=r"levels must lie in \[0, 16\]"):
        dequantize(k, 17)
    with pytest.raises(InputError, match="NaN"):
        quantize(torch.tensor([float("nan")]), 256)


def test_reduce_bits():
    k = torch.arange(256, dtype=torch.uint8)
    r = reduce_bits(k, 5)
    assert r.dtype == torch.uint8 and int(r.max()) == 31
    assert torch.equal(r, torch.div(k, 8, rounding_mode="floor"))
    assert np.array_equal(reduce_bits(np.arange(256, dtype=np.uint8), 3), np.arange(256) // 32)
    assert torch.equal(reduce_bits(k, 8), k)
    with pytest.raises(InputError):
        reduce_bits(k.to(torch.int64), 5)
    with pytest.raises(InputError):
        reduce_bits(k, 0)
