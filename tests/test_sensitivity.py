"""``modelexport sensitivity`` and ``quantize --target-cosine``: real quantizations, real ORT runs."""
from __future__ import annotations

import json
import tempfile

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from modelexport.cli.main import main as cli
from modelexport.hierarchy.tags import node_tag

CALIBRATION = ["hello world, the cat runs fast!", "a tiny test sentence", "red blue green", "the dog sleeps"]
HELD_OUT = ["good morning to you", "cats and dogs run", "a sentence nobody calibrated on"]
FRAGILE = "bert.encoder.layer.1"
FRAGILE_LINEAR = f"{FRAGILE}.output.dense"
# The fragile Linear's outlier weight row is what smoothing (SmoothQuant) repairs: the tests of the
# search turn it off to keep one module that int8 hurts (test_quantize_smoothing covers smoothing).
NO_SMOOTHING = ["--smoothing", "0"]


@pytest.fixture(scope="module")
def fragile_export(tmp_path_factory):
    """A tiny BERT token classifier whose layer 1 output projection is made to matter (x20) and
    given a row of outlier weights: every output channel's int8 scale is then set by its outlier,
    so per-channel (and per-tensor) int8 rounds the rest of that matrix coarsely, and quantizing
    that one Linear costs far more than quantizing anything else. The float folder is the reference."""
    import modelexport
    from modelexport.testing.tiny_models import BY_NAME

    source = tmp_path_factory.mktemp("bert-tokens")
    BY_NAME["bert/token-classification"].build(source)
    fragile = tmp_path_factory.mktemp("fragile") / "onnx"
    modelexport.export(str(source), fragile)
    model = onnx.load(fragile / "model.onnx")
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul"
                  and node_tag(n).module_path == FRAGILE_LINEAR)
    weights = {t.name: i for i, t in enumerate(model.graph.initializer)}
    index = next(weights[x] for x in matmul.input if x in weights)
    array = numpy_helper.to_array(model.graph.initializer[index]) * 20
    array[0, :] = 100 * np.abs(array).max()
    model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, model.graph.initializer[index].name))
    onnx.save(model, fragile / "model.onnx")
    return fragile


def _texts(flag_values, flag="--text"):
    return [a for t in flag_values for a in (flag, t)]


def _held_out_accuracy(reference_folder, folder):
    from modelexport.runtime.feeds import text_feeds
    from modelexport.runtime.sensitivity import accuracy, run_outputs

    specs = {"input_ids": "", "attention_mask": "", "token_type_ids": ""}  # the export's inputs
    feeds = {"model.onnx": text_feeds(reference_folder, HELD_OUT, specs)}
    return accuracy(run_outputs(reference_folder, feeds), run_outputs(folder, feeds))


def test_sensitivity_ranks_the_fragile_layer_first(fragile_export, capsys):
    code = cli(["sensitivity", str(fragile_export), *NO_SMOOTHING, *_texts(CALIBRATION), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["schema"] == "modelexport.sensitivity"
    rows = doc["modules"]
    # default candidates: the items of the ModuleList and the modules beside it holding weights
    assert {r["module_path"] for r in rows} == {"bert.embeddings", "bert.encoder.layer.0", FRAGILE, "classifier"}
    assert rows[0]["module_path"] == FRAGILE
    assert rows[0]["cosine_only_this"] < min(r["cosine_only_this"] for r in rows[1:])
    assert rows[0]["cosine_all_but_this"] > max(r["cosine_all_but_this"] for r in rows[1:])  # float helps most
    assert doc["settings"]["per_channel"] is True and doc["settings"]["mode"] == "dynamic"
    assert all(r["float_bytes"] > 0 for r in rows)


def test_target_cosine_keeps_only_the_fragile_linear_float(fragile_export, tmp_path, capsys):
    """Hierarchical: the layer is found first, then only its fragile projection stays float —
    fewer bytes than keeping the whole layer (`--flat`), the target met on held-out texts both ways."""
    target = 0.9995
    kept = {}
    for how in ("hierarchical", "flat"):
        out = tmp_path / how
        code = cli(["quantize", str(fragile_export), *NO_SMOOTHING, "-o", str(out), "--target-cosine", str(target),
                    *_texts(CALIBRATION), *_texts(HELD_OUT, "--eval-text"), "--latency-rounds", "1",
                    *(["--flat"] if how == "flat" else [])])
        printed = capsys.readouterr().out
        assert code == 0, printed
        decided = json.loads((out / "modelexport_metadata.json").read_text())["transforms"][-1]["accuracy_target"]
        kept[how] = decided
        assert decided["accuracy"]["cosine_min"] >= target > decided["fully_quantized"]["cosine_min"]
        assert decided["held_out"] is True
        # the search held back 15% of the allowed error on the calibration texts, for unseen ones
        assert decided["margin"] == 0.15
        assert decided["accuracy_calibration"]["cosine_min"] >= 1 - 0.85 * (1 - target)
        assert "search margin: 0.15 of the allowed error" in printed
        assert _held_out_accuracy(fragile_export, out).cosine_min >= target  # texts the search never saw
        assert set(decided["latency"]) == {"1x64", "8x64"}  # batch 1 and 8 at the tiny model's position limit
    assert kept["hierarchical"]["kept_float"] == [FRAGILE_LINEAR]
    assert kept["flat"]["kept_float"] == [FRAGILE]
    assert 0 < kept["hierarchical"]["float_bytes_kept"] < kept["flat"]["float_bytes_kept"]


def test_text_file_is_split_and_dummy_ids_are_warned(fragile_export, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(CALIBRATION + HELD_OUT) + "\n")
    out = tmp_path / "q"
    code = cli(["quantize", str(fragile_export), *NO_SMOOTHING, "-o", str(out), "--target-cosine", "0.9995", "--text-file",
                str(texts), "--latency-rounds", "1", "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["schema"] == "modelexport.quantize"
    assert "calibration: 4 text(s)" in doc["inputs"] and "held out: 3 text(s)" in doc["inputs"]
    assert doc["target"]["held_out"] is True and doc["target"]["accuracy"]["cosine_min"] >= 0.9995
    assert "dummy token ids" not in captured.err
    code = cli(["sensitivity", str(fragile_export), *NO_SMOOTHING, "--modules", FRAGILE, "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0 and "dummy token ids are not representative" in captured.err


def test_static_target_met_on_held_out_texts(fragile_export, tmp_path, capsys):
    target = 0.999
    out = tmp_path / "qdq"
    code = cli(["quantize", str(fragile_export), *NO_SMOOTHING, "-o", str(out), "--static", "--target-cosine", str(target),
                "--target-statistic", "mean", *_texts(CALIBRATION), *_texts(HELD_OUT, "--eval-text"),
                "--latency-rounds", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    meta = json.loads((out / "modelexport_metadata.json").read_text())
    step = meta["transforms"][-1]
    assert step["settings"]["mode"] == "static" and step["settings"]["format"] == "QDQ"
    decided = step["accuracy_target"]
    assert decided["statistic"] == "mean" and decided["accuracy"]["cosine_mean"] >= target
    assert _held_out_accuracy(fragile_export, out).cosine_mean >= target
    ops = {n.op_type for n in onnx.load(out / "model.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "MatMulInteger" not in ops


def test_unreachable_target_is_one_clear_line(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    # the embeddings and the classifier are not candidates here: quantized, they keep an error
    code = cli(["quantize", str(out), "-o", str(tmp_path / "q"), "--max-abs-error", "0", "--modules",
                "bert.encoder.layer.*", *_texts(CALIBRATION[:1])])
    err = capsys.readouterr().err
    assert code == 1 and "is not met even with every candidate module in float" in err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("args, message", [
    (["--target-cosine", "0.99", "--margin", "1"], "--margin 1.0: give a share of the allowed error in [0, 1)"),
    (["--margin", "0.2"], "--margin applies to an accuracy target"),
])
def test_margin_errors_are_one_line(fragile_export, tmp_path, capsys, args, message):
    code = cli(["quantize", str(fragile_export), *NO_SMOOTHING, "-o", str(tmp_path / "q"), *args, *_texts(CALIBRATION)])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) <= 3, err
    assert not (tmp_path / "q").exists()


def test_margin_zero_searches_for_the_target_itself(fragile_export, tmp_path, capsys):
    """The margin is what makes the search keep more: with none, the calibration accuracy may sit
    anywhere at or above the target; the default needs 15% headroom. Same texts, same target."""
    target = 0.9995
    found = {}
    for margin in ("0", "0.5"):
        out = tmp_path / f"m{margin}"
        code = cli(["quantize", str(fragile_export), *NO_SMOOTHING, "-o", str(out), "--target-cosine", str(target), "--margin", margin,
                    *_texts(CALIBRATION), *_texts(HELD_OUT, "--eval-text"), "--latency-rounds", "1", "--flat"])
        assert code == 0, capsys.readouterr()
        found[margin] = json.loads((out / "modelexport_metadata.json").read_text())["transforms"][-1]["accuracy_target"]
    assert found["0"]["margin"] == 0.0 and found["0.5"]["margin"] == 0.5
    assert found["0"]["accuracy_calibration"]["cosine_min"] >= target
    assert found["0.5"]["accuracy_calibration"]["cosine_min"] >= 1 - 0.5 * (1 - target)
    assert all(step["meets"] == (1 - step["cosine_min"] <= 0.5 * (1 - target) * (1 + 1e-12))
               for step in found["0.5"]["steps"])


def test_one_work_folder_removed_after_the_search(fragile_export, tmp_path, monkeypatch, capsys):
    """Every trial quantization goes to one work folder, removed at the end (and ONNX Runtime's
    own temporary files with it)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert cli(["sensitivity", str(fragile_export), *NO_SMOOTHING, *_texts(CALIBRATION)]) == 0
    assert cli(["quantize", str(fragile_export), *NO_SMOOTHING, "-o", str(tmp_path / "q"), "--target-cosine", "0.9995",
                *_texts(CALIBRATION + HELD_OUT), "--latency-rounds", "1"]) == 0
    capsys.readouterr()
    assert list(scratch.iterdir()) == []
    assert not list(fragile_export.parent.glob(".*")) and not list(fragile_export.glob("*-inferred*"))


# -- T5: every ModuleList, and "only this" quantizes only this (issue 23, item 11) ----------------
def test_t5_candidates_cover_encoder_and_decoder_blocks(t5_export):
    from modelexport.folder.metadata import read_metadata
    from modelexport.runtime.quantize_ort import QuantSettings
    from modelexport.runtime.cpu_presets import resolve_preset
    from modelexport.runtime.sensitivity import ModuleWeights, _names, candidate_modules

    meta, _ = read_metadata(t5_export)
    weights = ModuleWeights(t5_export, _names(t5_export), QuantSettings(resolve_preset("avx512_vnni")))
    candidates = candidate_modules(meta.modules, None, [], weights)
    assert {"encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"} <= set(candidates)
    assert not any(c.startswith(("encoder.block.0.", "decoder.block.0.")) for c in candidates)


def test_only_this_module_is_quantized_in_every_file(t5_export, tmp_path):
    """The library default of the old code quantized the whole decoder when ranking
    `decoder.block.0`; now only its nodes, in every file (and the merged decoder's branches)."""
    from modelexport.hierarchy.tags import iter_nodes
    from modelexport.runtime.cpu_presets import resolve_preset
    from modelexport.runtime.dummy_inputs import make_inputs
    from modelexport.runtime.quantize_ort import QuantSettings
    from modelexport.runtime.sensitivity import ModuleWeights, Trials, _names
    from modelexport.runtime.sessions import new_session

    settings = QuantSettings(resolve_preset("avx512_vnni"))
    names = _names(t5_export)
    feeds = {name: [make_inputs(new_session(t5_export / name))] for name in names}
    trials = Trials(t5_export, tmp_path / "work", names, ModuleWeights(t5_export, names, settings), settings, feeds)
    trials.quantize_into(tmp_path / "only", only=frozenset({"decoder.block.0"}))
    quantized_ops = {"MatMulInteger", "DynamicQuantizeLinear"}
    seen = set()
    for name in names:
        # trial files carry no restored tags: the quantizer names each MatMulInteger after its MatMul
        module_of = {n.name: node_tag(n).module_path
                     for n, _ in iter_nodes(onnx.load(t5_export / name, load_external_data=False).graph)}
        for node, _ in iter_nodes(onnx.load(tmp_path / "only" / name, load_external_data=False).graph):
            if node.op_type == "MatMulInteger":
                path = module_of[node.name.removesuffix("_quant")]
                assert path.startswith("decoder.block.0."), (name, node.name, path)
                seen.add(name)
        if name == "encoder_model.onnx":
            ops = {n.op_type for n, _ in iter_nodes(onnx.load(tmp_path / "only" / name).graph)}
            assert not ops & quantized_ops
    assert "decoder_model.onnx" in seen
    if "decoder_model_merged.onnx" in names:  # Optimum's merge: inside the If branches too
        assert "decoder_model_merged.onnx" in seen


def test_latency_objective_meets_the_target(fragile_export, tmp_path, capsys):
    """--objective latency prices modules by the milliseconds int8 saves them (profiler, per
    module): which cheap modules it keeps depends on timings, the fragile Linear it cannot drop."""
    out = tmp_path / "q"
    code = cli(["quantize", str(fragile_export), *NO_SMOOTHING, "-o", str(out), "--target-cosine", "0.9995", "--objective", "latency",
                *_texts(CALIBRATION), *_texts(HELD_OUT, "--eval-text"), "--latency-rounds", "1", "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    decided = json.loads(captured.out)["target"]
    assert decided["objective"] == "latency" and decided["met_on_held_out"] is True
    assert any(FRAGILE_LINEAR == m or FRAGILE_LINEAR.startswith(m + ".") for m in decided["kept_float"])
    assert _held_out_accuracy(fragile_export, out).cosine_min >= 0.9995
