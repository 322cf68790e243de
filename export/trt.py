"""TensorRT engines from the exported ONNX graphs, parity-checked on the GPU.

    python -m export.trt student.pt [-o DIR] [--fp16] [--min-batch 1 --opt-batch 256 --max-batch 4096]

Steps: ONNX export (``export.onnx``, float32 graphs, parity-gated on CPU; an existing export of the
same checkpoint in DIR is reused) -> ``trt.Builder`` + ``trt.OnnxParser`` -> builder config (workspace
pool limit, FP16 flag with ``--fp16``, one optimization profile over the dynamic batch of every
input, a timing cache persisted as ``DIR/timing.cache``) -> ``build_serialized_network`` ->
``density.plan`` / ``sample.plan`` beside ``manifest.json``. The engines are then run on the GPU
(torch CUDA tensors as buffers, ``set_tensor_address`` + ``execute_async_v3``) through the same
parity gate against the eager float64 flow (float16 tolerance with ``--fp16``); only then are the
plans moved into place and recorded in the manifest (``engines``).

``--fp16`` builds from the float32 graph with TensorRT's FP16 builder flag (TensorRT picks half
kernels per layer; inputs and outputs stay float32). Engines are specific to the GPU model and
TensorRT version they were built with (both recorded in the manifest).

TensorRT is imported lazily. Without it (or without a CUDA GPU) the CLI prints one line saying
what to install and exits with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from nfkd.errors import ExportError, NfkdError
from nfkd.progress import phase

__all__ = ["TensorRTUnavailable", "require_tensorrt", "build_engine", "TrtEngine", "build_engines", "main"]

TRT_INSTALL_HINT = (
    "TensorRT is not installed: pip install 'nfkd[gpu]' (tensorrt>=10) on a machine with an NVIDIA GPU"
)
CUDA_HINT = (
    "CUDA is not available to PyTorch: TensorRT engines need an NVIDIA GPU, its driver and a CUDA build of "
    "torch (pip install torch --index-url https://download.pytorch.org/whl/cu124)"
)
TIMING_CACHE = "timing.cache"
PLAN_FILES = {"density": "density.plan", "sample": "sample.plan"}
EXIT_UNAVAILABLE = 2


class TensorRTUnavailable(ExportError):
    """TensorRT or a CUDA device is missing: the message names what to install."""


def require_tensorrt():
    """Import tensorrt (>= 8.5 for the name-based tensor API) and check that CUDA is usable."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional dependency, imported lazily on purpose
    except ImportError:
        raise TensorRTUnavailable(TRT_INSTALL_HINT) from None
    version = tuple(int(v) for v in trt.__version__.split(".")[:2] if v.isdigit())
    if version < (8, 5):
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} is too old (needs >= 8.5, tested API of 10.x): pip install -U 'tensorrt>=10'"
        )
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable(CUDA_HINT)
    return trt


def _trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def _host_bytes(mem) -> bytes:
    """IHostMemory / buffer -> bytes."""
    return bytes(memoryview(mem))


def build_engine(
    trt,
    onnx_bytes: bytes,
    *,
    fp16: bool,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    timing_cache: Path | None = None,
    workspace_bytes: int = 4 << 30,
    what: str = "graph",
) -> bytes:
    """Parse an ONNX graph and build a serialized engine with one profile over the batch dimension."""
    logger = _logger(trt)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch (the flag is deprecated there); 8.x needs it.
    flags = 0 if _trt_major(trt) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "unknown error"
        raise ExportError(f"TensorRT's ONNX parser rejected the {what} graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = tuple(t.shape)
        if any(d < 0 for d in shape[1:]):
            raise ExportError(f"{what} input {t.name!r} has a dynamic non-batch dimension {shape}")
        if shape and shape[0] < 0:
            rest = tuple(shape[1:])
            profile.set_shape(t.name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    with phase(f"tensorrt: building the {what} engine (minutes on a first build)"):
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine for the {what} graph (see the TensorRT log above)")
    if timing_cache is not None:
        from nfkd.checkpoint import atomic_write_bytes

        atomic_write_bytes(timing_cache, _host_bytes(config.get_timing_cache().serialize()))
    return _host_bytes(plan)


class TrtEngine:
    """One deserialized engine + execution context; ``run`` takes numpy (or CUDA tensors), returns numpy."""

    def __init__(self, trt, plan: bytes) -> None:
        import torch

        self.trt, self.torch = trt, torch
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ExportError(
                "TensorRT could not deserialize the engine (built with another TensorRT version or GPU?); "
                "rebuild it with `python -m export.trt`"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}

    def _torch_dtype(self, dt):
        trt, torch = self.trt, self.torch
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.bool: torch.bool}
        if hasattr(trt, "int64"):
            table[trt.int64] = torch.int64
        if hasattr(trt, "bfloat16"):
            table[trt.bfloat16] = torch.bfloat16
        if dt not in table:
            raise ExportError(f"engine tensor dtype {dt} is not supported by this runner")
        return table[dt]

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        torch = self.torch
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise ExportError(f"engine inputs missing: {sorted(missing)}")
        keep = []  # device buffers must outlive the launch
        for name in self.inputs:
            t = torch.as_tensor(feeds[name]).to(device="cuda", dtype=self.dtypes[name]).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise ExportError(f"TensorRT rejected input shape {tuple(t.shape)} for {name!r} (outside the profile?)")
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ExportError(f"TensorRT could not infer the shape of output {name!r} ({shape})")
            t = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            outs[name] = t
            self.context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        del keep
        return {k: v.float().cpu().numpy() for k, v in outs.items()}


def _gpu_name() -> str:
    import torch

    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    return f"{p.name} (sm_{p.major}{p.minor})"


def _graphs_for(checkpoint_path, out_dir: Path, ckpt, *, max_batch: int, opset: int | None, maf_sampling: str):
    """The parity-gated ONNX export the engines are built from: reused when it covers the request."""
    from .manifest import reusable_export
    from .onnx import export_onnx

    manifest = reusable_export(out_dir, ckpt.sha256)
    from nfkd.flows import flow_class

    sequential = flow_class(ckpt.arch).sequential_direction() is not None  # MAF sampling, IAF density
    wanted = None if maf_sampling == "auto" or not sequential else maf_sampling
    if (
        manifest is None
        or manifest.max_batch < max_batch
        or (wanted and manifest.maf_sampling != wanted)
        or (opset and manifest.opset != opset)
    ):
        manifest = export_onnx(
            checkpoint_path, out_dir, fp16=False, opset=opset, maf_sampling=maf_sampling, max_batch=max(max_batch, 2)
        )
    return manifest


def _gate(trt, flow, engines: dict[str, "TrtEngine"], n_levels: int, *, fp16: bool, batches: list[int], device: str):
    """Run both engines on the GPU through the export parity gate (raises ExportError on failure)."""
    from . import parity

    def density(x):
        out = engines["density"].run({"x": x})
        return out["log_prob"], out["latent"]

    def sample(noise, temperature):
        feeds = {f"noise_{i}": z for i, z in enumerate(noise[:n_levels])}
        feeds["temperature"] = np.asarray([temperature], np.float32)
        return engines["sample"].run(feeds)["x"]

    return parity.check_parity(flow, density, sample, fp16=fp16, batches=batches,
                               runtime=f"TensorRT {trt.__version__} on {device}")


def _install(out_dir: Path, manifest, plans: dict[str, bytes], record: dict) -> None:
    """Move the gated plans into place, then record them in the manifest (plans first: a crash in
    between leaves a manifest that does not name them, never one naming missing files)."""
    from .artifacts import atomic_file
    from .manifest import sha256_bytes

    for name, plan in plans.items():
        atomic_file(out_dir / PLAN_FILES[name], plan)
    manifest.engines = {
        **{name: {"file": PLAN_FILES[name], "sha256": sha256_bytes(plan)} for name, plan in plans.items()},
        **record,
    }
    manifest.save(out_dir)


def build_engines(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    fp16: bool = False,
    min_batch: int = 1,
    opt_batch: int = 256,
    max_batch: int = 4096,
    opset: int | None = None,
    workspace_gib: float = 4.0,
    maf_sampling: str = "auto",
):
    """Export (or reuse) the ONNX graphs, build both engines, gate them on the GPU, record them in the manifest."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ExportError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    trt = require_tensorrt()  # fail fast, before minutes of export
    from nfkd.checkpoint import load_checkpoint

    from . import parity

    out_dir = Path(out_dir)
    ckpt = load_checkpoint(checkpoint_path)
    manifest = _graphs_for(checkpoint_path, out_dir, ckpt, max_batch=max_batch, opset=opset, maf_sampling=maf_sampling)
    plans = {
        name: build_engine(
            trt, (out_dir / manifest.graphs[name]["file"]).read_bytes(), fp16=fp16, min_batch=min_batch,
            opt_batch=opt_batch, max_batch=max_batch, timing_cache=out_dir / TIMING_CACHE,
            workspace_bytes=int(workspace_gib * (1 << 30)), what=name,
        )
        for name in ("density", "sample")
    }
    device = _gpu_name()
    res = _gate(trt, ckpt.flow, {name: TrtEngine(trt, plan) for name, plan in plans.items()},
                len(manifest.noise_shapes), fp16=fp16,
                batches=sorted({min_batch, min(7, max_batch), max_batch} - {0}), device=device)
    _install(out_dir, manifest, plans, {
        "fp16": bool(fp16),
        "profile": {"min": min_batch, "opt": opt_batch, "max": max_batch},
        "tensorrt": trt.__version__,
        "device": device,
        "timing_cache": TIMING_CACHE,
        "workspace_gib": workspace_gib,
        "parity": res,
        "tolerance": {**parity.tolerance_for(fp16), "definition": parity.TOLERANCE_DEFINITION},
    })
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m export.trt",
        description="Build TensorRT engines (density.plan, sample.plan) for an nfkd checkpoint, parity-checked on the GPU.",
    )
    ap.add_argument("checkpoint", help="nfkd checkpoint (e.g. student.pt)")
    ap.add_argument("-o", "--out", help="export folder (default: <checkpoint stem>-export beside it)")
    ap.add_argument("--fp16", action="store_true", help="allow FP16 kernels (inputs/outputs stay float32)")
    ap.add_argument("--min-batch", type=int, default=1)
    ap.add_argument("--opt-batch", type=int, default=256)
    ap.add_argument("--max-batch", type=int, default=4096)
    ap.add_argument("--opset", type=int, default=None, help="ONNX opset when the graphs are (re)exported")
    ap.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace memory pool limit")
    ap.add_argument("--maf-sampling", choices=["auto", "loop", "unrolled"], default="auto",
                    help="MAF sampling graph form (unrolled if a TensorRT version rejects the ONNX Loop)")
    args = ap.parse_args(argv)
    try:
        require_tensorrt()
    except TensorRTUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    from .onnx import default_out_dir

    out = Path(args.out) if args.out else default_out_dir(args.checkpoint)
    try:
        m = build_engines(args.checkpoint, out, fp16=args.fp16, min_batch=args.min_batch, opt_batch=args.opt_batch,
                          max_batch=args.max_batch, opset=args.opset, workspace_gib=args.workspace_gib,
                          maf_sampling=args.maf_sampling)
    except TensorRTUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    except NfkdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    p = m.engines["parity"]
    print(
        f"built density.plan and sample.plan in {out} (TensorRT {m.engines['tensorrt']}, {m.engines['device']}, "
        f"{'fp16' if args.fp16 else 'fp32'}, batch {args.min_batch}..{args.max_batch}); parity on GPU: log_prob rel err "
        f"{p['log_prob_max_rel_err']:.2g}, sample abs err {p['sample_max_abs_err']:.2g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
