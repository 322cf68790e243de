"""A Triton Inference Server model repository from a checkpoint or an export folder.

    python -m export.triton_model_repository student.pt -o model_repository/            # exports first (parity-gated, cached)
    python -m export.triton_model_repository student-export/ -o model_repository/ --cpu
    tritonserver --model-repository=model_repository/

writes two models (``<name>`` defaults to the checkpoint's stem)::

    model_repository/
      <name>_density/config.pbtxt   1/model.onnx  (or 1/model.plan)   nfkd_manifest.json
      <name>_sample/config.pbtxt    1/model.onnx  (or 1/model.plan)   nfkd_manifest.json

Platform: ``onnxruntime_onnx`` with ``model.onnx``; ``tensorrt_plan`` with ``model.plan`` when the
export folder holds TensorRT engines (``python -m export.trt``) and ``--platform`` is ``auto`` or
``tensorrt`` (never with ``--cpu``: engines run on the GPU they were built for). ``--platform python``
writes the Python-backend variant instead (``export.triton_python``): nfkd's runner on CPU, the one
variant the CPU ``tritonserver`` of the ``nvidia-pytriton`` wheel loads (it has no onnxruntime or
tensorrt backend); tests/test_triton_engine.py serves it end to end on the real server.

Batching (Triton: with ``max_batch_size > 0`` every input and output gets an implicit leading
batch dimension, which ``dims`` leave out, and the model itself must declare that dimension as
dynamic):

- ``<name>_density``: ``x`` [B, *event] -> ``log_prob`` [B], ``latent`` [B, D]. Batchable:
  ``max_batch_size`` = ``--max-batch`` (capped by the export's / engine profile's max batch),
  ``dynamic_batching`` merges concurrent requests. ``log_prob`` is [B] in the graph, and Triton
  does not allow empty ``dims``: it is declared ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``,
  so clients receive it as [B, 1].
- ``<name>_sample``: ``noise_0..noise_{L-1}`` [B, *noise shape], ``temperature`` [1] -> ``x``
  [B, *event]. ``temperature`` is one scalar per call, NOT batched ([1] in the graph, no batch
  dimension), so the model cannot satisfy Triton's batching contract: ``max_batch_size: 0`` with
  explicit full shapes (``dims: [ -1, ... ]`` for noise and ``x``, ``[ 1 ]`` for temperature) and no
  dynamic batcher. That is also the correct semantics: two requests at different temperatures
  must not be merged into one call, and one request already carries any number of rows. (A
  batched temperature would need a different sample graph; an ensemble cannot add the missing
  batch dimension to a composing model that lacks it.) Clients draw the noise themselves
  (standard normal, float32, one array per level; shapes in ``nfkd_manifest.json``).

Every graph file is checked against the SHA-256 in the export's manifest, and every input /
output name, dtype and shape written to ``config.pbtxt`` is cross-checked against the ONNX graph
itself before anything is written.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from nfkd.errors import ExportError, InputError, NfkdError

from .artifacts import staged_folder, verified_path
from .manifest import Manifest

__all__ = ["check_config_against_onnx", "density_config", "main", "onnx_io", "parse_pbtxt", "sample_config",
           "to_pbtxt", "write_repository"]

PLATFORM_ONNX = "onnxruntime_onnx"
PLATFORM_TRT = "tensorrt_plan"
DEFAULT_MAX_BATCH = 4096
DEFAULT_QUEUE_DELAY_US = 2000
TRITON_DTYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "bfloat16": "TYPE_BF16",
    "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
}
ONNX_ELEM_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 7: "int64", 6: "int32", 3: "int8",
                    2: "uint8", 9: "bool"}
MANIFEST_COPY = "nfkd_manifest.json"


# --------------------------------------------------------------------------------------------
# config.pbtxt: model -> text, and a small parser for that text (protobuf text format subset)
# --------------------------------------------------------------------------------------------
def _fmt_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, Enum):
        return v.name
    return json.dumps(str(v))


class Enum:
    """An enum value (written bare, e.g. TYPE_FP32), as opposed to a quoted string."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Enum) and other.name == self.name or other == self.name

    def __repr__(self) -> str:
        return self.name


def to_pbtxt(msg: dict[str, Any], indent: int = 0) -> str:
    """dict -> protobuf text format. Lists of dicts become ``name [ {...}, {...} ]``; lists of scalars
    ``name: [ a, b ]``; dicts ``name { ... }``."""
    pad = "  " * indent
    lines = []
    for key, value in msg.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{")
            lines.append(to_pbtxt(value, indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key} [")
            for i, v in enumerate(value):
                lines.append(f"{pad}  {{")
                lines.append(to_pbtxt(v, indent + 2))
                lines.append(f"{pad}  }}{',' if i < len(value) - 1 else ''}")
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            inner = ", ".join(_fmt_scalar(v) for v in value)
            lines.append(f"{pad}{key}: [ {inner} ]" if inner else f"{pad}{key}: [ ]")
        else:
            lines.append(f"{pad}{key}: {_fmt_scalar(value)}")
    return "\n".join(line for line in lines if line != "")


_TOKEN = re.compile(r"""\s*(?:(\#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([A-Za-z_][A-Za-z0-9_.]*)|([-+]?[0-9][0-9.eE+-]*))""")


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"config.pbtxt: cannot parse near {text[pos:pos + 30]!r}")
        pos = m.end()
        if m.group(1) is None:
            out.append(m.group(0).strip())
    return out


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Parse the protobuf text-format subset that ``to_pbtxt`` writes (and Triton's docs use).

    Repeated fields (``input [ {..}, {..} ]``, ``dims: [ 1, 2 ]``, or the same field name twice)
    become lists; messages become dicts; strings are unquoted; numbers become int / float; bare
    identifiers (enums, true/false) stay strings / bools.

    Why our own parser: the tests read back what was written and compare it with the ONNX graphs. The
    real server checks the text's syntax and field names (tests/test_triton_engine.py), but with no
    onnxruntime / tensorrt backend in the CPU wheel it cannot check these configs against the graphs.
    """
    return _PbtxtParser(_tokens(text)).message(None)


class _PbtxtParser:
    """Recursive descent over the tokens of ``_tokens``: message := (name [':'] value [',' | ';'])*."""

    def __init__(self, toks: list[str]) -> None:
        self.toks, self.pos = toks, 0

    def peek(self) -> str | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        if self.pos >= len(self.toks):
            raise ValueError("config.pbtxt: unexpected end of text")
        tok = self.toks[self.pos]
        if expected is not None and tok != expected:
            raise ValueError(f"config.pbtxt: expected {expected!r}, got {tok!r}")
        self.pos += 1
        return tok

    @staticmethod
    def scalar(tok: str) -> Any:
        if tok.startswith('"'):
            return json.loads(tok)
        if tok in ("true", "false"):
            return tok == "true"
        if re.fullmatch(r"[-+]?[0-9]+", tok):
            return int(tok)
        if re.fullmatch(r"[-+]?[0-9][0-9.eE+-]*", tok):
            return float(tok)
        return tok

    def value(self) -> Any:
        tok = self.peek()
        if tok == "{":
            self.take("{")
            return self.message("}")
        if tok != "[":
            return self.scalar(self.take())
        self.take("[")
        items = []
        while self.peek() != "]":
            items.append(self.value())
            if self.peek() == ",":
                self.take(",")
        self.take("]")
        return items

    def message(self, end: str | None) -> dict[str, Any]:
        msg: dict[str, Any] = {}
        while self.peek() != end:
            if self.peek() is None:
                raise ValueError("config.pbtxt: unexpected end of text (missing '}')")
            key = self.take()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"config.pbtxt: expected a field name, got {key!r}")
            if self.peek() == ":":
                self.take(":")
            v = self.value()
            if key in msg:  # repeated field written twice
                prev = msg[key]
                msg[key] = (prev if isinstance(prev, list) else [prev]) + (v if isinstance(v, list) else [v])
            else:
                msg[key] = v
            if self.peek() in (",", ";"):
                self.take()
        if end is not None:
            self.take(end)
        return msg


# --------------------------------------------------------------------------------------------
# Model configs from the manifest
# --------------------------------------------------------------------------------------------
def _tensor(spec: dict[str, Any], batched: bool) -> dict[str, Any]:
    """A manifest I/O spec ({"name", "shape" with "B", "dtype"}) -> a Triton input/output entry."""
    shape = list(spec["shape"])
    dtype = TRITON_DTYPES.get(spec.get("dtype", "float32"))
    if dtype is None:
        raise ExportError(f"tensor {spec['name']!r} has dtype {spec.get('dtype')!r}, which Triton cannot serve")
    entry: dict[str, Any] = {"name": spec["name"], "data_type": Enum(dtype)}
    if batched:
        if not shape or shape[0] != "B":
            raise ExportError(f"tensor {spec['name']!r} has shape {shape} without a leading batch dimension; "
                              f"it cannot be part of a batched Triton model")
        rest = [int(v) for v in shape[1:]]
        if rest:
            entry["dims"] = rest
        else:  # [B] in the graph: Triton needs non-empty dims -> [1] reshaped to []
            entry["dims"] = [1]
            entry["reshape"] = {"shape": []}
    else:
        entry["dims"] = [-1 if v == "B" else int(v) for v in shape]
    return entry


def density_config(manifest: Manifest, name: str, platform: str, max_batch: int, preferred: Sequence[int],
                   queue_delay_us: int, kind: str, instances: int) -> dict[str, Any]:
    g = manifest.graphs["density"]
    return {
        "name": name,
        "platform": platform,
        "max_batch_size": int(max_batch),
        "input": [_tensor(t, True) for t in g["inputs"]],
        "output": [_tensor(t, True) for t in g["outputs"]],
        "dynamic_batching": {
            "preferred_batch_size": [int(v) for v in preferred],
            "max_queue_delay_microseconds": int(queue_delay_us),
        },
        "instance_group": [{"count": int(instances), "kind": Enum(kind)}],
    }


def sample_config(manifest: Manifest, name: str, platform: str, kind: str, instances: int) -> dict[str, Any]:
    """max_batch_size 0: temperature has no batch dimension (see the module docstring)."""
    g = manifest.graphs["sample"]
    return {
        "name": name,
        "platform": platform,
        "max_batch_size": 0,
        "input": [_tensor(t, False) for t in g["inputs"]],
        "output": [_tensor(t, False) for t in g["outputs"]],
        "instance_group": [{"count": int(instances), "kind": Enum(kind)}],
    }


def onnx_io(path: str | os.PathLike) -> dict[str, dict[str, dict[str, Any]]]:
    """{"inputs"|"outputs": {name: {"shape": [dims, dynamic ones as their name], "dtype": str}}} of a graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(v) -> dict[str, Any]:
        tt = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?") for d in tt.shape.dim]
        return {"shape": dims, "dtype": ONNX_ELEM_DTYPES.get(tt.elem_type, f"onnx:{tt.elem_type}")}

    inits = {i.name for i in model.graph.initializer}
    return {
        "inputs": {v.name: spec(v) for v in model.graph.input if v.name not in inits},
        "outputs": {v.name: spec(v) for v in model.graph.output},
    }


def check_config_against_onnx(cfg: dict[str, Any], graph: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Problems (empty list: consistent) between a model config and the ONNX graph's declared I/O."""
    problems = []
    batched = int(cfg.get("max_batch_size", 0)) > 0
    for section, key in (("input", "inputs"), ("output", "outputs")):
        entries = cfg.get(section, [])
        names = [e["name"] for e in entries]
        if sorted(names) != sorted(graph[key]):
            problems.append(f"{section} names {sorted(names)} != graph {key} {sorted(graph[key])}")
            continue
        for e in entries:
            g = graph[key][e["name"]]
            want_dtype = TRITON_DTYPES.get(g["dtype"])
            if str(e["data_type"]) != want_dtype:
                problems.append(f"{e['name']}: data_type {e['data_type']} != graph {g['dtype']} ({want_dtype})")
            dims = list(e.get("reshape", {}).get("shape", e["dims"])) if "reshape" in e else list(e["dims"])
            full = (["B"] if batched else []) + dims
            gshape = g["shape"]
            ok = len(full) == len(gshape) and all(
                (isinstance(gd, str) and (cd == "B" or cd == -1)) or (cd == gd)
                for cd, gd in zip(full, gshape)
            )
            if batched and (not gshape or not isinstance(gshape[0], str)):
                ok = False
            if not ok:
                problems.append(f"{e['name']}: config shape {full} does not match graph shape {gshape}")
    return problems


# --------------------------------------------------------------------------------------------
# Writing the repository
# --------------------------------------------------------------------------------------------
def model_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-")
    if not name:
        raise InputError(f"cannot make a Triton model name from {text!r}; pass --name")
    return name


def _default_preferred(max_batch: int, opt: int | None) -> list[int]:
    sizes = {max_batch}
    if opt and opt < max_batch:
        sizes.add(int(opt))
    for v in (256, 1024):
        if v < max_batch:
            sizes.add(v)
    return sorted(sizes)


def write_repository(
    export_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    preferred_batch: Sequence[int] | None = None,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    cpu: bool = False,
    instances: int = 1,
    platform: str = "auto",
) -> dict[str, Any]:
    """Write ``<name>_density`` and ``<name>_sample`` into ``out_dir``; returns a summary.

    Other models already in ``out_dir`` are left alone; these two are replaced as a whole.
    """
    export_dir = Path(export_dir)
    manifest = Manifest.load(export_dir)
    use_trt = _use_tensorrt(manifest, export_dir, platform, cpu)
    if max_batch < 1 or instances < 1 or queue_delay_us < 0:
        raise InputError("max_batch and instances must be >= 1 and queue_delay_us >= 0")
    max_batch, preferred = _batching(manifest, use_trt, max_batch, preferred_batch)
    base = model_name(name or Path(manifest.source.get("checkpoint") or export_dir.name).stem)
    kind = "KIND_CPU" if cpu else "KIND_GPU"
    plat = PLATFORM_TRT if use_trt else PLATFORM_ONNX
    names = {"density": f"{base}_density", "sample": f"{base}_sample"}
    configs = {
        "density": density_config(manifest, names["density"], plat, max_batch, preferred, queue_delay_us, kind, instances),
        "sample": sample_config(manifest, names["sample"], plat, kind, instances),
    }
    sources = _checked_sources(export_dir, manifest, configs, use_trt)
    written = _write_models(Path(out_dir), export_dir, manifest, names, configs, sources, use_trt)
    return {"models": names, "paths": written, "platform": plat, "max_batch_size": max_batch,
            "preferred_batch_size": preferred, "instance_kind": kind, "configs": configs}


def _use_tensorrt(manifest: Manifest, export_dir: Path, platform: str, cpu: bool) -> bool:
    """Whether the repository serves TensorRT plans (else the ONNX graphs)."""
    if platform not in ("auto", "onnx", "tensorrt"):
        raise InputError(f"platform must be auto, onnx or tensorrt, got {platform!r}")
    has_engines = all(k in (manifest.engines or {}) for k in ("density", "sample"))
    if platform == "tensorrt" and not has_engines:
        raise ExportError(f"{export_dir} has no TensorRT engines; build them with "
                          f"`python -m export.trt <checkpoint> -o {export_dir}` or use --platform onnx")
    if platform == "tensorrt" and cpu:
        raise InputError("TensorRT plans run on the GPU only: drop --cpu, or use --platform onnx")
    return platform == "tensorrt" or (platform == "auto" and has_engines and not cpu)


def _batching(manifest: Manifest, use_trt: bool, max_batch: int,
              preferred_batch: Sequence[int] | None) -> tuple[int, list[int]]:
    """(max_batch_size within what the graphs / engine profile accept, preferred batch sizes)."""
    cap = int(manifest.max_batch)
    opt = None
    if use_trt:
        profile = manifest.engines.get("profile", {})
        cap = min(cap, int(profile.get("max", cap)))
        opt = profile.get("opt")
        if int(profile.get("min", 1)) > 1:
            raise ExportError(f"the TensorRT engines' profile starts at batch {profile['min']}; Triton sends batches "
                              f"from 1 -- rebuild with --min-batch 1")
    max_batch = min(int(max_batch), cap)
    preferred = sorted({int(v) for v in (preferred_batch or _default_preferred(max_batch, opt))})
    if any(v < 1 or v > max_batch for v in preferred):
        raise InputError(f"preferred batch sizes {preferred} must lie in [1, max_batch={max_batch}]")
    return max_batch, preferred


def _checked_sources(export_dir: Path, manifest: Manifest, configs: dict[str, Any], use_trt: bool) -> dict[str, Path]:
    """The verified graph (or plan) per model, its config cross-checked against the ONNX graph itself
    (the plans are built from these very graphs)."""
    sources: dict[str, Path] = {}
    for graph in ("density", "sample"):
        onnx_path = verified_path(export_dir, manifest.graphs[graph], graph)
        problems = check_config_against_onnx(configs[graph], onnx_io(onnx_path))
        if problems:
            raise ExportError(f"{graph} graph and manifest disagree: {'; '.join(problems)}; re-export the model")
        sources[graph] = verified_path(export_dir, manifest.engines[graph], f"{graph} engine") if use_trt else onnx_path
    return sources


def _write_models(out_dir: Path, export_dir: Path, manifest: Manifest, names: dict[str, str],
                  configs: dict[str, Any], sources: dict[str, Path], use_trt: bool) -> dict[str, str]:
    """Each model folder staged and installed whole; other models in ``out_dir`` are left alone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Written by `python -m export.triton_model_repository` (nfkd) from {export_dir.resolve()}\n"
        f"# checkpoint {manifest.source.get('checkpoint')} sha256 {manifest.source.get('sha256')}; "
        f"arch {manifest.arch}; event shape {manifest.event_shape}\n"
    )
    notes = {
        "density": "# log_prob is [B] in the graph: dims [1] + reshape [] (clients receive [B, 1]).\n",
        "sample": "# max_batch_size 0: `temperature` is one scalar per call ([1], no batch dimension), so the model\n"
                  "# is not batchable by Triton; dims are full shapes, -1 = rows. Clients draw the noise (N(0, I)).\n",
    }
    written = {}
    for graph, model in names.items():
        final = out_dir / model
        with staged_folder(final, replace_whole=True) as tmp:
            (tmp / "1").mkdir()
            target = tmp / "1" / ("model.plan" if use_trt else "model.onnx")
            shutil.copyfile(sources[graph], target)
            (tmp / "config.pbtxt").write_text(header + notes[graph] + to_pbtxt(configs[graph]) + "\n")
            (tmp / MANIFEST_COPY).write_text(manifest.to_json())
        written[graph] = str(final)
    return written


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _write_python(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The Python-backend variant (CPU): the export folder is copied into each model (self-contained)."""
    from .triton_python import write_python_repository

    manifest = Manifest.load(folder)
    name = args.name or Path(manifest.source.get("checkpoint") or folder.name).stem
    max_batch = min(args.max_batch, int(manifest.max_batch))
    return write_python_repository(folder, args.out, manifest.event_shape, name, backend="onnxruntime",
                                   threads=args.threads, instances=args.instances, max_request_rows=max_batch,
                                   max_batch=min(args.preferred_batch or [max_batch]),
                                   queue_delay_us=args.max_queue_delay_us)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m export.triton_model_repository",
        description="Write a Triton Inference Server model repository (<name>_density, <name>_sample) "
                    "from an nfkd checkpoint or export folder.",
    )
    ap.add_argument("model", help="checkpoint (.pt; exported first, parity-gated) or export folder (manifest.json)")
    ap.add_argument("-o", "--out", default="model_repository", help="model repository folder (default model_repository)")
    ap.add_argument("--name", default=None, help="model name prefix (default: the checkpoint's stem)")
    ap.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                    help="density model max_batch_size (capped by the export / engine profile)")
    ap.add_argument("--preferred-batch", type=_int_list, default=None,
                    help="dynamic_batching preferred_batch_size (default: 256,1024,max-batch, those <= max-batch)")
    ap.add_argument("--max-queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
                    help="dynamic_batching max_queue_delay_microseconds (default 2000)")
    ap.add_argument("--cpu", action="store_true", help="instance_group KIND_CPU (default KIND_GPU)")
    ap.add_argument("--instances", type=int, default=1, help="instance_group count (default 1)")
    ap.add_argument("--platform", choices=("auto", "onnx", "tensorrt", "python"), default="auto",
                    help="auto: TensorRT plans when the export has engines (and not --cpu), else ONNX; python: the "
                         "Python backend running nfkd's ONNX Runtime runner on CPU (export.triton_python; the only "
                         "variant the CPU tritonserver of the nvidia-pytriton wheel can load)")
    ap.add_argument("--threads", type=int, default=None, help="--platform python: intra-op threads per instance")
    ap.add_argument("--cache-dir", default=None, help="where a checkpoint is exported (default: the serve cache)")
    args = ap.parse_args(argv)
    try:
        src = Path(args.model)
        if src.is_dir():
            folder = src
        else:
            from .cache import ensure_export

            folder = ensure_export(src, args.cache_dir)
        if args.platform == "python":
            res = _write_python(folder, args)
        else:
            res = write_repository(folder, args.out, name=args.name, max_batch=args.max_batch,
                                   preferred_batch=args.preferred_batch, queue_delay_us=args.max_queue_delay_us,
                                   cpu=args.cpu, instances=args.instances, platform=args.platform)
    except NfkdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {res['models']['density']} and {res['models']['sample']} to {args.out} ({res['platform']}, "
        f"{res['instance_kind']}, density max_batch_size {res['max_batch_size']}, preferred "
        f"{res['preferred_batch_size']}; sample max_batch_size 0). Start: tritonserver --model-repository={args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
