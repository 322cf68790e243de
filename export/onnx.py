"""ONNX export of a trained flow: ``density.onnx`` and ``sample.onnx`` with a dynamic batch, gated by parity.

    python -m export.onnx student.pt [-o DIR] [--fp16] [--opset N] [--maf-sampling auto|loop|unrolled]

Graphs (batch dimension ``B`` dynamic, everything else static):

- ``density.onnx``: ``x`` [B, *event_shape] -> ``log_prob`` [B] (nats, user units) and ``latent``
  [B, D] (all levels' standardized noise, flattened per level and concatenated in level order;
  ``manifest.latent_layout`` gives each level's offset and shape);
- ``sample.onnx``: ``noise_0`` .. ``noise_{L-1}`` (shapes from ``flow.noise_shapes``) and
  ``temperature`` [1] -> ``x`` [B, *event_shape]. Noise is an input (graphs stay deterministic;
  runtimes draw it with numpy).

Both graphs are traced from ``nfkd.fold.fold(flow)`` -- the one inference form -- never from a
second copy of the model. MAF sampling needs D sequential MADE passes per block; it is exported
either as an ONNX ``Loop`` (``torch.while_loop``; one MADE body per block) or unrolled (D copies
per block). ``'auto'`` picks the loop: it measured faster in ONNX Runtime (see README) and its graph
and export time do not grow with D. An IAF is the mirror image: its *sampling* graph is one MADE
pass per block (no loop), and ``--maf-sampling`` chooses the form of its sequential *density* graph.

Every export runs the parity gate (``export.parity``) in ONNX Runtime against the eager float64
flow. Files are written to a temporary folder beside ``out_dir`` and moved into place only after
the gate passes; on failure an ``ExportError`` is raised and nothing is left behind.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from torch import Tensor, nn

import nfkd
from nfkd.checkpoint import load_checkpoint
from nfkd.errors import ExportError, NfkdError
from nfkd.flows import ARCHITECTURES, Flow
from nfkd.flows.base import LOG_2PI
from nfkd.flows.layers import MADE
from nfkd.fold import fold
from nfkd.progress import phase

from . import parity
from .artifacts import staged_folder
from .check import check_tensorrt_compat
from .manifest import Manifest, sha256_bytes

__all__ = ["DensityGraph", "SampleGraph", "build_graphs", "checked_batches", "provenance", "ort_runners",
    "export_onnx", "default_out_dir", "summary", "main"]

DENSITY_FILE = "density.onnx"
SAMPLE_FILE = "sample.onnx"
DEFAULT_MAX_BATCH = 65536
MAF_SAMPLING_CHOICES = ("auto", "loop", "unrolled")
# What 'auto' resolves to, from the ORT CPU measurements in export/README.md (loop was faster at
# batch 1 and 4096 for D=8 and D=63, and exports in seconds where unrolled D=63 takes minutes).
MAF_SAMPLING_AUTO = "loop"
GRAPHS = ("density", "sample")
# Engines and caches that an older export may have left; stale once the graphs change.
STALE_ON_REEXPORT = ("density.plan", "sample.plan")


def _set_sequential_mode(folded: Flow, mode: str | None) -> None:
    """Every MADE's sequential direction (MAF sampling, IAF density) as an ONNX Loop or unrolled."""
    for m in folded.modules():
        if isinstance(m, MADE):
            m.inverse_mode = "graph_loop" if mode == "loop" else "python"


# --------------------------------------------------------------------------------------------
# The traced modules: thin wrappers around the folded flow (dtype casts at the boundary only).
# --------------------------------------------------------------------------------------------
class DensityGraph(nn.Module):
    """x -> (log_prob, latent). Float32 at the boundary; the Gaussian term is reduced in float32."""

    def __init__(self, folded: Flow, dim: int, sequential: str | None = None) -> None:
        super().__init__()
        self.folded = folded
        _set_sequential_mode(folded, sequential)
        self.dtype = folded.dtype
        self.gauss_const = 0.5 * dim * LOG_2PI  # sum over levels of log N's normalizer

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.folded(x.to(self.dtype))
        flat = [z.flatten(1).float() for z in out.latents]
        latent = flat[0] if len(flat) == 1 else torch.cat(flat, 1)
        log_prob = out.logdet.float() - 0.5 * (latent * latent).sum(1) - self.gauss_const
        return log_prob, latent


class SampleGraph(nn.Module):
    """(noise per level, temperature) -> x, i.e. ``folded.inverse([z * temperature])``.

    MAF's sequential MADE passes become one ONNX ``Loop`` per block when the folded copy's MADEs
    are switched to ``inverse_mode = "graph_loop"`` (an option of the one MADE, not a copy).
    """

    def __init__(self, folded: Flow, maf_sampling: str | None) -> None:
        super().__init__()
        self.folded = folded
        self.dtype = folded.dtype
        _set_sequential_mode(folded, maf_sampling)

    def forward(self, noise: list[Tensor], temperature: Tensor) -> Tensor:
        t = temperature.to(self.dtype)
        return self.folded.inverse([n.to(self.dtype) * t for n in noise]).x.float()


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx / onnxscript log optional-dependency (torchvision) and opset-conversion notices; keep
    the CLI to its one summary line. Errors still surface as exceptions."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, old):
            lg.setLevel(lvl)


_REGISTRY_CACHE: dict[Any, Any] = {}


@contextlib.contextmanager
def _reuse_torchlib_registry():
    """torch.onnx rebuilds its aten->ONNX registry (~2 s) on every export call; reuse one per opset.

    Only an optimization: the registry is read-only while exporting without a custom translation
    table. Guarded, so that a torch release without this private hook simply exports uncached.
    """
    try:
        from torch.onnx._internal.exporter import _registration as reg

        cls = reg.ONNXRegistry
        original = cls.__dict__["from_torchlib"]
        build = original.__func__
    except Exception:  # pragma: no cover - private API moved: export uncached
        yield
        return

    def cached(klass, *args, **kwargs):
        key = (klass, args, tuple(sorted(kwargs.items())))
        if key not in _REGISTRY_CACHE:
            _REGISTRY_CACHE[key] = build(klass, *args, **kwargs)
        return _REGISTRY_CACHE[key]

    cls.from_torchlib = classmethod(cached)
    try:
        yield
    finally:
        cls.from_torchlib = original


def _to_onnx(
    module: nn.Module, args: tuple, dynamic_shapes: Any, input_names: list[str], output_names: list[str],
    opset: int | None, what: str,
) -> onnx.ModelProto:
    try:
        with _quiet_exporter(), _reuse_torchlib_registry(), torch.no_grad():
            prog = torch.onnx.export(
                module.eval(), args, dynamo=True, dynamic_shapes=dynamic_shapes, input_names=input_names,
                output_names=output_names, opset_version=opset, verbose=False, optimize=True, report=False,
            )
    except Exception as exc:  # torch.export / onnxscript raise many types; report one line
        first = next((ln for ln in str(exc).strip().splitlines() if ln.strip()), type(exc).__name__)
        raise ExportError(f"torch.onnx.export (dynamo) failed for the {what} graph: {type(exc).__name__}: {first}") from exc
    model = prog.model_proto
    _name_batch_dims(model, {*input_names, *output_names})
    return model


def _name_batch_dims(model: onnx.ModelProto, names: set[str]) -> None:
    """Write the dynamic batch dimension of every graph input / output as 'B'."""
    for v in list(model.graph.input) + list(model.graph.output):
        if v.name in names and v.type.tensor_type.shape.dim:
            d0 = v.type.tensor_type.shape.dim[0]
            if not d0.HasField("dim_value"):
                d0.dim_param = "B"


def _save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Serialize one graph (weights inline). Tests patch this to tamper with a graph before the gate."""
    onnx.save_model(model, str(path))


def _io_spec(name: str, shape: Sequence[int | str], dtype: str = "float32") -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "dtype": dtype}


def _opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _resolve_maf_sampling(flow: Flow, maf_sampling: str) -> str | None:
    """The form of the flow's sequential direction (MAF sampling, IAF density); None for a flow without one."""
    if maf_sampling not in MAF_SAMPLING_CHOICES:
        raise ExportError(f"maf_sampling must be one of {MAF_SAMPLING_CHOICES}, got {maf_sampling!r}")
    if flow.sequential_direction() is None:
        return None
    return MAF_SAMPLING_AUTO if maf_sampling == "auto" else maf_sampling


def build_graphs(
    flow: Flow, fp16: bool = False, opset: int | None = None, maf_sampling: str = "auto",
    max_batch: int = DEFAULT_MAX_BATCH, which: Sequence[str] = GRAPHS,
) -> tuple[dict[str, onnx.ModelProto], str | None, list[str]]:
    """Trace fold(flow) into the density and sample ONNX models (``which``: both, or one for a pair export).

    Returns (models, the sequential direction's form in the graphs built (None: they have none), notes)."""
    flow = flow.eval()
    folded = fold(flow, torch.float16 if fp16 else torch.float32)
    mode = _resolve_maf_sampling(flow, maf_sampling)
    sequential = flow.sequential_direction()
    notes: list[str] = []
    ex_b = 3  # example batch (not 0/1, which torch.export would specialize)
    batch = torch.export.Dim("B", min=1, max=max(2, int(max_batch)))
    x = torch.zeros(ex_b, *flow.event_shape)

    def density_graph(m: str | None) -> onnx.ModelProto:
        return _to_onnx(DensityGraph(folded, flow.dim, m), (x,), {"x": {0: batch}}, ["x"], ["log_prob", "latent"],
                        opset, "density")

    noise = [torch.zeros(s) for s in flow.noise_shapes(ex_b)]
    names = [f"noise_{i}" for i in range(len(noise))]
    dyn = ([{0: batch} for _ in noise], None)
    args = (noise, torch.ones(1))

    def sample_graph(m: str | None) -> onnx.ModelProto:
        return _to_onnx(SampleGraph(folded, m), args, dyn, [*names, "temperature"], ["x"], opset, "sample")

    graphs = {}
    for what, build in (("density", density_graph), ("sample", sample_graph)):
        if what not in which:
            continue
        m = mode if what == sequential else None
        try:
            graphs[what] = build(m)
        except ExportError as exc:
            if not (m == "loop" and maf_sampling == "auto"):
                raise
            notes.append(f"loop form failed to export ({exc}); fell back to unrolled")
            mode = "unrolled"
            graphs[what] = build(mode)
    for m in graphs.values():
        m.metadata_props.add(key="nfkd.arch", value=flow.arch)
        m.metadata_props.add(key="nfkd.version", value=nfkd.__version__)
    return graphs, mode if sequential in which else None, notes


def ort_runners(density_bytes: bytes, sample_bytes: bytes, n_levels: int, threads: int | None = None):
    """(density(x) -> (log_prob, latent), sample(noise, temperature) -> x) on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    dens = ort.InferenceSession(density_bytes, so, providers=["CPUExecutionProvider"])
    samp = ort.InferenceSession(sample_bytes, so, providers=["CPUExecutionProvider"])
    names = [f"noise_{i}" for i in range(n_levels)]

    def density(x: np.ndarray):
        lp, lat = dens.run(["log_prob", "latent"], {"x": np.ascontiguousarray(x, np.float32)})
        return lp, lat

    def sample(noise: Sequence[np.ndarray], temperature: float) -> np.ndarray:
        feeds = {n: np.ascontiguousarray(z, np.float32) for n, z in zip(names, noise)}
        feeds["temperature"] = np.asarray([temperature], np.float32)
        return samp.run(["x"], feeds)[0]

    return density, sample


def _versions() -> dict[str, str]:
    import onnxruntime as ort

    out = {"nfkd": nfkd.__version__, "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    try:
        import onnxscript

        out["onnxscript"] = onnxscript.__version__
    except Exception:  # pragma: no cover - onnxscript is a dependency of the dynamo exporter
        pass
    return out


def _latent_layout(flow: Flow) -> list[dict[str, Any]]:
    layout, off = [], 0
    for lvl, s in enumerate(flow.noise_shapes(1)):
        n = math.prod(s[1:])
        layout.append({"level": lvl, "input": f"noise_{lvl}", "shape": list(s[1:]), "offset": off, "size": n})
        off += n
    return layout


def _gate(flow: Flow, blobs: dict[str, bytes], fp16: bool, batches: Sequence[int]) -> dict[str, Any]:
    """The parity gate on the exact serialized bytes, in ONNX Runtime (raises ExportError)."""
    try:
        density, sample = ort_runners(blobs["density"], blobs["sample"], len(flow.noise_shapes(1)))
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load the exported graphs: {str(exc).strip().splitlines()[0]}") from exc
    try:
        return parity.check_parity(flow, density, sample, fp16=fp16, batches=batches)
    except ExportError:
        raise
    except Exception as exc:  # ORT failing at run time is a failed gate, too
        raise ExportError(f"parity gate could not run the graphs in ONNX Runtime: {str(exc).strip().splitlines()[0]}") from exc


def _graph_entries(flow: Flow, models: dict[str, onnx.ModelProto], blobs: dict[str, bytes]) -> dict[str, Any]:
    """Manifest entries: file, hash, I/O names and shapes (batch 'B'), node count, TensorRT check."""
    event = list(flow.event_shape)
    noise_shapes = [list(s[1:]) for s in flow.noise_shapes(1)]
    graphs = {
        "density": {
            "file": DENSITY_FILE,
            "inputs": [_io_spec("x", ["B", *event])],
            "outputs": [_io_spec("log_prob", ["B"]), _io_spec("latent", ["B", flow.dim])],
        },
        "sample": {
            "file": SAMPLE_FILE,
            "inputs": [_io_spec(f"noise_{i}", ["B", *s]) for i, s in enumerate(noise_shapes)]
            + [_io_spec("temperature", [1])],
            "outputs": [_io_spec("x", ["B", *event])],
        },
    }
    for name, model in models.items():
        graphs[name].update(sha256=sha256_bytes(blobs[name]), nodes=len(model.graph.node),
                            tensorrt_check=check_tensorrt_compat(model))
    return graphs


def checked_batches(max_batch: int, parity_batches: Sequence[int] | None) -> list[int]:
    """The parity gate's batch sizes (default: ``parity.DEFAULT_BATCHES`` capped at ``max_batch``), checked."""
    if max_batch < 1:
        raise ExportError(f"max_batch must be positive, got {max_batch}")
    if parity_batches is None:  # the default set, capped at what the graphs are exported for
        parity_batches = sorted({min(b, max_batch) for b in parity.DEFAULT_BATCHES})
    if any(b < 1 or b > max_batch for b in parity_batches):
        raise ExportError(f"parity batches {list(parity_batches)} must lie in [1, max_batch={max_batch}]")
    return list(parity_batches)


def provenance(fp16: bool) -> dict[str, Any]:
    """The manifest fields every export shares: the tolerance it was gated at, versions, time."""
    return dict(
        tolerance={**parity.tolerance_for(fp16), "definition": parity.TOLERANCE_DEFINITION,
                   "precision": "float16 graph, float32 inputs/outputs" if fp16 else "float32"},
        versions=_versions(), created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def export_onnx(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    fp16: bool = False,
    opset: int | None = None,
    maf_sampling: str = "auto",
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    parity_batches: Sequence[int] | None = None,
) -> Manifest:
    """Export ``checkpoint_path`` to ``out_dir/{density,sample}.onnx`` + ``manifest.json``, parity-gated.

    Raises ``ExportError`` (nothing written) when tracing fails or the graphs miss the documented
    tolerance against the eager float64 flow; ``CheckpointError`` for an unreadable checkpoint.
    """
    ckpt = load_checkpoint(checkpoint_path)
    flow = ckpt.flow.eval()
    parity_batches = checked_batches(max_batch, parity_batches)
    with phase(f"export: tracing the {flow.arch} density and sampling graphs"):
        models, mode, notes = build_graphs(flow, fp16=fp16, opset=opset, maf_sampling=maf_sampling, max_batch=max_batch)
    files = {"density": DENSITY_FILE, "sample": SAMPLE_FILE}
    with staged_folder(Path(out_dir), stale=STALE_ON_REEXPORT) as tmp:
        blobs: dict[str, bytes] = {}
        for name, model in models.items():
            _save_graph(model, tmp / files[name])
            blobs[name] = (tmp / files[name]).read_bytes()  # the exact bytes that are gated and hashed
        with phase(f"export: parity gate in ONNX Runtime at batches {list(parity_batches)}"):
            res = _gate(flow, blobs, fp16, parity_batches)
        if notes:
            res["notes"] = notes
        manifest = Manifest(
            arch=flow.arch, config=dict(ckpt.config), event_shape=list(flow.event_shape),
            noise_shapes=[list(s[1:]) for s in flow.noise_shapes(1)], latent_layout=_latent_layout(flow),
            dim=int(flow.dim), max_batch=int(max_batch), opset=_opset_of(models["density"]), fp16=bool(fp16),
            maf_sampling=mode, graphs=_graph_entries(flow, models, blobs),
            source={"checkpoint": Path(checkpoint_path).name, "sha256": ckpt.sha256}, parity=res,
            **provenance(fp16),
        )
        manifest.save(tmp)
    return manifest


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def default_out_dir(checkpoint_path: str | os.PathLike) -> Path:
    p = Path(checkpoint_path)
    return p.with_name(f"{p.stem}-export")


def _batches(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _sequential_note(manifest: Manifest) -> str:
    if not manifest.maf_sampling:
        return ""
    cls = ARCHITECTURES.get(manifest.arch)
    direction = cls.sequential_direction() if cls is not None else None
    return f", {manifest.arch.upper()} {direction or 'sequential direction'} {manifest.maf_sampling}"


def summary(manifest: Manifest, out_dir: Path) -> str:
    p = manifest.parity
    return (
        f"exported {manifest.arch} to {out_dir} (density.onnx, sample.onnx, manifest.json; opset {manifest.opset}"
        f"{', fp16' if manifest.fp16 else ''}{_sequential_note(manifest)}); "
        f"parity vs eager float64 at batches {p['batches']}: log_prob rel err {p['log_prob_max_rel_err']:.2g} "
        f"(tol {manifest.tolerance['log_prob_rel']:g}), sample abs err {p['sample_max_abs_err']:.2g} "
        f"(tol {manifest.tolerance['sample_abs']:g} + {manifest.tolerance['sample_rel']:g}*|x|)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m export.onnx",
        description="Export an nfkd checkpoint to ONNX (density.onnx + sample.onnx), gated by parity with eager PyTorch.",
    )
    ap.add_argument("checkpoint", help="nfkd checkpoint (e.g. student.pt), or a pair bundle (python -m nfkd pair): "
                                       "density.onnx from its density model, sample.onnx from its sampler")
    ap.add_argument("-o", "--out", help="output folder (default: <checkpoint stem>-export beside it)")
    ap.add_argument("--fp16", action="store_true", help="float16 graph (inputs/outputs stay float32)")
    ap.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    ap.add_argument("--maf-sampling", choices=MAF_SAMPLING_CHOICES, default="auto",
                    help="MAF sampling graph (IAF: density graph): ONNX Loop or unrolled D passes (auto: loop)")
    ap.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="largest batch runtimes accept")
    ap.add_argument("--parity-batches", type=_batches, default=None,
                    help="batch sizes for the parity gate (default 1,7,128)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else default_out_dir(args.checkpoint)
    from nfkd.inference.bundle import is_pair_bundle

    pair = is_pair_bundle(args.checkpoint)
    if pair:
        from .onnx_pair import export_pair_onnx as export
        from .onnx_pair import pair_summary as describe
    else:
        export, describe = export_onnx, summary
    try:
        manifest = export(args.checkpoint, out, fp16=args.fp16, opset=args.opset, maf_sampling=args.maf_sampling,
                          max_batch=args.max_batch, parity_batches=args.parity_batches)
    except NfkdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe(manifest, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
