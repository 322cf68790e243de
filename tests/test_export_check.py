"""Static TensorRT compatibility check: passes on every graph nfkd exports, names each problem otherwise."""
from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from export.check import check_tensorrt_compat, main

from .test_export_onnx import CASES, exported


def _model(nodes, inputs, outputs, opset=17, initializers=(), domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in domains]]
    return helper.make_model(graph, opset_imports=opsets)


def _f(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _save(tmp_path, model, name="m.onnx"):
    import onnx

    path = tmp_path / name
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_every_exported_graph_passes(name):
    _, out, _ = exported(name)
    for f in ("density.onnx", "sample.onnx"):
        assert check_tensorrt_compat(out / f) == []


def test_cli_ok_on_an_export_folder(capsys):
    _, out, _ = exported("maf_bn")
    assert main([str(out), "--target", "tensorrt"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.endswith("ok (tensorrt)") for line in lines)


def test_det_is_refused(tmp_path, capsys):
    m = _model([helper.make_node("Det", ["x"], ["y"], name="det0")], [_f("x", ["B", 3, 3])], [_f("y", ["B"])])
    path = _save(tmp_path, m)
    problems = check_tensorrt_compat(path)
    assert len(problems) == 1 and "node 'det0' (Det): operator Det is not supported" in problems[0]
    assert main([str(path), "--target", "tensorrt"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "Det" in out[0]


def test_string_op_and_string_tensors_are_refused(tmp_path):
    node = helper.make_node("StringNormalizer", ["s"], ["t"], name="norm", case_change_action="LOWER")
    m = _model([node], [_f("s", [4], TensorProto.STRING)], [_f("t", [4], TensorProto.STRING)])
    problems = check_tensorrt_compat(_save(tmp_path, m))
    assert any("operator StringNormalizer is not supported" in p for p in problems)
    assert any("graph input 's' has dtype string" in p for p in problems)


def test_custom_domain_inverse_and_sequences_are_refused(tmp_path):
    nodes = [
        helper.make_node("Inverse", ["x"], ["xi"], domain="com.microsoft", name="inv"),
        helper.make_node("SequenceConstruct", ["xi", "x"], ["seq"], name="seq"),
        helper.make_node("SequenceAt", ["seq", "i"], ["y"], name="at"),
    ]
    i = helper.make_tensor("i", TensorProto.INT64, [], [0])
    m = _model(nodes, [_f("x", ["B", 3, 3])], [_f("y", ["B", 3, 3])], initializers=[i], domains=["com.microsoft"])
    problems = "\n".join(check_tensorrt_compat(m))
    assert "custom domain 'com.microsoft'" in problems
    assert "operator SequenceConstruct is not supported" in problems and "operator SequenceAt" in problems


def test_shapes_types_and_opset_rules(tmp_path):
    m = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [_f("x", ["B", "F"])],
        [_f("y", ["N", "F"], TensorProto.DOUBLE)],
        opset=11,
    )
    problems = "\n".join(check_tensorrt_compat(m))
    assert "opset 11 is below 13" in problems
    assert "graph input 'x' is dynamic in dimension 1 (F)" in problems
    assert "graph output 'y' has dtype double" in problems
    assert "different symbols ['B', 'N']" in problems


def test_nodes_inside_loop_bodies_are_checked(tmp_path):
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Det", ["x_in"], ["d"], name="inner_det"),
         helper.make_node("Identity", ["x_in"], ["x_out"])],
        "body",
        [_f("it", [], TensorProto.INT64), _f("c_in", [], TensorProto.BOOL), _f("x_in", ["B", 3, 3])],
        [_f("c_out", [], TensorProto.BOOL), _f("x_out", ["B", 3, 3])],
    )
    loop = helper.make_node("Loop", ["n", "c", "x"], ["y"], body=body, name="loop")
    inits = [helper.make_tensor("n", TensorProto.INT64, [], [3]), helper.make_tensor("c", TensorProto.BOOL, [], [True])]
    m = _model([loop], [_f("x", ["B", 3, 3])], [_f("y", ["B", 3, 3])], initializers=inits)
    problems = check_tensorrt_compat(m)
    assert len(problems) == 1 and "(Loop) / body: node 'inner_det' (Det)" in problems[0]


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \x00\xff")
    assert check_tensorrt_compat(bad) and check_tensorrt_compat(tmp_path / "missing.onnx")[0].endswith("file not found")
