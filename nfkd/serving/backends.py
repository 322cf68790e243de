"""What the service runs: one ``ModelBackend`` per process, numpy in / numpy out, called from ONE worker thread.

    load_backend("student.pt", "onnxruntime")      # export on the fly (parity-gated) into a cache folder
    load_backend("student-export/", "onnxruntime") # an export folder (manifest.json)
    load_backend("student.pt", "torch")            # the eager flow, no export
    load_backend("student-export/", "tensorrt")    # density.plan / sample.plan built by export.trt

Inputs reaching ``log_prob`` were already validated by the service (float32, right shape,
finite, at most ``max_batch`` rows). Sampling draws its noise with
``numpy.random.default_rng(seed)`` exactly as ``export.runtime`` does (``draw_noise``), so every
backend gives the same samples for the same seed (up to float32 round-off between runtimes), and
``decode`` of row slices of that noise gives the same rows as one ``sample`` call: the service
splits large sample requests that way.

A cached export is never trusted on its own word: when one is reused, a small parity check
against the checkpoint runs again (``verify_export``); a failing cache is rebuilt.
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

BACKENDS = ("onnxruntime", "tensorrt", "torch")
RECHECK_BATCHES = (7,)  # rows of the parity re-check of a reused export: cheap, both directions
log = logging.getLogger("nfkd.serve")


def draw_noise(noise_shapes: list[tuple[int, ...]], n: int, seed: int | None) -> list[np.ndarray]:
    """The unit noise ``export.runtime`` draws for ``sample(n, seed=seed)``: one float32 array per level."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *s), dtype=np.float32) for s in noise_shapes]


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

    def decode(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:
        return self.runtime.decode(noise, temperature)


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

    def decode(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:
        import torch

        z = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in noise]
        with torch.inference_mode():
            return self.flow.sample(int(z[0].shape[0]), temperature, noise=z).float().cpu().numpy()


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


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # never fall back to a shared folder (/tmp): anyone could plant an export there
        raise InputError(f"cannot create the export cache folder {root} ({exc.strerror or exc}); pass a writable "
                         f"--cache-dir (or set NFKD_CACHE_DIR)") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise InputError(f"the export cache folder {root} is not writable; pass a writable --cache-dir "
                         f"(or set NFKD_CACHE_DIR)")
    return root


def verify_export(folder: Path, checkpoint: Path, backend: str = "onnxruntime", device: str | None = None,
                  runtime=None) -> dict[str, Any]:
    """Re-run the parity gate (``RECHECK_BATCHES`` rows, both directions) of an export folder against
    the checkpoint's eager flow; raises ``ExportError`` when the graphs do not reproduce it."""
    from export import parity
    from export import runtime as rt_mod
    from nfkd.checkpoint import load_checkpoint

    flow = load_checkpoint(checkpoint).flow.eval()
    if runtime is None:
        threads = None if backend == "tensorrt" else 1
        runtime = rt_mod.load(folder, backend=backend, device=device, intra_op_threads=threads)
    res = parity.check_parity(flow, lambda x: runtime.density(x), lambda z, t: runtime.decode(z, t),
                              batches=RECHECK_BATCHES, runtime=f"{backend} (re-check of a reused export)")
    return {"passed": bool(res["passed"]), "batches": list(RECHECK_BATCHES),
            "log_prob_max_rel_err": res["log_prob_max_rel_err"], "sample_max_abs_err": res["sample_max_abs_err"]}


def ensure_verified_export(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                           engines: bool = False) -> tuple[Path, dict[str, Any] | None]:
    """(export folder, re-check result or None when freshly exported) for a checkpoint.

    The cache is keyed on the checkpoint's SHA-256 (folder name and manifest); a folder whose
    manifest and graph hashes still agree is reused only if the parity gate passes again against
    the checkpoint itself -- a graph swapped together with its manifest hash fails there and is
    rebuilt (logged as a warning).
    """
    from export.manifest import reusable_export, sha256_file
    from nfkd.errors import ExportError

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise InputError(f"model not found: {checkpoint} (expected a checkpoint .pt or an export folder)")
    sha = sha256_file(checkpoint)
    folder = _cache_root(cache_dir) / f"{checkpoint.stem}-{sha[:16]}"
    if reusable_export(folder, sha, engines) is not None:
        try:
            checks = {"onnxruntime": verify_export(folder, checkpoint, "onnxruntime", "cpu")}
            if engines:
                checks["tensorrt"] = verify_export(folder, checkpoint, "tensorrt")
        except ExportError as exc:
            log.warning("cached export failed the parity re-check against the checkpoint; rebuilding it",
                        extra={"folder": str(folder), "reason": str(exc)})
        except Exception as exc:  # an unloadable graph is a failed re-check as well
            log.warning("cached export cannot be run; rebuilding it",
                        extra={"folder": str(folder), "reason": f"{type(exc).__name__}: {exc}"})
        else:
            log.info("reusing export (parity re-checked)", extra={"folder": str(folder)})
            return folder, checks["tensorrt" if engines else "onnxruntime"]
    from export.onnx import export_onnx

    log.info("exporting to ONNX (parity-gated)", extra={"checkpoint": str(checkpoint), "folder": str(folder)})
    export_onnx(checkpoint, folder)
    if engines:
        from export.trt import build_engines

        log.info("building TensorRT engines", extra={"checkpoint": str(checkpoint), "folder": str(folder)})
        build_engines(checkpoint, folder)
    return folder, None


def ensure_export(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  engines: bool = False) -> Path:
    """The export folder of a checkpoint: reused from the cache when it passes the parity re-check, else
    exported (parity gate). See ``ensure_verified_export``."""
    return ensure_verified_export(checkpoint, cache_dir, engines)[0]


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
        tb = TorchBackend(path, device or "cpu")  # threads: set inside the model thread (init_model_thread)
        tb.threads = threads
        return tb
    from export import runtime

    recheck = None
    if path.is_dir():
        folder = path
    else:
        folder, recheck = ensure_verified_export(path, cache_dir, engines=backend == "tensorrt")
    if backend == "tensorrt":
        rt = runtime.load(folder, backend="tensorrt", device=device or "cuda")
    else:
        rt = runtime.load(folder, backend="onnxruntime", device=device or "cpu", intra_op_threads=threads)
    eb = ExportBackend(rt, folder, backend)
    eb.threads = threads  # ONNX Runtime: the session's intra-op threads; torch (if loaded): the model thread
    eb.extra["export"]["parity"]["rechecked"] = recheck is not None
    if recheck is not None:
        eb.extra["export"]["parity"]["recheck"] = recheck
    return eb


__all__ = ["BACKENDS", "ExportBackend", "ModelBackend", "TorchBackend", "default_cache_dir", "draw_noise",
           "ensure_export", "ensure_verified_export", "is_export_folder", "load_backend", "verify_export"]
