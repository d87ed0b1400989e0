"""Per-module tools on real exports: profile, extract, optimize and quantize with tags restored."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

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
    assert code == 0 and "encoder_model.onnx" in doc and "decoder_model_merged.onnx" in doc
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
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    batch = tok(["hello world, the cat runs fast!", "a tiny test sentence"], padding=True, return_tensors="pt")
    return ORTModelForSequenceClassification.from_pretrained(folder)(**batch).logits.numpy()


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
    fused = [t for t in tags if t.op_type in ("SkipLayerNormalization", "Attention", "BiasGelu", "FastGelu",
                                              "MultiHeadAttention", "EmbedLayerNormalization")]
    assert fused and all(t.module_path.startswith("bert") for t in fused)
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
