"""What a loaded ONNX graph may hold, checked on its bytes before ONNX Runtime sees them.

Graphs are handed to ONNX Runtime as bytes, so a tensor stored as *external data* would be read from
a path relative to the server's working directory (or an absolute one): an export folder could make
the server read and return any file it can open. ``export.onnx`` writes every weight inline, so
external data is refused outright, wherever a tensor can sit: initializers and sparse initializers
of the main graph, of every subgraph (``If`` / ``Loop`` / ``Scan`` bodies), of model functions and
of training-info graphs, and tensors carried by node attributes (``Constant`` and any other op).

The graph's declared inputs and outputs are then checked against the manifest (names, dtypes,
shapes, with the batch dimension ``"B"``), and the manifest's ``event_shape`` / ``noise_shapes``
against those, so a manifest that disagrees with its graph is one clear error at load time, not an
ONNX Runtime traceback at the first request.
"""
from __future__ import annotations

from typing import Any, Iterator

from nfkd.errors import ExportError

__all__ = ["check_graph", "external_tensors", "parse_graph"]

_DTYPES = {1: "float32", 10: "float16", 11: "float64"}


def parse_graph(data: bytes, what: str) -> Any:
    """The ``onnx.ModelProto`` of ``data`` (not checked, not loaded into any runtime)."""
    import onnx
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ExportError(f"{what} is not a readable ONNX model ({exc}); re-export") from None
    if not model.HasField("graph"):
        raise ExportError(f"{what} is not an ONNX model (no graph); re-export")
    return model


def _attr_tensors(attr: Any) -> Iterator[tuple[str, Any]]:
    if attr.HasField("t"):
        yield f"attribute {attr.name!r}", attr.t
    for t in attr.tensors:
        yield f"attribute {attr.name!r}", t
    sparse = list(attr.sparse_tensors) + ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else [])
    for s in sparse:
        yield f"attribute {attr.name!r}", s.values
        yield f"attribute {attr.name!r}", s.indices


def _node_tensors(nodes: Any, where: str) -> Iterator[tuple[str, Any]]:
    for node in nodes:
        for attr in node.attribute:
            for label, t in _attr_tensors(attr):
                yield f"{where}, node {node.name or node.op_type!r} {label}", t
            subgraphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
            for g in subgraphs:
                yield from _graph_tensors(g, f"{where} > subgraph {g.name!r}")


def _graph_tensors(graph: Any, where: str) -> Iterator[tuple[str, Any]]:
    for t in graph.initializer:
        yield f"{where}, initializer {t.name!r}", t
    for s in graph.sparse_initializer:
        yield f"{where}, sparse initializer {s.values.name!r}", s.values
        yield f"{where}, sparse initializer {s.values.name!r}", s.indices
    yield from _node_tensors(graph.node, where)


def external_tensors(model: Any) -> list[str]:
    """Where ``model`` holds tensors stored outside the file (external data), with the location named."""
    found = []
    sources = [_graph_tensors(model.graph, "graph")]
    sources += [_node_tensors(f.node, f"function {f.name!r}") for f in model.functions]
    for i, info in enumerate(model.training_info):
        sources += [_graph_tensors(info.initialization, f"training_info[{i}].initialization"),
                    _graph_tensors(info.algorithm, f"training_info[{i}].algorithm")]
    for source in sources:
        for where, t in source:
            if t.data_location == 1 or len(t.external_data):  # TensorProto.EXTERNAL
                location = next((e.value for e in t.external_data if e.key == "location"), "?")
                found.append(f"{where} (location {location[:80]!r})")
    return found


def _declared(values: Any, initializers: set[str]) -> dict[str, tuple[str, list[Any]]]:
    out = {}
    for v in values:
        if v.name in initializers:
            continue
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else "B" for d in tt.shape.dim]
        out[v.name] = (_DTYPES.get(tt.elem_type, f"onnx type {tt.elem_type}"), dims)
    return out


def _compare(side: str, declared: dict[str, tuple[str, list[Any]]], listed: list[dict[str, Any]]) -> list[str]:
    problems = []
    names = [t["name"] for t in listed]
    if sorted(names) != sorted(declared):
        return [f"{side} are {sorted(declared)} in the graph but {sorted(names)} in the manifest"]
    for t in listed:
        dtype, dims = declared[t["name"]]
        want = ["B" if isinstance(v, str) else v for v in t["shape"]]
        if dims != want or dtype != t.get("dtype", "float32"):
            problems.append(f"{t['name']!r} is {dtype} {dims} in the graph but {t.get('dtype')} {t['shape']} in "
                            f"the manifest")
    return problems


def _spec(listed: list[dict[str, Any]], name: str) -> list[Any] | None:
    return next((t["shape"] for t in listed if t["name"] == name), None)


def _shape_problems(name: str, entry: dict[str, Any], manifest: Any) -> list[str]:
    event, noise = list(manifest.event_shape), [list(s) for s in manifest.noise_shapes]
    if name == "density":
        expected = {"x": ["B", *event], "log_prob": ["B"], "latent": ["B", int(manifest.dim)]}
        listed = entry["inputs"] + entry["outputs"]
    else:
        expected = {f"noise_{i}": ["B", *s] for i, s in enumerate(noise)}
        expected.update(temperature=[1], x=["B", *event])
        listed = entry["inputs"] + entry["outputs"]
        if len(entry["inputs"]) != len(noise) + 1:
            return [f"the sample graph takes {len(entry['inputs'])} inputs but the manifest's noise_shapes has "
                    f"{len(noise)} levels (+ temperature)"]
    problems = []
    for key, want in expected.items():
        got = _spec(listed, key)
        if got is None:
            problems.append(f"the manifest lists no {key!r} for the {name} graph")
        elif ["B" if isinstance(v, str) else v for v in got] != want:
            problems.append(f"{key!r} has shape {got} but event_shape {event} / noise_shapes {noise} / dim "
                            f"{manifest.dim} imply {want}")
    return problems


def check_graph(data: bytes, name: str, manifest: Any, what: str) -> None:
    """Refuse ``data`` (the ``name`` graph of ``manifest``) if it holds external data, or if its inputs /
    outputs disagree with the manifest, or the manifest's entry with its event / noise shapes."""
    model = parse_graph(data, what)
    external = external_tensors(model)
    if external:
        raise ExportError(f"{what} stores tensors as external data ({external[0]}"
                          f"{f' and {len(external) - 1} more' if len(external) > 1 else ''}), which would be read "
                          f"from outside the export folder; nfkd exports keep every weight inside the graph file, "
                          f"so this graph is refused; re-export it")
    entry = manifest.graphs[name]
    init = {t.name for t in model.graph.initializer}
    problems = _compare("inputs", _declared(model.graph.input, init), entry["inputs"])
    problems += _compare("outputs", _declared(model.graph.output, set()), entry["outputs"])
    problems += _shape_problems(name, entry, manifest)
    if problems:
        raise ExportError(f"{what} and manifest.json disagree: {'; '.join(problems[:3])}; re-export the model")
