"""Inputs whose sizes the config gives, made by InputBuilder: MarkupLM's XPaths (``max_depth``
units per token) and VisualBERT's region features (``visual_embedding_dim`` wide). Optimum's
configs for both types (transformers 4.57) export these inputs, so the exported file takes them;
before InputBuilder made them, the breadth harness fed zeros of a guessed size (4) and ONNX
Runtime refused the file (MarkupLM: "Gather ... idx=49 must be within [-4,3]"; VisualBERT:
"MatMul '/embeddings/visual_projection/MatMul' dimension mismatch"). Real tiny models, real
export (Optimum's path where it is installed, the generic one elsewhere), real ONNX Runtime.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch

import modelexport
from modelexport.exporter.generic.inputs import InputBuilder, Preprocessors
from modelexport.runtime.dummy_inputs import make_inputs
from modelexport.testing.breadth import _fill_missing


def _export_and_session(model, tmp_path):
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "onnx"
    result = modelexport.export(str(tmp_path / "model"), out)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    return out, result, session


def _run(session, example: dict) -> list[np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v.numpy() for k, v in example.items() if k in names})


def test_markuplm_xpaths_are_made_from_the_config_and_the_export_runs_on_them(tmp_path):
    from transformers import MarkupLMConfig, MarkupLMForSequenceClassification

    torch.manual_seed(0)
    config = MarkupLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                            max_depth=10, xpath_unit_hidden_size=8, num_labels=3)
    model = MarkupLMForSequenceClassification(config).eval()
    example = InputBuilder(model, "text-classification", Preprocessors(None)).build().inputs
    for name, pad, table in (("xpath_tags_seq", config.tag_pad_id, config.max_xpath_tag_unit_embeddings),
                             ("xpath_subs_seq", config.subs_pad_id, config.max_xpath_subs_unit_embeddings)):
        assert name in example, list(example)
        value = example[name]
        assert list(value.shape) == [2, 7, config.max_depth]
        assert 0 <= int(value.min()) and int(value.max()) <= pad < table
        assert bool((value[..., 0] != pad).all())  # every token has an XPath of one unit or more
        assert bool((value[..., -1] == pad).all())  # padded up to max_depth
    with torch.no_grad():
        expected = model(**example).logits.numpy()

    out, result, session = _export_and_session(model, tmp_path)
    assert {"xpath_tags_seq", "xpath_subs_seq"} <= {i.name for i in session.get_inputs()}
    # the failure was ONNX Runtime's Gather on xpath ids of the wrong depth; now the example's run
    np.testing.assert_allclose(_run(session, example)[0], expected, atol=1e-5)
    # with XPaths that are not all padding, they change the output: the graph does read them
    plain = {k: v for k, v in example.items() if not k.startswith("xpath_")}
    with torch.no_grad():
        assert not np.allclose(model(**plain).logits.numpy(), expected, atol=1e-5)

    # the fallbacks for inputs nobody made: the depth from the file or, where Optimum names the
    # axis "max_depth", from the config (not the 4 or 8 of an unknown axis)
    feed = dict(plain)
    filled = _fill_missing(out / "model.onnx", feed, example, config=model.config)
    assert set(filled) == {"xpath_tags_seq", "xpath_subs_seq"}
    assert list(feed["xpath_tags_seq"].shape) == [2, 7, config.max_depth]
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    dummy = make_inputs(proto, json.loads((out / "config.json").read_text()), batch=2)
    assert dummy["xpath_subs_seq"].shape[-1] == config.max_depth
    session.run(None, dummy)


def test_visual_bert_region_features_are_made_from_the_config_and_the_export_runs_on_them(tmp_path):
    from transformers import VisualBertConfig, VisualBertModel

    torch.manual_seed(0)
    # visual_embedding_dim unlike hidden_size and unlike any guessed size
    config = VisualBertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                              visual_embedding_dim=24)
    model = VisualBertModel(config).eval()
    example = InputBuilder(model, "feature-extraction", Preprocessors(None)).build().inputs
    assert "visual_embeds" in example, list(example)
    regions = example["visual_embeds"].shape[1]
    assert list(example["visual_embeds"].shape) == [2, regions, config.visual_embedding_dim]
    assert example["visual_embeds"].dtype == torch.float32
    for name in ("visual_attention_mask", "visual_token_type_ids"):
        assert list(example[name].shape) == [2, regions] and example[name].dtype == torch.long
        assert bool((example[name] == 1).all())  # forward's own defaults
    with torch.no_grad():
        expected = model(**example).last_hidden_state.numpy()
    assert expected.shape[1] == 7 + regions  # the regions are attended to

    out, result, session = _export_and_session(model, tmp_path)
    assert {"visual_embeds", "visual_attention_mask", "visual_token_type_ids"} <= \
        {i.name for i in session.get_inputs()}
    # the failure was ONNX Runtime's MatMul in visual_projection on visual_embeds of the wrong width
    np.testing.assert_allclose(_run(session, example)[0], expected, atol=1e-4)
    # another number of regions (the axis is dynamic in both Optimum's file and the generic one)
    more = {**example, "visual_embeds": torch.randn(2, regions + 4, config.visual_embedding_dim),
            "visual_attention_mask": torch.ones(2, regions + 4, dtype=torch.long),
            "visual_token_type_ids": torch.ones(2, regions + 4, dtype=torch.long)}
    with torch.no_grad():
        np.testing.assert_allclose(_run(session, more)[0], model(**more).last_hidden_state.numpy(), atol=1e-4)

    plain = {k: v for k, v in example.items() if not k.startswith("visual_")}
    feed = dict(plain)
    filled = _fill_missing(out / "model.onnx", feed, example, config=model.config)
    assert "visual_embeds" in filled and feed["visual_embeds"].shape[-1] == config.visual_embedding_dim
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    dummy = make_inputs(proto, json.loads((out / "config.json").read_text()), batch=2)
    assert dummy["visual_embeds"].shape[-1] == config.visual_embedding_dim
    session.run(None, dummy)
