"""Real export of a tiny random BERT classifier, checked in ONNX Runtime, Optimum and onnx.checker."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from modelexport import read_tags

# Optimum's export of these models (its configs, graph and classes): the generic path has its own
# tests (test_generic.py, test_families.py in the transformers-5 environment).
pytestmark = pytest.mark.optimum


def test_optimum_loads_folder_and_matches_pytorch(tiny_bert_dir, tiny_bert_export):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, BertForSequenceClassification

    out, _ = tiny_bert_export
    tokenizer = AutoTokenizer.from_pretrained(out)  # the tokenizer was copied into the folder
    texts = ["hello world, the cat runs fast!", "a tiny test sentence", "onnx"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    ort_model = ORTModelForSequenceClassification.from_pretrained(out)
    torch_model = BertForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    with torch.no_grad():
        expected = torch_model(**batch).logits.numpy()
    got = ort_model(**batch).logits.numpy()
    assert got.shape == (3, 3)  # dynamic batch and sequence axes: 3 texts, padded length != export length
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_every_node_has_both_tags_and_checker_passes(tiny_bert_export):
    out, result = tiny_bert_export
    model = onnx.load(out / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    tags = read_tags(model)
    assert len(tags) == len(model.graph.node) == result.files[0].nodes
    assert all(t.module_path is not None and t.hierarchy_tag is not None for t in tags)
    assert all(t.hierarchy_tag.startswith("/BertForSequenceClassification") for t in tags)


def test_spot_checked_tags(tiny_bert_export):
    out, _ = tiny_bert_export
    by_name = {t.node_name: t for t in read_tags(out / "model.onnx")}
    query = by_name["/bert/encoder/layer.1/attention/self/query/MatMul"]
    assert query.module_path == "bert.encoder.layer.1.attention.self.query"
    assert query.module_path.startswith("bert.encoder.layer.1.attention")
    assert query.hierarchy_tag.startswith(
        "/BertForSequenceClassification/BertModel/BertEncoder/BertLayer.1/BertAttention/"
    )
    assert query.hierarchy_tag.endswith("/Linear")
    classifier = [t for t in by_name.values() if t.module_path == "classifier"]
    assert classifier and all(t.hierarchy_tag == "/BertForSequenceClassification/Linear" for t in classifier)


def test_parameter_consumers_sit_in_their_parameters_module(tiny_bert_export, tiny_bert_dir):
    """Oracle independent of our naming: a node reading parameter ``a.b.weight`` belongs to ``a.b``."""
    from transformers import BertForSequenceClassification

    out, _ = tiny_bert_export
    modules = {name for name, _ in BertForSequenceClassification.from_pretrained(tiny_bert_dir).named_modules()}
    model = onnx.load(out / "model.onnx")
    tags = {t.node_name: t for t in read_tags(model)}
    checked = 0
    for node in model.graph.node:
        if node.op_type == "Identity":  # torch's de-duplication of equal initializers: any module's
            continue
        for name in node.input:
            owner, _, leaf = name.rpartition(".")
            if leaf in ("weight", "bias") and owner in modules:
                assert tags[node.name].module_path == owner, (node.name, name)
                checked += 1
    assert checked >= 10


def test_graph_is_the_one_optimum_writes(tiny_bert_dir, tiny_bert_export, tmp_path):
    """Same nodes, op types, inputs and outputs as plain Optimum main_export: tags are the only addition."""
    from optimum.exporters.onnx import main_export

    main_export(str(tiny_bert_dir), tmp_path / "plain", task="text-classification")
    plain = onnx.load(tmp_path / "plain" / "model.onnx")
    ours = onnx.load(tiny_bert_export[0] / "model.onnx")
    assert [n.op_type for n in ours.graph.node] == [n.op_type for n in plain.graph.node]
    assert [n.name for n in ours.graph.node] == [n.name for n in plain.graph.node]
    assert ours.graph.input == plain.graph.input and ours.graph.output == plain.graph.output
    assert all(not n.metadata_props for n in plain.graph.node)
    for a, b in zip(ours.graph.node, plain.graph.node):
        stripped = onnx.NodeProto()
        stripped.CopyFrom(a)
        del stripped.metadata_props[:]
        assert stripped == b


def test_metadata_json_is_consistent_with_graph(tiny_bert_export):
    out, result = tiny_bert_export
    doc = json.loads((out / "modelexport_metadata.json").read_text())
    assert doc["schema_version"] == 1
    assert doc["task"] == "text-classification" and doc["library"] == "transformers"
    assert doc["ort_model_class"] == "ORTModelForSequenceClassification"
    assert doc["tool_versions"]["torch"] and doc["tool_versions"]["optimum-onnx"]
    file_doc = doc["files"]["model.onnx"]
    cov = file_doc["coverage"]
    assert cov["direct"] + cov["inferred"] + cov["root_fallback"] == cov["nodes"] == file_doc["nodes"]
    per_module = sum(m["nodes"].get("model.onnx", 0) for m in doc["modules"])
    assert per_module == cov["nodes"]
    tags = read_tags(out / "model.onnx")
    for m in doc["modules"]:
        assert m["nodes"].get("model.onnx", 0) == sum(t.module_path == m["module_path"] for t in tags)
    assert file_doc["validation"]["passed"] and file_doc["validation"]["max_abs_diff"] < 1e-4
    assert set(doc["timings_seconds"]) >= {"load", "export", "tag", "artifacts", "validate", "total"}
    root = next(m for m in doc["modules"] if m["module_path"] == "")
    assert root["nodes_total"]["model.onnx"] == cov["nodes"]
    layer1 = next(m for m in doc["modules"] if m["module_path"] == "bert.encoder.layer.1")
    assert layer1["nodes_total"]["model.onnx"] == sum(
        t.module_path == "bert.encoder.layer.1" or t.module_path.startswith("bert.encoder.layer.1.") for t in tags)
    assert root["parameters"] == sum(m["own_parameters"] for m in doc["modules"])


def test_folder_has_config_and_tokenizer_with_records(tiny_bert_export):
    out, result = tiny_bert_export
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    records = {a["kind"]: a for a in result.artifacts}
    assert records["config"]["files"] == ["config.json"]
    assert "tokenizer.json" in records["tokenizer"]["files"]
    for kind in ("image_processor", "feature_extractor", "generation_config"):
        assert records[kind]["status"] == "skipped" and records[kind]["reason"]
    # No staging folder left beside the result.
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("attr", ["direct_pct"])
def test_coverage_reports_inference_honestly(tiny_bert_export, attr):
    """Unscoped nodes are counted as inferred, not as direct; except the exporter's de-duplication
    Identities, whose output *is* a parameter: they belong to that parameter's module."""
    out, result = tiny_bert_export
    cov = result.files[0].coverage
    model = onnx.load(out / "model.onnx")
    unscoped = [n for n in model.graph.node if not n.name.startswith("/")]
    dedup = [n for n in unscoped if n.op_type == "Identity" and n.output[0].startswith("bert.")]
    assert dedup, "the tiny BERT's equal LayerNorm weights are de-duplicated by the exporter"
    for node in dedup:
        module = node.output[0].rpartition(".")[0]  # bert.encoder.layer.1.output.LayerNorm.weight
        assert {p.key: p.value for p in node.metadata_props}["module_path"] == module
    assert cov["inferred"] + cov["root_fallback"] == len(unscoped) - len(dedup) > 0
    assert cov[attr] == round(100 * cov["direct"] / cov["nodes"], 2)
