"""NodeSplice rewrites nodes without touching weights: the bytes must equal onnx's own save."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelexport.hierarchy.node_splice import NodeSplice
from modelexport.hierarchy.tags import write_tag


def _model(with_subgraph: bool = False) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="/lin/MatMul"),
             helper.make_node("Relu", ["h"], ["y"], name="/Relu")]
    if with_subgraph:
        branch = helper.make_graph([helper.make_node("Identity", ["y"], ["z"], name="/inner/Identity")], "b", [],
                                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 64])])
        nodes.append(helper.make_node("Constant", [], ["c"], value=helper.make_tensor("t", TensorProto.BOOL, [], [1])))
        nodes.append(helper.make_node("If", ["c"], ["out"], name="If_0", then_branch=branch, else_branch=branch))
    out = "out" if with_subgraph else "y"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 64])], [weight])
    model = helper.make_model(graph, producer_name="test", opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="after_graph", value="kept")
    return model


@pytest.mark.parametrize("in_place", [False, True], ids=["copied", "in place"])
@pytest.mark.parametrize("with_subgraph", [False, True])
def test_splice_equals_full_load_and_save(tmp_path, with_subgraph, in_place):
    path = tmp_path / "m.onnx"
    onnx.save(_model(with_subgraph), path)
    expected = onnx.load(path)
    for node in expected.graph.node:
        write_tag(node, "lin", "/M/Linear")
    inode = path.stat().st_ino
    splice = NodeSplice(path)
    assert [o.version for o in splice.opset_imports] == [17]
    for node in splice.graph.node:
        write_tag(node, "lin", "/M/Linear")
    splice.write(in_place=in_place)
    assert path.read_bytes() == expected.SerializeToString()
    assert (path.stat().st_ino == inode) == in_place  # rewritten itself, or replaced by a copy
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_external_data_stays_external(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path, save_as_external_data=True, location="m.onnx_data", size_threshold=0)
    data_before = (tmp_path / "m.onnx_data").read_bytes()
    splice = NodeSplice(path)
    write_tag(splice.graph.node[0], "lin", "/M/Linear")
    splice.write()
    assert (tmp_path / "m.onnx_data").read_bytes() == data_before
    model = onnx.load(path)  # loads the external weights
    assert {p.key: p.value for p in model.graph.node[0].metadata_props}["module_path"] == "lin"
    onnx.checker.check_model(str(path), full_check=True)


@pytest.mark.parametrize("content", [b"", b"\xff\xff\xff", b"not an onnx file at all"])
def test_non_onnx_bytes_raise_value_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        NodeSplice(path)


def _interleaved(model: onnx.ModelProto) -> bytes:
    """The model's bytes with its graph's nodes split by another field (valid protobuf, which
    onnx's own serializer never writes)."""
    from modelexport.hierarchy.node_splice import _length_delimited

    graph = model.graph
    rest = onnx.GraphProto()
    rest.CopyFrom(graph)
    del rest.node[:]
    rest.ClearField("name")
    graph_bytes = b"".join((_length_delimited(1, graph.node[0].SerializeToString()),
                            _length_delimited(2, graph.name.encode()),
                            *(_length_delimited(1, n.SerializeToString()) for n in graph.node[1:]),
                            rest.SerializeToString()))
    top = onnx.ModelProto()
    top.CopyFrom(model)
    top.ClearField("graph")
    return top.SerializeToString() + _length_delimited(7, graph_bytes)


@pytest.mark.parametrize("in_place", [False, True], ids=["copied", "in place"])
@pytest.mark.parametrize("layout", ["one run of nodes", "nodes split by another field"])
def test_added_nodes_and_outputs_and_long_nodes(tmp_path, layout, in_place):
    """Nodes and outputs added by the caller land in the file; a node longer than 16 KiB (a
    three-byte length) is read and written; nodes need not be one run of fields."""
    model = _model()
    model.graph.node[0].doc_string = "d" * 20000
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString() if layout == "one run of nodes" else _interleaved(model))
    expected = onnx.load(path)
    splice = NodeSplice(path)
    for node in [*splice.graph.node, *expected.graph.node]:
        write_tag(node, "lin", "/M/Linear")
    for graph, outputs in ((splice.graph, splice.added_outputs), (expected.graph, expected.graph.output)):
        graph.node.append(helper.make_node("Identity", ["y"], ["z"], name="alias"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 64]))
    splice.write(in_place=in_place)
    written = onnx.load(path)
    assert written == expected
    onnx.checker.check_model(written, full_check=True)


def test_in_place_rewrite_moves_weights_larger_than_its_buffer(tmp_path):
    """The weights after the nodes move up over themselves in several chunks (a buffer smaller
    than the weights), from the end, without overwriting bytes not yet moved."""
    from modelexport.hierarchy import node_splice

    model = _model()
    model.graph.initializer.append(numpy_helper.from_array(
        np.random.default_rng(1).standard_normal((300, 300)).astype(np.float32), "big"))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    expected = onnx.load(path)
    for node in expected.graph.node:
        write_tag(node, "a.module.path.long.enough.to.move.by.more.than.a.few.bytes", "/M/Linear")
    splice = NodeSplice(path)
    for node in splice.graph.node:
        write_tag(node, "a.module.path.long.enough.to.move.by.more.than.a.few.bytes", "/M/Linear")
    original = node_splice._rewrite_in_place
    node_splice._rewrite_in_place = lambda p, pieces: original(p, pieces, chunk=4096)
    try:
        splice.write(in_place=True)
    finally:
        node_splice._rewrite_in_place = original
    assert path.read_bytes() == expected.SerializeToString()


def test_in_place_refuses_a_file_with_another_name(tmp_path):
    """A hard-linked file is copied, not rewritten: the other name keeps its bytes."""
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    other = tmp_path / "other.onnx"
    os.link(path, other)
    before = other.read_bytes()
    splice = NodeSplice(path)
    write_tag(splice.graph.node[0], "lin", "/M/Linear")
    splice.write(in_place=True)
    assert other.read_bytes() == before
    assert {p.key: p.value for p in onnx.load(path).graph.node[0].metadata_props}["module_path"] == "lin"


def test_in_place_refuses_a_layout_that_would_overwrite_unread_bytes():
    """Pieces whose new place is below their old one (the nodes shrank) are not moved in place."""
    from modelexport.hierarchy.node_splice import _movable_in_place

    assert _movable_in_place([(0, 10), b"x" * 15, (20, 100)])  # nodes grew by 5: the weights move up
    assert _movable_in_place([(0, 10), b"x" * 10, (20, 100)])  # nodes unchanged in length
    assert not _movable_in_place([(0, 10), b"x" * 5, (20, 100)])  # the weights would move down
