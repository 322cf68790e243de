"""What the service runs: one ``ModelBackend`` per process, numpy in / numpy out, called from ONE worker thread.

    load_backend("student.pt", "onnxruntime")      # export on the fly (parity-gated) into a cache folder
    load_backend("student-export/", "onnxruntime") # an export folder (manifest.json)
    load_backend("student.pt", "torch")            # the eager flow, no export
    load_backend("student-export/", "tensorrt")    # density.plan / sample.plan built by export.trt

Inputs reaching ``log_prob`` were already validated by the service (float32, right shape,
finite, at most ``max_batch`` rows). Sampling draws its noise with
``numpy.random.default_rng(seed)`` exactly as ``export.runtime`` does, so every backend gives the
same samples for the same seed (up to float32 round-off between runtimes).
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nfkd.errors import InputError

BACKENDS = ("onnxruntime", "tensorrt", "torch")
log = logging.getLogger("nfkd.serve")


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

    @property
    def dim(self) -> int:
        return int(np.prod(self.event_shape))

    def log_prob(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, n: int, temperature: float, seed: int | None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

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


class ExportBackend(ModelBackend):
    """An ``export.runtime`` model (ONNX Runtime or TensorRT) over an export folder."""

    def __init__(self, runtime, folder: Path, name: str) -> None:
        m = runtime.manifest
        parity = m.engines.get("parity", {}) if name == "tensorrt" else m.parity
        super().__init__(
            name=name, arch=m.arch, config=dict(m.config), event_shape=tuple(runtime.event_shape),
            noise_shapes=list(runtime.noise_shapes), max_batch=int(runtime.max_batch),
            checkpoint_sha256=str(m.source.get("sha256", "")), source=str(folder), device=runtime.device,
            extra={
                "export": {
                    "folder": str(folder),
                    "checkpoint": m.source.get("checkpoint"),
                    "fp16": bool(m.engines.get("fp16", False) if name == "tensorrt" else m.fp16),
                    "parity": {k: parity.get(k) for k in ("passed", "log_prob_max_rel_err", "sample_max_abs_err")},
                },
            },
        )
        self.runtime = runtime

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        return self.runtime.log_prob(x)

    def sample(self, n: int, temperature: float, seed: int | None) -> np.ndarray:
        return self.runtime.sample(n, temperature, seed)


class TorchBackend(ModelBackend):
    """The eager flow from a checkpoint (float32, CPU or CUDA), under ``torch.inference_mode``."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        from nfkd.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, map_location=device)
        flow = ckpt.flow.float().eval()
        for p in flow.parameters():
            p.requires_grad_(False)
        super().__init__(
            name="torch", arch=ckpt.arch, config=dict(ckpt.config), event_shape=tuple(flow.event_shape),
            noise_shapes=[tuple(s[1:]) for s in flow.noise_shapes(1)], max_batch=1 << 30,
            checkpoint_sha256=ckpt.sha256, source=str(path), device=device,
        )
        self.flow = flow

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device)
            return self.flow.log_prob(t).float().cpu().numpy()

    def sample(self, n: int, temperature: float, seed: int | None) -> np.ndarray:
        import torch

        rng = np.random.default_rng(seed)  # the same noise export.runtime draws for this seed
        noise = [torch.from_numpy(rng.standard_normal((n, *s), dtype=np.float32)).to(self.device)
                 for s in self.noise_shapes]
        with torch.inference_mode():
            return self.flow.sample(n, temperature, noise=noise).float().cpu().numpy()


# --------------------------------------------------------------------------------------------
# Export on the fly
# --------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    root = os.environ.get("NFKD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "nfkd"
    )
    return Path(root) / "exports"


def is_export_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "manifest.json").exists()


def ensure_export(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  engines: bool = False) -> Path:
    """The export folder of a checkpoint: reused from the cache when intact, else exported (parity gate)."""
    import hashlib

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise InputError(f"model not found: {checkpoint} (expected a checkpoint .pt or an export folder)")
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        root = Path(tempfile.gettempdir()) / "nfkd-exports"
        root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{checkpoint.stem}-{sha[:16]}"
    from export.manifest import reusable_export

    if reusable_export(folder, sha, engines) is not None:
        log.info("reusing export", extra={"folder": str(folder)})
        return folder
    if engines:
        from export.trt import build_engines

        log.info("building TensorRT engines", extra={"checkpoint": str(checkpoint), "folder": str(folder)})
        build_engines(checkpoint, folder)
    else:
        from export.onnx import export_onnx

        log.info("exporting to ONNX (parity-gated)", extra={"checkpoint": str(checkpoint), "folder": str(folder)})
        export_onnx(checkpoint, folder)
    return folder


def load_backend(
    model: str | os.PathLike,
    backend: str = "onnxruntime",
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | None = None,
) -> ModelBackend:
    """MODEL = checkpoint ``.pt`` or export folder -> a backend (see module docstring)."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(model)
    if not path.exists():
        raise InputError(f"model not found: {path} (expected a checkpoint .pt or an export folder with manifest.json)")
    if path.is_dir() and not is_export_folder(path):
        raise InputError(f"{path} is a folder without manifest.json; expected an export folder "
                         f"(python -m export.onnx student.pt -o DIR) or a checkpoint file")
    if backend == "torch":
        if path.is_dir():
            raise InputError(f"backend 'torch' runs the eager flow and needs the checkpoint file (.pt), not the "
                             f"export folder {path}")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        return TorchBackend(path, device or "cpu")
    from export import runtime

    folder = path if path.is_dir() else ensure_export(path, cache_dir, engines=backend == "tensorrt")
    if backend == "tensorrt":
        rt = runtime.load(folder, backend="tensorrt", device=device or "cuda")
    else:
        rt = runtime.load(folder, backend="onnxruntime", device=device or "cpu", intra_op_threads=threads)
    return ExportBackend(rt, folder, backend)


__all__ = ["BACKENDS", "ExportBackend", "ModelBackend", "TorchBackend", "default_cache_dir", "ensure_export",
           "is_export_folder", "load_backend"]
