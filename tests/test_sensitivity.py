"""``modelexport sensitivity`` and ``quantize --target-cosine``: real quantizations, real ORT runs."""
from __future__ import annotations

import json
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from modelexport.cli.main import main as cli
from modelexport.hierarchy.tags import node_tag

CALIBRATION = ["hello world, the cat runs fast!", "a tiny test sentence", "red blue green", "the dog sleeps"]
HELD_OUT = ["good morning to you", "cats and dogs run", "a sentence nobody calibrated on"]
FRAGILE = "bert.encoder.layer.1"


@pytest.fixture(scope="module")
def fragile_export(tmp_path_factory):
    """A tiny BERT token classifier whose layer 1 output projection is made to matter (x20) and
    given one outlier weight: per-tensor int8 then rounds the rest of that matrix coarsely, so
    quantizing layer 1 costs far more than quantizing layer 0. The float folder is the reference."""
    import modelexport
    from modelexport.testing.tiny_models import BY_NAME

    source = tmp_path_factory.mktemp("bert-tokens")
    BY_NAME["bert/token-classification"].build(source)
    fragile = tmp_path_factory.mktemp("fragile") / "onnx"
    modelexport.export(str(source), fragile)
    model = onnx.load(fragile / "model.onnx")
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul"
                  and node_tag(n).module_path == f"{FRAGILE}.output.dense")
    weights = {t.name: i for i, t in enumerate(model.graph.initializer)}
    index = next(weights[x] for x in matmul.input if x in weights)
    array = numpy_helper.to_array(model.graph.initializer[index]) * 20
    array[0, 0] = 100 * np.abs(array).max()
    model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, model.graph.initializer[index].name))
    onnx.save(model, fragile / "model.onnx")
    return fragile


def _texts(flag_values):
    return [a for t in flag_values for a in ("--text", t)]


def test_sensitivity_ranks_the_fragile_layer_first(fragile_export, capsys):
    code = cli(["sensitivity", str(fragile_export), *_texts(CALIBRATION), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["schema"] == "modelexport.sensitivity"
    rows = doc["modules"]
    assert [r["module_path"] for r in rows] == [FRAGILE, "bert.encoder.layer.0"]
    assert rows[0]["cosine_only_this"] < rows[1]["cosine_only_this"]
    assert rows[0]["cosine_all_but_this"] > rows[1]["cosine_all_but_this"]  # keeping it float helps most


def test_target_cosine_keeps_the_fragile_layer_float_and_holds_on_held_out_texts(fragile_export, tmp_path, capsys):
    from modelexport.runtime.feeds import text_feeds
    from modelexport.runtime.sensitivity import accuracy, run_outputs

    out = tmp_path / "q"
    target = 0.9995
    code = cli(["quantize", str(fragile_export), "-o", str(out), "--target-cosine", str(target),
                *_texts(CALIBRATION)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    meta = json.loads((out / "modelexport_metadata.json").read_text())
    decided = meta["transforms"][-1]["accuracy_target"]
    assert decided["kept_float"] == [FRAGILE]
    assert decided["accuracy"]["cosine_min"] >= target > decided["fully_quantized"]["cosine_min"]
    # held-out texts, never seen by the search
    specs = {"input_ids": "", "attention_mask": "", "token_type_ids": ""}  # the export's inputs
    feeds = {"model.onnx": text_feeds(fragile_export, HELD_OUT, specs)}
    held_out = accuracy(run_outputs(fragile_export, feeds), run_outputs(out, feeds))
    assert held_out.cosine_min >= target, held_out
    assert "kept in float: bert.encoder.layer.1" in printed


def test_unreachable_target_is_one_clear_line(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    code = cli(["quantize", str(out), "-o", str(tmp_path / "q"), "--max-abs-error", "0", *_texts(CALIBRATION[:1])])
    err = capsys.readouterr().err
    assert code == 1 and "is not met even with every candidate module in float" in err
    assert not (tmp_path / "q").exists()
