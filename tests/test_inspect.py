"""analyze / validate / compare / report / graphml / view on real exports."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import onnx
import pytest

from modelexport.cli.main import main as cli
from modelexport.hierarchy.tags import node_tag, read_tags

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run_json(capsys, *argv) -> tuple[int, dict]:
    code = cli([*map(str, argv), "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


# -- analyze ------------------------------------------------------------------------------
def test_analyze_totals_add_up(tiny_bert_export, capsys):
    out, _ = tiny_bert_export
    code, doc = run_json(capsys, "analyze", out)
    assert code == 0 and doc["schema"] == "modelexport.analysis"
    f = doc["files"]["model.onnx"]
    model = onnx.load(out / "model.onnx")
    modules = {m["module_path"]: m for m in f["modules"]}
    assert f["nodes"] == len(model.graph.node) and f["untagged_nodes"] == 0
    assert sum(m["nodes_own"] for m in f["modules"]) == f["nodes"] == modules[""]["nodes_total"]
    params = sum(int(__import__("numpy").prod(t.dims)) for t in model.graph.initializer)
    assert modules[""]["parameters_total"] == f["parameters"] == params
    assert sum(m["parameters_own"] for m in f["modules"]) == params
    for m in f["modules"]:  # every module's total = own + children's totals
        children = [c for c in f["modules"] if c["parent"] == m["module_path"]]
        assert m["nodes_total"] == m["nodes_own"] + sum(c["nodes_total"] for c in children)
        assert sum(m["ops_total"].values()) == m["nodes_total"]
    query = modules["bert.encoder.layer.1.attention.self.query"]
    assert query["class"] == "Linear" and query["ops_own"]["MatMul"] == query["ops_own"]["Add"] == 1
    assert query["parameters_own"] >= 32 * 32  # its weight (the bias may be a de-duplicated shared one)


def test_analyze_depth_filter_and_csv(tiny_bert_export, capsys):
    out, _ = tiny_bert_export
    _, doc = run_json(capsys, "analyze", out, "--depth", "2")
    assert max(m["depth"] for m in doc["files"]["model.onnx"]["modules"]) == 2
    _, doc = run_json(capsys, "analyze", out, "--filter", "*.attention")
    paths = [m["module_path"] for m in doc["files"]["model.onnx"]["modules"]]
    assert "bert.encoder.layer.0.attention" in paths and "bert.encoder.layer.0" in paths  # ancestors kept
    assert not any(p.endswith(".intermediate") for p in paths)
    assert cli(["analyze", str(out), "--format", "csv", "--depth", "1"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["module_path"] for r in rows} == {"", "bert", "classifier"}


def test_analyze_tree_output(tiny_bert_export, capsys):
    out, _ = tiny_bert_export
    assert cli(["analyze", str(out), "--depth", "3"]) == 0
    text = capsys.readouterr().out
    assert "BertForSequenceClassification" in text and "BertEncoder" in text and "nodes" in text


@pytest.mark.optimum  # the merged decoder (If branches) is Optimum's layout
def test_analyze_multi_file_folder_one_tree_per_file(t5_export, capsys):
    code, doc = run_json(capsys, "analyze", t5_export)
    assert code == 0
    assert set(doc["files"]) == {"encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx",
                                 "decoder_model_merged.onnx"}
    merged = doc["files"]["decoder_model_merged.onnx"]
    assert merged["untagged_nodes"] == 0 and merged["nodes"] > 1000  # subgraph nodes counted


@pytest.mark.optimum  # a plain Optimum export
def test_analyze_untagged_model_says_so(plain_optimum_export, capsys):
    code, doc = run_json(capsys, "analyze", plain_optimum_export)
    f = doc["files"]["model.onnx"]
    assert code == 0 and f["untagged_nodes"] == f["nodes"] > 0
    assert cli(["analyze", str(plain_optimum_export)]) == 0
    assert "no modelexport tags" in capsys.readouterr().out


def test_read_only_commands_do_not_import_torch(tiny_bert_export):
    out, _ = tiny_bert_export
    code = ("import sys; from modelexport.cli.main import main; "
            f"main(['analyze', {str(out)!r}, '--format', 'json']); "
            f"main(['compare', {str(out)!r}, {str(out)!r}, '--format', 'json']); "
            f"main(['report', {str(out)!r}, '-o', '/dev/null']); "
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'optimum', 'onnxruntime') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", ["analyze", "validate", "report", "graphml"])
def test_bad_files_get_one_clear_line(tmp_path, tiny_bert_export, verb):
    out, _ = tiny_bert_export
    data = (out / "model.onnx").read_bytes()
    cases = {
        "random.onnx": os.urandom(4096),
        "truncated.onnx": data[: len(data) // 3],
        "text.onnx": b"this is not a model\n",
        "empty.onnx": b"",
    }
    extra = ["-o", str(tmp_path / "g.graphml")] if verb == "graphml" else []
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        proc = subprocess.run([sys.executable, "-m", "modelexport", verb, str(path), *extra], capture_output=True,
                              text=True, env=ENV, timeout=120)
        assert proc.returncode == 1, (name, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("modelexport: error:")]
        assert len(errors) == 1 and ("not an ONNX model" in errors[0] or "cannot read" in errors[0]), proc.stderr
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "modelexport", verb, str(empty), *extra], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert proc.returncode == 1 and "holds no .onnx file" in proc.stderr


# -- validate -------------------------------------------------------------------------------
def test_validate_passes_on_a_fresh_export(tiny_bert_export, capsys):
    out, _ = tiny_bert_export
    code, doc = run_json(capsys, "validate", out)
    assert code == 0 and doc["passed"], [c for c in doc["checks"] if c["status"] != "pass"]
    names = {c["name"] for c in doc["checks"]}
    assert {"onnx checker (full)", "every node tagged", "tags match modelexport_metadata.json",
            "Optimum ORTModel class loads the folder", "ONNX Runtime runs on dummy inputs"} <= names


def test_validate_passes_on_multi_file_folder(t5_export, capsys):
    code, doc = run_json(capsys, "validate", t5_export)
    assert code == 0, [c for c in doc["checks"] if c["status"] == "fail"]


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _failed(capsys, path) -> dict[str, str]:
    code, doc = run_json(capsys, "validate", path, "--no-run")
    assert code == 1 and not doc["passed"]
    return {c["name"]: c["detail"] for c in doc["checks"] if c["status"] == "fail"}


def test_validate_detects_removed_and_changed_tags(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    folder = _copy(out, tmp_path / "removed")
    model = onnx.load(folder / "model.onnx")
    del model.graph.node[10].metadata_props[:]
    onnx.save(model, folder / "model.onnx")
    assert "every node tagged" in _failed(capsys, folder)

    folder = _copy(out, tmp_path / "changed")
    model = onnx.load(folder / "model.onnx")
    target = next(n for n in model.graph.node if n.op_type == "MatMul"
                  and node_tag(n).module_path == "bert.encoder.layer.1.attention.self.query")
    for p in target.metadata_props:
        if p.key == "module_path":
            p.value = "bert.encoder.layer.0.attention.self.query"
    onnx.save(model, folder / "model.onnx")
    failed = _failed(capsys, folder)
    assert "tags match modelexport_metadata.json" in failed or "module paths exist in the module tree" in failed


def test_validate_detects_metadata_disagreeing_and_replaced_file(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    folder = _copy(out, tmp_path / "meta")
    meta = json.loads((folder / "modelexport_metadata.json").read_text())
    meta["files"]["model.onnx"]["nodes"] += 5
    (folder / "modelexport_metadata.json").write_text(json.dumps(meta))
    assert "tags match modelexport_metadata.json" in _failed(capsys, folder)

    folder = _copy(out, tmp_path / "replaced")
    model = onnx.load(folder / "model.onnx")
    model.graph.node[-1].name = model.graph.node[-1].name + "_edited"  # same tags, different graph
    onnx.save(model, folder / "model.onnx")
    assert "graph structure differs" in _failed(capsys, folder)["tags match modelexport_metadata.json"]


@pytest.mark.optimum  # a plain Optimum export
def test_validate_untagged_optimum_export_fails_honestly(plain_optimum_export, capsys):
    failed = _failed(capsys, plain_optimum_export)
    assert "every node tagged" in failed and "modelexport_metadata.json present and readable" in failed


# -- compare --------------------------------------------------------------------------------
@pytest.mark.optimum  # opset 14: the TorchScript exporter (the dynamo one writes 18 and above)
def test_compare_identical_and_two_opsets(tiny_bert_dir, tiny_bert_export, tmp_path, capsys):
    import modelexport

    out, _ = tiny_bert_export
    code, doc = run_json(capsys, "compare", out, out)
    assert code == 0 and doc["files"][0]["modules_changed"] == 0
    other = tmp_path / "opset14"
    modelexport.export(str(tiny_bert_dir), other, opset=14, validate=False)
    code, doc = run_json(capsys, "compare", out, other)
    f = doc["files"][0]
    assert code == 0 and f["nodes_a"] == len(read_tags(out / "model.onnx"))
    assert f["nodes_b"] == len(read_tags(other / "model.onnx"))
    layer_norms = [m for m in f["modules"] if m["module_path"].endswith("LayerNorm")]
    # opset 14 has no LayerNormalization op: each LayerNorm module is decomposed
    assert layer_norms and all(m["ops_removed"].get("LayerNormalization") == 1 for m in layer_norms)
    assert cli(["compare", str(out), str(other)]) == 0
    assert "modules differ" in capsys.readouterr().out


# -- report ---------------------------------------------------------------------------------
def test_report_on_export(tiny_bert_dir, tmp_path):
    out = tmp_path / "with-report"
    proc = subprocess.run([sys.executable, "-m", "modelexport", "export", str(tiny_bert_dir), str(out), "--report"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (out / "modelexport_report.md").read_text()
    for heading in ("## Coverage", "## Module tree", "### Largest modules", "## Files"):
        assert heading in text
    assert "BertEncoder" in text and "config.json" in text


# -- graphml and the viewer -----------------------------------------------------------------
def test_graphml_nested_modules_read_by_networkx(tiny_bert_export, tmp_path, capsys):
    import networkx as nx

    out, _ = tiny_bert_export
    target = tmp_path / "bert.graphml"
    assert cli(["graphml", str(out), "-o", str(target)]) == 0
    graph = nx.read_graphml(target)
    ops = {n: d for n, d in graph.nodes(data=True) if d.get("kind") == "op"}
    modules = {n: d for n, d in graph.nodes(data=True) if d.get("kind") == "module"}
    assert len(ops) == len(read_tags(out / "model.onnx"))
    assert "m:bert.encoder.layer.1.attention.self.query" in modules
    matmul = next(n for n in onnx.load(out / "model.onnx", load_external_data=False).graph.node
                  if n.op_type == "MatMul" and node_tag(n).module_path == "bert.encoder.layer.1.attention.self.query")
    query = next(d for d in ops.values() if d["name"] == matmul.name)
    assert query["module_path"] == "bert.encoder.layer.1.attention.self.query" and query["op_type"] == "MatMul"
    assert graph.number_of_edges() > len(ops) // 2


def test_graphml_and_report_escape_odd_names(tmp_path, capsys):
    import networkx as nx
    import torch

    import modelexport

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module('we|ird<&"\'>ñame', torch.nn.Linear(2, 2))

        def forward(self, x):
            return torch.relu(getattr(self, 'we|ird<&"\'>ñame')(x))

    path = tmp_path / "odd.onnx"
    modelexport.export_module(Odd(), (torch.randn(1, 2),), path)
    assert {t.module_path for t in read_tags(path)} >= {'we|ird<&"\'>ñame'}
    assert cli(["graphml", str(path), "-o", str(tmp_path / "odd.graphml")]) == 0
    graph = nx.read_graphml(tmp_path / "odd.graphml")
    assert 'm:we|ird<&"\'>ñame' in graph.nodes
    assert cli(["report", str(path), "-o", str(tmp_path / "odd.md")]) == 0
    report = (tmp_path / "odd.md").read_text()
    assert "we\\|ird\\<&amp;\"'\\>ñame" in report  # no raw "|" or "<" that would break the table


def test_model_explorer_adapter_groups_nodes_by_module(tiny_bert_export):
    pytest.importorskip("model_explorer_onnx")
    from model_explorer_onnx.main import ONNXAdapter

    import onnx

    out, _ = tiny_bert_export
    # the query projection's MatMul, found by its tag (its name differs between the exporters)
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    query = [n.name for n in model.graph.node if n.op_type == "MatMul"
             and {p.key: p.value for p in n.metadata_props}.get("module_path") == "bert.encoder.layer.1.attention.self.query"]
    assert len(query) == 1, query
    graphs = ONNXAdapter().convert(str(out / "model.onnx"), {})["graphs"]
    nodes = {n.id: n.namespace for n in graphs[0].nodes}
    assert nodes[query[0]].endswith("BertForSequenceClassification/bert/encoder/layer.1/attention/self/query")
    namespaces = {ns for ns in nodes.values() if "/encoder/layer.0/" in ns}
    assert len(namespaces) > 5  # one layer per module, not a flat graph
