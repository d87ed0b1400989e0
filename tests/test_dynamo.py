"""``export_module(..., exporter="dynamo")``: tags read from the module stack torch.export records,
agreeing with the TorchScript path on every node that reads a parameter."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import modelexport
from modelexport.hierarchy.tags import read_tags

# Optimum's export of these models (its configs, graph and classes): the generic path has its own
# tests (test_generic.py, test_families.py in the transformers-5 environment).
pytestmark = pytest.mark.optimum


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
        # Named like the FX node of the first F.layer_norm call (in layers.0.norm), which the
        # exporter appends to every node's module stack: that name is not a module.
        self.layer_norm = torch.nn.LayerNorm(4)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(self.shared(self.shared(x)))


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
    assert {"layers.0.lin.weight", "layers.0.norm.weight", "layers.1.norm.bias", "shared.weight",
            "layer_norm.weight"} <= set(dyn)
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


# -- modelexport.export(..., exporter="dynamo"): Optimum's files, traced by torch.export -------------

@pytest.fixture(scope="module")
def both_exports(tmp_path_factory):
    """Each family built once with every parameter made unique, exported by both paths."""
    from modelexport.testing.family_check import build_family, check_family
    from modelexport.testing.tiny_models import BY_NAME

    cache = {}

    def get(name):
        if name not in cache:
            workdir = tmp_path_factory.mktemp(name.replace("/", "_"))
            family = BY_NAME[name]
            folder = build_family(family, workdir, nudge=True)
            cache[name] = (family, folder, {ex: check_family(family, workdir, ex, folder=folder)
                                            for ex in ("torchscript", "dynamo")})
        return cache[name]
    return get


@pytest.mark.parametrize("name", ["bert/fill-mask", "gpt2", "t5", "resnet"])
def test_export_dynamo_loads_in_optimum_and_tags_agree_with_torchscript(name, both_exports):
    import transformers

    from modelexport.testing.breadth import parameter_names_by_value, tags_by_parameter

    family, folder, rows = both_exports(name)
    ts, dyn = rows["torchscript"], rows["dynamo"]
    assert ts.error is None and dyn.error is None, dyn.error or ts.error
    # Optimum's layout, names and ORTModel class, whichever path traced.
    assert dyn.files == ts.files
    assert dyn.untagged_nodes == 0 and dyn.root_fallback == 0
    assert dyn.direct + dyn.inferred == dyn.nodes
    assert dyn.nodes <= ts.nodes  # torch.export's graphs are smaller (ResNet: the same 17)
    if family.check == "generate":
        assert dyn.same_tokens is True and len(dyn.tokens) > 6  # greedy generate() with the KV cache
    else:
        assert dyn.ort_max_abs_diff < 1e-4
    # Every node reading a parameter (found by value, whatever either exporter named it) has the
    # same module on both paths, and that module owns the parameter.
    model = getattr(transformers, family.torch_class).from_pretrained(folder)
    names = parameter_names_by_value(model)
    compared = 0
    for file in ts.files:
        by_ts = tags_by_parameter(Path(ts.output) / file, names)
        by_dyn = tags_by_parameter(Path(dyn.output) / file, names)
        assert set(by_ts) == set(by_dyn), file
        for parameter, modules in by_dyn.items():
            assert modules == by_ts[parameter], (file, parameter, modules, by_ts[parameter])
            owner = parameter.rpartition(".")[0]
            if owner.endswith(".normalization"):  # ResNet: BatchNorm folded into the Conv before it
                assert modules == {owner.rpartition(".")[0]}, (file, parameter, modules)
            else:
                assert modules == {owner}, (file, parameter, modules)
            compared += 1
    assert compared >= {"bert/fill-mask": 38, "gpt2": 25, "t5": 90, "resnet": 6}[name]
    if name == "resnet":  # both paths say the folded Conv nodes are partial, and why
        for row in (ts, dyn):
            assert any("BatchNorm the exporter folded" in w for w in row.warnings), row.warnings


def test_export_dynamo_files_keep_no_local_paths_and_dims_are_named(both_exports):
    family, folder, rows = both_exports("t5")
    out = Path(rows["dynamo"].output)
    here = str(Path(__file__).resolve().parent.parent)  # the checkout: in every stack trace
    for file in rows["dynamo"].files:
        model = onnx.load(out / file)
        onnx.checker.check_model(model, full_check=True)
        assert here not in (out / file).read_bytes().decode("latin-1"), file
        keys = {p.key for n in model.graph.node for p in n.metadata_props}
        assert "pkg.torch.onnx.stack_trace" not in keys and "pkg.torch.onnx.fx_node" not in keys
        # Dims are Optimum's axis names (as TorchScript writes them), not torch.export's s0, s11...
        for value in list(model.graph.input) + list(model.graph.output):
            for dim in value.type.tensor_type.shape.dim:
                assert not re.search(r"\bs\d+\b", dim.dim_param), (file, value.name, dim.dim_param)
    meta = json.loads((out / "modelexport_metadata.json").read_text())
    assert meta["exporter"] == "dynamo" and meta["source_info_kept"] is False
    merged = onnx.load(out / "decoder_model_merged.onnx", load_external_data=False)
    names = [i.name for i in merged.graph.input]
    assert "use_cache_branch" in names and "past_key_values.0.decoder.key" in names


def test_dynamo_user_errors_are_one_line(tiny_bert_dir, tmp_path):
    from test_cli import assert_clean_error, run_cli

    out = tmp_path / "out"
    proc = run_cli("export", tiny_bert_dir, out, "--keep-source-info")
    assert proc.returncode == 1
    assert_clean_error(proc, "--keep-source-info", "--exporter dynamo")
    proc = run_cli("export", tiny_bert_dir, out, "--exporter", "dynamo", "--opset", "14")
    assert proc.returncode == 1
    assert_clean_error(proc, "opset 14", "18 to")
    assert not out.exists()
    # The same command with a valid opset and static shapes: the CLI path end to end.
    proc = run_cli("export", tiny_bert_dir, out, "--exporter", "dynamo", "--opset", "19", "--format", "json",
                   "--static-shapes", "batch_size=1,sequence_length=12")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["exporter"] == "dynamo" and summary["opset"] == 19
    (file,) = summary["files"]
    assert file["coverage"]["root_fallback"] == 0 and file["validation"]["passed"]
    model = onnx.load(out / "model.onnx", load_external_data=False)
    assert [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input] == [[1, 12]] * 3


def test_per_module_tools_work_on_a_dynamo_export(both_exports, tmp_path):
    """analyze, profile, extract, quantize, diff and optimize on the files torch.export wrote."""
    from test_cli import run_cli

    from modelexport.runtime.transform import op_counts

    _, _, rows = both_exports("bert/fill-mask")
    folder = Path(rows["dynamo"].output)
    layer = "bert.encoder.layer.1"

    analysis = json.loads(run_cli("analyze", folder, "--format", "json").stdout)
    modules = {m["module_path"]: m for m in analysis["files"]["model.onnx"]["modules"]}
    assert analysis["files"]["model.onnx"]["untagged_nodes"] == 0 and modules[layer]["nodes_total"] > 10

    profile = json.loads(run_cli("profile", folder, "--runs", "2", "--format", "json").stdout)
    timed = {m["module_path"] for m in profile["files"]["model.onnx"]["modules"]}
    assert f"{layer}.attention.self.query" in timed

    part = tmp_path / "layer1.onnx"
    assert run_cli("extract", folder, "--module", layer, "-o", part).returncode == 0
    extracted = onnx.load(part)
    tags = {p.value for n in extracted.graph.node for p in n.metadata_props if p.key == "module_path"}
    assert tags and all(t == layer or t.startswith(layer + ".") for t in tags)
    session = ort.InferenceSession(str(part), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.random.default_rng(0).standard_normal(
        [d if isinstance(d, int) else 3 for d in i.shape]).astype(np.float32) for i in session.get_inputs()
        if i.type == "tensor(float)"}
    if len(feeds) == len(session.get_inputs()):  # float boundary inputs only: it runs by itself
        assert session.run(None, feeds)[0].shape[-1] == 32

    quantized = tmp_path / "q"
    proc = run_cli("quantize", folder, "-o", quantized, "--exclude-modules", "bert.encoder.layer.0")
    assert proc.returncode == 0, proc.stderr
    q = onnx.load(quantized / "model.onnx")
    by_module = {}
    for node in q.graph.node:
        path = next(p.value for p in node.metadata_props if p.key == "module_path")
        by_module.setdefault(path.split(".attention")[0].split(".intermediate")[0].split(".output")[0], set()).add(
            node.op_type)
    assert "MatMulInteger" not in by_module["bert.encoder.layer.0"] and "MatMul" in by_module["bert.encoder.layer.0"]
    assert "MatMulInteger" in by_module[layer]

    diff = json.loads(run_cli("diff", folder, quantized, "--format", "json").stdout)
    errors = {m["module_path"]: m for m in diff["files"]["model.onnx"]["modules"]}
    assert errors[layer]["max_abs"] > 0

    optimized = tmp_path / "o2"
    proc = run_cli("optimize", folder, "-o", optimized)
    assert proc.returncode == 0, proc.stderr
    fused_line = next(line for line in proc.stdout.splitlines() if line.startswith("fused in model.onnx:"))
    contrib = {op.split(":")[1]: n for op, n in op_counts(onnx.load(optimized / "model.onnx").graph).items()
               if op.startswith("com.microsoft:")}
    if contrib:  # the line names exactly the fused ops the file holds
        assert fused_line == "fused in model.onnx: " + ", ".join(f"{op} x{n}" for op, n in sorted(contrib.items()))
    else:
        assert "nothing" in fused_line
    meta = json.loads((optimized / "modelexport_metadata.json").read_text())
    assert meta["transforms"][-1]["fused_ops"]["model.onnx"] == {f"com.microsoft:{k}": v for k, v in contrib.items()}


def test_a_failed_trace_is_summarised_in_one_plain_line():
    """torch.export's errors open with a coloured, multi-line how-to-debug banner; the user gets
    what went wrong."""
    from modelexport.exporter.dynamo_trace import export_error_summary

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x.nonzero().sum() if x.sum() > 0 else x  # branch on a value: torch.export refuses

    with pytest.raises(Exception) as caught:
        torch.onnx.export(DataDependent(), (torch.randn(3),), dynamo=True, verbose=False)
    summary = export_error_summary(caught.value)
    assert "\n" not in summary and "\x1b" not in summary and len(summary) <= 200
    assert not summary.startswith("Failed to export")  # the banner's first line says nothing
    assert "data" in summary.lower() or "guard" in summary.lower(), summary


def test_optimize_a_dynamo_gpt2(tmp_path):
    """ONNX Runtime's GPT-2 pass crashed (IndexError) on the bias-less Gemm torch.export writes for
    lm_head, and for every linear whose bias is all zeros (a fresh model: the exporter drops it);
    optimize gives them an explicit zero bias in a copy first, as wide as the output, since the
    FastGelu fusion then takes it as its bias. Same outputs at several shapes, every node tagged."""
    from modelexport.runtime.dummy_inputs import make_inputs
    from modelexport.runtime.transform import optimize_folder
    from modelexport.testing.family_check import build_family
    from modelexport.testing.tiny_models import BY_NAME

    source = build_family(BY_NAME["gpt2"], tmp_path)  # not nudged: zero biases, as initialised
    folder = tmp_path / "dynamo"
    modelexport.export(str(source), folder, task="text-generation-with-past", exporter="dynamo", validate=False)
    bare = [n for n in onnx.load(folder / "model.onnx").graph.node if n.op_type == "Gemm" and len(n.input) == 2]
    assert len(bare) >= 3  # lm_head and the zero-bias MLP projections
    result = optimize_folder(folder, tmp_path / "o2", "O2")
    assert result.files["model.onnx"]["root"] == 0
    assert result.added_ops["model.onnx"], "the GPT-2 pass fused nothing"
    # No leftover of the prepared copy: the source's files, nothing else.
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == sorted(p.name for p in folder.iterdir())
    before = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(tmp_path / "o2" / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, sequence in ((1, 1), (2, 5), (1, 32)):
        feed = make_inputs(before, None, batch, sequence)
        for a, b in zip(before.run(None, feed), after.run(None, feed)):
            np.testing.assert_allclose(a, b, atol=1e-4)
    tags = [p.key for n in onnx.load(tmp_path / "o2" / "model.onnx").graph.node for p in n.metadata_props
            if p.key == "module_path"]
    assert len(tags) == len(onnx.load(tmp_path / "o2" / "model.onnx").graph.node)


def test_dynamo_external_data_is_packed_as_optimum_packs_it(tiny_bert_dir, tmp_path, monkeypatch):
    """Above 2 GiB (here forced with Optimum's FORCE_ONNX_EXTERNAL_DATA) torch writes one shared
    `model.onnx.data`, which Optimum's re-packing deleted once per tensor (FileNotFoundError on the
    second): the weights are written one file per tensor, Optimum packs them into model.onnx_data."""
    monkeypatch.setenv("FORCE_ONNX_EXTERNAL_DATA", "1")
    out = tmp_path / "out"
    result = modelexport.export(str(tiny_bert_dir), out, exporter="dynamo")
    names = sorted(p.name for p in out.iterdir())
    assert "model.onnx_data" in names and "model.onnx.data" not in names
    assert not [n for n in names if n.startswith("bert.")], names  # no per-tensor file left behind
    assert result.files[0].validation["passed"] and result.files[0].coverage["root_fallback"] == 0
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input_ids"


class _Masker(torch.nn.Module):
    def forward(self, mask):
        return 1.0 - mask  # an integer mask: XLNet's and ProphetNet's `1.0 - attention_mask`


class _MaskedLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.masker = _Masker()

    def forward(self, x, mask):
        return self.lin(x) * self.masker(mask)[..., None]


def test_a_number_minus_an_integer_tensor_exports_and_keeps_its_module(tmp_path):
    """torch.onnx (dynamo) failed on ``1.0 - int_mask`` ("Cannot find a compatible OpOverload for
    aten.sub"); rewritten before its type-promotion pass, the file computes what PyTorch does and
    the rewritten nodes belong to the module that subtracts."""
    torch.manual_seed(0)
    model = _MaskedLinear().eval()
    x = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.int64)
    modelexport.export_module(model, (x, mask), tmp_path / "m.onnx", input_names=["x", "mask"],
                              dynamic_axes={"x": {0: "batch", 1: "sequence"}, "mask": {0: "batch", 1: "sequence"}},
                              exporter="dynamo")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    other = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.int64)
    for m, xx in ((mask, x), (other, torch.randn(2, 4, 4))):
        got = session.run(None, {"x": xx.numpy(), "mask": m.numpy()})[0]
        np.testing.assert_allclose(got, model(xx, m).detach().numpy(), atol=1e-6)
    tags = [t for t in read_tags(str(tmp_path / "m.onnx")) if t.op_type == "Neg"]
    assert [t.module_path for t in tags] == ["masker"]


class _WindowedBranch(torch.nn.Module):
    """Code that branches on the length, as DeepSeek-V4's compressors do on whole windows of 4:
    torch.export keeps the length symbolic but valid only for 4 to 8 when traced at 7."""

    def forward(self, x):
        if 3 < x.shape[1] < 9:
            return x * 2
        return x + 1


def test_an_axis_the_trace_narrows_is_a_warning_and_true(tmp_path):
    from modelexport.exporter.dynamo_trace import export_dynamo

    warnings = export_dynamo(_WindowedBranch().eval(), (torch.rand(2, 7),), None, tmp_path / "m.onnx",
                             input_names=["x"], dynamic_axes={"x": {0: "batch_size", 1: "sequence_length"}},
                             opset=18)
    assert warnings == ["axis 1 (sequence_length) of input x takes only sizes 4 to 8: the model's code branches on "
                        "it (declared dynamic; at other sizes the file fails or is not what PyTorch computes)"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for length in (4, 8):  # inside the range: the file computes what PyTorch computes
        x = torch.rand(3, length)
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], _WindowedBranch()(x).numpy())
    x = torch.rand(3, 11)  # outside it, the traced branch is not PyTorch's: what the warning says
    assert not np.allclose(session.run(None, {"x": x.numpy()})[0], _WindowedBranch()(x).numpy())
    plain = export_dynamo(torch.nn.Linear(7, 3).eval(), (torch.rand(2, 7),), None, tmp_path / "l.onnx",
                          input_names=["x"], dynamic_axes={"x": {0: "batch_size"}}, opset=18)
    assert plain == []  # torch.export's own lower bound (2) is not the model's
