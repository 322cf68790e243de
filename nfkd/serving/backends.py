"""What the service runs: one ``ModelBackend`` per process, numpy in / numpy out, called from ONE worker thread.

Every backend is an ``nfkd.inference`` Runner (the one door), adapted here:

    load_backend("student.pt")                     # auto: the fastest backend here
    load_backend("student.pt", "onnxruntime")      # export on the fly (parity-gated) into a cache folder
    load_backend("student-export/", "onnxruntime") # an export folder (manifest.json)
    load_backend("student.pt", "torch")            # the eager flow, no export
    load_backend("student.pt", "triton")           # the fused kernels (CUDA)
    load_backend("student-export/", "tensorrt")    # density.plan / sample.plan built by export.trt
    load_backend("bundle/")                        # a pair (python -m nfkd pair): log_prob to one model, sample to the other
    load_pair_backend("maf.pt", "iaf.pt")          # the same without a bundle

Inputs reaching ``log_prob`` were already validated by the service (float32, right shape,
finite, at most ``max_batch`` rows). Sampling draws its noise with
``numpy.random.default_rng(seed)`` exactly as ``export.runtime`` does (``draw_noise``), so every
backend gives the same samples for the same seed (up to float32 round-off between runtimes), and
``decode`` of row slices of that noise gives the same rows as one ``sample`` call: the service
splits large sample requests that way.

A cached export is never trusted on its own word: when one is reused, a small parity check
against the checkpoint runs again (``export.cache.verify_export``); a failing cache is rebuilt.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nfkd.errors import InputError
from nfkd.inference import registry
from nfkd.inference.runner import draw_noise

__all__ = ["BACKENDS", "ModelBackend", "RunnerBackend", "draw_noise", "load_backend", "load_pair_backend"]

# 'auto', nfkd.inference's backends and their aliases ("torch" is eager): a live view of the registry
BACKENDS = registry.NAMES
DEFAULT_MAX_BATCH = 1 << 30  # PyTorch backends take any batch; the service's own limits bound requests
log = logging.getLogger("nfkd.serve")
PASSED_THROUGH = ("export", "kernel_ops", "pair")  # Runner.info() sections that GET /metadata shows as they are


@dataclass
class ModelBackend:
    """Common surface of every backend; ``info`` feeds ``GET /metadata``."""

    name: str
    arch: str
    config: dict[str, Any]
    event_shape: tuple[int, ...]
    noise_shapes: list[tuple[int, ...]]
    max_batch: int  # the most rows one model call accepts
    checkpoint_sha256: str
    source: str
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None  # intra-op threads of the model thread (None: the runtime's default)

    @property
    def dim(self) -> int:
        return int(np.prod(self.event_shape))

    def log_prob(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:  # pragma: no cover - abstract
        """Samples from given unit noise (one float32 array per level, rows aligned)."""
        raise NotImplementedError

    def sample(self, n: int, temperature: float, seed: int | None) -> np.ndarray:
        return self.decode(draw_noise(self.noise_shapes, n, seed), temperature)

    def init_model_thread(self) -> None:
        """Run once inside the model thread: torch's intra-op thread count is per thread (a thread
        created later starts from whatever count was set last, anywhere), so it is set here."""
        if self.threads and "torch" in sys.modules:
            import torch

            torch.set_num_threads(int(self.threads))

    def info(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "config": self.config,
            "event_shape": list(self.event_shape),
            "dim": self.dim,
            "noise_shapes": [list(s) for s in self.noise_shapes],
            "backend": self.name,
            "device": self.device,
            "checkpoint_sha256": self.checkpoint_sha256,
            "source": self.source,
            "model_max_batch": self.max_batch,
            **self.extra,
        }


class RunnerBackend(ModelBackend):
    """The service's view of an ``nfkd.inference`` Runner (any backend): numpy in, numpy out."""

    def __init__(self, runner, name: str, threads: int | None) -> None:
        info = runner.info()
        extra = {k: info[k] for k in PASSED_THROUGH if k in info}
        super().__init__(
            name=name, arch=info["arch"], config=dict(info["config"]), event_shape=tuple(runner.event_shape),
            noise_shapes=list(runner.noise_shapes), max_batch=int(runner.max_batch or DEFAULT_MAX_BATCH),
            checkpoint_sha256=info["checkpoint_sha256"], source=info["source"], device=runner.device,
            extra=extra, threads=threads,
        )
        self.runner = runner

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.runner.log_prob(x, validate=False), np.float32)  # the service validated x

    def decode(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:
        return np.asarray(self.runner.sample(noise=noise, temperature=temperature), np.float32)

    def init_model_thread(self) -> None:
        super().init_model_thread()
        self.runner.pin_threads()


def _backend_name(backend: str | None, what: str = "backend") -> str | None:
    if backend is None:
        return None
    if backend not in BACKENDS:
        raise InputError(f"{what} must be one of {BACKENDS}, got {backend!r}")
    return registry.canonical(backend)


def _side_options(density_backend: str | None, sampler_backend: str | None) -> dict[str, str]:
    sides = {"density_backend": _backend_name(density_backend, "density_backend"),
             "sampler_backend": _backend_name(sampler_backend, "sampler_backend")}
    return {k: v for k, v in sides.items() if v is not None}


def load_backend(
    model: str | os.PathLike,
    backend: str = "auto",
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | None = None,
    density_backend: str | None = None,
    sampler_backend: str | None = None,
) -> ModelBackend:
    """MODEL = checkpoint ``.pt``, export folder or pair bundle -> a backend through ``nfkd.inference.load``.

    ``backend``: any ``nfkd.inference`` backend, ``auto`` (the fastest here) or ``torch`` (= eager);
    for a pair bundle ``density_backend`` / ``sampler_backend`` override it for one side.
    Exports are parity-gated, cached by checkpoint hash and re-checked when reused (export.cache).
    """
    from nfkd import inference
    from nfkd.inference.bundle import is_pair_bundle

    name = _backend_name(backend)
    path = Path(model)
    if not path.exists():
        raise InputError(f"model not found: {path} (expected a checkpoint .pt, an export folder with manifest.json "
                         f"or a pair bundle with pair.json)")
    pair = is_pair_bundle(path)
    sides = _side_options(density_backend, sampler_backend)
    if sides and not pair:
        raise InputError(f"--density-backend / --sampler-backend apply to a pair; {path} is one model: use --backend")
    if path.is_dir() and not pair and name != "auto" and not registry.spec(name).accepts("export"):
        raise InputError(f"backend {backend!r} runs the PyTorch flow and needs the checkpoint file (.pt), not the "
                         f"export folder {path}")
    # threads: ONNX Runtime's session, and torch's count set inside the model thread (init_model_thread)
    runner = inference.load(path, backend=name, device=device, threads=threads, cache_dir=cache_dir, **sides)
    return RunnerBackend(runner, backend if backend != "auto" and not pair else runner.backend, threads)


def load_pair_backend(
    density: str | os.PathLike,
    sampler: str | os.PathLike,
    backend: str = "auto",
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | None = None,
    density_backend: str | None = None,
    sampler_backend: str | None = None,
) -> ModelBackend:
    """``/log_prob`` from ``density``, ``/sample`` from ``sampler`` (``nfkd.inference.load_pair``), without a bundle."""
    from nfkd import inference

    name = _backend_name(backend)
    runner = inference.load_pair(density, sampler, backend=name, device=device, threads=threads, cache_dir=cache_dir,
                                 **_side_options(density_backend, sampler_backend))
    return RunnerBackend(runner, runner.backend, threads)
