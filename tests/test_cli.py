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
    assert (summary["schema"], summary["schema_version"]) == ("modelexport.export", 1)
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


# -- issue 23, item 17 and the smaller ones: the command line as people use it ------------------
def test_debug_works_after_the_verb_too(tmp_path):
    for argv in (["--debug", "analyze", tmp_path / "missing"], ["analyze", tmp_path / "missing", "--debug"]):
        proc = run_cli(*argv)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" in proc.stderr  # --debug: the traceback is shown
        assert proc.stderr.strip().splitlines()[-1] == f"modelexport: error: no such file or folder: {tmp_path / 'missing'}"


def test_view_on_a_port_in_use_is_one_error_line(tiny_bert_export):
    import socket

    pytest.importorskip("model_explorer", reason="the view extra (Model Explorer) is not installed here")

    out, _ = tiny_bert_export
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("view", out, "--port", port, "--no-browser")
    assert proc.stdout == ""
    assert_clean_error(proc, f"port {port} on 127.0.0.1 is in use")


def test_validate_no_run_says_the_run_was_skipped(tiny_bert_export):
    out, _ = tiny_bert_export
    proc = run_cli("validate", out, "--no-run", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    ort_check = checks["ONNX Runtime runs on dummy inputs"]
    assert ort_check["status"] == "skip" and ort_check["detail"] == "not run (--no-run)" and ort_check["file"] == "model.onnx"
    table = run_cli("validate", out, "--no-run")
    assert "ONNX Runtime runs on dummy inputs" in table.stdout and "skipped" in table.stdout


def test_interrupt_that_lands_in_an_extension_import_is_an_interrupt(tiny_bert_export, monkeypatch, capsys):
    """Ctrl-C during the initialisation of a pybind11 module reaches us as that module's
    "ImportError: initialization failed", raised from the KeyboardInterrupt (pybind11's
    ``raise_from``): exit 130, "interrupted", not an internal error."""
    from modelexport.cli.main import main as cli
    from modelexport.runtime import diff as diff_module

    def interrupted_in_import(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise ImportError("initialization failed") from interrupt

    monkeypatch.setattr(diff_module, "diff_files", interrupted_in_import)
    out, _ = tiny_bert_export
    assert cli(["diff", str(out), str(out)]) == 130
    err = capsys.readouterr().err
    assert "modelexport: interrupted" in err and "internal error" not in err


def test_ctrl_c_during_diff_is_exit_130(minilm_export):
    """A real SIGINT while ONNX Runtime runs (after the first progress line)."""
    import signal

    out, _ = minilm_export
    proc = subprocess.Popen([sys.executable, "-m", "modelexport", "diff", str(out), str(out), "--text", "a b c"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    first = proc.stderr.readline()
    assert "running A and B" in first, first
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "modelexport: interrupted" in rest and "internal error" not in rest and "Traceback" not in rest


def test_diff_says_what_it_runs_on_stderr(tiny_bert_export):
    out, _ = tiny_bert_export
    proc = run_cli("diff", out, out, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["schema"] == "modelexport.diff"  # stdout stays the document
    import re

    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert re.fullmatch(r"\[1/1\] model\.onnx: running A and B on 1 input\(s\), \d+ boundary values exposed", lines[0])
    assert re.fullmatch(r"\[1/1\] model\.onnx: running \d+ modules of B alone on A's values", lines[1])


def test_numbers_and_headers_never_wrap_in_a_narrow_terminal(tiny_bert_export, tmp_path):
    """In a 50-column terminal (a real pty), every number of the table is printed whole."""
    import pty
    import re

    out, _ = tiny_bert_export
    quantized = tmp_path / "q"
    assert run_cli("quantize", out, "-o", quantized).returncode == 0
    argv = ["diff", out, quantized, "--text", "hello world, the cat runs fast!", "--top", "4"]
    doc = json.loads(run_cli(*argv, "--format", "json").stdout)
    expected = [format(m["cosine"], ".6f") for m in doc["files"]["model.onnx"]["modules"]]
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "modelexport", *map(str, argv)], stdin=slave, stdout=slave,
                            stderr=subprocess.DEVNULL, env={**ENV, "COLUMNS": "50", "LINES": "40", "TERM": "xterm"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the pty closes when the child ends
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    for number in expected:
        assert number in text, (number, text)
    for header in ("max |A-B|", "rel L2", "cosine", "added rel L2"):
        assert header in text, (header, text)
