"""Static-shape exports (--static-shapes) and the padding pipeline, for text, image and audio."""
from __future__ import annotations

import json

import numpy as np
import pytest

import modelexport
from modelexport.errors import ModelExportError
from modelexport.exporter.static_shapes import is_fully_static, parse_static_shapes
from modelexport.hierarchy.tags import read_tags
from modelexport.testing.tiny_models import BY_NAME
from onnx_checks import symbolic_dims

TEXTS = ["hello world", "the cat runs fast!",
         "a tiny test sentence about onnx graphs and modules and layers of a model that goes on and on",
         "good", "red blue green"]


def _static_checks(out, expected_inputs: dict):
    path = out / "model.onnx"
    assert is_fully_static(path) == []  # inputs, outputs and every inferred value
    assert symbolic_dims(path) == []  # the same, counted independently of static_shapes.py
    import onnx

    model = onnx.load(path, load_external_data=False)
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    for name, shape in expected_inputs.items():
        assert dims[name] == shape
    tags = read_tags(model)
    assert tags and all(t.module_path is not None for t in tags)
    meta = json.loads((out / "modelexport_metadata.json").read_text())
    assert meta["files"]["model.onnx"]["coverage"]["root_fallback"] == 0
    assert meta["files"]["model.onnx"]["validation"]["passed"]
    return meta


def test_text_static_export_and_pipeline(tiny_bert_dir, tiny_bert_export, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "static"
    modelexport.export(str(tiny_bert_dir), out, static_shapes="batch_size=2,sequence_length=16")
    meta = _static_checks(out, {"input_ids": [2, 16], "attention_mask": [2, 16]})
    assert meta["static_shapes"] == {"batch_size": 2, "sequence_length": 16}
    assert AutoTokenizer.from_pretrained(out).model_max_length == 16

    pipe = modelexport.load_pipeline(out)
    with pytest.warns(UserWarning, match="truncated"):
        results = pipe(TEXTS)  # 5 inputs: batches of 2, the last one padded
    assert len(results) == 5 and all("label" in r for r in results)
    dynamic = modelexport.load(tiny_bert_export[0])  # the dynamic export, in ONNX Runtime
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    for text, result in zip(TEXTS, results):
        batch = tokenizer([text], truncation=True, max_length=16, return_tensors="np")
        expected = dynamic(**batch)["logits"][0]
        np.testing.assert_allclose(result["logits"], expected, atol=1e-5)


def test_image_static_export_and_pipeline(tmp_path):
    from PIL import Image
    from transformers import AutoImageProcessor

    folder = tmp_path / "vit"
    folder.mkdir()
    BY_NAME["vit"].build(folder)
    out = tmp_path / "static"
    modelexport.export(str(folder), out, static_shapes="batch_size=1,num_channels=3,height=32,width=32")
    _static_checks(out, {"pixel_values": [1, 3, 32, 32]})
    dynamic_out = tmp_path / "dynamic"
    modelexport.export(str(folder), dynamic_out)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 48), (90, 20),
                                                                                             (32, 32))]
    results = modelexport.load_pipeline(out)(images)
    dynamic = modelexport.load(dynamic_out)
    pixels = AutoImageProcessor.from_pretrained(dynamic_out)(images=images, return_tensors="np")
    expected = dynamic(**pixels)["logits"]
    np.testing.assert_allclose(np.stack([r["logits"] for r in results]), expected, atol=1e-5)


def test_audio_static_export_and_pipeline(tmp_path):
    import torch
    from transformers import Wav2Vec2ForSequenceClassification

    folder = tmp_path / "w2v"
    folder.mkdir()
    BY_NAME["wav2vec2/audio-classification"].build(folder)
    out = tmp_path / "static"
    modelexport.export(str(folder), out, static_shapes="batch_size=1,audio_sequence_length=16000")
    _static_checks(out, {"input_values": [1, 16000]})
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 9600, 24000)]
    pipe = modelexport.load_pipeline(out)
    with pytest.warns(UserWarning, match="truncated"):
        results = pipe(clips)
    reference = Wav2Vec2ForSequenceClassification.from_pretrained(folder).eval()
    from transformers import AutoFeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(out)
    for clip, result in zip(clips, results):
        # The padded (or cut) clip the static model sees: Optimum's audio exports take no
        # attention mask, so padding is part of the input, and PyTorch gets the same input.
        fixed = extractor(clip, sampling_rate=16000, padding="max_length", max_length=16000, truncation=True,
                          return_tensors="pt").input_values
        with torch.no_grad():
            expected = reference(fixed).logits.numpy()[0]
        np.testing.assert_allclose(result["logits"], expected, atol=1e-4)


@pytest.mark.parametrize("text, words", [
    ("batch=1", "unknown shape name 'batch'"),
    ("sequence_length=0", "must be positive"),
    ("sequence_length=abc", "not a whole number"),
    ("sequence_length", "not NAME=SIZE"),
])
def test_bad_static_shapes(text, words):
    with pytest.raises(ModelExportError, match=words):
        parse_static_shapes(text)


def test_sequence_longer_than_the_model_takes(tiny_bert_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "modelexport", "export", str(tiny_bert_dir), str(out),
                           "--static-shapes", "batch_size=1,sequence_length=100"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and "max_position_embeddings=64" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_load_pipeline_refuses_dynamic_folder(tiny_bert_export):
    with pytest.raises(ModelExportError, match="static-shapes"):
        modelexport.load_pipeline(tiny_bert_export[0])
