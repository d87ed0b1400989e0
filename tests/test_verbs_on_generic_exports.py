"""Every per-module verb on folders the generic path wrote (the only path under transformers 5, where
Optimum cannot be installed): a BERT classifier, ViT, GPT-2 with its KV cache, T5 with its
encoder / decoder / decoder-with-past files, Whisper. Each verb runs as a user runs it (the CLI in a
subprocess) and its JSON is checked against the folder it read."""
from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest

import modelexport
from modelexport.testing.tiny_models import BY_NAME

from cli_run import run_cli

FAMILIES = ["vit", "gpt2", "t5", "whisper"]


@pytest.fixture(scope="module")
def generic_exports(tiny_bert_dir, tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("generic-verbs")
    folders = {"bert": tiny_bert_dir}
    for name in FAMILIES:
        folder = work / f"{name}-model"
        folder.mkdir()
        BY_NAME[name].build(folder)
        folders[name] = folder
    exports = {}
    for name, folder in folders.items():
        out = work / f"{name}-onnx"
        result = modelexport.export(str(folder), out, exporter="generic")
        assert all(f.coverage["root_fallback"] == 0 for f in result.files)
        exports[name] = out
    return exports


def _json(*argv) -> dict:
    proc = run_cli(*argv, "--format", "json")
    assert proc.returncode == 0, (argv, proc.stderr)
    doc = json.loads(proc.stdout)
    assert "schema" in doc
    return doc


def _onnx_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.onnx"))


@pytest.mark.parametrize("name", ["bert", *FAMILIES])
def test_analyze_validate_profile_on_generic_exports(generic_exports, name):
    out = generic_exports[name]
    meta = json.loads((out / "modelexport_metadata.json").read_text())
    analysis = _json("analyze", out)
    for file in _onnx_names(out):
        modules = {m["module_path"]: m for m in analysis["files"][file]["modules"]}
        assert modules[""]["nodes_total"] == meta["files"][file]["nodes"]
    validation = _json("validate", out)
    failed = [c for c in validation["checks"] if c["status"] == "fail"]
    assert not failed, failed
    profile = _json("profile", out, "--runs", "2", "--warmup", "1")
    assert set(profile["files"]) == set(_onnx_names(out))
    for file, data in profile["files"].items():
        assert data["total_ms"] > 0, file


@pytest.mark.parametrize("name", ["bert", "gpt2", "t5"])
def test_optimize_quantize_and_diff_on_generic_exports(generic_exports, name, tmp_path):
    out = generic_exports[name]
    optimized, quantized = tmp_path / "o1", tmp_path / "int8"
    proc = run_cli("optimize", out, "-o", optimized, "--level", "O1")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("quantize", out, "-o", quantized)
    assert proc.returncode == 0, proc.stderr
    for folder in (optimized, quantized):
        assert _onnx_names(folder) == _onnx_names(out)
        assert run_cli("validate", folder).returncode == 0
    diff = _json("diff", out, quantized)
    for file, data in diff["files"].items():
        assert data["modules"], file


# The first layer of each model (transformers 5 renamed ViT's `vit.encoder.layer` to `vit.layers`).
FIRST_LAYER = re.compile(r"(bert\.encoder\.layer|vit\.encoder\.layer|vit\.layers|transformer\.h|encoder\.block)\.0")


@pytest.mark.parametrize("name", ["bert", "vit", "gpt2", "t5"])
def test_extract_report_graphml_on_generic_exports(generic_exports, name, tmp_path):
    out = generic_exports[name]
    meta = json.loads((out / "modelexport_metadata.json").read_text())
    module = next(m["module_path"] for m in meta["modules"] if FIRST_LAYER.fullmatch(m["module_path"]))
    piece = tmp_path / "piece.onnx"
    proc = run_cli("extract", out, "--module", module, "-o", piece)
    assert proc.returncode == 0, proc.stderr
    tags = {t.module_path for t in modelexport.read_tags(piece)}
    assert tags and all(t == module or t.startswith(module + ".") for t in tags)
    onnx.checker.check_model(str(piece), full_check=True)
    page = tmp_path / "report.html"
    proc = run_cli("report", out, "--html", "-o", page)
    assert proc.returncode == 0, proc.stderr
    assert module in page.read_text(encoding="utf-8")
    if len(_onnx_names(out)) == 1:
        proc = run_cli("graphml", out, "-o", tmp_path / "g.graphml")
        assert proc.returncode == 0, proc.stderr
