"""Run an export folder: ``load(path, backend, device)`` -> ``log_prob(x)`` / ``sample(n, temperature, seed)``.

    from export.runtime import load
    model = load("student-export/")                        # ONNX Runtime, CPU
    model = load("student-export/", device="cuda")         # ONNX Runtime CUDA EP, I/O binding
    model = load("student-export/", backend="tensorrt")    # density.plan / sample.plan (export.trt)
    lp = model.log_prob(x)                                 # x: float array [B, *event_shape]
    xs = model.sample(1000, temperature=0.8, seed=0)

Inputs are validated before anything reaches a runtime; every problem is one ``InputError`` that
says what was wrong and what to do. Graph / engine files are checked against the SHA-256 in
``manifest.json`` when loaded. Noise for sampling is drawn with ``numpy.random.default_rng(seed)``
(float32 standard normal, one array per level), so ``sample(n, seed=s)`` is reproducible.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nfkd.errors import ExportError, InputError

from .manifest import Manifest, sha256_bytes

BACKENDS = ("onnxruntime", "tensorrt")
DEVICES = ("cpu", "cuda")


class ExportedFlow:
    """A loaded export: validated numpy in, numpy out. Backends implement ``_density`` / ``_sample``."""

    backend: str = ""

    def __init__(self, folder: Path, manifest: Manifest, device: str) -> None:
        self.folder = folder
        self.manifest = manifest
        self.device = device
        self.event_shape = tuple(int(v) for v in manifest.event_shape)
        self.noise_shapes = [tuple(int(v) for v in s) for s in manifest.noise_shapes]
        self.max_batch = int(manifest.max_batch)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(arch={self.manifest.arch!r}, event_shape={self.event_shape}, "
            f"backend={self.backend!r}, device={self.device!r}, max_batch={self.max_batch})"
        )

    # --- public API ---------------------------------------------------------------------------
    def log_prob(self, x: Any) -> np.ndarray:
        """log p(x) in nats per sample (float32 array [B]), in the user's units."""
        return self._density(self._check_x(x))[0]

    def density(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """(log_prob [B], latent [B, D]): the flattened standardized noise of every level (manifest.latent_layout)."""
        lp, lat = self._density(self._check_x(x))
        return lp, lat

    def sample(self, n: int, temperature: float = 1.0, seed: int | None = None) -> np.ndarray:
        """n samples (float32 [n, *event_shape]) at a temperature; noise from numpy's default_rng(seed)."""
        n = self._check_n(n)
        temperature = self._check_temperature(temperature)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise InputError(f"seed must be an integer or None, got {seed!r}")
        rng = np.random.default_rng(seed)
        noise = [rng.standard_normal((n, *s), dtype=np.float32) for s in self.noise_shapes]
        return self._sample(noise, temperature)

    def decode(self, noise: Sequence[Any], temperature: float = 1.0) -> np.ndarray:
        """Samples from given unit noise (one array per level, shapes [B, *noise_shapes[l]])."""
        temperature = self._check_temperature(temperature)
        if isinstance(noise, np.ndarray):
            noise = [noise]
        noise = list(noise)
        if len(noise) != len(self.noise_shapes):
            raise InputError(f"expected {len(self.noise_shapes)} noise arrays (one per level), got {len(noise)}")
        arrays = [self._check_array(z, s, f"noise[{i}]") for i, (z, s) in enumerate(zip(noise, self.noise_shapes))]
        if len({a.shape[0] for a in arrays}) != 1:
            raise InputError(f"noise arrays have different batch sizes {[a.shape[0] for a in arrays]}")
        return self._sample(arrays, temperature)

    # --- validation ---------------------------------------------------------------------------
    def _check_x(self, x: Any) -> np.ndarray:
        return self._check_array(x, self.event_shape, "x")

    def _check_array(self, x: Any, event: tuple[int, ...], what: str) -> np.ndarray:
        if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor: accept, as numpy
            x = x.detach().cpu().numpy()
        if isinstance(x, (list, tuple)):
            try:
                x = np.asarray(x)
            except ValueError as exc:
                raise InputError(f"{what} is a ragged list ({exc}); pass a numpy array [batch, {_dims(event)}]") from None
        if not isinstance(x, np.ndarray):
            raise InputError(f"{what} must be a numpy array of shape (batch, {_dims(event)}), got {type(x).__name__}")
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(
                f"{what} has dtype {x.dtype}; expected a floating-point array (convert with {what}.astype(np.float32))"
            )
        if x.ndim == len(event) and tuple(x.shape) == event:
            raise InputError(
                f"{what} has shape {tuple(x.shape)}, one sample without a batch dimension; "
                f"pass {what}[None] (shape (1, {_dims(event)}))"
            )
        if x.ndim != len(event) + 1 or tuple(x.shape[1:]) != event:
            if len(event) == 1 and x.ndim == 2:
                raise InputError(
                    f"{what} has {x.shape[1]} features per row; this model expects {event[0]} "
                    f"(shape (batch, {event[0]}), features in training order)"
                )
            raise InputError(f"{what} has shape {tuple(x.shape)}; expected (batch, {_dims(event)})")
        b = x.shape[0]
        if b == 0:
            raise InputError(f"{what} is an empty batch (shape {tuple(x.shape)}); pass at least one row")
        if b > self.max_batch:
            raise InputError(
                f"{what} has a batch of {b}, above this export's max_batch {self.max_batch}; "
                f"split it into chunks of at most {self.max_batch} rows"
            )
        finite = np.isfinite(x.reshape(b, -1)).all(1)
        if not finite.all():
            bad = np.flatnonzero(~finite)[:5].tolist()
            raise InputError(f"{what} contains NaN or Inf (first bad rows: {bad}); remove or impute them")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _check_n(self, n: Any) -> int:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise InputError(f"n must be a positive integer, got {n!r}")
        n = int(n)
        if n < 1:
            raise InputError(f"n must be a positive integer, got {n}")
        if n > self.max_batch:
            raise InputError(
                f"n = {n} is above this export's max_batch {self.max_batch}; draw in chunks of at most {self.max_batch}"
            )
        return n

    @staticmethod
    def _check_temperature(t: Any) -> float:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(float(t)) or float(t) < 0:
            raise InputError(f"temperature must be a finite number >= 0, got {t!r}")
        return float(t)

    # --- backends -----------------------------------------------------------------------------
    def _density(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sample(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def _dims(shape: Sequence[int]) -> str:
    return ", ".join(str(v) for v in shape)


def _read_verified(folder: Path, entry: dict[str, Any], what: str) -> bytes:
    path = folder / entry["file"]
    if not path.exists():
        raise ExportError(f"{path} is missing; the export folder is incomplete ({what})")
    data = path.read_bytes()
    if sha256_bytes(data) != entry.get("sha256"):
        raise ExportError(
            f"{path} does not match the SHA-256 in manifest.json: it was changed after the parity gate; re-export"
        )
    return data


class OrtFlow(ExportedFlow):
    """ONNX Runtime: CPU provider, or the CUDA provider with I/O binding."""

    backend = "onnxruntime"

    def __init__(self, folder: Path, manifest: Manifest, device: str, intra_op_threads: int | None) -> None:
        super().__init__(folder, manifest, device)
        import onnxruntime as ort

        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ExportError(
                    "ONNX Runtime has no CUDA execution provider here: install onnxruntime-gpu "
                    "(pip install 'nfkd[gpu]', in an environment without the CPU onnxruntime package) "
                    "on a machine with an NVIDIA GPU, or use device='cpu'"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        so = ort.SessionOptions()
        if intra_op_threads is not None:
            if isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int) or intra_op_threads < 1:
                raise InputError(f"intra_op_threads must be a positive integer or None, got {intra_op_threads!r}")
            so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session_options = so
        self.sessions = {
            name: ort.InferenceSession(_read_verified(folder, manifest.graphs[name], name), so, providers=providers)
            for name in ("density", "sample")
        }

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        sess = self.sessions[name]
        outputs = self.manifest.output_names(name)
        if self.device != "cuda":
            return sess.run(outputs, feeds)
        io = sess.io_binding()
        for k, v in feeds.items():
            io.bind_cpu_input(k, v)
        for k in outputs:
            io.bind_output(k, "cuda")
        sess.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()

    def _density(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lp, lat = self._run("density", {"x": x})
        return lp, lat

    def _sample(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:
        feeds = {f"noise_{i}": z for i, z in enumerate(noise)}
        feeds["temperature"] = np.asarray([temperature], np.float32)
        return self._run("sample", feeds)[0]


class TrtFlow(ExportedFlow):
    """TensorRT engines (``density.plan`` / ``sample.plan`` written by ``python -m export.trt``)."""

    backend = "tensorrt"

    def __init__(self, folder: Path, manifest: Manifest, device: str) -> None:
        super().__init__(folder, manifest, device)
        from .trt import TrtEngine, require_tensorrt

        trt = require_tensorrt()
        engines = manifest.engines or {}
        if "density" not in engines or "sample" not in engines:
            raise ExportError(
                f"{folder} has no TensorRT engines; build them with `python -m export.trt <checkpoint> -o {folder}`"
            )
        self.max_batch = min(self.max_batch, int(engines.get("profile", {}).get("max", self.max_batch)))
        self.engines = {name: TrtEngine(trt, _read_verified(folder, engines[name], name)) for name in ("density", "sample")}

    def _density(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.engines["density"].run({"x": x})
        return out["log_prob"], out["latent"]

    def _sample(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:
        feeds = {f"noise_{i}": z for i, z in enumerate(noise)}
        feeds["temperature"] = np.asarray([temperature], np.float32)
        return self.engines["sample"].run(feeds)["x"]


def load(
    path: str | os.PathLike,
    backend: str = "onnxruntime",
    device: str | None = None,
    intra_op_threads: int | None = None,
) -> ExportedFlow:
    """Load an export folder (with manifest.json). device defaults to 'cpu' (onnxruntime) or 'cuda' (tensorrt)."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = device or ("cuda" if backend == "tensorrt" else "cpu")
    if device not in DEVICES:
        raise InputError(f"device must be one of {DEVICES}, got {device!r}")
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    manifest = Manifest.load(folder)
    if backend == "tensorrt":
        if device != "cuda":
            raise InputError("the TensorRT backend runs on the GPU: use device='cuda' (or backend='onnxruntime' on CPU)")
        return TrtFlow(folder, manifest, device)
    return OrtFlow(folder, manifest, device, intra_op_threads)


__all__ = ["BACKENDS", "DEVICES", "ExportedFlow", "OrtFlow", "TrtFlow", "load"]
