"""Decoders with a KV cache and encoder-decoder folders in the verbs that run a model (issue 23,
items 6, 7 and 12): the inputs a text gives them, built as Optimum builds a first step; PyTorch
against the export module by module on those inputs; profile of a merged decoder."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from modelexport.cli.main import main as cli
from modelexport.folder.loading import load_target
from modelexport.runtime.feeds import feeds_for, input_specs

TEXTS = ["hello world, the cat runs fast!", "a tiny test sentence"]


class Args:
    def __init__(self, **kw):
        self.text, self.text_file, self.image, self.inputs, self.batch, self.seq_len = [], None, [], None, None, None
        self.__dict__.update(kw)


def run_json(capsys, *argv):
    code = cli([*map(str, argv), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # strict JSON: no NaN or Infinity
    return json.loads(captured.out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


# -- item 12: texts on decoders with a cache ----------------------------------------------------
def test_text_on_a_gpt2_with_past_builds_the_empty_past_as_optimum_does(gpt2_past_export, gpt2_dir):
    """The feed equals what Optimum's ORTModelForCausalLM gives its first step, and the file's
    logits on it equal PyTorch's on the text."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    target = load_target(gpt2_past_export)
    (feed,), what = feeds_for(target, target.files[0], Args(text=[TEXTS[0]]))
    assert what == "1 text(s) through the folder's tokenizer, an empty past, position_ids from the mask"
    specs = {s.name: s for s in input_specs(target.files[0].model)}
    assert set(feed) == set(specs)
    ids = AutoTokenizer.from_pretrained(gpt2_dir)(TEXTS[0], return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(feed["input_ids"], ids)
    np.testing.assert_array_equal(feed["position_ids"], np.arange(ids.shape[1])[None])
    for layer in range(2):
        for kv in ("key", "value"):
            past = feed[f"past_key_values.{layer}.{kv}"]
            assert past.shape == (1, 4, 0, 8) and past.dtype == np.float32  # heads, head size: the graph's dims
    from modelexport.runtime.sessions import new_session

    logits = new_session(gpt2_past_export / "model.onnx").run(["logits"], feed)[0]
    model = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)).logits.numpy()
    assert np.max(np.abs(logits - expected)) < 1e-4


def test_diff_and_quantize_target_take_texts_on_a_gpt2_with_past(gpt2_past_export, tmp_path, capsys):
    doc = run_json(capsys, "diff", gpt2_past_export, gpt2_past_export, "--text", TEXTS[0], "--text", TEXTS[1])
    entry = doc["files"]["model.onnx"]
    assert entry["inputs_run"] == 2 and "an empty past" in entry["inputs"]
    own = [m for m in entry["modules"] if m["boundary"] == "own"]
    assert own and all(m["state"] == "ok" and m["max_abs"] == 0.0 for m in own)
    code = cli(["quantize", str(gpt2_past_export), "-o", str(tmp_path / "q"), "--target-cosine", "0.5",
                "--text", TEXTS[0]])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "measured on 1 text(s) through the folder's tokenizer, an empty past" in out.out


def test_sensitivity_takes_texts_on_a_gpt2_with_past(gpt2_past_export, capsys):
    doc = run_json(capsys, "sensitivity", gpt2_past_export, "--text", TEXTS[0])
    assert [r["module_path"] for r in doc["modules"]] and "an empty past" in doc["inputs"]


def test_text_on_t5_feeds_every_file_as_generation_does(t5_text_export, capsys):
    """encoder: the tokens; decoder and merged decoder: the first step on the encoder's output;
    decoder with past: the second step on the first step's past. Each file's inputs run, and the
    description says which each got."""
    doc = run_json(capsys, "diff", t5_text_export, t5_text_export, "--text", TEXTS[0])
    inputs = {name: entry["inputs"] for name, entry in doc["files"].items()}
    expected = {
        "encoder_model.onnx": "1 text(s) through the folder's tokenizer",
        "decoder_model.onnx": "1 text(s): the decoder's first step on encoder_model.onnx's output for each text, "
                              "the decoder start token",
        "decoder_model_merged.onnx": "1 text(s): the decoder's first step (use_cache_branch false) on "
                                     "encoder_model.onnx's output for each text, the decoder start token",
        "decoder_with_past_model.onnx": "1 text(s): the decoder's second step, its past and greedy token from "
                                        "decoder_model.onnx's first step on encoder_model.onnx's output"}
    merged = (t5_text_export / "decoder_model_merged.onnx").exists()  # Optimum's layout; not the generic path's
    if not merged:
        del expected["decoder_model_merged.onnx"]
    assert inputs == expected
    target = load_target(t5_text_export)
    files = {f.name: f for f in target.files}
    feeds = {name: feeds_for(target, f, Args(text=[TEXTS[0]]))[0][0] for name, f in files.items()}
    from modelexport.runtime.sessions import new_session

    runs = {name: dict(zip([o.name for o in files[name].model.graph.output],
                           new_session(files[name].path).run(None, feeds[name]))) for name in files}
    # the merged decoder without cache is the plain decoder; the encoder's output is what both got
    if merged:
        np.testing.assert_allclose(runs["decoder_model_merged.onnx"]["logits"], runs["decoder_model.onnx"]["logits"],
                                   atol=1e-5)
    np.testing.assert_array_equal(feeds["decoder_model.onnx"]["encoder_hidden_states"],
                                  runs["encoder_model.onnx"]["last_hidden_state"])
    assert feeds["decoder_with_past_model.onnx"]["past_key_values.0.decoder.key"].shape[2] == 1
    np.testing.assert_array_equal(feeds["decoder_with_past_model.onnx"]["past_key_values.1.encoder.value"],
                                  runs["decoder_model.onnx"]["present.1.encoder.value"])


def test_t5_second_step_equals_pytorch(t5_text_export):
    """The decoder-with-past file on the inputs built for it gives PyTorch's logits of the second
    generated token: the chain is the one generation runs."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    meta = json.loads((t5_text_export / "modelexport_metadata.json").read_text())
    source = meta["source"]["model"]
    target = load_target(t5_text_export)
    files = {f.name: f for f in target.files}
    (feed,), _ = feeds_for(target, files["decoder_with_past_model.onnx"], Args(text=[TEXTS[1]]))
    from modelexport.runtime.sessions import new_session

    logits = new_session(files["decoder_with_past_model.onnx"].path).run(["logits"], feed)[0]
    model = T5ForConditionalGeneration.from_pretrained(source).eval()
    encoded = AutoTokenizer.from_pretrained(t5_text_export)(TEXTS[1], return_tensors="pt")
    enc = {k: encoded[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        decoder_ids = torch.tensor([[0, int(feed["input_ids"][0, 0])]])
        expected = model(**enc, decoder_input_ids=decoder_ids).logits[:, -1:].numpy()
    assert np.max(np.abs(logits - expected)) < 1e-4


# -- item 6: PyTorch against a decoder with a cache -------------------------------------------
@pytest.mark.parametrize("inputs", ["dummy", "text"])
def test_pytorch_diff_of_a_gpt2_with_past_pairs_by_order_and_shape(gpt2_past_export, capsys, inputs):
    """The export's logits equal PyTorch's: every paired module agrees to float rounding, and the
    root and the transformer pair their cache outputs in the graph's order."""
    extra = ["--text", TEXTS[0]] if inputs == "text" else []
    doc = run_json(capsys, "diff", gpt2_past_export, "--pytorch", *extra)
    entry = doc["files"]["model.onnx"]
    paired = {m["module_path"]: m for m in entry["modules"]}
    assert {"", "transformer", "transformer.h.0.attn", "transformer.h.1.attn", "lm_head"} <= set(paired)
    for path, m in paired.items():
        assert m["max_abs"] < 1e-4 and m["cosine"] > 0.999999 and m["state"] == "ok", (path, m)
    assert paired[""]["tensors"] == 5  # logits, then present.0.key/value, present.1.key/value
    assert paired["transformer"]["tensors"] == 5  # last hidden state, then the cache


def test_pytorch_diff_gives_pytorch_the_past_the_file_gets(gpt2_past_export, tmp_path, capsys):
    """A non-empty past from --inputs becomes PyTorch's cache: the two still agree."""
    rng = np.random.default_rng(0)
    feed = {"input_ids": np.array([[5, 6, 7]], np.int64), "attention_mask": np.ones((1, 5), np.int64),
            "position_ids": np.array([[2, 3, 4]], np.int64)}
    for layer in range(2):
        for kv in ("key", "value"):
            feed[f"past_key_values.{layer}.{kv}"] = rng.standard_normal((1, 4, 2, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", **feed)
    doc = run_json(capsys, "diff", gpt2_past_export, "--pytorch", "--inputs", tmp_path / "in.npz")
    paired = {m["module_path"]: m for m in doc["files"]["model.onnx"]["modules"]}
    assert paired[""]["tensors"] == 5
    assert all(m["max_abs"] < 1e-4 for m in paired.values()), paired


def test_pairing_refuses_shapes_that_leave_a_doubt():
    """Two outputs of one shape and two boundary tensors of that shape inside the graph (not
    graph outputs): which is which is unknown, so the module is not paired."""
    from modelexport.runtime.diff import Boundaries
    from modelexport.runtime.torch_diff import pair_outputs

    a, b = np.zeros((1, 3), np.float32), np.ones((1, 3), np.float32)
    bounds = Boundaries({"m": ["t1", "t2"], "": ["y1", "y2"]}, {}, {"m": "", "": ""}, {})
    records = {"m": [[a, b]], "": [[a, b]]}
    values = {"t1": a, "t2": b, "y1": a, "y2": b}
    reasons: dict = {}
    pairs = pair_outputs(bounds, records, values, reasons, output_index={"y2": 0, "y1": 1})
    assert "m" not in pairs and reasons["m"].startswith("2 output(s) and 2 boundary tensor(s) of shape [1, 3]")
    assert pairs[""] == [(0, "y2"), (1, "y1")]  # graph outputs: paired in the graph's order


# -- item 7: a merged decoder's If is not counted with its branch --------------------------------
@pytest.mark.optimum  # the merged decoder is Optimum's layout
def test_profile_of_a_merged_decoder_counts_each_node_once(t5_text_export, tmp_path, capsys):
    merged = onnx.load(t5_text_export / "decoder_model_merged.onnx", load_external_data=False)
    if_node = next(n for n in merged.graph.node if n.op_type == "If")
    branch = next(a.g for a in if_node.attribute if a.name == "else_branch")  # use_cache_branch false
    main = [n for n in merged.graph.node if n.op_type not in ("Constant", "If")]
    executed = len(main) + sum(1 for n in branch.node if n.op_type != "Constant")
    trace = tmp_path / "trace.json"
    doc = run_json(capsys, "profile", t5_text_export, "--runs", "1", "--warmup", "0", "--optimization", "disabled",
                   "--seq-len", "4", "--trace", trace)
    profile = doc["files"]["decoder_model_merged.onnx"]
    assert sum(m["calls"] for m in profile["modules"]) == executed
    frames = {f["name"] for f in json.loads(trace.read_text())["shared"]["frames"]}
    assert "op:If" not in frames and "op:MatMul" in frames


# -- smaller: module order ---------------------------------------------------------------------
def test_analyze_lists_blocks_in_module_order(t5_text_export, capsys):
    doc = run_json(capsys, "analyze", t5_text_export)
    for name, entry in doc["files"].items():
        paths = [m["module_path"] for m in entry["modules"]]
        stack = "decoder" if "decoder" in name else "encoder"
        assert paths.index(f"{stack}.block.0") < paths.index(f"{stack}.block.1"), name
        assert paths.index(f"{stack}.block.0.layer.0") < paths.index(f"{stack}.block.0.layer.1") < \
            paths.index(f"{stack}.block.1"), name


# -- one cut, which follows outer-scope reads ----------------------------------------------------
@pytest.mark.optimum  # the merged decoder is Optimum's layout
def test_extract_follows_what_if_branches_read_from_outside(t5_text_export, tmp_path, capsys):
    """The merged decoder's If (the root's one node) reads the decoder's inputs only inside its
    branches: the cut takes them as inputs, and the piece computes what the file computes."""
    out = tmp_path / "root.onnx"
    code = cli(["extract", str(t5_text_export), "--file", "decoder_model_merged.onnx", "--module", "", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    piece = onnx.load(out)
    merged = onnx.load(t5_text_export / "decoder_model_merged.onnx")
    assert {i.name for i in piece.graph.input} == {i.name for i in merged.graph.input}
    from modelexport.runtime.sessions import new_session

    target = load_target(t5_text_export)
    f = next(f for f in target.files if f.name == "decoder_model_merged.onnx")
    (feed,), _ = feeds_for(target, f, Args(text=[TEXTS[0]]))
    expected = new_session(f.path).run(["logits"], feed)[0]
    np.testing.assert_allclose(new_session(out).run(["logits"], feed)[0], expected, atol=1e-6)


def test_optimize_on_a_merged_decoder_folder_generates_the_same_tokens(t5_export, tmp_path):
    """ONNX Runtime's optimizer empties Optimum's merged decoder (its If node is dropped, and the
    checker then failed: an internal error). Where the folder also holds the two decoders it was
    merged from, those are optimized and the merged one is left out; the folder validates and
    generates the tokens the source folder generates."""
    import modelexport
    from modelexport.runtime.transform import optimize_folder

    notes = []
    optimize_folder(t5_export, tmp_path / "opt", on_untagged=notes.append)
    names = sorted(p.name for p in (tmp_path / "opt").glob("*.onnx"))
    merged = (t5_export / "decoder_model_merged.onnx").exists()
    if merged:
        assert names == ["decoder_model.onnx", "decoder_with_past_model.onnx", "encoder_model.onnx"]
        assert any("decoder_model_merged.onnx left out" in n for n in notes), notes
    meta = json.loads((tmp_path / "opt" / "modelexport_metadata.json").read_text())
    assert sorted(meta["files"]) == names
    assert cli(["validate", str(tmp_path / "opt")]) == 0
    ids = np.array([[5, 6, 7, 8, 1]])
    expected = modelexport.load(t5_export).generate(ids, max_new_tokens=6)
    got = modelexport.load(tmp_path / "opt").generate(ids, max_new_tokens=6)
    assert np.array_equal(np.asarray(got), np.asarray(expected))
