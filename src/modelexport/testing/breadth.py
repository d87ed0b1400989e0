"""Every model type transformers maps to a PyTorch model, tiny, exported: the breadth table.

``check_model_type`` builds a tiny random model of one type from its *default* config (sizes
shrunk generically by ``shrink_config``, no Hub, no tokenizer or processor), picks its head, and
measures, stage by stage (``BreadthRow``):

1. builds tiny (``build_tiny``);
2. PyTorch forward runs on the example inputs modelexport's own ``InputBuilder`` makes;
3. the anchor: ``torch.onnx.export(model, (), kwargs=those inputs, dynamo=True)`` alone (no
   wrapper, no patches, no tags, static shapes), then run by ONNX Runtime;
4. plain Optimum (transformers 4.57, types it has a config for): ``onnx_export_from_model``;
5. modelexport: ``modelexport.export(folder, out)`` (``exporter="auto"``): the path it took,
   coverage, the parameter oracle, validation, the class that loads the folder (Optimum's
   ``ORTModelForXxx`` under 4.57; ``modelexport.load`` everywhere) run on the inputs, and for
   generative heads whether greedy ``generate`` equals PyTorch's.

scripts/breadth_table.py runs it for every type (one process each, in parallel, with a timeout)
and writes docs/breadth.md; tests/test_breadth.py runs a representative subset. The row is saved
after every stage, so a type that times out keeps what it measured before.

The parameter oracle does not use our naming, nor the initializers' names: an initializer whose
value equals one module's parameter (or its transpose) belongs to that module, and a node that
reads it must be tagged with that module or one of its descendants. Every parameter of the tiny
model is nudged at random first, so no two are equal and the exporter de-duplicates none.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Optimum's task preference (transformers 4.57, types optimum-onnx has a config for): the heads
# users export most, generation with the KV cache first. The comparison with plain Optimum uses it.
TASK_PREFERENCE = (
    "text2text-generation-with-past", "automatic-speech-recognition-with-past", "text-generation-with-past",
    "image-to-text-with-past", "text-classification", "image-classification", "audio-classification",
    "object-detection", "semantic-segmentation", "fill-mask", "question-answering", "token-classification",
    "multiple-choice", "zero-shot-image-classification", "automatic-speech-recognition", "image-to-text",
    "text-generation", "text2text-generation", "audio-frame-classification", "audio-xvector", "depth-estimation",
    "image-segmentation", "masked-im", "feature-extraction",
)

# The generic head preference, among transformers' Auto mappings that contain the type: a causal LM
# (exported with its KV cache) first, then encoder-decoders, vision-language models, classification
# heads, ..., the base model last. A type that also has a seq2seq, speech-seq2seq or masked-LM head
# skips the causal LM: that class is then the decoder alone (BART's) or an encoder run as a decoder
# (BertLMHeadModel).
HEAD_PREFERENCE = (
    ("text-generation", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("text2text-generation", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
    ("automatic-speech-recognition", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"),
    ("image-text-to-text", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"),
    ("image-to-text", "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES"),
    ("text-classification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    ("image-classification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
    ("audio-classification", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES"),
    ("token-classification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
    ("question-answering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
    ("multiple-choice", "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES"),
    ("fill-mask", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    ("zero-shot-image-classification", "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
    ("object-detection", "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES"),
    ("semantic-segmentation", "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES"),
    ("depth-estimation", "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES"),
    ("masked-im", "MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING_NAMES"),
    ("automatic-speech-recognition", "MODEL_FOR_CTC_MAPPING_NAMES"),
    ("audio-frame-classification", "MODEL_FOR_AUDIO_FRAME_CLASSIFICATION_MAPPING_NAMES"),
    ("audio-xvector", "MODEL_FOR_AUDIO_XVECTOR_MAPPING_NAMES"),
    ("feature-extraction", "MODEL_MAPPING_NAMES"),
)
_NOT_A_DECODER = ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
                  "MODEL_FOR_MASKED_LM_MAPPING_NAMES")
GENERATIVE_TASKS = ("text-generation", "text2text-generation", "automatic-speech-recognition", "image-text-to-text",
                    "image-to-text")
GENERATE_TOKENS = 8

# Generic shrinking: attribute -> small value. Heads divide every width below; depth 2.
_SMALL = {
    **dict.fromkeys(("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "word_embed_proj_dim", "projection_dim",
                     "text_embed_dim", "vision_embed_dim", "encoder_hidden_size", "decoder_hidden_size",
                     "hidden_dim_text"), 32),
    **dict.fromkeys(("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
                     "num_decoder_layers", "num_encoder_layers", "encoder_num_layers", "decoder_num_layers"), 2),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "encoder_attention_heads",
                     "decoder_attention_heads", "num_heads", "encoder_num_attention_heads",
                     "decoder_num_attention_heads"), 4),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff", "n_inner",
                     "hidden_dim", "encoder_intermediate_size", "decoder_intermediate_size",
                     "moe_intermediate_size", "shared_expert_intermediate_size"), 64),
    "num_key_value_heads": 2, "head_dim": 8, "d_kv": 8, "num_experts": 4, "num_local_experts": 4,
    "num_experts_per_tok": 2, "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4,
    "v_head_dim": 8, "embedding_size": 32, "first_k_dense_replace": 1,
    # widths that must follow the hidden size, and rotary widths that must fit a head of 8
    "pooler_hidden_size": 32, "rotary_dim": 4, "qk_head_dim": 8,
    # XLM's embedding width, Perceiver's latents
    "emb_dim": 32, "d_latents": 32,
}
MAX_PARAMETERS = 100_000_000  # a "tiny" model above this is refused (built on the meta device first)
_LIST_SHRINK = {"depths": 1, "num_layers_list": 1}
_NESTED = ("text_config", "vision_config", "audio_config", "encoder_config", "decoder_config", "backbone_config",
           "qformer_config", "speech_config", "encoder", "decoder")


@dataclass
class BreadthRow:
    """One model type in one environment. Text fields hold ``"ok"``, ``"not run: why"`` or the
    one-line error of the stage."""
    model_type: str
    transformers: str = ""
    head: str | None = None  # the class built
    task: str | None = None  # the head's task (Optimum's name); Optimum's preferred task for its types in 4.57
    optimum_config: bool = False  # optimum-onnx has an ONNX config for the type (4.57)
    build: str = "not run"
    forward: str = "not run"
    inputs: dict = field(default_factory=dict)  # name -> shape of InputBuilder's example
    anchor: str = "not run"  # torch.onnx.export(dynamo=True) alone
    anchor_ort: str = "not run"  # the anchor's file run by ONNX Runtime, compared with PyTorch
    optimum: str = "not run"  # plain Optimum
    modelexport: str = "not run"
    exporter: str | None = None  # the path modelexport took (metadata "exporter")
    exporter_reason: str | None = None
    exported_task: str | None = None
    layout: str | None = None  # the generic path's file layout
    patches: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    nodes: int = 0
    direct: int = 0
    inferred: int = 0
    root_fallback: int = 0
    partial: int = 0
    untagged: int = 0
    oracle_checked: int = 0  # nodes reading a distinct-valued parameter
    oracle_violations: list[str] = field(default_factory=list)  # node: tag vs owner
    max_abs_diff: float | None = None
    validation_passed: bool | None = None
    validation_problem: str | None = None  # the first reason a file failed validation
    ort_model_class: str | None = None
    ort_load: str = "not run"  # Optimum's ORTModel class: from_pretrained, then run on the inputs
    load_run: str = "not run"  # modelexport.load(folder) run on the inputs
    generate: str = "not run"  # modelexport.load(out).generate == PyTorch generate (greedy)
    generate_optimum: str = "not run"  # the ORTModel class's generate == PyTorch generate
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)
    stage: str = ""  # the stage running (or the last one run)

    def as_dict(self) -> dict:
        return asdict(self)


# -- which types, which head --------------------------------------------------------------------
def all_model_types() -> list[str]:
    """Every model type transformers maps to a PyTorch model (``MODEL_MAPPING_NAMES``)."""
    from transformers.models.auto import modeling_auto

    return sorted(modeling_auto.MODEL_MAPPING_NAMES)


def supported_model_types() -> dict[str, list[str]]:
    """transformers model type -> ONNX tasks, as optimum-onnx registers them; {} without Optimum."""
    if not has_optimum():
        return {}
    from modelexport.exporter.optimum.compat import supported_types

    return supported_types("transformers")


def has_optimum() -> bool:
    from modelexport.exporter import optimum

    return optimum.available()


def choose_task(tasks: list[str]) -> str:
    for task in TASK_PREFERENCE:
        if task in tasks:
            return task
    return sorted(tasks)[0]


def _mapping(name: str) -> dict[str, str]:
    from transformers.models.auto import modeling_auto

    mapping = getattr(modeling_auto, name, None) or {}
    return {t: c if isinstance(c, str) else c[0] for t, c in mapping.items()}


def choose_head(model_type: str) -> tuple[str, str]:
    """(task, class name) of the head built for ``model_type``: ``HEAD_PREFERENCE``."""
    import transformers

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    present = {mapping for _, mapping in HEAD_PREFERENCE if model_type in _mapping(mapping)}
    for task, mapping in HEAD_PREFERENCE:
        if mapping not in present:
            continue
        if mapping == "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES" and present & set(_NOT_A_DECODER):
            continue
        cls = getattr(transformers, _mapping(mapping)[model_type], None)
        # a head built from a part of the type's config (Mllama's causal LM takes its text config)
        # is saved as another type: the next head instead
        wanted = getattr(cls, "config_class", None)
        if cls is None or (isinstance(wanted, type) and not issubclass(config_class, wanted)
                           and mapping != "MODEL_MAPPING_NAMES"):
            continue
        return task, cls.__name__
    raise ValueError(f"transformers maps {model_type!r} to no class it exports")


def optimum_head(model_type: str, tasks: list[str]) -> tuple[str, str]:
    """(task, class name) for a type Optimum has a config for: its preferred task's class."""
    from modelexport.exporter.optimum.plain import preferred_head

    task = choose_task(tasks)
    return task, preferred_head(model_type, task)


# -- tiny models ----------------------------------------------------------------------------------
_HIDDEN_KEYS = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim")
# Widths that follow the hidden size (a config stores them resolved: RWKV's attention_hidden_size,
# SigLIP's projection_size): set to the new hidden size when they equalled the old one.
_FOLLOWS_HIDDEN = re.compile(r"(hidden|proj|embed|pooler|attention|model|inner)\w*(size|dim)$")
_NOT_A_WIDTH = re.compile(r"vocab|image|patch|position|mel|sampling|kernel|window|chunk|length")
_DEPTH_ALIAS = re.compile(r"^(num|n)_\w*(blocks|layers)$")  # num_blocks, num_switch_layers
# Settings a default config leaves on that a tiny CPU model cannot use (CUDA kernels, timm,
# pretrained backbones from the Hub).
_CPU_SETTINGS = {"use_mamba_kernels": False, "use_timm_backbone": False, "use_pretrained_backbone": False,
                 "use_kernels": False}
_HEAD_LISTS = ("num_heads", "num_attention_heads", "encoder_attention_heads", "decoder_attention_heads", "heads")


def _hidden_widths(values: dict, depth: int = 0) -> set[int]:
    """Every hidden size a config tree names (its sub-configs' too), before shrinking."""
    found = {v for k, v in values.items() if k in _HIDDEN_KEYS and isinstance(v, int) and not isinstance(v, bool)}
    if depth < 4:
        for v in values.values():
            if isinstance(v, dict):
                found |= _hidden_widths(v, depth + 1)
    return found


def _is_config_dict(name: str, value) -> bool:
    return isinstance(value, dict) and (name in _NESTED or name.endswith("_config") or "model_type" in value)


def _keep_each_kind(kinds: list, count: int) -> list:
    """The first ``count`` layer kinds, the last ones replaced so every kind of the original stays
    (a hybrid model's attention layer, a sliding-window model's full-attention layer)."""
    kept = list(kinds[:count])
    missing = [k for k in dict.fromkeys(kinds) if k not in kept]
    if missing and len(dict.fromkeys(kinds)) <= count:
        kept[count - len(missing):] = missing
    return kept


def shrink_config(values: dict, depth: int = 0, widths: set[int] | None = None) -> dict:
    """A default config's dict made tiny (nested configs too). Derived fields (a backbone's stage
    names and out features) are dropped, so the config class recomputes them for the new depth;
    fields that follow others (per-layer lists, widths equal to the hidden size, head sizes that
    must divide) are made to follow the new values."""
    original = dict(values)
    values = dict(values)
    if depth > 3:
        return values
    if widths is None:
        widths = {w for w in _hidden_widths(values) if w >= 128}
    for name, value in _SMALL.items():
        current = values.get(name)
        if isinstance(current, int) and not isinstance(current, bool) and current > value:
            values[name] = value
    for name, count in _LIST_SHRINK.items():
        current = values.get(name)
        if isinstance(current, (list, tuple)) and current:
            values[name] = [count] * len(current)
    for name in _HEAD_LISTS:  # per-stage head counts: 2 divides every shrunk stage width
        current = values.get(name)
        if isinstance(current, (list, tuple)) and current and all(isinstance(v, int) for v in current):
            values[name] = [min(v, 2) for v in current]
    for name, value in _CPU_SETTINGS.items():
        if values.get(name) is True:
            values[name] = value
            if name == "use_timm_backbone":  # transformers' own backbone (a ResNet) instead of timm's
                values.pop("backbone_kwargs", None)
                values["backbone"] = None
    if "vocab_size" in values and values["vocab_size"] is None:  # ESM's default names none
        values["vocab_size"] = 100
    sizes = values.get("hidden_sizes")
    # HGNetV2 (D-FINE's backbone) takes its channels from stage_*_channels, which must agree
    if isinstance(sizes, (list, tuple)) and sizes and all(isinstance(v, int) for v in sizes) \
            and "stage_out_channels" not in values:
        values["hidden_sizes"] = [8 * 2 ** i for i in range(len(sizes))]
    # Widths equal to a hidden size anywhere in the tree (a vision tower's out_hidden_size is the
    # text model's width) follow it: every hidden size becomes _SMALL's 32.
    for name, value in original.items():
        if isinstance(value, int) and not isinstance(value, bool) and value in widths and name not in _SMALL and \
                _FOLLOWS_HIDDEN.search(name) and not _NOT_A_WIDTH.search(name):
            values[name] = _SMALL["hidden_size"]
    for name, value in original.items():  # per-stage channel lists of the same widths (RT-DETR's decoder_in_channels)
        if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value) \
                and re.search(r"channels|hidden|_dim", name) and not _NOT_A_WIDTH.search(name) and \
                all(v in widths for v in value) and name not in _SMALL:
            values[name] = [_SMALL["hidden_size"]] * len(value)
    # secondary vocabularies (LUKE's entities, BLT's byte-group hashes): small; the token vocabulary
    # is kept (special token ids must stay in it)
    specials = [v for k, v in original.items() if (k.endswith("_token_id") or k.endswith("_token_index"))
                and isinstance(v, int) and not isinstance(v, bool)]
    for name, value in original.items():
        if "vocab" in name and name != "vocab_size" and isinstance(value, int) and not isinstance(value, bool) \
                and value > 4096:
            values[name] = max([1024] + [v + 1 for v in specials])
    # timm is not installed here: a timm backbone becomes transformers' own ResNet (as DETR's
    # use_timm_backbone=False does)
    for name, value in original.items():
        if isinstance(value, dict) and value.get("model_type") == "timm_backbone" and name == "backbone_config":
            values[name] = {"model_type": "resnet", "out_indices": value.get("out_indices") or [1, 2, 3, 4]}
    # multi-head attention stays multi-head (ESMC and GLM refuse grouped queries)
    if original.get("num_key_value_heads") is not None and \
            original.get("num_key_value_heads") == original.get("num_attention_heads") and \
            isinstance(values.get("num_attention_heads"), int):
        values["num_key_value_heads"] = values["num_attention_heads"]
    layers = values.get("num_hidden_layers")
    if isinstance(values.get("layer_types"), list) and isinstance(layers, int):
        values["layer_types"] = _keep_each_kind(values["layer_types"], layers)
    # Per-layer lists (Gemma 3n's intermediate sizes, sparsity pattern): as many as the new depth
    depth_key = next((k for k in ("num_hidden_layers", "num_layers", "n_layer", "n_layers")
                      if isinstance(original.get(k), int)), "num_hidden_layers")
    old_layers, layers = original.get(depth_key), values.get(depth_key)
    types = values.get("attention_types")  # GPT-Neo: [[["global", "local"], 12]] expands to the layers
    if isinstance(types, list) and len(types) == 1 and isinstance(types[0], list) and len(types[0]) == 2 and \
            isinstance(types[0][1], int) and isinstance(layers, int) and isinstance(types[0][0], list):
        values["attention_types"] = [[types[0][0], max(1, layers // len(types[0][0]))]]
    if isinstance(old_layers, int) and isinstance(layers, int) and old_layers > max(layers, 4):
        for name, value in original.items():
            if isinstance(value, list) and len(value) == old_layers and name != "layer_types":
                values[name] = value[:layers]
            # another count of the same layers (xLSTM builds num_blocks blocks, its num_hidden_layers
            # only sizes the state cache): the new depth
            elif isinstance(value, int) and not isinstance(value, bool) and value == old_layers and \
                    name != depth_key and name not in _SMALL and _DEPTH_ALIAS.search(name):
                values[name] = layers
    # Sizes that must agree: XLNet's d_head = d_model / n_head; MLA's head_dim is its rotary width
    # (DeepSeek-V3); Mamba-2's heads * head_dim = hidden * expand
    if isinstance(values.get("d_head"), int) and isinstance(values.get("d_model"), int) and \
            isinstance(values.get("n_head"), int) and original.get("d_head") == \
            (original.get("d_model") or 0) // max(int(original.get("n_head") or 1), 1):
        values["d_head"] = values["d_model"] // values["n_head"]
    if isinstance(original.get("qk_rope_head_dim"), int) and original.get("head_dim") == original["qk_rope_head_dim"]:
        values["head_dim"] = values["qk_rope_head_dim"]
    for prefix in ("", "mamba_", "ssm_"):  # Mamba-2 and the hybrids' Mamba layers (Bamba, Granite 4)
        heads, head_dim, expand, groups = (prefix + "num_heads" if prefix == "" else prefix + "n_heads",
                                           prefix + "head_dim" if prefix == "" else prefix + "d_head",
                                           prefix + "expand", prefix + "n_groups")
        if all(isinstance(values.get(k), int) for k in (heads, head_dim, expand, "hidden_size")) and \
                original[heads] * original[head_dim] == original.get("hidden_size", -1) * original[expand]:
            values[heads] = max(1, values["hidden_size"] * values[expand] // values[head_dim])
            if isinstance(values.get(groups), int) and values[heads] % values[groups]:
                values[groups] = 1
    # per-layer settings keyed by layer index (Gemma 4's per_layer_config): the layers that remain
    for name, value in original.items():
        if isinstance(value, dict) and value and isinstance(layers, int) and \
                all(str(k).isdigit() for k in value) and name not in _NESTED + ("id2label", "label2id"):
            values[name] = {k: v for k, v in value.items() if int(k) < layers}
    # A vocabulary holds every special token the config names (a composite config's defaults may
    # name an image or pad token beyond its text model's default vocabulary)
    vocab = values.get("vocab_size")
    if isinstance(vocab, int):
        ids = [v for k, v in values.items() if (k.endswith("_token_id") or k.endswith("_token_index"))
               and isinstance(v, int) and not isinstance(v, bool)]
        if ids and max(ids) >= vocab:
            values["vocab_size"] = max(ids) + 1
    # A backbone's stage names and out features follow from its depth: dropped, so the config
    # recomputes them; the stages it outputs (out_indices) are kept, clipped to the new depth.
    stages = len(values.get("depths") or []) or values.get("num_hidden_layers")
    indices = values.get("out_indices", values.get("_out_indices"))
    for derived in ("stage_names", "out_features", "out_indices", "_out_features", "_out_indices"):
        values.pop(derived, None)
    if isinstance(indices, (list, tuple)) and indices and isinstance(stages, int) and stages > 0:
        values["out_indices"] = sorted({min(int(i), stages) for i in indices})
    for name, value in list(values.items()):
        if _is_config_dict(name, value):
            values[name] = shrink_config(value, depth + 1, widths)
    return values


_NOT_CONFIG = ("model_type", "transformers_version", "torch_dtype", "dtype", "architectures", "_name_or_path")


def tiny_config(model_type: str):
    """The type's default config, shrunk (``shrink_config``)."""
    from transformers import AutoConfig

    def make(values: dict):
        for _ in range(5):
            try:
                return AutoConfig.for_model(model_type, **values)
            except TypeError as e:  # a config class that passes a field itself (TimesFM: is_encoder_decoder)
                m = re.search(r"got multiple values for keyword argument '(\w+)'", str(e))
                if m is None or m.group(1) not in values:
                    raise
                values.pop(m.group(1))
        return AutoConfig.for_model(model_type, **values)

    defaults = AutoConfig.for_model(model_type).to_dict()
    config = make(shrink_config({k: v for k, v in defaults.items() if k not in _NOT_CONFIG}))
    # Twice: sub-configs the config class makes itself when given none (DETR's ResNet backbone) are
    # in the first pass's result only
    again = shrink_config({k: v for k, v in config.to_dict().items() if k not in _NOT_CONFIG})
    try:
        return make(again)
    except Exception:  # noqa: BLE001  (the first pass's config stands)
        return config


def build_tiny(model_type: str, class_name: str, task: str, folder: Path | None = None, seed: int = 0):
    """A tiny random ``class_name`` model of ``model_type``, nudged (``nudge_parameters``) and saved
    to ``folder`` (no tokenizer or processor: inputs are modelexport's to make)."""
    import torch
    import transformers

    config = tiny_config(model_type)
    if task.startswith("text-classification"):  # a batch of several sequences needs a pad token
        for scope in (config, getattr(config, "text_config", None)):
            if scope is not None and getattr(scope, "pad_token_id", 0) is None:
                scope.pad_token_id = 0
    if getattr(config, "is_encoder_decoder", False) and getattr(config, "decoder_start_token_id", None) is None:
        # default configs of some encoder-decoders name no start token (T5's pretrained ones do: the
        # pad token); generate needs one
        start = next((v for v in (getattr(config, "pad_token_id", None), getattr(config, "bos_token_id", None))
                      if isinstance(v, int)), 0)
        config.decoder_start_token_id = start
    cls = getattr(transformers, class_name)
    wanted = getattr(cls, "config_class", None)
    if isinstance(wanted, type) and not isinstance(config, wanted):
        # a composite type whose head takes one part (Mllama's causal LM: its text config)
        part = next((getattr(config, n) for n in ("text_config", "decoder", "vision_config", "audio_config")
                     if isinstance(getattr(config, n, None), wanted)), None)
        if part is not None:
            config = part
    make = (lambda: cls._from_config(config)) if hasattr(cls, "_from_config") else (lambda: cls(config))
    try:
        with torch.device("meta"):
            shapes = [(p.numel(), n, tuple(p.shape)) for n, p in make().named_parameters()]
    except Exception:  # noqa: BLE001  (code that cannot run on the meta device: built for real below)
        shapes = []
    if sum(n for n, _, _ in shapes) > MAX_PARAMETERS:
        _, name, shape = max(shapes)
        raise ValueError(f"still {sum(n for n, _, _ in shapes) / 1e6:.0f} M parameters after shrinking the default "
                         f"config generically (largest: {name} {list(shape)}); not built")
    torch.manual_seed(seed)
    model = make()
    model = model.float().eval()
    nudge_parameters(model, seed=seed)
    if folder is not None:
        model.save_pretrained(folder)
    return model


def _value_key(array) -> tuple:
    import numpy as np

    array = np.ascontiguousarray(array)
    return array.shape, str(array.dtype), hashlib.sha1(array.tobytes()).hexdigest()


def parameter_names_by_value(model) -> dict[tuple, str]:
    """Value of each parameter (and its transpose: the exporters transpose MatMul weights and
    rename them) -> its ``named_parameters()`` name, for values exactly one parameter has."""
    by_value: dict[tuple, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        array = p.detach().cpu().numpy()
        keys = {_value_key(array)}
        if array.ndim == 2:
            keys.add(_value_key(array.T))
        for key in keys:
            by_value.setdefault(key, set()).add(name)
    # A tied parameter has several names for one value: keep it only when they share an owner.
    unique = {}
    for key, names in by_value.items():
        owners = {n.rpartition(".")[0] for n in names}
        if len(owners) == 1:
            unique[key] = min(names)
    return unique


def parameter_owners_by_value(model) -> dict[tuple, str]:
    """Value of each parameter (or its transpose) -> owning module, for values one module has."""
    return {key: name.rpartition(".")[0] for key, name in parameter_names_by_value(model).items()}


def nudge_parameters(model, scale: float = 0.01, seed: int = 0) -> None:
    """A fresh model has many equal tensors (all-ones norms, zero biases), which the exporters
    store once: nudge every parameter so each is unique and the oracle can follow it."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dtype.is_floating_point:
                p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)


def tags_by_parameter(onnx_path: Path, names: dict[tuple, str]) -> dict[str, set[str]]:
    """Parameter name (found by value, see ``parameter_names_by_value``) -> module paths of the
    nodes reading it, over every graph of the file: the comparison of two exports of one model
    that does not depend on how either exporter names its tensors."""
    import onnx
    from onnx import numpy_helper

    from modelexport.hierarchy.tags import iter_nodes, node_tag

    model = onnx.load(str(onnx_path))
    initializers = {}
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for init in graph.initializer:
            name = names.get(_value_key(numpy_helper.to_array(init)))
            if name is not None:
                initializers[init.name] = name
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        name = names.get(_value_key(numpy_helper.to_array(attr.t)))
                        if name is not None:
                            initializers[node.output[0]] = name
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
    readers: dict[str, set[str]] = {}
    for node, graph_path in iter_nodes(model.graph):
        for x in node.input:
            if x in initializers:
                readers.setdefault(initializers[x], set()).add(node_tag(node, graph_path).module_path)
    return readers


def oracle_violations(onnx_path: Path, owners: dict[tuple, str],
                      classes: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Nodes reading an initializer whose value is one module's parameter, tagged outside it."""
    import onnx
    from onnx import numpy_helper

    from modelexport.hierarchy.module_tree import ModuleTree
    from modelexport.hierarchy.tags import iter_nodes, node_tag

    model = onnx.load(str(onnx_path))
    owner_of = {}
    for init in model.graph.initializer:
        owner = owners.get(_value_key(numpy_helper.to_array(init)))
        if owner is not None:
            owner_of[init.name] = owner
    classes = classes or {}

    def folded(node, owner: str, tag: str) -> bool:
        # A Conv the exporter merged with the BatchNorm after it reads the BatchNorm's values; its
        # tag is then the module holding both (tagging.py says so in a warning).
        return node.op_type == "Conv" and "BatchNorm" in classes.get(owner, "") and \
            tag == owner.rpartition(".")[0]

    checked, bad = 0, []
    for node, graph_path in iter_nodes(model.graph):
        tag = node_tag(node, graph_path).module_path
        read = {owner_of[x] for x in node.input if x in owner_of}
        for name in node.input:
            owner = owner_of.get(name)
            if owner is None:
                continue
            checked += 1
            # A module applying itself to another's parameter (SEW-D: LayerNorm(rel_embeddings.weight))
            # is tagged with itself: its own parameters are read by the same node.
            applies = tag in read and tag != owner
            if tag is None or not (ModuleTree.contains(owner, tag) or folded(node, owner, tag) or applies):
                bad.append(f"{onnx_path.name}:{node.name} reads {name}: tagged {tag!r}, owner {owner!r}")
    return checked, bad


# -- the stages ------------------------------------------------------------------------------------
class _Stages:
    """Runs the row's stages in order, timing each and saving the row after each (a worker killed
    by its timeout keeps what it measured)."""

    def __init__(self, row: BreadthRow, save: Path | None):
        self.row = row
        self.save_path = save
        self.started = time.perf_counter()

    def save(self) -> None:
        self.row.seconds = round(time.perf_counter() - self.started, 2)
        if self.save_path is not None:
            tmp = self.save_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.row.as_dict()), encoding="utf-8")
            os.replace(tmp, self.save_path)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.row.stage = name
        self.save()
        began = time.perf_counter()
        try:
            yield
        finally:
            self.row.stage_seconds[name] = round(time.perf_counter() - began, 2)
            self.save()


def check_model_type(model_type: str, work: Path, *, optimum: bool | None = None, save: Path | None = None,
                     generate_tokens: int = GENERATE_TOKENS) -> BreadthRow:
    """Every column of the breadth table for one type (see the module's docstring). ``work``: an
    empty folder for the tiny model and the exports; ``save``: the JSON file the row is saved to
    after each stage; ``optimum``: run plain Optimum where it has a config (default: when installed)."""
    import onnxruntime  # noqa: F401  (imported before torch: its own thread pools first)
    import transformers

    from modelexport.quiet import silenced

    work = Path(work)
    row = BreadthRow(model_type, transformers=transformers.__version__)
    stages = _Stages(row, save)
    optimum = has_optimum() if optimum is None else optimum
    optimum_tasks = supported_model_types().get(model_type) if optimum else None
    row.optimum_config = bool(optimum_tasks)
    if not optimum:
        row.optimum = "not run: Optimum is not installed"
    elif not optimum_tasks:
        row.optimum = "not run: Optimum has no ONNX config for the type"
    with silenced(), _quiet_prints():
        # 1. build
        with stages("build"):
            try:
                if optimum_tasks:
                    row.task, row.head = optimum_head(model_type, optimum_tasks)
                else:
                    row.task, row.head = choose_head(model_type)
                model = build_tiny(model_type, row.head, row.task, work / "model")
                row.build = "ok"
            except Exception as e:  # every failure is a row with its reason
                row.build = _first_line(e)
                for name in ("forward", "anchor", "anchor_ort", "modelexport"):
                    setattr(row, name, "not run: no tiny model")
                if optimum_tasks:
                    row.optimum = "not run: no tiny model"
                return _finish(stages)
        # 2. forward on InputBuilder's example
        example = None
        with stages("forward"):
            try:
                example = generic_example(model, row.task)
                row.inputs = {k: list(v.shape) for k, v in example.items()}
                import torch

                with torch.no_grad():
                    reference = model(**example, **call_kwargs(model))
                row.forward = "ok"
            except Exception as e:
                row.forward = _first_line(e)
        # 3. the anchor
        if row.forward == "ok":
            with stages("anchor"):
                run_anchor(row, model, example, reference, work / "anchor.onnx")
        else:
            row.anchor = row.anchor_ort = "not run: forward fails"
        # 4. plain Optimum
        if optimum_tasks:
            with stages("optimum"):
                try:
                    from modelexport.exporter.optimum import plain

                    # on a copy: Optimum's export leaves use_cache=True in T5's encoder config,
                    # and PyTorch's generate then refuses the model
                    warned = plain.export(copy.deepcopy(model), work / "optimum", row.task)
                    # Optimum's own validation: a difference above its tolerance is a warning there too
                    row.optimum = "ok" if not warned else f"ok, validation: {warned[0]}"
                except Exception as e:
                    row.optimum = _first_line(e)
        # 5. modelexport
        with stages("modelexport"):
            import modelexport

            try:
                result = modelexport.export(str(work / "model"), work / "modelexport")
                row.modelexport = "ok"
            except Exception as e:
                row.modelexport = _first_line(e)
                return _finish(stages)
        with stages("check"):
            try:
                measure(row, result, model, work / "modelexport")
            except Exception as e:
                row.modelexport = f"ok, but the check failed: {_first_line(e)}"
        with stages("load"):
            run_loaders(row, model, example, work / "modelexport")
        if _generates(row, model):
            with stages("generate"):
                run_generate(row, model, example, work / "modelexport", generate_tokens, optimum)
        else:
            row.generate = row.generate_optimum = "not run: not a generative head"
    return _finish(stages)


def _finish(stages: _Stages) -> BreadthRow:
    stages.row.stage = "done"
    stages.save()
    return stages.row


def call_kwargs(model) -> dict:
    """What the example is called with besides its tensors: no cache returned (as the issue's
    measurement and the generic path's own checks), when forward takes the switch."""
    from modelexport.exporter.generic.inputs import forward_parameters

    return {"use_cache": False} if "use_cache" in forward_parameters(model) else {}


def generic_example(model, task: str, batch: int = 2, sequence: int = 7) -> dict:
    """modelexport's own example inputs for the model (no tokenizer or processor), as the export
    makes them (one decoder token for a decoder that takes one at a time)."""
    import torch

    from modelexport.exporter.generic.export import takes_one_decoder_token
    from modelexport.exporter.generic.inputs import InputBuilder, Preprocessors

    builder = InputBuilder(model, task, Preprocessors(None))
    example = builder.build(batch=batch, sequence=sequence)
    if "decoder_input_ids" in example.inputs:
        with torch.no_grad():
            if takes_one_decoder_token(model, example, model(**example.inputs, **call_kwargs(model)),
                                       call_kwargs(model)):
                builder.decoder_tokens = None
                example = builder.build(batch=batch, sequence=sequence)
    return dict(example.inputs)


def _tensor_leaves(output) -> list:
    import torch
    from torch.utils import _pytree

    return [x for x in _pytree.tree_leaves(output) if isinstance(x, torch.Tensor)]


def run_anchor(row: BreadthRow, model, example: dict, reference, path: Path) -> None:
    """``torch.onnx.export(model, (), kwargs=example, dynamo=True)``: no wrapper, no patches, no
    tags, static shapes; then the file in ONNX Runtime against PyTorch's outputs."""
    import numpy as np
    import torch

    from modelexport.exporter.dynamo_trace import export_error_summary

    try:
        with torch.no_grad():
            program = torch.onnx.export(model, (), kwargs={**example, **call_kwargs(model)}, dynamo=True,
                                        verbose=False)
        program.save(str(path))
        del program
        row.anchor = "ok"
    except Exception as e:
        row.anchor = f"{type(e).__name__}: {export_error_summary(e)}"[:300]
        row.anchor_ort = "not run: anchor fails"
        return
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        leaves = [v for v in example.values()]
        feed = {n: (example[n] if n in example else leaves[i]).numpy() for i, n in enumerate(names)}
        got = session.run(None, feed)
        expected = [t.detach().float().numpy() for t in _tensor_leaves(reference)]
        if len(got) != len(expected):
            row.anchor_ort = f"ran; {len(got)} outputs against PyTorch's {len(expected)}: not compared"
            return
        worst = 0.0
        for ref, value in zip(expected, got):
            if ref.shape != value.shape:
                row.anchor_ort = f"ran; output shape {list(value.shape)} against PyTorch's {list(ref.shape)}"
                return
            if ref.size:
                diff = float(np.max(np.abs(ref - value.astype(np.float32)))) if ref.size else 0.0
                scale = float(np.max(np.abs(ref))) if np.isfinite(ref).all() else 0.0
                if not np.isfinite(diff) or diff > 1e-4 + 1e-4 * scale:
                    row.anchor_ort = f"ran; differs from PyTorch by {diff:.2g} (values up to {scale:.2g})"
                    return
                worst = max(worst, diff)
        row.anchor_ort = f"ok ({worst:.1e})"
    except Exception as e:
        row.anchor_ort = "ONNX Runtime: " + _first_line(e)


def measure(row: BreadthRow, result, model, out: Path) -> None:
    """Path, coverage, the parameter oracle and validation of a modelexport folder."""
    from modelexport.hierarchy.tags import read_tags

    meta = json.loads((out / "modelexport_metadata.json").read_text(encoding="utf-8"))
    row.exporter = meta.get("exporter")
    row.exporter_reason = meta.get("exporter_reason")
    row.exported_task = meta.get("task")
    generic = meta.get("generic") or {}
    row.layout = generic.get("layout")
    row.patches = sorted({p["name"] for p in (generic or meta.get("optimum") or {}).get("patches", [])})
    owners = parameter_owners_by_value(model)
    classes = {p: type(m).__name__ for p, m in model.named_modules()}
    passed = []
    for f in result.files:
        row.files.append(f.name)
        c = f.coverage
        row.nodes += c["nodes"]
        row.direct += c["direct"]
        row.inferred += c["inferred"]
        row.root_fallback += c["root_fallback"]
        row.partial += c.get("partial_scope", 0)
        row.untagged += sum(t.module_path is None for t in read_tags(out / f.name))
        checked, bad = oracle_violations(out / f.name, owners, classes)
        row.oracle_checked += checked
        row.oracle_violations += bad
        if f.validation:
            diff = f.validation.get("max_abs_diff")
            if diff is not None:
                row.max_abs_diff = diff if row.max_abs_diff is None else max(row.max_abs_diff, diff)
            passed.append(bool(f.validation.get("passed")))
            if not f.validation.get("passed") and row.validation_problem is None:
                row.validation_problem = f"{f.name}: {_validation_problem(f.validation)}"
    row.validation_passed = all(passed) if passed else None
    row.ort_model_class = result.ort_model_class


def _validation_problem(validation: dict) -> str:
    for key in ("errors", "shape_mismatches", "nonfinite", "above_tolerance"):
        items = validation.get(key) or []
        if items:
            label = {"errors": "", "shape_mismatches": "shape ", "nonfinite": "non-finite ",
                     "above_tolerance": "above tolerance "}[key]
            return f"{label}{items[0]}"[:240]
    diff = validation.get("max_abs_diff")
    return f"max |diff| {diff:.3g}" if isinstance(diff, float) else "did not pass"


def _graph_inputs(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def _compare_outputs(reference, got: dict) -> str:
    """Outputs of a loader against PyTorch's, by name (the names both have)."""
    import numpy as np

    items = reference.items() if hasattr(reference, "items") else []
    compared, worst = 0, 0.0
    for name, value in items:
        if name not in got or not hasattr(value, "detach"):
            continue
        ref = value.detach().float().numpy()
        mine = np.asarray(got[name], dtype=np.float32)
        if ref.shape != mine.shape:
            return f"ran; {name} has shape {list(mine.shape)} against PyTorch's {list(ref.shape)}"
        diff = float(np.max(np.abs(ref - mine))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size and np.isfinite(ref).all() else 0.0
        if not np.isfinite(diff) or diff > 1e-4 + 1e-4 * scale:
            return f"ran; {name} differs from PyTorch by {diff:.2g} (values up to {scale:.2g})"
        worst = max(worst, diff)
        compared += 1
    return f"ok ({worst:.1e})" if compared else "ok (ran; no output named as PyTorch's to compare)"


def _through_ties(verdict: str, path: Path, feed: dict, model, example: dict, got: dict) -> str:
    """A loader's outputs that differ from PyTorch's, compared again with ONNX Runtime's choice
    among top-k candidates tied at float precision replayed in PyTorch (``runtime.topk_ties``, as
    the export's validation does); the verdict says when that is what made them agree."""
    import numpy as np
    import torch

    from modelexport.runtime.topk_ties import replayed_run

    if not verdict.startswith("ran;") or " differs " not in verdict:
        return verdict
    try:
        replay = replayed_run(path, [], {k: np.asarray(v) for k, v in feed.items()},
                              lambda: model(**example, **call_kwargs(model)), 1e-4, 1e-4, optimization="all")
    except Exception:  # noqa: BLE001  (inputs the loader makes itself: no replay, the verdict stands)
        return verdict
    if replay is None or not replay[2].complete:
        return verdict
    with torch.no_grad():
        again = _compare_outputs(replay[1], got)
    return f"{again}; ONNX Runtime's choice among tied top-k candidates replayed" if again.startswith("ok") else verdict


def _fill_missing(path: Path, feed: dict, example: dict, made: tuple[str, ...] = (), config=None) -> list[str]:
    """Zeros for the inputs an Optimum-config graph takes that InputBuilder does not make
    (Longformer's global_attention_mask): the sizes the file declares where static, named axes
    sized as the example's batch and sequence, an axis named as a config attribute (Optimum's
    ``max_depth``, ``visual_embedding_dim``) as the config says, others 4; names starting with one
    of ``made`` are left to the loader. Returns the names filled."""
    import onnx
    import torch

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    reference = next(iter(example.values()))
    batch, sequence = reference.shape[0], (reference.shape[1] if reference.ndim > 1 else 7)
    filled = []
    for value in graph.input:
        if value.name in feed or value.name in initializers or value.name.startswith(made):
            continue
        dims = []
        for d in value.type.tensor_type.shape.dim:
            if d.dim_value:
                dims.append(d.dim_value)
            elif "batch" in d.dim_param:
                dims.append(batch)
            elif "sequence" in d.dim_param:
                dims.append(sequence)
            elif isinstance(getattr(config, d.dim_param, None), int) and getattr(config, d.dim_param) > 0:
                dims.append(getattr(config, d.dim_param))
            else:
                dims.append(4)
        dtype = torch.float32 if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT else torch.long
        feed[value.name] = torch.zeros(dims, dtype=dtype)
        filled.append(value.name)
    return filled


def run_loaders(row: BreadthRow, model, example: dict | None, out: Path) -> None:
    """``modelexport.load(out)`` run on the example (everywhere) and Optimum's ORTModel class the
    metadata names, loaded and run (where Optimum is installed)."""
    import torch

    import modelexport

    if example is None:
        row.load_run = row.ort_load = "not run: InputBuilder made no example"
        return
    reference = None
    try:
        with torch.no_grad():
            reference = model(**example, **call_kwargs(model))
    except Exception:  # noqa: BLE001  (no reference: the loader is only run)
        reference = None
    try:
        loaded = modelexport.load(out)
        if loaded.layout == "seq2seq":
            names = _graph_inputs(out / "encoder_model.onnx")
            got = loaded(**{k: v.numpy() for k, v in example.items() if k in names})
            row.load_run = "ok (encoder ran; decoders run in generate)"
        else:
            names = _graph_inputs(loaded.main_file().path)
            feed = {k: v for k, v in example.items() if k in names}
            # the past, positions and token types are modelexport.load's to make (as transformers would)
            filled = _fill_missing(loaded.main_file().path, feed, example,
                                   made=("past_key_values.", "position_ids", "token_type_ids", "attention_mask"),
                                   config=model.config)
            got = loaded(**{k: v.numpy() for k, v in feed.items()})
            row.load_run = _compare_outputs(reference, got) if reference is not None and not filled else "ok (ran)"
            row.load_run = _through_ties(row.load_run, loaded.main_file().path, feed, model, example, got)
            if filled:
                row.load_run += f"; inputs InputBuilder does not make, given as zeros: {', '.join(filled)}"
    except Exception as e:
        row.load_run = _first_line(e)
    if not has_optimum():
        row.ort_load = "not run: Optimum is not installed"
        return
    if not row.ort_model_class:
        row.ort_load = "no ORTModel class for the task"
        return
    try:
        from modelexport.exporter.optimum.ort_class import load_ort_model

        ort_model = load_ort_model(out, row.ort_model_class)
    except Exception as e:
        row.ort_load = f"load: {_first_line(e)}"
        return
    if row.ort_model_class in ("ORTModelForCausalLM", "ORTModelForSeq2SeqLM", "ORTModelForSpeechSeq2Seq",
                               "ORTModelForVision2Seq"):
        row.ort_load = "ok (loads; runs in generate)"
        return
    try:
        files = sorted(out.glob("*.onnx"))
        names = _graph_inputs(files[0]) if len(files) == 1 else list(example)
        feed = {k: v for k, v in example.items() if k in names}
        filled = _fill_missing(files[0], feed, example, config=model.config) if len(files) == 1 else []
        with torch.no_grad():
            got = ort_model(**feed)
        got = {k: v for k, v in got.items()} if hasattr(got, "items") else {}
        row.ort_load = _compare_outputs(reference, got) if reference is not None and not filled else "ok (ran)"
        if len(files) == 1:
            row.ort_load = _through_ties(row.ort_load, files[0], feed, model, example, got)
        if filled:  # PyTorch did not see these inputs: only whether the class runs the folder
            row.ort_load += f"; inputs InputBuilder does not make, given as zeros: {', '.join(filled)}"
    except Exception as e:
        row.ort_load = f"loads; run: {_first_line(e)}"


def _generates(row: BreadthRow, model) -> bool:
    """A head that generates (causal LM, encoder-decoder, vision-language), exported."""
    task = (row.exported_task or row.task or "").replace("-with-past", "")
    can = getattr(model, "can_generate", lambda: False)()
    return bool(can and task in GENERATIVE_TASKS and row.modelexport.startswith("ok"))


def _generation_inputs(model, example: dict) -> dict:
    """The example's inputs that ``generate`` takes: the prompt (or the encoder's input) and the
    other modalities; the decoder's own ids are generate's to make."""
    return {k: v for k, v in example.items() if not k.startswith("decoder_")}


def run_generate(row: BreadthRow, model, example: dict | None, out: Path, tokens: int, optimum: bool) -> None:
    """Greedy ``generate`` of PyTorch against ``modelexport.load(out).generate`` (and Optimum's
    class's ``generate`` where Optimum is installed): tokens equal."""
    import numpy as np
    import torch

    import modelexport

    if example is None:
        row.generate = row.generate_optimum = "not run: InputBuilder made no example"
        return
    inputs = _generation_inputs(model, example)
    options = dict(max_new_tokens=tokens, do_sample=False)
    try:
        with torch.no_grad():
            expected = model.generate(**inputs, **options).numpy()
    except Exception as e:
        row.generate = row.generate_optimum = f"not run: PyTorch generate fails: {_first_line(e)}"
        return

    def verdict(got) -> str:
        got = np.asarray(got)
        if got.shape != expected.shape:
            return f"differs: shape {list(got.shape)} against PyTorch's {list(expected.shape)}"
        if not np.array_equal(got, expected):
            first = int(np.argwhere(got != expected)[0][1])
            return f"differs from position {first} of {expected.shape[1]}"
        return f"equal ({expected.shape[1]} tokens)"

    try:
        loaded = modelexport.load(out)
        ids = inputs.get("input_ids")
        mask = inputs.get("attention_mask")
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        row.generate = verdict(loaded.generate(ids, mask, **extra, **options))
    except Exception as e:
        row.generate = _first_line(e)
    if not optimum or not row.ort_model_class or row.ort_load.startswith("load:"):
        row.generate_optimum = "not run" if not optimum else f"not run: {row.ort_load}"
        return
    from modelexport.exporter.optimum.plain import ort_model_class

    cls = ort_model_class(row.ort_model_class)
    if cls is None or not hasattr(cls, "generate"):
        row.generate_optimum = f"not run: {row.ort_model_class} does not generate"
        return
    try:
        ort_model = cls.from_pretrained(out)
        with torch.no_grad():
            row.generate_optimum = verdict(ort_model.generate(**inputs, **options).numpy())
    except Exception as e:
        row.generate_optimum = _first_line(e)


# -- judging a row (its JSON dict) ---------------------------------------------------------------
def ok(text) -> bool:
    return isinstance(text, str) and text.startswith("ok")


def loader_runs(row: dict) -> bool:
    """A loader runs the folder: Optimum's class (4.57) where the metadata names one it has, else
    ``modelexport.load``; for generative heads, ``generate`` running counts as running."""
    runs = [row.get("load_run")]
    if row.get("ort_load") not in (None, "not run") and not str(row.get("ort_load")).startswith("not run"):
        runs.append(row.get("ort_load"))
    gen = [row.get("generate"), row.get("generate_optimum")]
    return any(ok(r) for r in runs) or any(isinstance(g, str) and g.startswith("equal") for g in gen)


def is_clean(row: dict) -> bool:
    return (ok(row.get("modelexport")) and row.get("modelexport") == "ok" and row.get("untagged", 0) == 0
            and row.get("root_fallback", 0) == 0 and not row.get("oracle_violations")
            and row.get("validation_passed") is not False and loader_runs(row))


def problems(row: dict) -> list[str]:
    """Every failure of the row, in stage order, one line each."""
    out = []
    if row.get("timed_out"):
        out.append(row["timed_out"])
    if row.get("died"):
        out.append(row["died"])
    build = row.get("build", "not run")
    if not ok(build):
        return out + [f"build: {build}"]
    for name in ("forward", "anchor"):
        value = row.get(name, "")
        if not ok(value) and not value.startswith("not run"):
            out.append(f"{name}: {value}")
    anchor_ort = row.get("anchor_ort", "")
    if ok(row.get("anchor")) and not ok(anchor_ort):
        out.append(f"anchor in ONNX Runtime: {anchor_ort}")
    optimum = row.get("optimum", "")
    if row.get("optimum_config") and not ok(optimum) and not optimum.startswith("not run"):
        out.append(f"Optimum: {optimum}")
    me = row.get("modelexport", "")
    if not ok(me):
        out.append(f"modelexport: {me}")
        return out
    if me != "ok":
        out.append(f"modelexport: {me}")
    if row.get("untagged"):
        out.append(f"{row['untagged']} nodes untagged")
    if row.get("root_fallback"):
        out.append(f"{row['root_fallback']} nodes at the root by fallback")
    if row.get("oracle_violations"):
        out.append(f"{len(row['oracle_violations'])} parameter-oracle violations ({row['oracle_violations'][0]})")
    if row.get("validation_passed") is False:
        out.append(f"validation: {row.get('validation_problem')}")
    if not loader_runs(row):
        out.append(f"loader: {row.get('ort_load') if row.get('ort_load', 'not run') != 'not run' else ''} "
                   f"{'' if ok(row.get('load_run')) else 'modelexport.load: ' + str(row.get('load_run'))}".strip())
    elif row.get("ort_model_class") and not ok(row.get("ort_load")) and \
            not str(row.get("ort_load", "")).startswith("not run"):
        out.append(f"{row['ort_model_class']}: {row['ort_load']}")
    for name, label in (("generate", "generate (modelexport.load)"), ("generate_optimum", "generate (Optimum)")):
        value = row.get(name, "not run")
        if not value.startswith(("equal", "not run")):
            out.append(f"{label}: {value}")
    return out


@contextlib.contextmanager
def _quiet_prints():
    """torch.onnx's progress prints go to stdout: swallowed (the table wants the rows)."""
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _first_line(e: BaseException) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(lines) > 1 and (first.endswith((":", "indices")) or len(first) < 40):  # the detail is on the next line
        first = f"{first} {lines[1]}"
    return f"{type(e).__name__}: {first}"[:300]


def run_worker(model_type: str, work: str, out: str, optimum: bool | None = None) -> None:
    """A worker process's entry (scripts/breadth_table.py): the row saved to ``out``, stdout and
    stderr (library prints) to ``work``/log.txt."""
    import sys

    work_path, out_path = Path(work), Path(out)
    log = open(work_path / "log.txt", "w", encoding="utf-8")  # noqa: SIM115  (for the process's life)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    try:  # a runaway type fails with MemoryError instead of taking the machine's memory
        import resource

        limit = int(os.environ.get("BREADTH_MEMORY_LIMIT_GB", "8")) * 2 ** 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:  # noqa: BLE001
        pass
    check_model_type(model_type, work_path, optimum=optimum, save=out_path)


def main(argv: list[str]) -> int:
    """``python -m modelexport.testing.breadth MODEL_TYPE WORKDIR OUT.json``: one row."""
    model_type, work, out = argv[0], Path(argv[1]), Path(argv[2])
    work.mkdir(parents=True, exist_ok=True)
    row = check_model_type(model_type, work, save=out)
    print(json.dumps(row.as_dict(), indent=1))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
