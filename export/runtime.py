"""Run an export folder: the ``onnxruntime`` and ``tensorrt`` backends of ``nfkd.inference``.

Each backend's probe, loader and Runner live here together (``probe_onnxruntime`` /
``load_onnxruntime`` / ``OrtFlow``; ``probe_tensorrt`` / ``load_tensorrt`` / ``TrtFlow``); the
registry (``nfkd/inference/registry.py``) names them and imports this module only when asked.

``nfkd.inference.load("student-export/", backend="onnxruntime")`` is the usual door; this module's
``load`` opens a folder directly (same ``Runner`` surface: ``log_prob``, ``sample``, ``info``).

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

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nfkd.errors import ExportError, InputError
from nfkd.inference import registry
from nfkd.inference.runner import ModelMeta, Runner
from nfkd.validation import check_batch

from .artifacts import read_verified
from .cache import ensure_verified_export, export_flow
from .graph_checks import check_graph
from .manifest import Manifest

__all__ = ["DEVICES", "ExportedFlow", "OrtFlow", "TrtFlow", "load", "load_onnxruntime", "load_tensorrt",
           "probe_onnxruntime", "probe_tensorrt"]

DEVICES = ("cpu", "cuda")


def probe_onnxruntime() -> tuple[bool, str, tuple[str, ...]]:
    if not registry.has_module("onnxruntime"):
        return False, "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu)", ()
    devs = ["cpu"]
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers() and "cuda" in registry.cuda_devices():
            devs.append("cuda")
    except Exception as exc:  # a broken install: say so
        return False, f"onnxruntime cannot be imported: {exc}", ()
    return True, "ONNX Runtime (exported, parity-gated graphs)", tuple(devs)


def probe_tensorrt() -> tuple[bool, str, tuple[str, ...]]:
    if not registry.has_module("tensorrt"):
        return False, "TensorRT is not installed (the gpu extra: pip install 'nfkd[gpu]', on a CUDA machine)", ()
    if "cuda" not in registry.cuda_devices():
        return False, "TensorRT needs a CUDA GPU; none is visible", ()
    return True, "TensorRT engines (export.trt)", ("cuda",)


class ExportedFlow(Runner):
    """A loaded export: a ``nfkd.inference`` Runner over numpy graphs (``_density`` / ``_sample``)."""

    native = "numpy"
    #: The graphs/engines take at most max_batch rows a call; larger requests are split (as every backend accepts them).
    splits_batches = True
    #: True: runs the TensorRT engines of the folder (their own fp16 flag and parity record), not its ONNX graphs.
    runs_engines = False

    def __init__(self, folder: Path, manifest: Manifest, device: str, threads: int | None = None) -> None:
        trt, engines = self.runs_engines, manifest.engines or {}
        meta = ModelMeta(
            arch=manifest.arch, config=dict(manifest.config),
            event_shape=tuple(int(v) for v in manifest.event_shape),
            noise_shapes=tuple(tuple(int(v) for v in s) for s in manifest.noise_shapes),
            checkpoint_sha256=str(manifest.source.get("sha256", "")), source=str(folder),
            extra={"export": {"folder": str(folder), "checkpoint": manifest.source.get("checkpoint"),
                              "fp16": bool(engines.get("fp16", False) if trt else manifest.fp16),
                              "opset": manifest.opset, "maf_sampling": manifest.maf_sampling,
                              "parity": engines.get("parity", {}) if trt else manifest.parity},
                   # an export of a pair bundle: which checkpoint each graph came from, and the sampler's faithfulness
                   **({"pair": manifest.source["pair"]} if isinstance(manifest.source.get("pair"), dict) else {})},
        )
        super().__init__(meta, device, threads, max_batch=int(manifest.max_batch))
        self.folder = folder
        self.manifest = manifest

    def density(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """(log_prob [B], latent [B, D]): the flattened standardized noise of every level (manifest.latent_layout)."""
        x = check_batch(x, self.event_shape, "x", None, float32=True)
        native = self._to_native(x)
        parts = [self._density(native[i:i + self.max_batch]) for i in range(0, len(native), self.max_batch)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def decode(self, noise: Sequence[Any], temperature: float = 1.0) -> np.ndarray:
        """Samples (numpy) from given unit noise (one array per level, shapes [B, *noise_shapes[l]]).

        Engine-level call for the export checks (``export.parity`` / ``export.cache`` compare the
        graphs with the flow through it); users sample through ``Runner.sample``."""
        return self._to_numpy(self.sample(noise=noise, temperature=temperature))

    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        return self._density(x)[0]

    def _decode(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:
        return self._sample(noise, temperature)

    # --- backends -----------------------------------------------------------------------------
    def _density(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sample(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class OrtFlow(ExportedFlow):
    """ONNX Runtime: CPU provider, or the CUDA provider with I/O binding."""

    backend = "onnxruntime"

    def __init__(self, folder: Path, manifest: Manifest, device: str, intra_op_threads: int | None) -> None:
        super().__init__(folder, manifest, device, intra_op_threads)
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
        self.sessions = {}
        for name in ("density", "sample"):
            data = read_verified(folder, manifest.graphs[name], name)
            check_graph(data, name, manifest, f"{folder / manifest.graphs[name]['file']} ({name} graph)")
            try:
                self.sessions[name] = ort.InferenceSession(data, so, providers=providers)
            except Exception as exc:  # ORT raises its own types; one line, not a traceback
                first = next((ln for ln in str(exc).strip().splitlines() if ln.strip()), type(exc).__name__)
                raise ExportError(f"ONNX Runtime cannot load the {name} graph of {folder}: {first[:300]}; "
                                  f"re-export the model") from None

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
    runs_engines = True

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
        self.engines = {name: TrtEngine(trt, read_verified(folder, engines[name], name)) for name in ("density", "sample")}

    def _density(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.engines["density"].run({"x": x})
        return out["log_prob"], out["latent"]

    def _sample(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:
        feeds = {f"noise_{i}": z for i, z in enumerate(noise)}
        feeds["temperature"] = np.asarray([temperature], np.float32)
        return self.engines["sample"].run(feeds)["x"]


_RUNNERS: dict[str, type[ExportedFlow]] = {cls.backend: cls for cls in (OrtFlow, TrtFlow)}


def load(
    path: str | os.PathLike,
    backend: str = "onnxruntime",
    device: str | None = None,
    intra_op_threads: int | None = None,
) -> ExportedFlow:
    """Load an export folder (with manifest.json). device defaults to the backend's first (onnxruntime: cpu)."""
    if backend not in _RUNNERS:
        raise InputError(f"backend must be one of {tuple(_RUNNERS)}, got {backend!r}")
    native = registry.spec(backend).devices
    device = device or native[0]
    if device not in DEVICES:
        raise InputError(f"device must be one of {DEVICES}, got {device!r}")
    if device not in native:
        where = "the GPU" if native == ("cuda",) else ", ".join(native)
        raise InputError(f"the {backend} backend runs on {where}: use device={native[0]!r} "
                         f"(or backend='onnxruntime' on CPU)")
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    manifest = Manifest.load(folder)
    if _RUNNERS[backend].runs_engines:
        return TrtFlow(folder, manifest, device)
    return OrtFlow(folder, manifest, device, intra_op_threads)


# --- nfkd.inference loaders: a checkpoint or Flow is exported (parity-gated) first --------------
def _folder(source, options: dict[str, Any], engines: bool) -> tuple[Path, dict[str, Any] | None]:
    """(export folder, parity re-check or None): the given folder, or one exported (parity-gated)
    into ``export_dir`` / the cache and re-checked against the checkpoint when reused."""
    cache_dir, export_dir = options.get("cache_dir"), options.get("export_dir")
    if source.export_folder is not None:
        return source.export_folder, None
    if source.checkpoint is not None:
        return ensure_verified_export(source.checkpoint, cache_dir, engines=engines, folder=export_dir)
    return export_flow(source.flow, cache_dir, engines=engines, folder=export_dir)


def _note_recheck(runner: ExportedFlow, recheck: dict[str, Any] | None) -> ExportedFlow:
    parity = runner.meta.extra["export"]["parity"] = dict(runner.meta.extra["export"]["parity"])
    parity["rechecked"] = recheck is not None
    if recheck is not None:
        parity["recheck"] = recheck
    return runner


def load_onnxruntime(source, device: str, threads: int | None, options: dict[str, Any]) -> ExportedFlow:
    folder, recheck = _folder(source, options, engines=False)
    return _note_recheck(load(folder, backend=OrtFlow.backend, device=device, intra_op_threads=threads), recheck)


def load_tensorrt(source, device: str, threads: int | None, options: dict[str, Any]) -> ExportedFlow:
    if not device.startswith("cuda"):
        raise InputError("the TensorRT backend runs on the GPU: use device='cuda'")
    folder, recheck = _folder(source, options, engines=True)
    return _note_recheck(load(folder, backend=TrtFlow.backend, device="cuda"), recheck)
