"""Tiny models of types Optimum has no ONNX config for (and of some it has), built from each
type's *default* config shrunk generically (``breadth.shrink_config``): nobody hand-writes their
sizes. Preprocessors, which are not part of a config, are built small where the model needs one
(a tokenizer, a vision-language processor with its image token, an audio feature extractor).
Parameters are nudged so that no two are equal (the value-based parameter oracle can follow
each) and so that greedy generation does not settle on one token.
"""
from __future__ import annotations

from pathlib import Path


def _tiny_config(model_type: str, **overrides):
    from transformers import AutoConfig

    from modelexport.testing.breadth import shrink_config

    default = AutoConfig.for_model(model_type)
    values = shrink_config(default.to_dict())
    values.update(overrides)
    return type(default).from_dict(values)


def _save(model, folder: Path, scale: float = 0.05) -> None:
    import torch

    from modelexport.testing.breadth import nudge_parameters

    torch.manual_seed(0)
    nudge_parameters(model, scale=scale)
    model.eval().save_pretrained(folder)


def decoder(folder: Path, model_type: str = "llama") -> Path:
    """A causal LM (with a small BPE tokenizer) from its type's default config."""
    import transformers

    from modelexport.testing.tiny_models import bpe_tokenizer

    tokenizer = bpe_tokenizer(folder, "PreTrainedTokenizerFast",
                              {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
    config = _tiny_config(model_type, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    _save(transformers.AutoModelForCausalLM.from_config(config), folder, scale=0.5)
    return folder


def classifier(folder: Path, model_type: str = "fnet") -> Path:
    """A sequence classifier with a WordPiece tokenizer."""
    import transformers

    from modelexport.testing.tiny_models import wordpiece_tokenizer

    tokenizer = wordpiece_tokenizer(folder)
    config = _tiny_config(model_type, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=3)
    _save(transformers.AutoModelForSequenceClassification.from_config(config), folder)
    return folder


def vision_language(folder: Path) -> Path:
    """LLaVA from its default config, with a processor (CLIP image processor, BPE tokenizer with
    an ``<image>`` token) so that image tokens and image features fit together."""
    import transformers

    from modelexport.testing.tiny_models import bpe_tokenizer

    tokenizer = bpe_tokenizer(None, "PreTrainedTokenizerFast",
                              {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    config = _tiny_config("llava")
    vision = config.vision_config
    vision.image_size, vision.patch_size = 28, 14
    config.text_config.vocab_size = len(tokenizer)
    config.text_config.pad_token_id = tokenizer.pad_token_id
    config.image_token_index = config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    _save(transformers.LlavaForConditionalGeneration(config), folder, scale=0.5)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                            patch_size=vision.patch_size,
                                            vision_feature_select_strategy=config.vision_feature_select_strategy,
                                            image_token="<image>", num_additional_image_tokens=1)
    processor.save_pretrained(folder)
    return folder


def audio_classifier(folder: Path) -> Path:
    """Wav2Vec2-BERT (log-mel ``input_features``) with its feature extractor."""
    import transformers

    config = _tiny_config("wav2vec2-bert", num_labels=3)
    _save(transformers.Wav2Vec2BertForSequenceClassification(config), folder)
    transformers.SeamlessM4TFeatureExtractor(feature_size=80, num_mel_bins=80, stride=2).save_pretrained(folder)
    return folder
