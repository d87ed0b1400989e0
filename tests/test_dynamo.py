"""``export_module(..., exporter="dynamo")``: tags read from the module stack torch.export records,
agreeing with the TorchScript path on every node that reads a parameter."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import modelexport
from modelexport.hierarchy.tags import read_tags


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)

    def forward(self, x):
        return torch.relu(self.norm(self.lin(x)))


class Stack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([Block(), Block()])
        self.shared = torch.nn.Linear(4, 4)  # called twice

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.shared(self.shared(x))


def _stack():
    torch.manual_seed(0)
    model = Stack().eval()
    with torch.no_grad():
        for p in model.parameters():  # distinct values everywhere: no tensor is de-duplicated
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _parameter_readers(path) -> dict[str, str]:
    """Node -> module, for the nodes that read a parameter the exporter kept by name."""
    model = onnx.load(path)
    names = {t.name for t in model.graph.initializer}
    tags = {t.node_name: t.module_path for t in read_tags(model)}
    return {p: tags[n.name] for n in model.graph.node for p in n.input if p in names and "." in p}


def test_dynamo_tags_agree_with_torchscript(tmp_path):
    model = _stack()
    x = torch.randn(3, 4)
    common = dict(input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    modelexport.export_module(model, (x,), tmp_path / "ts.onnx", **common)
    result = modelexport.export_module(model, (x,), tmp_path / "dyn.onnx", exporter="dynamo", **common)
    dyn = _parameter_readers(tmp_path / "dyn.onnx")
    ts = _parameter_readers(tmp_path / "ts.onnx")
    for parameter, module in dyn.items():
        assert module == parameter.rpartition(".")[0], (parameter, module)  # the owner, by the oracle
        if parameter in ts:
            assert ts[parameter] == module
    assert {"layers.0.lin.weight", "layers.1.norm.bias", "shared.weight"} <= set(dyn)
    cov = result.files[0].coverage
    assert cov["nodes"] == cov["direct"] + cov["inferred"] + cov["root_fallback"] and cov["root_fallback"] == 0
    session = ort.InferenceSession(str(tmp_path / "dyn.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the dynamic axis is dynamic
        xb = torch.randn(batch, 4)
        got = session.run(None, {"x": xb.numpy()})[0]
        np.testing.assert_allclose(got, model(xb).detach().numpy(), atol=1e-5)


def test_dynamo_source_info_is_dropped_unless_asked(tmp_path):
    model = _stack()
    x = torch.randn(2, 4)
    modelexport.export_module(model, (x,), tmp_path / "a.onnx", input_names=["x"], exporter="dynamo")
    modelexport.export_module(model, (x,), tmp_path / "b.onnx", input_names=["x"], exporter="dynamo",
                              keep_source_info=True)
    keys_a = {p.key for n in onnx.load(tmp_path / "a.onnx").graph.node for p in n.metadata_props}
    keys_b = {p.key for n in onnx.load(tmp_path / "b.onnx").graph.node for p in n.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in keys_a and "pkg.torch.onnx.fx_node" not in keys_a
    assert {"pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node"} <= keys_b
    assert {"module_path", "hierarchy_tag", "namespace", "pkg.torch.onnx.name_scopes"} <= keys_a
    here = str(Path(__file__).resolve().parent)  # local paths the stack traces carry
    assert here not in (tmp_path / "a.onnx").read_bytes().decode("latin-1")
    assert here in (tmp_path / "b.onnx").read_bytes().decode("latin-1")
    onnx.checker.check_model(str(tmp_path / "a.onnx"), full_check=True)
