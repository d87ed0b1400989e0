"""Activation smoothing (SmoothQuant) before int8: the float model is unchanged by it, the Mul it
adds carries the module that holds every MatMul it feeds, and on the real MiniLM it brings the
default ``quantize`` over 0.99 cosine on sentences it never saw."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from modelexport.cli.main import main as cli
from modelexport.hierarchy.tags import node_tag

CALIBRATION = ["The cat sat quietly on the warm windowsill.", "Interest rates rose again this quarter.",
               "She plays the violin in a small orchestra.", "Rain is expected over the mountains tonight."]
HELD_OUT = ["A new library opened downtown last week.", "He forgot his umbrella at the station.",
            "The recipe needs two cups of flour.", "Engineers tested the bridge before it opened.",
            "My phone battery dies too quickly.", "The museum shows paintings from three centuries."]


def _default_settings():  # smoothing on, as quantize without options
    from modelexport.runtime.cpu_presets import this_machine
    from modelexport.runtime.quantize_ort import QuantSettings

    return QuantSettings(this_machine())


def _run(path, feeds):
    from modelexport.runtime.sessions import new_session

    session = new_session(path)
    names = {i.name for i in session.get_inputs()}
    return [session.run(None, {k: v for k, v in f.items() if k in names}) for f in feeds]


def test_smoothing_keeps_the_float_model_and_tags_the_mul(tiny_bert_export, tmp_path):
    from modelexport.runtime.quantize_measure import folder_config
    from modelexport.runtime.smoothing import folder_maxima, smooth_file, statistics_feeds

    out, _ = tiny_bert_export
    maxima = folder_maxima(out, ["model.onnx"], _default_settings(), None, folder_config(out))["model.onnx"]
    assert "random token ids" in maxima.source and maxima.maxima
    smoothed = tmp_path / "smoothed.onnx"
    count = smooth_file(out / "model.onnx", smoothed, maxima, 0.6, external=False)
    model = onnx.load(smoothed)
    muls = [n for n in model.graph.node if n.name.endswith("_smooth")]
    assert count == len(muls) > 0
    onnx.checker.check_model(model)
    # Q, K and V read one activation: its Mul belongs to the module that holds all three
    by_readers = {}
    for mul in muls:
        readers = [n for n in model.graph.node if mul.output[0] in n.input]
        by_readers[tuple(sorted(node_tag(r).module_path for r in readers))] = node_tag(mul).module_path
    qkv = tuple(f"bert.encoder.layer.0.attention.self.{m}" for m in ("key", "query", "value"))
    assert by_readers[qkv] == "bert.encoder.layer.0.attention.self"
    assert by_readers[("bert.encoder.layer.0.output.dense",)] == "bert.encoder.layer.0.output.dense"
    # the same function in float: outputs equal to float rounding
    feeds = statistics_feeds(onnx.load(out / "model.onnx", load_external_data=False), folder_config(out))
    for before, after in zip(_run(out / "model.onnx", feeds), _run(smoothed, feeds)):
        for a, b in zip(before, after):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_constant_token_ids_do_not_make_statistics(tiny_bert_export):
    """The dummy inputs (every id 1) would give one token's channel ranges: random ids are used."""
    from modelexport.runtime.quantize_measure import folder_config
    from modelexport.runtime.smoothing import folder_maxima

    out, _ = tiny_bert_export
    ones = {"input_ids": np.ones((1, 8), np.int64), "attention_mask": np.ones((1, 8), np.int64),
            "token_type_ids": np.ones((1, 8), np.int64)}
    maxima = folder_maxima(out, ["model.onnx"], _default_settings(), {"model.onnx": [ones]}, folder_config(out))["model.onnx"]
    assert "random token ids" in maxima.source


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_smoothing_out_of_range_is_one_line(tiny_bert_export, tmp_path, capsys, value):
    out, _ = tiny_bert_export
    code = cli(["quantize", str(out), "-o", str(tmp_path / "q"), "--smoothing", value])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--smoothing" in err and "[0, 1]" in err
    assert not (tmp_path / "q").exists()


def test_minilm_default_quantize_is_over_0_99_on_held_out_sentences(minilm_export, tmp_path, capsys):
    """Issue 22's first criterion on fresh sentences: the default (smoothing from random ids, no
    texts) and with calibration texts (smoothing from them, accuracy on the held-out ones), each
    against the same quantization without smoothing, which is below 0.99 on these sentences."""
    from modelexport.runtime.feeds import text_feeds
    from modelexport.runtime.sensitivity import accuracy, run_outputs

    minilm_export, _ = minilm_export
    specs = {"input_ids": "", "attention_mask": "", "token_type_ids": ""}
    held = {"model.onnx": text_feeds(minilm_export, HELD_OUT, specs)}
    reference = run_outputs(minilm_export, held)
    cosine = {}
    for label, extra in (("default", []), ("off", ["--smoothing", "0"]),
                         ("texts", [a for t in CALIBRATION for a in ("--text", t)]
                          + [a for t in HELD_OUT for a in ("--eval-text", t)])):
        out = tmp_path / label
        assert cli(["quantize", str(minilm_export), "-o", str(out), *extra]) == 0
        printed = capsys.readouterr().out
        cosine[label] = accuracy(reference, run_outputs(out, held)).cosine_min
        settings = json.loads((out / "modelexport_metadata.json").read_text())["transforms"][-1]["settings"]
        if label == "off":
            assert settings["smoothing_alpha"] == 0 and "smoothing_statistics" not in settings
            assert "SmoothQuant" not in printed
        else:
            assert settings["smoothing_alpha"] == 0.6 and "SmoothQuant, alpha 0.6" in printed
            source = "random token ids" if label == "default" else f"{len(CALIBRATION)} calibration input(s)"
            assert source in settings["smoothing_statistics"][0]
        if label == "texts":  # the accuracy printed is the held-out one
            assert f"held-out accuracy on calibration: {len(CALIBRATION)} text(s)" in printed
    assert cosine["default"] >= 0.99 and cosine["texts"] >= 0.99
    assert cosine["off"] < min(cosine["default"], cosine["texts"])
