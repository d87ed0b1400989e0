"""Tiny random models of every family Optimum exports, built locally (no Hub access).

Each family is saved like a Hub folder (config, weights, tokenizer/processor files) so that
the exporter sees exactly what a user's folder holds. Sizes are small (hidden 32, 2 layers,
vocabularies of a few hundred) so a family exports in seconds. Used by the test suite and by
``scripts/models_table.py``, which writes docs/models.md from a real run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

CORPUS = [
    "hello world, the cat runs fast!", "a tiny test sentence about onnx graphs", "modules and layers of a model",
    "the quick brown fox jumps over the lazy dog", "export every node with its module", "good bad red blue green",
] * 4

WORDS = sorted({w.strip(",!") for line in CORPUS for w in line.split()})


# -- tokenizers and processors ------------------------------------------------------------
def wordpiece_tokenizer(folder: Path, cls_name: str = "BertTokenizerFast"):
    """A BERT-style WordPiece tokenizer over a small vocabulary."""
    import transformers
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'")
    vocab_list = specials + WORDS + letters + ["##" + ch for ch in letters]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    backend.decoder = decoders.WordPiece()
    tokenizer = getattr(transformers, cls_name)(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=64)
    tokenizer.save_pretrained(folder)
    return tokenizer


def bpe_tokenizer(folder: Path | None, cls_name: str, specials: dict[str, str], template: str | None = None):
    """A byte-level BPE tokenizer (GPT-2 / RoBERTa / BART / CLIP / Whisper style) trained on CORPUS."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    special_tokens = list(dict.fromkeys(specials.values()))
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=special_tokens,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if template:
        bos, eos = specials["bos_token"], specials["eos_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(bos, backend.token_to_id(bos)), (eos, backend.token_to_id(eos))])
    tokenizer = getattr(transformers, cls_name)(tokenizer_object=backend, model_max_length=64, **specials)
    if folder is not None:
        tokenizer.save_pretrained(folder)
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE alphabets; transformers moved its
    own copy between 4.57 and 5)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def clip_tokenizer(folder: Path):
    """CLIP's BPE (with its ``</w>`` word ends) over a byte alphabet and a few merges."""
    import json

    from transformers import CLIPTokenizer, CLIPTokenizerFast

    alphabet = list(_bytes_to_unicode().values())
    merges = ["t h", "th e</w>", "o n", "n x</w>", "m o", "mo d"]
    tokens = alphabet + [c + "</w>" for c in alphabet] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(tokens))}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    slow = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=64)
    slow.save_pretrained(folder)
    return CLIPTokenizerFast.from_pretrained(folder)


# -- the registry -------------------------------------------------------------------------
@dataclass
class Family:
    name: str  # row label, e.g. "bert"
    task: str  # task passed to export ("auto" where inference is part of the check)
    ort_class: str  # optimum.onnxruntime class that must load the folder
    build: Callable[[Path], None]  # writes config, weights and preprocessors into the folder
    check: str  # "outputs" (compare an output with PyTorch) or "generate" (greedy tokens)
    inputs: str  # "text", "image", "audio" or "ids"
    expect_files: tuple[str, ...] = ()  # preprocessor files that must be copied
    output: str = "logits"  # output compared for check == "outputs"
    torch_class: str = ""  # transformers class to load the PyTorch reference with
    notes: list[str] = field(default_factory=list)


def _save(model, folder: Path):
    import torch

    torch.manual_seed(0)
    model.eval().save_pretrained(folder)


def _bert_like(config_cls: str, model_cls: str, tokenizer_cls: str, **config_kwargs):
    def build(folder: Path):
        import torch
        import transformers

        tokenizer = wordpiece_tokenizer(folder, tokenizer_cls)
        torch.manual_seed(0)
        config = getattr(transformers, config_cls)(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                   **config_kwargs)
        _save(getattr(transformers, model_cls)(config), folder)
    return build


def _roberta(model_cls: str):
    def build(folder: Path):
        import torch
        from transformers import RobertaConfig
        import transformers

        tok = bpe_tokenizer(folder, "RobertaTokenizerFast",
                            dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                 mask_token="<mask>", sep_token="</s>", cls_token="<s>"), template="<s> $A </s>")
        torch.manual_seed(0)
        config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=37, max_position_embeddings=80, pad_token_id=tok.pad_token_id,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        _save(getattr(transformers, model_cls)(config), folder)
    return build


BERT_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                  max_position_embeddings=64)
DISTILBERT_SIZES = dict(dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64)


def _vision(config_cls: str, model_cls: str, processor: Callable, **config_kwargs):
    def build(folder: Path):
        import torch
        import transformers

        processor().save_pretrained(folder)
        torch.manual_seed(0)
        config = getattr(transformers, config_cls)(num_labels=3, **config_kwargs)
        _save(getattr(transformers, model_cls)(config), folder)
    return build


def _vit_processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": 32, "width": 32})


def _convnext_processor():
    from transformers import ConvNextImageProcessor

    return ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0)


def _build_clip(folder: Path):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = clip_tokenizer(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    _save(CLIPModel(config), folder)


def _wav2vec2(model_cls: str, with_tokenizer: bool):
    def build(folder: Path):
        import json

        import torch
        import transformers
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor

        extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, return_attention_mask=True)
        vocab_size = 32
        if with_tokenizer:
            from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2Processor

            letters = ["<pad>", "<s>", "</s>", "<unk>", "|"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["'"]
            (folder / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(letters)}))
            tok = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
            Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tok).save_pretrained(folder)
            vocab_size = len(letters)
        else:
            extractor.save_pretrained(folder)
        torch.manual_seed(0)
        config = Wav2Vec2Config(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=37, conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8),
                                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_labels=3,
                                pad_token_id=0)
        _save(getattr(transformers, model_cls)(config), folder)
    return build


def _build_gpt2(folder: Path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    bpe_tokenizer(folder, "GPT2TokenizerFast", dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                                    unk_token="<|endoftext|>"))
    torch.manual_seed(0)
    # A large init range so that a random model's greedy tokens vary (a real check of the cache).
    config = GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.5,
                        bos_token_id=0, eos_token_id=0)
    _save(GPT2LMHeadModel(config), folder)


def _build_llama(folder: Path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=0.5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    _save(LlamaForCausalLM(config), folder)


def _build_t5(folder: Path):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=300, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, initializer_factor=3.0)
    _save(T5ForConditionalGeneration(config), folder)


def _build_bart(folder: Path):
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    tok = bpe_tokenizer(folder, "BartTokenizerFast",
                        dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                             mask_token="<mask>", sep_token="</s>", cls_token="<s>"), template="<s> $A </s>")
    torch.manual_seed(0)
    config = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                        decoder_ffn_dim=37, max_position_embeddings=64, init_std=1.0, scale_embedding=True,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None)
    _save(BartForConditionalGeneration(config), folder)


def _build_whisper(folder: Path):
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    extractor = WhisperFeatureExtractor(feature_size=80)
    extractor.save_pretrained(folder)
    tok = bpe_tokenizer(folder, "WhisperTokenizerFast",
                        dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                             pad_token="<|endoftext|>"))
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=len(tok) + 4, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                           decoder_ffn_dim=37, num_mel_bins=80, max_source_positions=1500, max_target_positions=64,
                           init_std=0.5, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.bos_token_id,
                           begin_suppress_tokens=None, suppress_tokens=None)
    _save(WhisperForConditionalGeneration(config), folder)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

FAMILIES: list[Family] = [
    *[Family(f"bert/{task}", task, ort, _bert_like("BertConfig", cls, "BertTokenizerFast", **BERT_SIZES), "outputs",
             "text", TOKENIZER_FILES, out, cls)
      for task, cls, ort, out in [
          ("fill-mask", "BertForMaskedLM", "ORTModelForMaskedLM", "logits"),
          ("token-classification", "BertForTokenClassification", "ORTModelForTokenClassification", "logits"),
          ("question-answering", "BertForQuestionAnswering", "ORTModelForQuestionAnswering", "start_logits")]],
    *[Family(f"distilbert/{task}", task, ort,
             _bert_like("DistilBertConfig", cls, "DistilBertTokenizerFast", **DISTILBERT_SIZES), "outputs", "text",
             TOKENIZER_FILES, out, cls)
      for task, cls, ort, out in [
          ("fill-mask", "DistilBertForMaskedLM", "ORTModelForMaskedLM", "logits"),
          ("token-classification", "DistilBertForTokenClassification", "ORTModelForTokenClassification", "logits"),
          ("question-answering", "DistilBertForQuestionAnswering", "ORTModelForQuestionAnswering", "end_logits")]],
    *[Family(f"roberta/{task}", task, ort, _roberta(cls), "outputs", "text", TOKENIZER_FILES, out, cls)
      for task, cls, ort, out in [
          ("fill-mask", "RobertaForMaskedLM", "ORTModelForMaskedLM", "logits"),
          ("token-classification", "RobertaForTokenClassification", "ORTModelForTokenClassification", "logits"),
          ("question-answering", "RobertaForQuestionAnswering", "ORTModelForQuestionAnswering", "start_logits")]],
    Family("vit", "image-classification", "ORTModelForImageClassification",
           _vision("ViTConfig", "ViTForImageClassification", _vit_processor, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8),
           "outputs", "image", ("preprocessor_config.json",), torch_class="ViTForImageClassification"),
    Family("resnet", "image-classification", "ORTModelForImageClassification",
           _vision("ResNetConfig", "ResNetForImageClassification", _convnext_processor, embedding_size=16,
                   hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
           "outputs", "image", ("preprocessor_config.json",), torch_class="ResNetForImageClassification"),
    Family("convnext", "image-classification", "ORTModelForImageClassification",
           _vision("ConvNextConfig", "ConvNextForImageClassification", _convnext_processor, hidden_sizes=[16, 32],
                   depths=[1, 1], num_stages=2),
           "outputs", "image", ("preprocessor_config.json",), torch_class="ConvNextForImageClassification"),
    Family("clip", "zero-shot-image-classification", "ORTModelForZeroShotImageClassification", _build_clip,
           "outputs", "text+image", ("preprocessor_config.json", "tokenizer.json"), "logits_per_image", "CLIPModel"),
    Family("wav2vec2/audio-classification", "audio-classification", "ORTModelForAudioClassification",
           _wav2vec2("Wav2Vec2ForSequenceClassification", False), "outputs", "audio",
           ("preprocessor_config.json",), torch_class="Wav2Vec2ForSequenceClassification"),
    Family("wav2vec2/ctc", "automatic-speech-recognition", "ORTModelForCTC", _wav2vec2("Wav2Vec2ForCTC", True),
           "outputs", "audio", ("preprocessor_config.json", "vocab.json"), torch_class="Wav2Vec2ForCTC"),
    Family("gpt2", "text-generation-with-past", "ORTModelForCausalLM", _build_gpt2, "generate", "ids",
           ("generation_config.json", "tokenizer.json"), torch_class="GPT2LMHeadModel"),
    Family("llama", "text-generation-with-past", "ORTModelForCausalLM", _build_llama, "generate", "ids",
           ("generation_config.json",), torch_class="LlamaForCausalLM"),
    Family("t5", "text2text-generation-with-past", "ORTModelForSeq2SeqLM", _build_t5, "generate", "ids",
           ("generation_config.json",), torch_class="T5ForConditionalGeneration"),
    Family("bart", "text2text-generation-with-past", "ORTModelForSeq2SeqLM", _build_bart, "generate", "ids",
           ("generation_config.json", "tokenizer.json"), torch_class="BartForConditionalGeneration"),
    Family("whisper", "automatic-speech-recognition-with-past", "ORTModelForSpeechSeq2Seq", _build_whisper,
           "generate", "audio", ("generation_config.json", "preprocessor_config.json", "tokenizer.json"),
           torch_class="WhisperForConditionalGeneration"),
]

BY_NAME = {f.name: f for f in FAMILIES}
