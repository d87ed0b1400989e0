"""``modelexport diff``: per-module error between two exports, from real ONNX Runtime runs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from modelexport.cli.main import main as cli
from modelexport.hierarchy.tags import node_tag

TEXTS = ["hello world, the cat runs fast!", "a tiny test sentence"]
DAMAGED = "bert.encoder.layer.1.intermediate.dense"


def diff_json(capsys, a, b, *extra) -> dict:
    code = cli(["diff", str(a), str(b), "--format", "json", *map(str, extra)])
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads(out)
    assert doc["schema"] == "modelexport.diff"
    return doc


@pytest.fixture(scope="module")
def damaged_export(tiny_bert_export, tmp_path_factory):
    """The tiny BERT export with one Linear's weight scaled, edited in the ONNX initializer."""
    out, _ = tiny_bert_export
    damaged = tmp_path_factory.mktemp("damaged") / "onnx"
    shutil.copytree(out, damaged)
    model = onnx.load(damaged / "model.onnx")
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul" and node_tag(n).module_path == DAMAGED)
    weights = {t.name: i for i, t in enumerate(model.graph.initializer)}
    index = next(weights[x] for x in matmul.input if x in weights)
    array = numpy_helper.to_array(model.graph.initializer[index])
    model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array * 3.0 + 0.05, model.graph.initializer[index].name))
    onnx.save(model, damaged / "model.onnx")
    return damaged


def test_diff_with_itself_is_all_zeros(tiny_bert_export, capsys):
    out, _ = tiny_bert_export
    doc = diff_json(capsys, out, out, "--text", TEXTS[0], "--text", TEXTS[1])
    modules = doc["files"]["model.onnx"]["modules"]
    assert doc["files"]["model.onnx"]["inputs_run"] == 2
    own = [m for m in modules if m["boundary"] == "own"]
    assert len(own) > 20
    for m in own:
        assert m["max_abs"] == 0.0 and m["rel_l2"] == 0.0 and m["added_rel_l2"] == 0.0, m
        assert m["cosine"] == pytest.approx(1.0)


def test_damaged_linear_is_where_the_error_appears(tiny_bert_export, damaged_export, capsys):
    out, _ = tiny_bert_export
    doc = diff_json(capsys, out, damaged_export, "--text", TEXTS[0], "--text", TEXTS[1])
    modules = {m["module_path"]: m for m in doc["files"]["model.onnx"]["modules"]}
    ranked = sorted((m for m in modules.values() if m["added_rel_l2"] is not None), key=lambda m: -m["added_rel_l2"])
    assert ranked[0]["module_path"] == DAMAGED, [(m["module_path"], m["added_rel_l2"]) for m in ranked[:5]]
    assert ranked[0]["added_from"] == "isolated" and ranked[0]["added_rel_l2"] > 0.5
    # upstream of the damage nothing differs; its ancestors only pass it on
    for path in ("bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1.attention"):
        assert modules[path]["max_abs"] == 0.0 and modules[path]["added_rel_l2"] == 0.0, modules[path]
    for path in ("bert.encoder.layer.1.intermediate", "bert.encoder.layer.1", "bert.encoder", "bert"):
        assert modules[path]["rel_l2"] > 0 and modules[path]["added_rel_l2"] < 0.1 * ranked[0]["added_rel_l2"], path
    # --top ranks by added error
    code = cli(["diff", str(out), str(damaged_export), "--top", "1", "--format", "json"])
    top = json.loads(capsys.readouterr().out)["files"]["model.onnx"]["modules"]
    assert code == 0 and [m["module_path"] for m in top] == [DAMAGED]


def test_float_vs_quantized_names_every_layer(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    assert cli(["quantize", str(out), "-o", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    doc = diff_json(capsys, out, tmp_path / "q", "--text", TEXTS[0])
    modules = doc["files"]["model.onnx"]["modules"]
    for layer in ("bert.encoder.layer.0", "bert.encoder.layer.1"):
        inside = [m for m in modules if m["module_path"].startswith(layer + ".") and m["added_rel_l2"]]
        assert inside, layer
    assert min(m["cosine"] for m in modules if m["cosine"] is not None) < 1.0


def test_diff_refuses_unrelated_inputs(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    np.savez(tmp_path / "x.npz", wrong=np.ones((1, 3), np.int64))
    assert cli(["diff", str(out), str(out), "--inputs", str(tmp_path / "x.npz")]) == 1
    assert "has no array for input(s)" in capsys.readouterr().err


def test_diff_against_pytorch_pairs_modules_or_says_why_not(tiny_bert_export, capsys):
    out, _ = tiny_bert_export
    code = cli(["diff", str(out), "--pytorch", "--text", TEXTS[0], "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["b"] == "pytorch"
    entry = doc["files"]["model.onnx"]
    paired = {m["module_path"]: m for m in entry["modules"]}
    for path in ("bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1.attention.self.query",
                 "bert.encoder.layer.1.output.LayerNorm", "classifier"):
        assert paired[path]["paired"] and paired[path]["max_abs"] < 1e-4, path
    unpaired = {m["module_path"]: m["reason"] for m in entry["unpaired"]}
    assert unpaired["bert.encoder.layer.0.output.dropout"].startswith("no node in the graph")
    assert not set(unpaired) & set(paired)


def test_minilm_float_vs_int8_names_every_layer(minilm_export, tmp_path, capsys):
    out, _ = minilm_export
    same = diff_json(capsys, out, out, "--text", "A man is eating food.")["files"]["model.onnx"]["modules"]
    assert all(m["max_abs"] == 0.0 and m["added_rel_l2"] == 0.0 for m in same if m["boundary"] == "own")
    assert cli(["quantize", str(out), "-o", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    doc = diff_json(capsys, out, tmp_path / "q", "--text", "A man is eating food.", "--text",
                    "The stock market fell sharply today.")
    modules = doc["files"]["model.onnx"]["modules"]
    for layer in range(6):
        prefix = f"0.model.encoder.layer.{layer}."
        assert any(m["module_path"].startswith(prefix) and m["added_rel_l2"] and m["added_rel_l2"] > 0.01
                   for m in modules), layer
    end = next(m for m in modules if m["module_path"] == "")
    assert 0.9 < end["cosine"] < 0.999  # int8 costs a few percent of cosine on MiniLM, as measured


def test_multi_file_folders_are_compared_file_by_file(t5_export, tmp_path, capsys):
    assert cli(["quantize", str(t5_export), "-o", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    doc = diff_json(capsys, t5_export, tmp_path / "q")
    assert set(doc["files"]) == {p.name for p in t5_export.glob("*.onnx")}
    encoder = {m["module_path"]: m for m in doc["files"]["encoder_model.onnx"]["modules"]}
    assert encoder["encoder.block.0"]["boundary"] == "own" and encoder["encoder.block.0"]["rel_l2"] > 0
    if "decoder_model_merged.onnx" in doc["files"]:  # Optimum's layout has one; the generic path's none
        merged = doc["files"]["decoder_model_merged.onnx"]["modules"]
        assert merged and all(m["boundary"] in ("own", "fused", "none") for m in merged)


# -- issue 23: numbers that look right and are wrong -------------------------------------------
def strict_json(text: str) -> dict:
    """JSON as the standard has it: NaN and Infinity are not JSON."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} written into JSON"))


@pytest.fixture(scope="module")
def nan_export(tiny_bert_export, tmp_path_factory):
    """The tiny BERT export with one weight of one Linear set to NaN: its output and everything
    after it are NaN in B."""
    out, _ = tiny_bert_export
    broken = tmp_path_factory.mktemp("nan") / "onnx"
    shutil.copytree(out, broken)
    model = onnx.load(broken / "model.onnx")
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul" and node_tag(n).module_path == DAMAGED)
    weights = {t.name: i for i, t in enumerate(model.graph.initializer)}
    index = next(weights[x] for x in matmul.input if x in weights)
    array = numpy_helper.to_array(model.graph.initializer[index]).copy()
    array[0, 0] = np.nan
    model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, model.graph.initializer[index].name))
    onnx.save(model, broken / "model.onnx")
    return broken


def test_nan_in_b_is_its_own_state_ranked_first(tiny_bert_export, nan_export, capsys):
    out, _ = tiny_bert_export
    code = cli(["diff", str(out), str(nan_export), "--text", TEXTS[0], "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    entry = strict_json(captured.out)["files"]["model.onnx"]
    modules = {m["module_path"]: m for m in entry["modules"]}
    broken = modules[DAMAGED]
    assert broken["state"] == "nonfinite" and broken["nonfinite"] > 0
    assert broken["rel_l2"] is None and broken["cosine"] is None and broken["added_rel_l2"] is None
    for path in ("bert.encoder.layer.1.output", "bert.encoder", ""):  # downstream: never a perfect match
        assert modules[path]["state"] == "nonfinite" and modules[path]["cosine"] is None, path
    for path in ("bert.embeddings", "bert.encoder.layer.0"):  # upstream: measured, and equal
        assert modules[path]["state"] == "ok" and modules[path]["rel_l2"] == 0.0, path
    assert entry["nonfinite_in_b"] > 0
    code = cli(["diff", str(out), str(nan_export), "--text", TEXTS[0], "--top", "3", "--format", "json"])
    top = strict_json(capsys.readouterr().out)["files"]["model.onnx"]["modules"]
    assert code == 0 and [m["state"] for m in top] == ["nonfinite"] * 3
    assert cli(["diff", str(out), str(nan_export), "--text", TEXTS[0], "--filter", DAMAGED]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if DAMAGED in line)
    assert "NaN/Inf" in row and "1.000000" not in row


def _tagged_pair(tmp_path):
    """Two tiny tagged graphs with the same tensor names: module ``mask`` hands on a bool tensor,
    ``grow`` a tensor whose shape differs in B, ``zero`` one that is all zeros in A only."""
    from onnx import TensorProto, helper

    from modelexport.hierarchy.tags import write_tag

    def build(path, b: bool):
        nodes = [helper.make_node("Greater", ["x", "c0"], ["mask"], name="gt"),
                 helper.make_node("Concat", ["x", "x"], ["t"], axis=0, name="grow") if b else
                 helper.make_node("Identity", ["x"], ["t"], name="grow"),
                 helper.make_node("Mul", ["x", "one" if b else "c0"], ["zt"], name="zero"),
                 helper.make_node("Where", ["mask", "x", "c0"], ["w"], name="where"),
                 helper.make_node("ReduceSum", ["t"], ["r"], keepdims=0, name="sum"),
                 helper.make_node("Add", ["zt", "zt"], ["o"], name="add")]
        for node, module in zip(nodes, ["mask", "grow", "zero", "head", "head", "head"]):
            write_tag(node, module, f"/M/{module}")
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("w", "r", "o")],
                                  [numpy_helper.from_array(np.array(0, np.float32), "c0"),
                                   numpy_helper.from_array(np.array(1, np.float32), "one")])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        return path

    return build(tmp_path / "a.onnx", False), build(tmp_path / "b.onnx", True)


def test_nothing_compared_and_zero_reference_are_states_in_valid_json(tmp_path, capsys):
    a, b = _tagged_pair(tmp_path)
    np.savez(tmp_path / "x.npz", x=np.array([[1, -2, 3], [-4, 5, -6]], np.float32))
    code = cli(["diff", str(a), str(b), "--inputs", str(tmp_path / "x.npz"), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    modules = {m["module_path"]: m for m in strict_json(captured.out)["files"]["a.onnx"]["modules"]}
    assert modules["mask"]["state"] == "uncompared" and modules["mask"]["cosine"] is None  # a bool tensor
    assert modules["grow"]["state"] == "uncompared" and modules["grow"]["rel_l2"] is None  # shapes differ
    assert modules["zero"]["state"] == "zero_reference" and modules["zero"]["rel_l2"] is None
    assert modules["zero"]["max_abs"] == 6.0  # what can be said is said
    assert modules["head"]["state"] == "ok" and modules["head"]["rel_l2"] > 0
    code = cli(["diff", str(a), str(b), "--inputs", str(tmp_path / "x.npz"), "--top", "4", "--format", "json"])
    ranked = [m["module_path"] for m in strict_json(capsys.readouterr().out)["files"]["a.onnx"]["modules"]]
    assert code == 0 and ranked[:3] == ["zero", "grow", "mask"]  # unmeasured first, then the largest error


# -- issue 23: inputs users bring ---------------------------------------------------------------
def _one_error_line(code: int, err: str) -> str:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelexport: error: "), err  # nothing ran before it
    return lines[0]


def test_diff_of_models_with_other_inputs_is_one_line(tiny_bert_export, gpt2_past_export, capsys):
    out, _ = tiny_bert_export
    code = cli(["diff", str(out), str(gpt2_past_export)])
    line = _one_error_line(code, capsys.readouterr().err)
    assert "A and B take different inputs" in line and "only B's model.onnx takes past_key_values.0.key" in line


def test_text_on_a_folder_without_tokenizer_is_one_line(t5_export, tmp_path, capsys):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ["config.json", "modelexport_metadata.json", *(p.name for p in t5_export.glob("*.onnx"))]:
        shutil.copy(t5_export / name, folder / name)  # the export without its tokenizer files
    code = cli(["diff", str(folder), str(folder), "--text", "hello"])
    line = _one_error_line(code, capsys.readouterr().err)
    assert f"{folder} has no tokenizer files" in line and "--inputs" in line


@pytest.mark.parametrize("argv, words", [
    (["diff", "{out}", "{out}", "--filter", "bert.encoder.layr.*"], "--filter 'bert.encoder.layr.*' matches no module"),
    (["diff", "{out}", "--pytorch", "--filter", "nothing"], "--filter 'nothing' matches no module"),
    (["diff", "{out}", "--pytorch", "--overlay", "{tmp}/o.json"], "with --pytorch there is no B"),
    (["diff", "{out}", "{out}", "--batch", "2", "--text", "hi"], "--batch size dummy inputs; --text/--text-file"),
    (["profile", "{out}", "--seq-len", "4", "--inputs", "{tmp}/x.npz"], "--seq-len size dummy inputs; --inputs"),
    (["profile", "{out}", "--image", "{tmp}/photo.png"], "--image: no ONNX file of {out} takes pixel_values"),
    (["analyze", "{out}", "--filter", "bert.pooler.dense.x*"], "--filter 'bert.pooler.dense.x*' matches no module"),
    (["compare", "{out}", "{out}", "--filter", "nope"], "--filter 'nope' matches no module"),
    (["compare", "{out}", "{out}", "--all", "--format", "json"], "--all changes the table only"),
    (["report", "{out}", "--html", "--depth", "2", "-o", "{tmp}/r.html"], "drop --depth"),
])
def test_options_that_would_do_nothing_are_refused_first(tiny_bert_export, tmp_path, capsys, argv, words):
    out, _ = tiny_bert_export
    np.savez(tmp_path / "x.npz", input_ids=np.ones((1, 4), np.int64))
    code = cli([a.format(out=out, tmp=tmp_path) for a in argv])
    line = _one_error_line(code, capsys.readouterr().err)
    assert words.format(out=out) in line, line
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "r.html").exists()


def test_minilm_against_pytorch_pairs_named_and_alias_outputs(minilm_export, capsys):
    """sentence-transformers' outputs are named like the graph's (token_embeddings,
    sentence_embedding), and the last LayerNorm's output leaves under two names (the
    ``last_hidden_state`` alias): both pair without doubt, and agree."""
    out, _ = minilm_export
    code = cli(["diff", str(out), "--pytorch", "--text", "A man is eating food.", "--format", "json"])
    doc = strict_json(capsys.readouterr().out)
    assert code == 0
    entry = doc["files"]["model.onnx"]
    paired = {m["module_path"]: m for m in entry["modules"]}
    assert paired[""]["tensors"] == 2 and paired[""]["max_abs"] < 1e-4
    for path in ("0.model.encoder.layer.5", "0.model.encoder.layer.5.output.LayerNorm"):
        assert paired[path]["state"] == "ok" and paired[path]["max_abs"] < 1e-4, path
    assert all(m["cosine"] > 0.99999 for m in paired.values())


def test_vision_language_export_against_pytorch_without_inputs(tmp_path, capsys):
    """A vision-language model exported without a processor (generic path): the dummy token ids
    have no image tokens and the model refuses them, so `--pytorch` compares on the inputs the
    export was traced on, made again; inputs the model refuses otherwise are one line, exit 1."""
    import modelexport
    from modelexport.testing.breadth import build_tiny

    source, out = tmp_path / "src", tmp_path / "out"
    model = build_tiny("paligemma", "PaliGemmaForConditionalGeneration", "image-text-to-text", source)
    modelexport.export(str(source), out)
    code = cli(["diff", str(out), "--pytorch", "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)["files"]["model.onnx"]
    assert doc["inputs"].startswith("the export's own inputs") and "image token" in doc["inputs"]
    assert "refused dummy inputs" in captured.err
    rows = {r["module_path"]: r for r in doc["modules"]}
    assert rows["lm_head"]["max_abs"] < 1e-3 and rows["model.multi_modal_projector.linear"]["max_abs"] < 1e-3
    # arrays without the image tokens, given by the user: the model's refusal, said in one line
    ids = np.ones((1, 8), np.int64)
    np.savez(tmp_path / "x.npz", input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids),
             pixel_values=np.zeros((1, 3, model.config.vision_config.image_size,
                                    model.config.vision_config.image_size), np.float32))
    code = cli(["diff", str(out), "--pytorch", "--inputs", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress line: the error, one line, no traceback
    assert code == 1 and "the PyTorch model refused input 1 (ValueError" in last and "Traceback" not in err
