"""export_module on a hand-written module whose submodules each use a distinctive op."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import modelexport
from modelexport import read_tags


class Sig(torch.nn.Module):
    def forward(self, x):
        return torch.sigmoid(x)


class SharedTanh(torch.nn.Module):
    def forward(self, x):
        return torch.tanh(x)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = Sig()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.proj(self.gate(x)))


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.entry = Sig()
        self.blocks = torch.nn.ModuleList([Block(), Block()])
        self.shared = SharedTanh()

    def forward(self, x):
        x = self.shared(self.entry(x))  # first call of the shared module
        for block in self.blocks:
            x = block(x)
        x = self.shared(x)  # second call: the tracer names it "shared_1"
        return torch.exp(x)  # an op of the root's own forward


@pytest.fixture(scope="module")
def toy_export(tmp_path_factory):
    torch.manual_seed(0)
    module = Toy().eval()
    path = tmp_path_factory.mktemp("toy") / "toy.onnx"
    result = modelexport.export_module(module, (torch.randn(2, 4),), path, input_names=["x"], output_names=["y"],
                                       dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return module, path, result


def test_each_op_carries_exactly_its_module(toy_export):
    _, path, result = toy_export
    tags = read_tags(path)
    by_op: dict[str, list[tuple[str, str]]] = {}
    for t in tags:
        by_op.setdefault(t.op_type, []).append((t.module_path, t.hierarchy_tag))
    assert sorted(by_op["Sigmoid"]) == [
        ("blocks.0.gate", "/Toy/Block.0/Sig"), ("blocks.1.gate", "/Toy/Block.1/Sig"), ("entry", "/Toy/Sig")]
    assert sorted(by_op["Gemm"]) == [("blocks.0.proj", "/Toy/Block.0/Linear"), ("blocks.1.proj", "/Toy/Block.1/Linear")]
    assert sorted(by_op["Relu"]) == [("blocks.0", "/Toy/Block.0"), ("blocks.1", "/Toy/Block.1")]
    assert by_op["Tanh"] == [("shared", "/Toy/SharedTanh"), ("shared", "/Toy/SharedTanh")]  # both calls
    assert by_op["Exp"] == [("", "/Toy")]
    assert result.files[0].coverage["root_fallback"] == 0


def test_file_is_valid_and_runs(toy_export):
    module, path, _ = toy_export
    onnx.checker.check_model(onnx.load(path), full_check=True)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_no_temporary_file_left(toy_export):
    _, path, _ = toy_export
    assert [p.name for p in path.parent.iterdir()] == ["toy.onnx"]
