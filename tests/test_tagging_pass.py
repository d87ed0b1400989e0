"""The tagging pass alone, on hand-built ONNX graphs: scope resolution and gap inference."""
from __future__ import annotations

import onnx
import pytest
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


# -- ambiguity is settled by evidence or reported, never picked silently (issue 12) ------------
class Out(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(2)


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.output = Out()


class Encoder(torch.nn.Module):
    """Like SqueezeBERT: its forward loops over `layers` in a way the trace does not scope, so
    node names skip the `layers.N` level: `/encoder/output/norm_1/...` is layer 1's norm."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([Layer(), Layer()])


class Skipping(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()


def _ln(scope, x, y, weight_owner):
    return helper.make_node("LayerNormalization", [x, f"{weight_owner}.weight", f"{weight_owner}.bias"], [y],
                            name=f"/{scope}/LayerNormalization")


def test_skipped_level_is_settled_by_the_parameters_read():
    tree = ModuleTree.from_module(Skipping())
    model = _graph([
        _ln("encoder/output/norm", "x", "a", "encoder.layers.0.output.norm"),
        helper.make_node("Relu", ["a"], ["b"], name="/encoder/output/norm/Relu"),  # same scope, no parameter
        _ln("encoder/output/norm_1", "b", "c", "encoder.layers.1.output.norm"),
        helper.make_node("Neg", ["c"], ["y"], name="/encoder/output/norm_1/Neg"),
    ])
    result = TaggingPass(tree)(model)
    tags = {t.node_name: t.module_path for t in read_tags(model)}
    assert tags == {"/encoder/output/norm/LayerNormalization": "encoder.layers.0.output.norm",
                    "/encoder/output/norm/Relu": "encoder.layers.0.output.norm",
                    "/encoder/output/norm_1/LayerNormalization": "encoder.layers.1.output.norm",
                    "/encoder/output/norm_1/Neg": "encoder.layers.1.output.norm"}
    assert result.coverage.by_parameters == 4 and result.coverage.partial_scope == 0


def test_skipped_level_without_evidence_is_partial_not_the_first_candidate():
    tree = ModuleTree.from_module(Skipping())
    model = _graph([helper.make_node("Relu", ["x"], ["y"], name="/encoder/output/norm/Relu")])
    result = TaggingPass(tree)(model)
    # layers.0 and layers.1 fit equally: their common ancestor, counted as partial
    assert read_tags(model)[0].module_path == "encoder"
    assert (result.coverage.direct, result.coverage.partial_scope, result.coverage.by_parameters) == (1, 1, 0)


def test_skipped_level_settled_by_neighbours():
    tree = ModuleTree.from_module(Skipping())
    model = _graph([
        _ln("encoder/output/norm_1", "x", "a", "encoder.layers.1.output.norm"),
        # the parent's node right after its child: the neighbour is in layers.1, so is this
        helper.make_node("Relu", ["a"], ["y"], name="/encoder/output_1/Relu"),
    ])
    result = TaggingPass(tree)(model)
    assert read_tags(model)[1].module_path == "encoder.layers.1.output"
    assert (result.coverage.by_neighbours, result.coverage.partial_scope) == (1, 0)


class EncDec(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.ModuleDict({"proj": torch.nn.Linear(2, 2)})
        self.dec = torch.nn.ModuleDict({"norm": torch.nn.LayerNorm(2)})


def test_a_scope_never_resolves_outside_the_traced_root():
    tree = ModuleTree.from_module(EncDec())
    model = _graph([helper.make_node("Relu", ["x"], ["y"], name="/norm/Relu")])  # an encoder-rooted file
    result = TaggingPass(tree, "enc")(model)
    assert read_tags(model)[0].module_path == "enc"  # not dec.norm
    assert result.coverage.partial_scope == 1
    model = _graph([helper.make_node("Relu", ["x"], ["y"], name="/norm/Relu")])
    TaggingPass(tree, "")(model)  # from the whole model the one `norm` is fine
    assert read_tags(model)[0].module_path == "dec.norm"


class Twins(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)
        self.fc_1 = torch.nn.Linear(2, 2)


def test_second_call_suffix_versus_a_real_module_of_that_name():
    tree = ModuleTree.from_module(Twins())
    model = _graph([
        helper.make_node("Add", ["x", "fc.bias"], ["a"], name="/fc/Add"),
        helper.make_node("Add", ["a", "fc.bias"], ["y"], name="/fc_1/Add"),  # fc called again
    ])
    TaggingPass(tree)(model)
    tags = [t.module_path for t in read_tags(model)]
    assert tags[:2] == ["fc", "fc"]  # the scope fc_1 read fc's bias: the second call of fc, not fc_1
    model = _graph([helper.make_node("Add", ["x", "fc_1.bias"], ["y"], name="/fc_1/Add")])
    TaggingPass(tree)(model)
    assert read_tags(model)[0].module_path == "fc_1"  # the real fc_1, called: its bias is read
    model = _graph([helper.make_node("Relu", ["x"], ["y"], name="/fc_1/Relu")])
    result = TaggingPass(tree)(model)
    assert read_tags(model)[0].module_path == "" and result.coverage.partial_scope == 1  # no evidence either way


def test_deduplicated_parameter_identity_belongs_to_the_parameter_it_outputs():
    tree = ModuleTree.from_module(Twins())
    model = _graph([helper.make_node("Identity", ["fc.weight"], ["fc_1.weight"], name="Identity_3"),
                    helper.make_node("Add", ["x", "fc_1.weight"], ["y"], name="/fc_1/Add")])
    result = TaggingPass(tree)(model)
    assert read_tags(model)[0].module_path == "fc_1" and result.coverage.direct == 2


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(2, 2)


class Holder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()


def test_a_parent_reading_its_childs_parameter_tags_the_child():
    """``F.linear(x, self.q_proj.weight)`` inside attn: the scope is attn, the computation q_proj's."""
    tree = ModuleTree.from_module(Holder())
    model = _graph([helper.make_node("Add", ["x", "attn.q_proj.bias"], ["a"], name="/attn/Add"),
                    helper.make_node("Relu", ["a"], ["y"], name="/attn/Relu")])
    result = TaggingPass(tree)(model)
    assert [t.module_path for t in read_tags(model)] == ["attn.q_proj", "attn"]
    assert result.coverage.by_parameters == 1


class _ReadsChildWeight(torch.nn.Module):
    """A parent computing its child's linear itself (WavLM's attention passes ``q_proj.weight``
    to ``F.multi_head_attention_forward``): TorchScript folds the transposed weight into a
    constant named ``onnx::MatMul_N``, so no name says whose weight the MatMul reads."""

    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(8, 6)
        self.out = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.nn.functional.linear(x, self.q_proj.weight) + 1.0)


def test_a_parent_reading_a_folded_copy_of_its_childs_weight_tags_the_child(tmp_path):
    import modelexport
    from modelexport.testing.breadth import oracle_violations, parameter_owners_by_value

    torch.manual_seed(0)
    model = _ReadsChildWeight().eval()
    path = tmp_path / "m.onnx"
    modelexport.export_module(model, (torch.randn(2, 8),), path, input_names=["x"])
    graph = onnx.load(path).graph
    folded = {i.name for i in graph.initializer if i.name.startswith("onnx::")}
    tags = {t.node_name: t.module_path for t in read_tags(str(path))}
    reading = [n.name for n in graph.node if set(n.input) & folded]
    assert [tags[n] for n in reading] == ["q_proj"]  # the parent's MatMul (was the root's)
    checked, violations = oracle_violations(path, parameter_owners_by_value(model))
    assert checked >= 2 and violations == []


def test_passes_share_one_shape_and_compose():
    """Tag a graph, strip the tags as an optimizer would, restore them: each step a pass."""
    from modelexport.hierarchy.passes import run_passes
    from modelexport.hierarchy.restore import RestorePass

    tree = ModuleTree.from_module(Wrapper())
    original = _graph([helper.make_node("Add", ["x", "x"], ["a"], name="/layers.1/dense/Add"),
                       helper.make_node("Relu", ["a"], ["y"], name="/model/dense/Relu")])
    tagged, = run_passes(original, [TaggingPass(tree)])
    assert tagged.modified and tagged.model is original

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    for node in rewritten.graph.node:
        del node.metadata_props[:]

    def strip_nothing(model):  # a pass that changes nothing says so
        from modelexport.hierarchy.passes import PassResult
        return PassResult(model=model, modified=False)

    results = run_passes(rewritten, [strip_nothing, RestorePass(original)])
    assert [r.modified for r in results] == [False, True]
    assert [t.module_path for t in read_tags(rewritten)] == ["layers.1.dense", "model.dense"]
    assert results[1].by_name == 2


# -- folded BatchNorm: only on evidence (issue 23, item 10) -----------------------------------
class StandardisedConv(torch.nn.Conv2d):
    """Weight standardisation (BiT): the weight is computed from the parameter in forward, which
    TorchScript's constant folding turns into a new initializer, as it does for a folded BatchNorm."""

    def forward(self, x):
        w = self.weight
        return torch.nn.functional.conv2d(x, (w - w.mean()) / (w.std() + 1e-5), self.bias)


class ConvBlock(torch.nn.Module):
    def __init__(self, call_batch_norm: bool, conv: torch.nn.Module):
        super().__init__()
        self.conv = conv
        self.norm = torch.nn.BatchNorm2d(4)  # registered right after the Conv, as ResNet's are
        self.act = torch.nn.ReLU()
        self.call_batch_norm = call_batch_norm

    def forward(self, x):
        x = self.conv(x)
        if self.call_batch_norm:
            x = self.norm(x)
        return self.act(x)


class ConvNet(torch.nn.Module):
    def __init__(self, call_batch_norm: bool, conv: torch.nn.Module):
        super().__init__()
        self.block = ConvBlock(call_batch_norm, conv)

    def forward(self, x):
        return self.block(x)


def _export_conv_net(tmp_path, exporter: str, call_batch_norm: bool, conv: torch.nn.Module):
    import modelexport

    torch.manual_seed(0)
    model = ConvNet(call_batch_norm, conv)
    with torch.no_grad():  # statistics a fold would visibly change
        model.block.norm.running_mean.uniform_(-1, 1)
        model.block.norm.running_var.uniform_(0.5, 2)
    path = tmp_path / f"{exporter}.onnx"
    result = modelexport.export_module(model.eval(), (torch.randn(1, 3, 8, 8),), path, exporter=exporter)
    report = result.files[0]
    convs = [t.module_path for t in read_tags(path) if t.op_type == "Conv"]
    return convs, report.coverage, report.warnings


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("conv", ["plain", "with_bias", "standardised"])
def test_a_conv_before_a_batch_norm_that_never_ran_keeps_its_module(tmp_path, exporter, conv):
    """The BatchNorm after the Conv is never called: nothing was folded, the Conv node is the
    Conv's alone (it was tagged with the block, as partial, with a folding warning)."""
    module = {"plain": lambda: torch.nn.Conv2d(3, 4, 3, bias=False),
              "with_bias": lambda: torch.nn.Conv2d(3, 4, 3),
              "standardised": lambda: StandardisedConv(3, 4, 3, bias=False)}[conv]()
    convs, coverage, warnings = _export_conv_net(tmp_path, exporter, False, module)
    assert convs == ["block.conv"]
    assert coverage["folded_batch_norm"] == 0 and coverage["partial_scope"] == 0
    assert not any("BatchNorm" in w for w in warnings), warnings


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_batch_norm_folded_into_the_conv_tags_the_module_holding_both(tmp_path, exporter):
    """Eval mode: both exporters fold the BatchNorm into the Conv (TorchScript keeps the Conv's
    scope and writes a new weight and bias; torch.export's optimizer keeps the BatchNorm's scope
    and says so on the node): one node computes both, so it gets their parent, as partial."""
    convs, coverage, warnings = _export_conv_net(tmp_path, exporter, True, torch.nn.Conv2d(3, 4, 3, bias=False))
    assert convs == ["block"]
    assert coverage["folded_batch_norm"] == 1 and coverage["partial_scope"] == 1
    assert any("BatchNorm the exporter folded" in w for w in warnings), warnings
