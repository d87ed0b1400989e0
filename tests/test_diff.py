"""``modelexport diff``: per-module error between two exports, from real ONNX Runtime runs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from modelexport.cli.main import main as cli
from modelexport.hierarchy.tags import node_tag

TEXTS = ["hello world, the cat runs fast!", "a tiny test sentence"]
DAMAGED = "bert.encoder.layer.1.intermediate.dense"


def diff_json(capsys, a, b, *extra) -> dict:
    code = cli(["diff", str(a), str(b), "--format", "json", *map(str, extra)])
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads(out)
    assert doc["schema"] == "modelexport.diff"
    return doc


@pytest.fixture(scope="module")
def damaged_export(tiny_bert_export, tmp_path_factory):
    """The tiny BERT export with one Linear's weight scaled, edited in the ONNX initializer."""
    out, _ = tiny_bert_export
    damaged = tmp_path_factory.mktemp("damaged") / "onnx"
    shutil.copytree(out, damaged)
    model = onnx.load(damaged / "model.onnx")
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul" and node_tag(n).module_path == DAMAGED)
    weights = {t.name: i for i, t in enumerate(model.graph.initializer)}
    index = next(weights[x] for x in matmul.input if x in weights)
    array = numpy_helper.to_array(model.graph.initializer[index])
    model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array * 3.0 + 0.05, model.graph.initializer[index].name))
    onnx.save(model, damaged / "model.onnx")
    return damaged


def test_diff_with_itself_is_all_zeros(tiny_bert_export, capsys):
    out, _ = tiny_bert_export
    doc = diff_json(capsys, out, out, "--text", TEXTS[0], "--text", TEXTS[1])
    modules = doc["files"]["model.onnx"]["modules"]
    assert doc["files"]["model.onnx"]["inputs_run"] == 2
    own = [m for m in modules if m["boundary"] == "own"]
    assert len(own) > 20
    for m in own:
        assert m["max_abs"] == 0.0 and m["rel_l2"] == 0.0 and m["added_rel_l2"] == 0.0, m
        assert m["cosine"] == pytest.approx(1.0)


def test_damaged_linear_is_where_the_error_appears(tiny_bert_export, damaged_export, capsys):
    out, _ = tiny_bert_export
    doc = diff_json(capsys, out, damaged_export, "--text", TEXTS[0], "--text", TEXTS[1])
    modules = {m["module_path"]: m for m in doc["files"]["model.onnx"]["modules"]}
    ranked = sorted((m for m in modules.values() if m["added_rel_l2"] is not None), key=lambda m: -m["added_rel_l2"])
    assert ranked[0]["module_path"] == DAMAGED, [(m["module_path"], m["added_rel_l2"]) for m in ranked[:5]]
    assert ranked[0]["added_from"] == "isolated" and ranked[0]["added_rel_l2"] > 0.5
    # upstream of the damage nothing differs; its ancestors only pass it on
    for path in ("bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1.attention"):
        assert modules[path]["max_abs"] == 0.0 and modules[path]["added_rel_l2"] == 0.0, modules[path]
    for path in ("bert.encoder.layer.1.intermediate", "bert.encoder.layer.1", "bert.encoder", "bert"):
        assert modules[path]["rel_l2"] > 0 and modules[path]["added_rel_l2"] < 0.1 * ranked[0]["added_rel_l2"], path
    # --top ranks by added error
    code = cli(["diff", str(out), str(damaged_export), "--top", "1", "--format", "json"])
    top = json.loads(capsys.readouterr().out)["files"]["model.onnx"]["modules"]
    assert code == 0 and [m["module_path"] for m in top] == [DAMAGED]


def test_float_vs_quantized_names_every_layer(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    assert cli(["quantize", str(out), "-o", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    doc = diff_json(capsys, out, tmp_path / "q", "--text", TEXTS[0])
    modules = doc["files"]["model.onnx"]["modules"]
    for layer in ("bert.encoder.layer.0", "bert.encoder.layer.1"):
        inside = [m for m in modules if m["module_path"].startswith(layer + ".") and m["added_rel_l2"]]
        assert inside, layer
    assert min(m["cosine"] for m in modules if m["cosine"] is not None) < 1.0


def test_diff_refuses_unrelated_inputs(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    np.savez(tmp_path / "x.npz", wrong=np.ones((1, 3), np.int64))
    assert cli(["diff", str(out), str(out), "--inputs", str(tmp_path / "x.npz")]) == 1
    assert "has no array for input(s)" in capsys.readouterr().err


def test_diff_against_pytorch_pairs_modules_or_says_why_not(tiny_bert_export, capsys):
    out, _ = tiny_bert_export
    code = cli(["diff", str(out), "--pytorch", "--text", TEXTS[0], "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["b"] == "pytorch"
    entry = doc["files"]["model.onnx"]
    paired = {m["module_path"]: m for m in entry["modules"]}
    for path in ("bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1.attention.self.query",
                 "bert.encoder.layer.1.output.LayerNorm", "classifier"):
        assert paired[path]["paired"] and paired[path]["max_abs"] < 1e-4, path
    unpaired = {m["module_path"]: m["reason"] for m in entry["unpaired"]}
    assert unpaired["bert.encoder.layer.0.output.dropout"].startswith("no node in the graph")
    assert not set(unpaired) & set(paired)


def test_minilm_float_vs_int8_names_every_layer(minilm_export, tmp_path, capsys):
    out, _ = minilm_export
    same = diff_json(capsys, out, out, "--text", "A man is eating food.")["files"]["model.onnx"]["modules"]
    assert all(m["max_abs"] == 0.0 and m["added_rel_l2"] == 0.0 for m in same if m["boundary"] == "own")
    assert cli(["quantize", str(out), "-o", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    doc = diff_json(capsys, out, tmp_path / "q", "--text", "A man is eating food.", "--text",
                    "The stock market fell sharply today.")
    modules = doc["files"]["model.onnx"]["modules"]
    for layer in range(6):
        prefix = f"0.model.encoder.layer.{layer}."
        assert any(m["module_path"].startswith(prefix) and m["added_rel_l2"] and m["added_rel_l2"] > 0.01
                   for m in modules), layer
    end = next(m for m in modules if m["module_path"] == "")
    assert 0.9 < end["cosine"] < 0.999  # int8 costs a few percent of cosine on MiniLM, as measured


def test_multi_file_folders_are_compared_file_by_file(t5_export, tmp_path, capsys):
    assert cli(["quantize", str(t5_export), "-o", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    doc = diff_json(capsys, t5_export, tmp_path / "q")
    assert set(doc["files"]) == {p.name for p in t5_export.glob("*.onnx")}
    encoder = {m["module_path"]: m for m in doc["files"]["encoder_model.onnx"]["modules"]}
    assert encoder["encoder.block.0"]["boundary"] == "own" and encoder["encoder.block.0"]["rel_l2"] > 0
    merged = doc["files"]["decoder_model_merged.onnx"]["modules"]
    assert merged and all(m["boundary"] in ("own", "fused", "none") for m in merged)
