"""What a new user hits in the first hour (issue 13): every verb as the README says, in real
subprocesses where the behaviour is about the process (pipes, imports, signals, servers)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest

import modelexport
from modelexport.testing.tiny_models import BY_NAME
from onnx_checks import symbolic_dims

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
CLI = [sys.executable, "-m", "modelexport"]


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600, **kwargs)


# -- view: Model Explorer served for real ----------------------------------------------------
def test_view_serves_the_model_over_http(tiny_bert_export):
    pytest.importorskip("model_explorer", reason="the view extra (Model Explorer) is not installed here")
    out, _ = tiny_bert_export
    proc = subprocess.Popen([*CLI, "view", str(out), "--no-browser"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            url = m.group(1) if m else None
        assert url, "Model Explorer did not print its address"
        assert urllib.request.urlopen(f"{url}/check_health", timeout=30).read() == b"model_explorer_ok"
        assert b"<html" in urllib.request.urlopen(f"{url}/", timeout=30).read().lower()
        command = {"extensionId": "onnx_adapter", "cmdId": "convert", "modelPath": str(out / "model.onnx"),
                   "settings": {}, "deleteAfterConversion": False}
        request = urllib.request.Request(f"{url}/apipost/v1/send_command", data=json.dumps(command).encode(),
                                         headers={"Content-Type": "application/json"})
        graphs = json.loads(urllib.request.urlopen(request, timeout=120).read())["graphs"]
        namespaces = {n["namespace"] for g in graphs for n in g["nodes"]}
        # The layers Model Explorer shows follow our namespace tag: one per module.
        assert "main_graph/BertForSequenceClassification/bert/encoder/layer.1/attention/self/query" in namespaces
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_help_texts_state_defaults():
    assert "free port" in run_cli("view", "--help").stdout
    assert "(default 1)" in run_cli("profile", "--help").stdout


# -- static shapes: every dimension a number ---------------------------------------------------
def test_minilm_static_shapes_leave_no_symbolic_dimension(minilm_dir, tmp_path):
    out = tmp_path / "static"
    modelexport.export(str(minilm_dir), out, static_shapes="batch_size=1,sequence_length=64")
    assert symbolic_dims(out / "model.onnx") == []
    meta = json.loads((out / "modelexport_metadata.json").read_text())
    assert meta["files"]["model.onnx"]["validation"]["passed"]


def test_load_pipeline_embeds_sentences(minilm_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "static"
    modelexport.export(str(minilm_dir), out, static_shapes="batch_size=2,sequence_length=32")
    sentences = ["A man is eating food.", "Someone is having a meal.", "The stock market fell sharply today."]
    got = np.stack([r["embedding"] for r in modelexport.load_pipeline(out)(sentences)])
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(sentences)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_load_pipeline_refuses_generation_at_creation(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    BY_NAME["gpt2"].build(folder)
    out = tmp_path / "static"
    modelexport.export(str(folder), out, static_shapes="batch_size=1,sequence_length=8", task="text-generation")
    with pytest.raises(modelexport.ModelExportError, match="does not handle task 'text-generation'"):
        modelexport.load_pipeline(out)


# -- preprocessors as the source has them ----------------------------------------------------
def test_vit_keeps_its_image_processor_class(tmp_path):
    folder = tmp_path / "vit"
    folder.mkdir()
    BY_NAME["vit"].build(folder)
    source = json.loads((folder / "preprocessor_config.json").read_text())
    assert source["image_processor_type"] == "ViTImageProcessor"
    proc = run_cli("export", folder, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert written["image_processor_type"] == "ViTImageProcessor"
    also = next(line for line in proc.stdout.splitlines() if line.startswith("Also written:"))
    assert also.count("preprocessor_config.json") == 1


def test_skipped_artifacts_are_explained_in_words(tiny_bert_dir, tmp_path):
    proc = run_cli("export", tiny_bert_dir, tmp_path / "o", "--format", "json", "--no-validate")
    assert proc.returncode == 0, proc.stderr
    skipped = {a["kind"]: a["reason"] for a in json.loads(proc.stdout)["artifacts"] if a["status"] == "skipped"}
    assert skipped["image_processor"] == "the folder has no image processor (preprocessor_config.json)"
    assert skipped["generation_config"] == "the folder has no generation_config.json"
    assert not any("http" in r or "Error" in r for r in skipped.values()), skipped


@pytest.mark.optimum  # Optimum's TasksManager names the library; without it --library timm is refused as such
def test_wrong_library_is_named(tiny_bert_dir, tmp_path):
    proc = run_cli("export", tiny_bert_dir, tmp_path / "o", "--library", "timm")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{tiny_bert_dir} is a transformers model, not a timm one" in proc.stderr
    assert not (tmp_path / "o").exists()


# -- the sentence-transformers user ----------------------------------------------------------
@pytest.mark.optimum  # loads the folder in Optimum's ORTModelForCustomTasks too
def test_sentence_transformers_loads_the_export(minilm_dir, minilm_export):
    from optimum.onnxruntime import ORTModelForCustomTasks
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    out, _ = minilm_export
    sentences = ["A man is eating food.", "The stock market fell sharply today."]
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(sentences)
    onnx_backend = SentenceTransformer(str(out), backend="onnx", device="cpu")
    assert type(onnx_backend[0].auto_model).__name__ == "ORTModelForFeatureExtraction"
    np.testing.assert_allclose(onnx_backend.encode(sentences), expected, atol=1e-5)
    # ... and the Optimum load of the same folder still works, on the same file.
    optimum_model = ORTModelForCustomTasks.from_pretrained(out)
    batch = AutoTokenizer.from_pretrained(out)(sentences, padding=True, return_tensors="np")
    np.testing.assert_allclose(np.asarray(optimum_model(**batch)["sentence_embedding"]), expected, atol=1e-5)
    alias = next(n for n in onnx.load(out / "model.onnx", load_external_data=False).graph.node
                 if "last_hidden_state" in n.output)
    tags = {p.key: p.value for p in alias.metadata_props}
    assert alias.op_type == "Identity" and tags["module_path"] == "0.model.encoder.layer.5.output.LayerNorm"


# -- imports: what the README says each verb loads --------------------------------------------
HEAVY = ("torch", "transformers", "optimum")


@pytest.mark.parametrize("verb", [["analyze", "{out}"], ["analyze", "{out}", "--format", "json"],
                                  ["compare", "{out}", "{out}"], ["report", "{out}/model.onnx"],
                                  ["graphml", "{out}", "-o", "{tmp}/g.graphml"], ["validate", "{out}", "--no-run"],
                                  ["profile", "{out}", "--runs", "1", "--warmup", "0"], ["--help"]])
def test_read_only_verbs_import_no_torch(tiny_bert_export, tmp_path, verb):
    out, _ = tiny_bert_export
    argv = [a.format(out=out, tmp=tmp_path) for a in verb]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "modelexport", *argv], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "onnx" in imported or argv == ["--help"]
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


# -- output for pipes ------------------------------------------------------------------------
def test_closed_pipe_is_a_normal_end(minilm_export):
    out, _ = minilm_export
    for argv in (["report", out / "model.onnx"], ["analyze", out], ["analyze", out, "--format", "json"]):
        proc = subprocess.Popen([*CLI, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0 and err == "", (argv, err)


def test_piped_tables_keep_whole_names(t5_export, tmp_path):
    proc = run_cli("analyze", t5_export)
    assert proc.returncode == 0
    assert "…" not in proc.stdout and "[dim]" not in proc.stdout and "\x1b[" not in proc.stdout
    assert all(p.name in proc.stdout for p in t5_export.glob("*.onnx")) and "decoder_with_past_model.onnx" in proc.stdout
    other = tmp_path / "other"
    from modelexport.runtime.transform import quantize_folder

    quantize_folder(t5_export, other)
    proc = run_cli("compare", t5_export, other, "--all")
    assert proc.returncode == 0
    assert "…" not in proc.stdout and "[dim]" not in proc.stdout and "[/]" not in proc.stdout
    # a deep module path, whole, as one cell of a table row
    assert re.search(r"(^|\s)decoder\.block\.0\.layer\.1\.EncDecAttention\.q(\s|$)", proc.stdout, re.M)


# -- export --force interrupted while the new folder is swapped in ----------------------------
def test_interrupt_inside_the_swap_leaves_no_backup(tmp_path, monkeypatch):
    from modelexport.folder import staging as output_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "modelexport_metadata.json").write_text('{"schema": "modelexport.metadata"}')  # an earlier export
    real_rename = Path.rename

    def rename_then_interrupt(self, target):
        moved = real_rename(self, target)
        if ".old-" in Path(target).name:  # the old folder was just moved aside: the worst moment
            os.kill(os.getpid(), signal.SIGINT)
        return moved

    monkeypatch.setattr(Path, "rename", rename_then_interrupt)
    with pytest.raises(KeyboardInterrupt):  # delivered once the swap is complete
        with output_dir.staged_output_dir(out, force=True) as staging:
            (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_export_recovers_leftovers_of_a_killed_export(tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    pid = _dead_pid()
    # killed between "old folder moved aside" and "new folder moved in": the old one is restored
    backup = tmp_path / f".out.old-{pid}-abc"
    backup.mkdir()
    (backup / "model.onnx").write_text("the user's previous export")
    (backup / "modelexport_metadata.json").write_text('{"schema": "modelexport.metadata"}')
    stale_staging = tmp_path / f".out.modelexport-{pid}-def"
    stale_staging.mkdir()
    alive = tmp_path / f".out.modelexport-{os.getpid()}-live"  # a running export's: left alone
    alive.mkdir()
    proc = run_cli("export", tiny_bert_dir, out, "--no-validate")
    assert proc.returncode == 1 and "is not empty; pass --force" in proc.stderr
    assert (out / "model.onnx").read_text() == "the user's previous export"
    assert not backup.exists() and not stale_staging.exists() and alive.exists()
    # killed after the swap: the backup is removed by the next export
    backup.mkdir()
    proc = run_cli("export", tiny_bert_dir, out, "--no-validate", "--force")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "out"]
    assert onnx.load(out / "model.onnx").graph.node


# -- quiet libraries ---------------------------------------------------------------------------
def test_api_is_as_quiet_as_the_cli(tiny_bert_dir, tmp_path):
    code = (f"import modelexport; modelexport.export({str(tiny_bert_dir)!r}, {str(tmp_path / 'o')!r}, "
            "task='text-classification')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == "", proc.stderr[-2000:]


def test_optimize_prints_no_library_noise(tiny_bert_export, tmp_path):
    out, _ = tiny_bert_export
    proc = run_cli("optimize", out, "-o", tmp_path / "opt", "--level", "O2")
    assert proc.returncode == 0, proc.stderr
    assert "failed in shape inference" not in proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == f"wrote {tmp_path / 'opt'}"
