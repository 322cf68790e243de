"""Image datasets as uint8 NCHW arrays: CIFAR-10, CelebA, any image folder, sklearn digits.

Images stay as integer levels here; the model-space conversion (uniform dequantization) is in
:mod:`nfkd.data.quantize`, re-exported below, so one place defines the level <-> float mapping.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from .layout import CELEBA_SOURCE, CIFAR_SOURCE, corrupt, missing
from .quantize import dequantize, quantize, reduce_bits
from .safe_pickle import NUMPY_ARRAYS, restricted_load
from .splits import tail_split

__all__ = [
    "ImageSet", "ImageSplits", "load_cifar10", "load_celeba", "load_image_folder", "load_digits_images",
    "split_images", "dequantize", "quantize", "reduce_bits",
]

CIFAR_DIR = "cifar10/cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CELEBA_DIR = "celeba/img_align_celeba"
CELEBA_CROP = 148 / 178  # standard pipeline: 148x148 centre crop of the 178x218 aligned images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DIGITS_LEVELS = 17  # load_digits pixels are integers 0..16


@dataclass(eq=False)
class ImageSet:
    """uint8 images [N, C, H, W] with levels 0..n_levels-1 (n_levels = 2**n_bits unless given)."""

    name: str
    images: np.ndarray
    labels: np.ndarray | None
    n_bits: int
    n_levels: int | None = None

    def __post_init__(self) -> None:
        if self.n_levels is None:
            self.n_levels = 2 ** self.n_bits
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            got = f"{self.images.dtype} {self.images.shape}"
            raise InputError(f"{self.name}: images must be uint8 [N, C, H, W], got {got}")
        if self.labels is not None and (self.labels.dtype != np.int64 or self.labels.shape != (len(self.images),)):
            raise InputError(f"{self.name}: labels must be int64 [N], got {self.labels.dtype} {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: np.ndarray, name: str | None = None) -> "ImageSet":
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(name or self.name, np.ascontiguousarray(self.images[index]), labels, self.n_bits, self.n_levels)


@dataclass(eq=False)
class ImageSplits:
    """Train / validation / test image sets of one dataset."""

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.train.shape

    @property
    def sizes(self) -> tuple[int, int, int]:
        return (len(self.train), len(self.val), len(self.test))


def split_images(images: ImageSet, seed: int = 0, val_frac: float = 0.1, test_frac: float = 0.1) -> ImageSplits:
    """Seeded split, same convention as the tabular sets: perm = RandomState(seed).permutation(N),
    test = last int(test_frac N) shuffled images, val = last int(val_frac * rest) before them."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise InputError(
            f"split fractions must be in [0, 1) and leave a train split, got val={val_frac}, test={test_frac}"
        )
    n = len(images)
    n_test = int(test_frac * n)
    n_val = int(val_frac * (n - n_test))
    perm = np.random.RandomState(seed).permutation(n)
    idx = tail_split(perm, n_val, n_test)
    parts = [images.subset(i, images.name) for i in idx]
    return ImageSplits(images.name, *parts)


# --- CIFAR-10 ------------------------------------------------------------------------------

def cifar_dir(root: str | Path) -> Path:
    """Accept the data root, the `cifar10` folder, or `cifar-10-batches-py` itself."""
    root = Path(root)
    for cand in (root / CIFAR_DIR, root / "cifar-10-batches-py", root):
        if cand.is_dir() and any((cand / f).is_file() for f in (*CIFAR_TRAIN, CIFAR_TEST)):
            return cand
    raise missing("CIFAR-10", root / CIFAR_DIR, f"Expected {CIFAR_DIR}/ under the data root {root}.\n{CIFAR_SOURCE}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = restricted_load(f, NUMPY_ARRAYS, "a CIFAR batch holds only arrays and lists", encoding="bytes")
    except Exception as exc:
        raise corrupt(path, "a CIFAR-10 python batch (pickle)", exc) from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: expected a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: b'data' must be uint8 (N, 3072), found {getattr(data, 'dtype', type(data))} {shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: expected {data.shape[0]} integer labels, found {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be in 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(root: str | Path, split: str = "train") -> ImageSet:
    """CIFAR-10 from the official python batches; train = whichever data_batch_1..5 are present."""
    if split not in ("train", "test"):
        raise InputError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    folder = cifar_dir(root)
    names = [f for f in CIFAR_TRAIN if (folder / f).is_file()] if split == "train" else [CIFAR_TEST]
    if not names or not (folder / names[0]).is_file():
        wanted = "data_batch_1..5 (at least one)" if split == "train" else CIFAR_TEST
        raise missing("CIFAR-10", folder / (CIFAR_TRAIN[0] if split == "train" else CIFAR_TEST),
                      f"Expected {wanted} in {folder}.\n{CIFAR_SOURCE}")
    parts = [_read_cifar_batch(folder / n) for n in names]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return ImageSet(f"cifar10-{split}", np.ascontiguousarray(images), labels, n_bits=8)


# --- CelebA and image folders --------------------------------------------------------------

def _open_rgb(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as exc:
        raise corrupt(path, "an image", exc) from exc


def _centre_crop_resize(im, side: int, size: int | None):
    """Crop a side x side square at the centre (torchvision's rounding), then bicubic resize."""
    from PIL import Image

    w, h = im.size
    left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
    im = im.crop((left, top, left + side, top + side))
    if size is not None and side != size:
        im = im.resize((size, size), Image.BICUBIC)  # PIL's resize filters over the source footprint (antialias)
    return im


def _to_chw(im) -> np.ndarray:
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def celeba_crop_side(width: int, height: int) -> int:
    """148 px for the original 178x218 images; proportional (round(148/178 w)) for other sizes."""
    return max(1, min(int(round(CELEBA_CROP * width)), height, width))


def celeba_dir(root: str | Path) -> Path:
    root = Path(root)
    for cand in (root / CELEBA_DIR, root / "img_align_celeba", root):
        if cand.is_dir() and any(p.suffix.lower() == ".jpg" for p in cand.iterdir()):
            return cand
    layout = f"Expected {CELEBA_DIR}/*.jpg under the data root {root}.\n{CELEBA_SOURCE}"
    raise missing("CelebA", root / CELEBA_DIR, layout)


def load_celeba(root: str | Path, size: int = 64, limit: int | None = None) -> ImageSet:
    """CelebA aligned faces (name-sorted), centre-cropped and resized to size x size."""
    if size < 1:
        raise InputError(f"CelebA size must be positive, got {size}")
    files = [p for p in _image_files(celeba_dir(root)) if p.suffix.lower() == ".jpg"]
    files = files[:limit] if limit is not None else files
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(files):
        im = _open_rgb(path)
        out[i] = _to_chw(_centre_crop_resize(im, celeba_crop_side(*im.size), size))
    return ImageSet("celeba", out, None, n_bits=8)


def load_image_folder(path: str | Path, size: int | None = None) -> ImageSet:
    """Every .png/.jpg/.jpeg in a folder (name-sorted) as RGB.

    With ``size``: centre-crop the largest square and resize to size x size. Without: all images
    must already share one size.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = _image_files(folder)
    if not files:
        raise DataError(f"{folder}: no .png/.jpg/.jpeg images found")
    arrays = []
    for p in files:
        im = _open_rgb(p)
        if size is not None:
            im = _centre_crop_resize(im, min(im.size), size)
        arrays.append(_to_chw(im))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"{folder}: images have different sizes {sorted(shapes)}; pass size=N to crop and resize")
    return ImageSet(folder.name, np.stack(arrays), None, n_bits=8)


# --- digits ----------------------------------------------------------------------------------

def load_digits_images(seed: int | None = None) -> ImageSet:
    """scikit-learn digits as 1x8x8 images with 17 levels (0..16), labels 0..9.

    ``seed`` optionally shuffles the order with RandomState(seed); splitting is
    :func:`split_images`'s job.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)[:, None]  # float 0..16 -> uint8 [1797, 1, 8, 8]
    labels = d.target.astype(np.int64)
    if seed is not None:
        perm = np.random.RandomState(seed).permutation(len(labels))
        images, labels = images[perm], labels[perm]
    n_bits = math.ceil(math.log2(DIGITS_LEVELS))  # 5: the smallest bit depth holding 17 levels
    return ImageSet("digits", np.ascontiguousarray(images), labels, n_bits=n_bits, n_levels=DIGITS_LEVELS)

