"""The ``modelexport`` command as a user runs it: real subprocesses, real exports."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelexport", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def assert_clean_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("modelexport: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_export_prints_summary_and_writes_folder(tiny_bert_dir, tmp_path):
    out = tmp_path / "onnx"
    proc = run_cli("export", tiny_bert_dir, out)
    assert proc.returncode == 0, proc.stderr
    assert "model.onnx" in proc.stdout and "ok" in proc.stdout  # summary table with validation verdict
    assert "Tagging nodes" in proc.stderr  # progress of the phases
    assert {"model.onnx", "config.json", "tokenizer.json", "modelexport_metadata.json"} <= {
        p.name for p in out.iterdir()}


def test_export_json_summary(tiny_bert_dir, tmp_path):
    proc = run_cli("export", tiny_bert_dir, tmp_path / "o", "--format", "json", "--task", "text-classification")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["task"] == "text-classification"
    assert summary["files"][0]["coverage"]["nodes"] > 0
    assert summary["max_abs_diff"] < 1e-4


def test_missing_model_folder(tmp_path):
    proc = run_cli("export", tmp_path / "nope", tmp_path / "out")
    assert_clean_error(proc, "not found")
    assert not (tmp_path / "out").exists()


def test_folder_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"x")
    proc = run_cli("export", tmp_path / "m", tmp_path / "out")
    assert_clean_error(proc, "config.json")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, words", [
    ("{not json", ("not valid JSON",)),
    ("", ("not valid JSON",)),
    ("[1, 2]", ("JSON object",)),
    ('{"model_type": "no-such-architecture"}', ("model_type",)),
])
def test_corrupt_config(tmp_path, content, words):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(content)
    proc = run_cli("export", tmp_path / "m", tmp_path / "out")
    assert_clean_error(proc, *words)
    assert not (tmp_path / "out").exists()


def test_unknown_task_lists_supported_tasks(tiny_bert_dir, tmp_path):
    proc = run_cli("export", tiny_bert_dir, tmp_path / "out", "--task", "image-segmentation")
    assert_clean_error(proc, "image-segmentation", "text-classification", "fill-mask")
    assert not (tmp_path / "out").exists()


def test_non_empty_output_refused_and_untouched(tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    proc = run_cli("export", tiny_bert_dir, out)
    assert_clean_error(proc, "--force")
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


def test_force_replaces_only_with_a_complete_folder(tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "modelexport_metadata.json").write_text('{"schema": "modelexport.metadata"}')  # an earlier export
    proc = run_cli("export", tiny_bert_dir, out, "--force", "--no-validate")
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    assert "old.txt" not in names and "model.onnx" in names
    assert "not validated" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_force_export_keeps_previous_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "modelexport_metadata.json").write_text('{"schema": "modelexport.metadata"}')
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{broken")
    proc = run_cli("export", tmp_path / "m", out, "--force")
    assert_clean_error(proc)
    assert sorted(p.name for p in out.iterdir()) == ["modelexport_metadata.json", "old.txt"]


def test_help_lists_export():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "export" in proc.stdout
