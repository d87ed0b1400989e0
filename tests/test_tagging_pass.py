"""The tagging pass alone, on hand-built ONNX graphs: scope resolution and gap inference."""
from __future__ import annotations

import onnx
import torch
from onnx import TensorProto, helper

from modelexport.hierarchy.module_tree import ModuleTree, torchscript_scope_name
from modelexport.hierarchy.tagging import TaggingPass
from modelexport.hierarchy.tags import read_tags


class Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(2, 2)


class Wrapper(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = Inner()
        self.layers = torch.nn.ModuleList([Inner(), Inner()])


def _graph(nodes):
    return helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))


def test_torchscript_scope_names():
    assert torchscript_scope_name("encoder.layer.0") == "layer.0"
    assert torchscript_scope_name("encoder.layer.0.attention") == "attention"
    assert torchscript_scope_name("0") == "0"


def test_tags_drop_passive_containers_and_index_children():
    tree = ModuleTree.from_module(Wrapper())
    assert tree.tag("layers.1.dense") == "/Wrapper/Inner.1/Linear"
    assert tree.tag("model") == "/Wrapper/Inner"
    assert tree.common_ancestor(["layers.1.dense", "layers.1"]) == "layers.1"
    assert tree.common_ancestor(["layers.1.dense", "layers.0.dense"]) == ""


def test_skipped_level_second_call_and_unscoped_nodes():
    tree = ModuleTree.from_module(Wrapper())
    model = _graph([
        helper.make_node("Constant", [], ["c"], name="Constant_7",
                         value=helper.make_tensor("v", TensorProto.FLOAT, [2], [1, 2])),
        # "/dense" directly under the root: the module reached it without the "model" level.
        helper.make_node("Add", ["x", "c"], ["a"], name="/dense/Add"),
        helper.make_node("Relu", ["a"], ["b"], name="/layers.1/dense_1/Relu"),  # second call
        helper.make_node("Neg", ["b"], ["n"], name="Neg_3"),  # unscoped, feeds only the output
        helper.make_node("Abs", ["n"], ["y"], name="/Abs"),  # root's own op
    ])
    result = TaggingPass(tree)(model)
    tags = {t.node_name: t.module_path for t in read_tags(model)}
    assert tags == {"Constant_7": "model.dense", "/dense/Add": "model.dense",
                    "/layers.1/dense_1/Relu": "layers.1.dense", "Neg_3": "", "/Abs": ""}
    cov = result.coverage
    assert (cov.direct, cov.inferred, cov.root_fallback) == (3, 2, 0)
    onnx.checker.check_model(model, full_check=True)


def test_node_with_no_neighbours_falls_back_to_root_and_is_counted():
    tree = ModuleTree.from_module(Wrapper())
    model = _graph([
        helper.make_node("Identity", ["x"], ["y"], name="Identity_0"),
    ])
    result = TaggingPass(tree)(model)
    assert (result.coverage.inferred, result.coverage.root_fallback) == (0, 1)


def test_retagging_replaces_not_duplicates():
    tree = ModuleTree.from_module(Wrapper())
    model = _graph([helper.make_node("Relu", ["x"], ["y"], name="/model/dense/Relu")])
    model.graph.node[0].metadata_props.add(key="other", value="kept")
    TaggingPass(tree)(model)
    TaggingPass(tree)(model)
    keys = [p.key for p in model.graph.node[0].metadata_props]
    assert sorted(keys) == ["hierarchy_tag", "module_path", "namespace", "other"]
