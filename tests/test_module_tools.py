"""Per-module tools on real exports: profile, extract, optimize and quantize with tags restored."""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import modelexport

from modelexport.cli.main import main as cli
from modelexport.hierarchy.tags import read_tags


def run_json(capsys, *argv):
    code = cli([*map(str, argv), "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


def profile_json(capsys, *argv):
    """``profile --format json`` has one shape for one file or many: {"files": {FILE: profile}}."""
    code, doc = run_json(capsys, "profile", *argv)
    assert doc["schema"] == "modelexport.profile"
    return code, doc


# -- profile ---------------------------------------------------------------------------------
@pytest.mark.parametrize("optimization", ["all", "disabled"])
def test_profile_by_module_adds_up(tiny_bert_export, capsys, optimization):
    out, _ = tiny_bert_export
    code, doc = profile_json(capsys, out, "--runs", "3", "--warmup", "1", "--seq-len", "16",
                             "--optimization", optimization)
    doc = doc["files"]["model.onnx"]
    assert code == 0 and doc["total_ms"] > 0
    assert sum(m["self_ms"] for m in doc["modules"]) == pytest.approx(doc["total_ms"], rel=1e-6)
    rows = {m["module_path"]: m for m in doc["modules"]}
    assert rows[""]["total_ms"] + rows.get(None, {"total_ms": 0})["total_ms"] == pytest.approx(doc["total_ms"])
    layer = rows["bert.encoder.layer.1"]
    assert layer["total_ms"] > 0 and layer["hierarchy_tag"].endswith("BertLayer.1")
    assert doc["unmapped_ms"] == pytest.approx(0.0, abs=doc["total_ms"] * 0.02)  # fused nodes mapped back
    if optimization == "disabled":
        assert rows["bert.encoder.layer.1.attention.self.query"]["calls"] >= 2  # MatMul + Add (+ de-dup Identity)


def test_profile_depth_trace_and_inputs(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    trace = tmp_path / "trace.json"
    code, doc = profile_json(capsys, out, "--runs", "2", "--depth", "2", "--trace", trace)
    doc = doc["files"]["model.onnx"]
    assert code == 0
    assert all(m["module_path"] is None or m["module_path"].count(".") <= 1 for m in doc["modules"])
    speedscope = json.loads(trace.read_text())
    profile = speedscope["profiles"][0]
    assert profile["type"] == "sampled" and len(profile["samples"]) == len(profile["weights"]) > 0
    names = {f["name"] for f in speedscope["shared"]["frames"]}
    assert "bert.encoder" in names and "op:MatMul" in names  # stacks folded at --depth 2 too
    np.savez(tmp_path / "in.npz", input_ids=np.ones((2, 5), np.int64), attention_mask=np.ones((2, 5), np.int64),
             token_type_ids=np.zeros((2, 5), np.int64))
    code, doc = profile_json(capsys, out, "--runs", "2", "--inputs", tmp_path / "in.npz")
    assert code == 0 and doc["files"]["model.onnx"]["total_ms"] > 0


def test_profile_multi_file_folder(t5_export, capsys):
    code, doc = profile_json(capsys, t5_export, "--runs", "1", "--warmup", "0", "--seq-len", "4")
    doc = doc["files"]
    # Optimum's layout merges the decoders; the generic path's (transformers 5) keeps them apart
    assert code == 0 and set(doc) == {p.name for p in t5_export.glob("*.onnx")} and "encoder_model.onnx" in doc
    assert all(sum(m["self_ms"] for m in f["modules"]) == pytest.approx(f["total_ms"]) for f in doc.values())


# -- extract ---------------------------------------------------------------------------------
def _with_outputs(model, names):
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v for v in inferred.graph.value_info}
    full = onnx.ModelProto()
    full.CopyFrom(model)
    full.graph.output.extend(types[n] for n in names)
    return full


def test_extract_module_matches_full_model_intermediates(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    target = tmp_path / "layer0.onnx"
    assert cli(["extract", str(out), "--module", "bert.encoder.layer.0", "-o", str(target)]) == 0
    capsys.readouterr()
    sub = onnx.load(target)
    onnx.checker.check_model(sub, full_check=True)
    tags = read_tags(sub)
    assert tags and all(t.module_path.startswith("bert.encoder.layer.0") or t.op_type == "Constant" for t in tags)
    assert {i.name for i in sub.graph.initializer} <= {i.name for i in onnx.load(out / "model.onnx").graph.initializer}

    full = _with_outputs(onnx.load(out / "model.onnx"),
                         [i.name for i in sub.graph.input] + [o.name for o in sub.graph.output])
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(0, 50, (2, 7)).astype(np.int64),
            "attention_mask": np.ones((2, 7), np.int64), "token_type_ids": np.zeros((2, 7), np.int64)}
    session = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    got = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(
        None, {i.name: values[i.name] for i in sub.graph.input})
    for output, value in zip(sub.graph.output, got):
        np.testing.assert_allclose(value, values[output.name], atol=1e-6)


def test_extract_unknown_module_lists_close_matches(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    assert cli(["extract", str(out), "--module", "bert.encoder.layer.7", "-o", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert "no node of module 'bert.encoder.layer.7'" in err and "bert.encoder.layer.1" in err
    assert not (tmp_path / "x.onnx").exists()


# -- optimize and quantize ---------------------------------------------------------------------
def _logits(folder, tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    batch = tok(["hello world, the cat runs fast!", "a tiny test sentence"], padding=True, return_tensors="np")
    return modelexport.load(folder)(**batch)["logits"]  # ONNX Runtime alone: with or without Optimum


def _one_value_per_key(model) -> bool:
    from modelexport.hierarchy.tags import iter_nodes

    for node, _ in iter_nodes(model.graph):
        keys = [p.key for p in node.metadata_props]
        if len(keys) != len(set(keys)):
            return False
    return True


def test_optimize_keeps_every_node_tagged(tiny_bert_dir, tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    optimized = tmp_path / "optimized"
    assert cli(["optimize", str(out), "-o", str(optimized), "--level", "O2"]) == 0
    capsys.readouterr()
    model = onnx.load(optimized / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert _one_value_per_key(model)
    tags = read_tags(model)
    assert len(tags) < len(read_tags(out / "model.onnx"))  # something was fused
    assert all(t.module_path is not None and t.node_name for t in tags)
    np.testing.assert_allclose(_logits(optimized, tiny_bert_dir), _logits(out, tiny_bert_dir), atol=1e-4)
    code, doc = run_json(capsys, "validate", optimized)
    assert code == 0, [c for c in doc["checks"] if c["status"] == "fail"]
    code, diff = run_json(capsys, "compare", out, optimized)
    assert code == 0 and diff["files"][0]["modules_changed"] > 0


def test_quantize_with_excluded_module(tiny_bert_dir, tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    quantized = tmp_path / "q8"
    assert cli(["quantize", str(out), "-o", str(quantized), "--exclude-modules", "bert.encoder.layer.1"]) == 0
    assert "kept in float" in capsys.readouterr().out
    model = onnx.load(quantized / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert _one_value_per_key(model)
    tags = read_tags(model)
    assert all(t.module_path is not None for t in tags)
    layer1 = [t for t in tags if t.module_path.startswith("bert.encoder.layer.1")]
    layer0 = [t for t in tags if t.module_path.startswith("bert.encoder.layer.0")]
    assert not any("Integer" in t.op_type or "Quantize" in t.op_type for t in layer1)  # kept float
    assert any(t.op_type == "MatMulInteger" for t in layer0)  # quantized
    quantize_nodes = [t for t in tags if t.op_type == "DynamicQuantizeLinear"]
    assert quantize_nodes and all(t.module_path for t in quantize_nodes)  # took their consumer's module
    meta = json.loads((quantized / "modelexport_metadata.json").read_text())
    assert meta["transforms"][-1]["kept_float_nodes"]["bert.encoder.layer.1"] > 0
    diff = np.abs(_logits(quantized, tiny_bert_dir) - _logits(out, tiny_bert_dir)).max()
    assert diff < 0.1  # int8 of a random tiny model: close, not equal


def test_quantize_unknown_module_glob_is_refused(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    assert cli(["quantize", str(out), "-o", str(tmp_path / "q"), "--exclude-modules", "nothing.like.this"]) == 1
    assert "matches no module" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


# -- fused nodes land in their own layer (issue 12) ---------------------------------------------
_LAYER = re.compile(r"^(bert\.encoder\.layer\.\d+|bert\.embeddings|transformer\.h\.\d+|transformer\.ln_f"
                    r"|transformer\.w[tp]e)(\.|$)")


def _layer(path: str) -> str | None:
    m = _LAYER.match(path or "")
    return m.group(1) if m else None


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    from modelexport.testing.tiny_models import BY_NAME

    folder = tmp_path_factory.mktemp("gpt2")
    BY_NAME["gpt2"].build(folder)
    out = tmp_path_factory.mktemp("exports") / "gpt2-onnx"
    modelexport.export(str(folder), out)  # text-generation-with-past: one model.onnx with past inputs
    return out


# ONNX Runtime's fusion patterns are written against the TorchScript exporter's op sequence: the
# BERT expectations hold for Optimum's export (the dynamo-traced graph fuses no Attention).
TORCHSCRIPT_GRAPH = pytest.mark.optimum


@pytest.mark.parametrize("model, level, expected_ops", [
    ("bert", "O1", set()),
    pytest.param("bert", "O2", {"Attention", "SkipLayerNormalization", "BiasGelu"}, marks=TORCHSCRIPT_GRAPH),
    pytest.param("bert", "O3", {"Attention", "SkipLayerNormalization", "FastGelu"}, marks=TORCHSCRIPT_GRAPH),
    ("gpt2", "O2", {"SkipLayerNormalization", "FastGelu"}),
])
def test_fused_nodes_stay_in_their_layer(tiny_bert_export, gpt2_export, tmp_path, model, level, expected_ops):
    """Each fused node's module is in the layer of the original nodes it replaced (those that
    produced its outputs), and no shallower than that layer: never `bert` or `transformer`.
    O4 is O3 plus fp16 for GPUs; this machine has none."""
    from modelexport.runtime.transform import optimize_folder

    source = tiny_bert_export[0] if model == "bert" else gpt2_export
    optimize_folder(source, tmp_path / "opt", level)
    original = onnx.load(source / "model.onnx", load_external_data=False)
    producer = {o: read_tags_of(n) for n in original.graph.node for o in n.output}
    fused = [n for n in onnx.load(tmp_path / "opt" / "model.onnx", load_external_data=False).graph.node
             if n.domain == "com.microsoft"]
    assert {n.op_type for n in fused} >= expected_ops
    checked = 0
    for node in fused:
        path = read_tags_of(node)
        replaced = [producer[o] for o in node.output if o in producer]
        assert _layer(path) is not None, (node.op_type, node.name, path)
        if replaced:
            assert _layer(path) == _layer(replaced[0]), (node.op_type, node.name, path, replaced)
            checked += 1
    assert checked >= len(fused) // 2  # most fused nodes keep an original output name to compare with


def read_tags_of(node) -> str:
    return {p.key: p.value for p in node.metadata_props}["module_path"]


# -- multi-file folders and merged decoders (issue 12) ------------------------------------------
def _float_ops_of(model_path, module: str) -> tuple[set[str], int]:
    """Op types of the module's nodes, subgraphs included, and how many sit in subgraphs."""
    from modelexport.hierarchy.tags import iter_nodes, node_tag

    ops, nested = set(), 0
    for node, graph_path in iter_nodes(onnx.load(model_path, load_external_data=False).graph):
        path = node_tag(node).module_path
        if path == module or path.startswith(module + "."):
            ops.add(node.op_type)
            nested += bool(graph_path)
    return ops, nested


@pytest.mark.optimum  # the If branches are those of Optimum's merged decoder
def test_quantize_excludes_modules_across_files_and_if_branches(t5_export, tmp_path, capsys):
    out = tmp_path / "q"
    assert cli(["quantize", str(t5_export), "-o", str(out), "--exclude-modules", "encoder.block.1",
                "decoder.block.1"]) == 0
    capsys.readouterr()
    quantized = {"MatMulInteger", "DynamicQuantizeLinear"}
    ops, _ = _float_ops_of(out / "encoder_model.onnx", "encoder.block.1")
    assert "MatMul" in ops and not ops & quantized
    ops, _ = _float_ops_of(out / "encoder_model.onnx", "encoder.block.0")
    assert ops & quantized  # the rest is quantized
    ops, nested = _float_ops_of(out / "decoder_model_merged.onnx", "decoder.block.1")
    assert nested > 0 and "MatMul" in ops and not ops & quantized  # inside the If branches too
    ops, _ = _float_ops_of(out / "decoder_model_merged.onnx", "decoder.block.0")
    assert ops & quantized


def test_module_patterns_matching_nowhere_name_close_matches(t5_export, tmp_path, capsys):
    assert cli(["quantize", str(t5_export), "-o", str(tmp_path / "q"), "--exclude-modules", "decoder.blok.1"]) == 1
    err = capsys.readouterr().err
    assert "'decoder.blok.1' matches no module" in err and "close matches: decoder.block.1" in err
    assert not (tmp_path / "q").exists()


def test_extract_from_a_multi_file_folder(t5_export, tmp_path, capsys):
    x = tmp_path / "x.onnx"
    # only the encoder file has encoder.block.1: no --file needed
    assert cli(["extract", str(t5_export), "--module", "encoder.block.1", "-o", str(x)]) == 0
    assert "74 nodes of 'encoder.block.1'" in capsys.readouterr().out or x.is_file()
    # decoder.block.0 is in two main graphs (and the merged decoder's branches): the user picks
    y = tmp_path / "y.onnx"
    assert cli(["extract", str(t5_export), "--module", "decoder.block.0", "-o", str(y)]) == 1
    assert "has nodes in decoder_model.onnx, decoder_with_past_model.onnx; pick one with --file" in \
        capsys.readouterr().err
    assert cli(["extract", str(t5_export), "--module", "decoder.block.0", "--file", "decoder_model.onnx",
                "-o", str(x), "--force"]) == 0
    extracted = onnx.load(x)
    tags = read_tags(extracted)
    assert tags and all(t.module_path.startswith("decoder.block.0") for t in tags)
    session = ort.InferenceSession(str(x), providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()) == len(extracted.graph.output)


def test_quantize_gpt2_with_past_excludes_one_block(gpt2_export, tmp_path, capsys):
    out = tmp_path / "q"
    assert cli(["quantize", str(gpt2_export), "-o", str(out), "--exclude-modules", "transformer.h.1"]) == 0
    capsys.readouterr()
    files = sorted(p.name for p in out.glob("*.onnx"))
    for name in files:
        ops, _ = _float_ops_of(out / name, "transformer.h.1")
        assert ops and not ops & {"MatMulInteger", "DynamicQuantizeLinear"}, name
