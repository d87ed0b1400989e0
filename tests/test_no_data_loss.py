"""Nothing the user had is lost: output folders that overlap what a command reads, side files of
derived folders, existing output files, untagged input (issue "Numbers that never lie", items 1-4)."""
from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_run import one_error_line, run_cli


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1. an output folder that is, lies in or holds the folder being read ------------------------
@pytest.fixture()
def bert_copy(tiny_bert_dir, tmp_path) -> Path:
    folder = tmp_path / "bertcopy"
    shutil.copytree(tiny_bert_dir, folder)
    return folder


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_export_never_replaces_the_model_folder(bert_copy, where):
    before = snapshot(bert_copy.parent)
    out = {"same": bert_copy, "inside": bert_copy / "onnx", "parent": bert_copy.parent}[where]
    line = one_error_line(run_cli("export", bert_copy, out, "--force", "--no-validate"))
    assert "which this command reads" in line and str(bert_copy) in line
    assert snapshot(bert_copy.parent) == before
    assert (bert_copy / "model.safetensors").is_file()


def test_force_replaces_only_a_folder_modelexport_wrote(bert_copy, tmp_path):
    home = tmp_path / "documents"
    home.mkdir()
    (home / "thesis.txt").write_text("years of work")
    line = one_error_line(run_cli("export", bert_copy, home, "--force", "--no-validate"))
    assert "not written by modelexport" in line
    assert (home / "thesis.txt").read_text() == "years of work"


@pytest.mark.parametrize("verb", ["quantize", "optimize"])
def test_transforms_never_write_over_their_source(tiny_bert_export, tmp_path, verb):
    out, _ = tiny_bert_export
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    before = snapshot(copy)
    for target in (copy, copy / "int8"):
        line = one_error_line(run_cli(verb, copy, "-o", target, "--force"))
        assert "which this command reads" in line
    assert snapshot(copy) == before


# -- 2. derived folders keep every side file and pass validate ---------------------------------
@pytest.mark.parametrize("verb", ["quantize", "optimize"])
def test_sentence_transformers_folder_survives_transforms(minilm_export, tmp_path, verb):
    from sentence_transformers import SentenceTransformer

    src, _ = minilm_export
    out = tmp_path / f"minilm-{verb}"
    proc = run_cli(verb, src, "-o", out)
    assert proc.returncode == 0, proc.stderr
    source_side = {k for k in snapshot(src) if not k.endswith(".onnx") and not k.startswith("modelexport_")}
    assert source_side <= set(snapshot(out)), source_side - set(snapshot(out))
    assert (out / "1_Pooling" / "config.json").read_bytes() == (src / "1_Pooling" / "config.json").read_bytes()
    assert run_cli("validate", out).returncode == 0
    texts = ["A man is eating food.", "The stock market fell sharply today."]
    from modelexport.exporter.optimum import available

    if available():  # sentence-transformers' own ONNX backend (it imports Optimum)
        reference = SentenceTransformer(str(src), backend="onnx", model_kwargs={"provider": "CPUExecutionProvider"})
        derived = SentenceTransformer(str(out), backend="onnx", model_kwargs={"provider": "CPUExecutionProvider"})
    else:  # transformers 5: the same modules around the ONNX file, through modelexport.load
        import modelexport

        reference, derived = (modelexport.load(f).sentence_transformer() for f in (src, out))
    a, b = reference.encode(texts), derived.encode(texts)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > (0.999999 if verb == "optimize" else 0.95)


# -- 3. one rule for every output file ---------------------------------------------------------
def _file_outputs(export: Path, tmp_path: Path) -> list[tuple[list[str], Path]]:
    out = tmp_path / "existing.out"
    return [
        (["extract", export, "--module", "bert.encoder.layer.0", "-o", out], out),
        (["graphml", export, "-o", out], out),
        (["report", export, "--html", "-o", out], out),
        (["report", export, "-o", out], out),
        (["profile", export, "--runs", "1", "--warmup", "0", "--trace", out], out),
        (["profile", export, "--runs", "1", "--warmup", "0", "--overlay", out], out),
        (["diff", export, export, "--overlay", out], out),
    ]


def test_existing_output_files_are_refused_then_replaced_with_force(tiny_bert_export, tmp_path):
    export, _ = tiny_bert_export
    for argv, target in _file_outputs(export, tmp_path):
        target.write_text("the user's file")
        line = one_error_line(run_cli(*argv))
        assert "exists; pass --force" in line, argv
        assert target.read_text() == "the user's file", argv
        proc = run_cli(*argv, "--force")
        assert proc.returncode == 0, (argv, proc.stderr)
        assert target.read_text(errors="replace") != "the user's file", argv
        target.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file left


def test_an_output_file_is_never_the_model_it_reads(tiny_bert_export, tmp_path):
    export, _ = tiny_bert_export
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    before = snapshot(copy)
    line = one_error_line(run_cli("extract", copy, "--module", "bert.encoder.layer.0", "-o", copy / "model.onnx",
                                  "--force"))
    assert "a file this command reads" in line
    line = one_error_line(run_cli("graphml", copy / "model.onnx", "-o", copy / "model.onnx", "--force"))
    assert "a file this command reads" in line
    assert snapshot(copy) == before


# -- 4. untagged input is said, not dressed as tagged ------------------------------------------
@pytest.mark.optimum  # a plain Optimum export is the untagged folder users bring
@pytest.mark.parametrize("verb", ["quantize", "optimize"])
def test_untagged_folder_is_said_and_module_options_refused(plain_optimum_export, tmp_path, verb):
    out = tmp_path / f"plain-{verb}"
    proc = run_cli(verb, plain_optimum_export, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "carries no module tags" in proc.stderr
    assert "all tagged" not in proc.stdout and not re.search(r"root \d", proc.stdout)
    assert not (out / "modelexport_metadata.json").exists()
    assert (out / "model.onnx").is_file()
    if verb == "quantize":
        line = one_error_line(run_cli("quantize", plain_optimum_export, "-o", tmp_path / "x",
                                      "--exclude-modules", "bert.encoder.layer.0"))
        assert "needs module tags" in line
        line = one_error_line(run_cli("quantize", plain_optimum_export, "-o", tmp_path / "y", "--target-cosine",
                                      "0.99"))
        assert "tags" in line or "modelexport_metadata" in line


def test_exporting_a_loaded_model_leaves_its_configs_as_they_were(tmp_path):
    """Optimum's export of a T5 leaves ``use_cache=True`` in the encoder's config, after which the
    caller's own ``generate`` fails ("`use_cache` can only be set to `True` if T5Stack is used as a
    decoder"): the export gives every config back as it found it."""
    import torch
    from transformers import T5ForConditionalGeneration

    import modelexport
    from modelexport.testing.tiny_models import BY_NAME

    BY_NAME["t5"].build(tmp_path / "t5")
    model = T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
    before = {name: dict(vars(m.config)) for name, m in model.named_modules() if hasattr(m, "config")}
    modelexport.export(model, tmp_path / "out", task="text2text-generation-with-past")
    after = {name: dict(vars(m.config)) for name, m in model.named_modules() if hasattr(m, "config")}
    assert after == before
    ids = torch.tensor([[5, 6, 7, 1]])
    assert model.generate(input_ids=ids, max_new_tokens=3, do_sample=False).shape == (1, 4)
