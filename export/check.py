"""Static TensorRT compatibility check of an ONNX graph (no TensorRT needed).

``python -m export.check model.onnx --target tensorrt`` prints one line per problem and exits 1, or
prints ``ok`` and exits 0. The rules are conservative: a graph that passes should parse with
TensorRT >= 10.0's ONNX parser; a graph that fails may still parse on a newer TensorRT.

Source of the allow-list: onnx-tensorrt ``docs/operators.md`` (TensorRT 10.x support matrix).
Checked statically:

- the model is valid ONNX (``onnx.checker``);
- default-domain opset between 13 and ``max_opset`` (20: what TensorRT 10.0 parses; 10.x
  releases after it parse up to 24, pass ``--max-opset``);
- every node (including those inside Loop / Scan / If bodies and model-local functions) is in
  the allow-list; sequence, optional, string and ML-domain ops, Det and custom domains (e.g.
  com.microsoft Inverse) are refused;
- tensor types: graph inputs and outputs float32 / float16 only; inside the graph only types
  TensorRT has (float32/16, bfloat16, int32/64, int8, uint8, bool) -- no double, string,
  complex, sequence or map values;
- shapes: graph inputs and outputs may be dynamic in dimension 0 (the batch) only, and all
  dynamic batch dimensions share one symbol;
- documented per-op constraints: ``axes`` of Slice / Squeeze / Unsqueeze / Reduce* must be
  constants, Conv / ConvTranspose 1-3 spatial dims, TopK ``K`` constant, Cast only to TensorRT
  types, Constant without string / sparse values, Dropout not in training mode, Loop scan
  outputs only with a constant trip count, ScatterND without reduction.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

import onnx
from onnx import TensorProto

__all__ = ["check_tensorrt_compat", "main"]

# onnx-tensorrt docs/operators.md, rows marked "Y" for TensorRT 10.x (conservative: omit the
# newest additions such as Attention / RotaryEmbedding / TensorScatter that need 10.1x).
TENSORRT_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos
Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow
HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero
Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape
Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze
Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

MIN_OPSET = 13
MAX_OPSET = 20  # TensorRT 10.0 parses opset 9..20; later 10.x releases up to 24

IO_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16}
INTERNAL_TYPES = {
    TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32, TensorProto.INT64,
    TensorProto.INT8, TensorProto.UINT8, TensorProto.BOOL,
}
_AXES_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1}  # opset >= 13: axes is an input
_REDUCE = {
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare",
}


def _type_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type {elem_type}"


class _Checker:
    def __init__(self, model: onnx.ModelProto, max_opset: int) -> None:
        self.model = model
        self.max_opset = max_opset
        self.problems: list[str] = []
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self._seen_functions: set[tuple[str, str]] = set()

    def add(self, msg: str) -> None:
        if msg not in self.problems:
            self.problems.append(msg)

    # --- model level ------------------------------------------------------------------------
    def run(self) -> list[str]:
        m = self.model
        try:
            onnx.checker.check_model(m)
        except Exception as exc:  # onnx raises ValidationError (and others for broken protos)
            self.add(f"invalid ONNX model: {str(exc).strip().splitlines()[0]}")
        opsets = {o.domain: o.version for o in m.opset_import}
        default = opsets.get("", opsets.get("ai.onnx"))
        if default is None:
            self.add("model imports no default-domain (ai.onnx) opset")
        elif default < MIN_OPSET:
            self.add(f"opset {default} is below {MIN_OPSET}: re-export with --opset {MIN_OPSET} or newer")
        elif default > self.max_opset:
            self.add(
                f"opset {default} is above {self.max_opset}, the newest this check accepts (TensorRT 10.0 parses "
                f"up to 20, later 10.x up to 24): re-export with --opset {self.max_opset} or pass --max-opset"
            )
        self.io(m.graph)
        self.graph(m.graph, outer_constants=set(), where="graph")
        return self.problems

    def io(self, g: onnx.GraphProto) -> None:
        inits = {i.name for i in g.initializer}
        symbols: set[str] = set()
        for kind, values in (("input", [v for v in g.input if v.name not in inits]), ("output", g.output)):
            for v in values:
                t = v.type
                which = t.WhichOneof("value")
                if which != "tensor_type":
                    self.add(f"graph {kind} '{v.name}' is a {which or 'untyped value'}; TensorRT takes tensors only")
                    continue
                if t.tensor_type.elem_type not in IO_TYPES:
                    self.add(
                        f"graph {kind} '{v.name}' has dtype {_type_name(t.tensor_type.elem_type)}; "
                        f"only float32 / float16 inputs and outputs are allowed"
                    )
                if not t.tensor_type.HasField("shape"):
                    self.add(f"graph {kind} '{v.name}' has no shape; TensorRT needs a known rank")
                    continue
                for axis, d in enumerate(t.tensor_type.shape.dim):
                    static = d.HasField("dim_value") and d.dim_value > 0
                    if axis == 0:
                        if not static:
                            symbols.add(d.dim_param or "?")
                    elif not static:
                        self.add(
                            f"graph {kind} '{v.name}' is dynamic in dimension {axis} "
                            f"({d.dim_param or 'unknown'}); only the batch dimension (0) may be dynamic"
                        )
        if len(symbols) > 1:
            self.add(f"dynamic batch dimensions use different symbols {sorted(symbols)}; expected one batch size")

    # --- graphs and nodes -------------------------------------------------------------------
    def value_types(self, g: onnx.GraphProto, where: str) -> None:
        for v in list(g.input) + list(g.output) + list(g.value_info):
            which = v.type.WhichOneof("value")
            if which is None:
                continue
            if which != "tensor_type":
                self.add(f"{where}: value '{v.name}' is a {which}; TensorRT has no sequence / map / optional values")
            elif v.type.tensor_type.elem_type and v.type.tensor_type.elem_type not in INTERNAL_TYPES:
                self.add(
                    f"{where}: value '{v.name}' has dtype {_type_name(v.type.tensor_type.elem_type)}, "
                    f"which TensorRT does not support"
                )
        for init in g.initializer:
            if init.data_type not in INTERNAL_TYPES:
                self.add(
                    f"{where}: initializer '{init.name}' has dtype {_type_name(init.data_type)}, "
                    f"which TensorRT does not support"
                )
        for init in g.sparse_initializer:
            self.add(f"{where}: sparse initializer '{init.values.name}' is not supported by TensorRT")

    def graph(self, g: onnx.GraphProto, outer_constants: set[str], where: str) -> None:
        self.value_types(g, where)
        constants = set(outer_constants) | {i.name for i in g.initializer}
        for node in g.node:
            if node.op_type == "Constant":
                constants.update(node.output)
        for node in g.node:
            self.node(node, constants, where)

    def node(self, node: onnx.NodeProto, constants: set[str], where: str) -> None:
        name = node.name or (node.output[0] if node.output else "?")
        label = f"{where}: node '{name}' ({node.op_type})"
        domain = node.domain or ""
        if (domain, node.op_type) in self.functions:
            key = (domain, node.op_type)
            if key not in self._seen_functions:
                self._seen_functions.add(key)
                fn = self.functions[key]
                fconst = {o for n in fn.node if n.op_type == "Constant" for o in n.output}
                for inner in fn.node:
                    self.node(inner, fconst, f"function {fn.domain}.{fn.name}")
            return
        if domain not in ("", "ai.onnx"):
            self.add(f"{label}: custom domain {domain!r} is not supported by TensorRT's ONNX parser")
            return
        if node.op_type not in TENSORRT_OPS:
            self.add(f"{label}: operator {node.op_type} is not supported by TensorRT's ONNX parser")
            return
        attrs = {a.name: a for a in node.attribute}

        def is_const(i: int) -> bool:
            return i >= len(node.input) or not node.input[i] or node.input[i] in constants

        if node.op_type in _AXES_INPUT and not is_const(_AXES_INPUT[node.op_type]):
            self.add(f"{label}: `axes` must be a constant (initializer or Constant)")
        if node.op_type in _REDUCE and len(node.input) > 1 and not is_const(1):
            self.add(f"{label}: `axes` must be a constant (initializer or Constant)")
        if node.op_type == "TopK" and not is_const(1):
            self.add(f"{label}: `K` must be a constant")
        if node.op_type in ("Conv", "ConvTranspose") and "kernel_shape" in attrs:
            if not 1 <= len(attrs["kernel_shape"].ints) <= 3:
                self.add(f"{label}: only 1D, 2D or 3D convolutions are supported")
        if node.op_type in ("Cast", "CastLike") and "to" in attrs and attrs["to"].i not in INTERNAL_TYPES:
            self.add(f"{label}: cast to {_type_name(attrs['to'].i)}, which TensorRT does not support")
        if node.op_type == "Constant":
            for bad in ("sparse_value", "value_string", "value_strings"):
                if bad in attrs:
                    self.add(f"{label}: `{bad}` constants are not supported")
            if "value" in attrs and attrs["value"].t.data_type not in INTERNAL_TYPES:
                self.add(f"{label}: constant of dtype {_type_name(attrs['value'].t.data_type)} is not supported")
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2] and not is_const(2):
            self.add(f"{label}: `training_mode` must be a constant False")
        if node.op_type == "ScatterND" and "reduction" in attrs and attrs["reduction"].s not in (b"", b"none"):
            self.add(f"{label}: ScatterND reduction other than 'none' is not supported")
        if node.op_type == "Loop":
            body = attrs.get("body")
            n_carried = len(node.input) - 2
            if body is not None:
                n_scan = len(body.g.output) - 1 - n_carried
                if n_scan > 0 and not (node.input and node.input[0] and is_const(0)):
                    self.add(f"{label}: scan outputs need a constant trip count (TensorRT: no dynamic scan length)")
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                self.graph(a.g, constants, f"{label} / {a.name}")
            elif a.type == onnx.AttributeProto.GRAPHS:
                for i, sub in enumerate(a.graphs):
                    self.graph(sub, constants, f"{label} / {a.name}[{i}]")


def check_tensorrt_compat(path: str | Path | onnx.ModelProto, max_opset: int = MAX_OPSET) -> list[str]:
    """Problems that would stop TensorRT's ONNX parser (empty list: compatible). Never needs TensorRT."""
    if isinstance(path, onnx.ModelProto):
        model = path
    else:
        p = Path(path)
        if not p.exists():
            return [f"{p}: file not found"]
        try:
            model = onnx.load(str(p))
        except Exception as exc:  # protobuf DecodeError and friends
            return [f"{p}: not a readable ONNX model ({str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__})"]
    return _Checker(model, max_opset).run()


def _iter_targets(paths: Iterable[str]) -> Iterable[Path]:
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from sorted(p.glob("*.onnx"))
        else:
            yield p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m export.check",
        description="Check ONNX graphs statically for a target runtime (no TensorRT needed).",
    )
    ap.add_argument("paths", nargs="+", help="ONNX files or export folders")
    ap.add_argument("--target", choices=["tensorrt"], default="tensorrt")
    ap.add_argument("--max-opset", type=int, default=MAX_OPSET, help=f"newest opset to accept (default {MAX_OPSET})")
    args = ap.parse_args(argv)
    bad = 0
    targets = list(_iter_targets(args.paths))
    if not targets:
        print("error: no .onnx files found", file=sys.stderr)
        return 1
    for p in targets:
        problems = check_tensorrt_compat(p, max_opset=args.max_opset)
        for msg in problems:
            print(f"{p}: {msg}")
        if problems:
            bad += 1
        else:
            print(f"{p}: ok ({args.target})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
