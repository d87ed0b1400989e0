"""Example inputs for the export that needs no Optimum config, built from the model itself.

What ``forward`` takes (its signature), sized by the config (vocabulary, image size, channels,
mel bins) and, where the folder has them, made by its own preprocessors: the tokenizer on sample
sentences, the processor on a generated image with its image token (so that ``pixel_values``,
``image_grid_thw`` and the image tokens in ``input_ids`` fit together), the feature extractor on
generated audio. Sizes are distinct primes-ish (batch 2, sequence 7, ...) because torch.export
gives dims of equal example size one symbol.

Each input carries its dynamic axes, named as Optimum names them (``batch_size``,
``sequence_length``, ``height``...); inputs a processor made whose layout we do not know keep
every axis but the batch static, and the metadata says so.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

from modelexport.errors import ModelExportError

SAMPLE_TEXTS = ("Hello world, this is a sample sentence for the export.",
                "A second sentence, a little longer than the first one, to fill the batch.",
                "Short third.", "And a fourth one.")
# Inputs of these names are built when forward takes them, and so are the text's companions whose
# sizes the config gives (MarkupLM's XPaths, VisualBERT's region features); any other parameter
# with a default is left to its default (labels, output_attentions, head_mask, ...).
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "bbox")
MAIN_AUDIO_INPUTS = ("input_values", "input_features")
# forward arguments a model draws random noise for when not given: the torch function it draws with
NOISE_ARGUMENTS = {"noise": "rand", "noise_sequence": "randn"}


@dataclass
class Example:
    inputs: dict  # name -> torch.Tensor, in forward's order
    axes: dict[str, dict[int, str]]  # name -> {axis: Optimum-style axis name}
    notes: list[str] = field(default_factory=list)  # what made the inputs, in words

    def shapes(self) -> dict[str, list[int]]:
        return {k: list(v.shape) for k, v in self.inputs.items()}


def forward_parameters(model) -> dict[str, inspect.Parameter]:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {k: p for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _config_value(config, *names, default=None):
    """The first of ``names`` set on the config or on its vision / text / audio sub-configs."""
    scopes = [config] + [getattr(config, sub, None) for sub in
                         ("vision_config", "text_config", "audio_config", "encoder", "backbone_config")]
    for name in names:
        for scope in scopes:
            value = getattr(scope, name, None) if scope is not None else None
            if value is not None:
                return value
    return default


def _special_ids(config) -> set[int]:
    ids = set()
    for scope in (config, getattr(config, "text_config", None)):
        for key in ("image_token_id", "image_token_index", "video_token_id", "audio_token_id", "pad_token_id",
                    "boi_token_id", "eoi_token_id", "vision_start_token_id", "vision_end_token_id"):
            value = getattr(scope, key, None) if scope is not None else None
            if isinstance(value, int):
                ids.add(value)
    return ids


class Preprocessors:
    """The folder's own tokenizer / image processor / feature extractor / processor, each loaded
    only when asked for; None where the folder has none."""

    def __init__(self, folder: Path | None, trust_remote_code: bool = False):
        self.folder = folder
        self.trust_remote_code = trust_remote_code
        self._cache: dict[str, object] = {}

    def _load(self, kind: str):
        if kind in self._cache:
            return self._cache[kind]
        obj = None
        if self.folder is not None:
            import transformers

            loader = getattr(transformers, {"tokenizer": "AutoTokenizer", "image_processor": "AutoImageProcessor",
                                            "feature_extractor": "AutoFeatureExtractor",
                                            "processor": "AutoProcessor"}[kind])
            try:
                obj = loader.from_pretrained(str(self.folder), trust_remote_code=self.trust_remote_code)
            except Exception:  # "this folder has none" takes many exception types in transformers
                obj = None
        self._cache[kind] = obj
        return obj

    @property
    def tokenizer(self):
        from modelexport.folder.side_files import has_tokenizer_files

        if self.folder is not None and not has_tokenizer_files(self.folder):
            return None  # transformers 5 would make an empty default one: not the model's
        return self._load("tokenizer")

    @property
    def image_processor(self):
        return self._load("image_processor")

    @property
    def feature_extractor(self):
        return self._load("feature_extractor")

    @property
    def processor(self):
        """A processor that combines parts (text and image/audio), not a bare tokenizer."""
        proc = self._load("processor")
        if proc is None or not (hasattr(proc, "image_processor") or hasattr(proc, "feature_extractor")):
            return None
        return proc if hasattr(proc, "tokenizer") else None


def _generated_images(count: int, size: int = 64):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def _generated_audio(count: int, seconds: float, rate: int):
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    return [(0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
            for i in range(count)]


def _image_token(processor) -> str | None:
    token = getattr(processor, "image_token", None)
    if isinstance(token, str):
        return token
    tokenizer = getattr(processor, "tokenizer", None)
    for candidate in ("<image>", "<|image_pad|>", "<start_of_image>", "<|image|>", "<fake_token_around_image>"):
        if tokenizer is not None and candidate in tokenizer.get_vocab():
            return candidate
    return None


class InputBuilder:
    """Builds ``Example``s of a given batch and sequence size for one model and task."""

    def __init__(self, model, task: str, preprocessors: Preprocessors, sizes: dict[str, int] | None = None,
                 config=None):
        """``sizes``: fixed sizes by Optimum's dummy-shape names (height, width, num_channels,
        audio_sequence_length, nb_max_frames) for ``--static-shapes``. ``config``: the model's
        config when ``model`` is a part without one (an encoder)."""
        self.model = model
        self.sizes = dict(sizes or {})
        self.task = task.replace("-with-past", "")
        self.config = config if config is not None else model.config
        self.params = forward_parameters(model)
        self.pre = preprocessors
        # decoder tokens per example; None once the model is found to take one token at a time
        # (see ``export.takes_one_decoder_token``): then one, on a fixed axis
        self.decoder_tokens: int | None = 5

    # -- modalities -------------------------------------------------------------------------
    def takes(self, name: str) -> bool:
        return name in self.params

    def _vocab(self) -> int:
        return int(_config_value(self.config, "vocab_size", default=100) or 100)

    def _ids(self, *shape):
        import torch

        high = max(4, min(self._vocab(), 512))
        ids = torch.randint(3, high, shape, generator=torch.Generator().manual_seed(sum(shape)))
        for special in _special_ids(self.config):
            ids[ids == special] = 3 if special != 3 else 4
        return ids

    # -- builders ---------------------------------------------------------------------------
    def build(self, batch: int = 2, sequence: int = 7) -> Example:
        import torch

        inputs: dict = {}
        axes: dict[str, dict[int, str]] = {}
        notes: list[str] = []
        made_by_processor = self._from_processor(sequence, inputs, axes, notes) or \
            self._image_tokens_from_the_model(sequence, inputs, axes, notes)
        if not made_by_processor:
            self._text(batch, sequence, inputs, axes, notes)
            self._xpaths(inputs, axes, notes)
            self._visual_features(inputs, axes, notes)
            self._vision(batch, inputs, axes, notes)
            self._audio(batch, inputs, axes, notes)
        if self.takes("decoder_input_ids") and "decoder_input_ids" not in inputs:
            start = getattr(self.config, "decoder_start_token_id", None)
            start = start if isinstance(start, int) else 0
            tokens = self.decoder_tokens or 1
            inputs["decoder_input_ids"] = torch.full((batch, tokens), start, dtype=torch.long)
            inputs["decoder_input_ids"][:, 1:] = self._ids(batch, tokens - 1)
            axes["decoder_input_ids"] = {0: "batch_size", 1: "decoder_sequence_length"} if self.decoder_tokens \
                else {0: "batch_size"}
        for name in NOISE_ARGUMENTS:
            if self.takes(name) and name not in inputs and inputs:
                self._noise(name, inputs, axes, notes)
        missing = [name for name, p in self.params.items() if p.default is inspect.Parameter.empty
                   and name not in inputs]
        if missing:
            raise ModelExportError(
                f"cannot build example input(s) {', '.join(missing)} for {type(self.model).__name__} from its config; "
                "export from a folder that holds the model's processor")
        ordered = {name: inputs[name] for name in self.params if name in inputs}
        return Example(ordered, {k: v for k, v in axes.items() if k in ordered}, notes)

    def _noise(self, name: str, inputs, axes, notes) -> None:
        """A model that draws random noise in forward unless given it (ViT-MAE's random masking:
        ``noise``, uniform; UnivNet's vocoder input: ``noise_sequence``, normal) gets it as an
        input: traced, its own draw would be one fixed tensor (or, with a generator, an op no
        exporter has), and no two runs (PyTorch's validation included) would agree. Its shape is
        the one the model draws: found by running forward once and watching the draw; an axis of
        the size of another input's named axis is named alike (UnivNet's spectrogram length)."""
        import torch

        draw = NOISE_ARGUMENTS[name]
        drawn: list[tuple[int, ...]] = []
        real = getattr(torch, draw)

        def watched(*size, **kwargs):
            shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
            drawn.append(tuple(int(d) for d in shape))
            return real(*size, **kwargs)

        setattr(torch, draw, watched)
        try:
            with torch.no_grad():
                self.model(**inputs)
        except Exception:  # the export's own forward will say what is wrong
            return
        finally:
            setattr(torch, draw, real)
        if not drawn:
            return  # this configuration does not draw (Hiera outside MAE pre-training)
        inputs[name] = real(drawn[0], generator=torch.Generator().manual_seed(2))
        named = {inputs[k].shape[i]: axis for k, a in axes.items() for i, axis in a.items() if i > 0}
        axes[name] = {0: "batch_size", **{i: named[d] for i, d in enumerate(drawn[0]) if i > 0 and d in named}}
        per_example = ", ".join(str(named.get(d, d)) for d in drawn[0][1:])
        notes.append(f"{name}: the {'uniform' if draw == 'rand' else 'normal'} noise the model draws in forward, "
                     f"as an input of shape (batch, {per_example}) (feed torch.{draw} of that shape, or your own)")

    def _text(self, batch, sequence, inputs, axes, notes) -> None:
        import torch

        if not self.takes("input_ids"):
            return
        shape = (batch, sequence)
        if self.task == "multiple-choice":
            shape = (batch, 3, sequence)
        tokenizer = self.pre.tokenizer
        encoded = None
        if tokenizer is not None and self.task != "multiple-choice":
            try:
                if tokenizer.pad_token is None and tokenizer.eos_token is not None:
                    tokenizer.pad_token = tokenizer.eos_token
                texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(batch)]
                encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=sequence,
                                    return_tensors="pt")
                notes.append("text inputs: the folder's tokenizer on sample sentences")
            except Exception:  # a tokenizer that cannot pad or truncate: generated ids instead
                encoded = None
        if encoded is not None and tuple(encoded["input_ids"].shape) == shape:
            for name in TEXT_INPUTS:
                if name in encoded and self.takes(name):
                    inputs[name] = encoded[name].long()
        else:
            inputs["input_ids"] = self._ids(*shape)
            notes.append("text inputs: generated token ids (the folder has no tokenizer)")
        names = ("batch_size", "num_choices", "sequence_length") if len(shape) == 3 else ("batch_size", "sequence_length")
        for name in TEXT_INPUTS:
            if not self.takes(name):
                continue
            if name not in inputs:
                if name == "attention_mask":
                    inputs[name] = torch.ones(shape, dtype=torch.long)
                elif name == "token_type_ids":
                    if int(getattr(self.config, "type_vocab_size", 0) or 0) < 1:
                        continue
                    inputs[name] = torch.zeros(shape, dtype=torch.long)
                elif name == "bbox":
                    inputs[name] = torch.zeros((*shape, 4), dtype=torch.long)
            axes[name] = dict(enumerate(names))

    def _xpaths(self, inputs, axes, notes) -> None:
        """MarkupLM's ``xpath_tags_seq`` / ``xpath_subs_seq``: per token, the tag and subscript ids
        of its XPath, ``config.max_depth`` units padded with ``tag_pad_id`` / ``subs_pad_id`` (what
        its feature extractor and tokenizer make). Left to forward's default, every token's XPath
        is padding and the graph takes no XPath at all; made by Optimum's config (its
        DummyXPathSeqInputGenerator), the file takes them, depth included. The depth stays static:
        forward has one embedding table per depth unit (``range(config.max_depth)``)."""
        import torch

        ids = inputs.get("input_ids")
        depth = _config_value(self.config, "max_depth")  # (depth estimators' max_depth is a distance)
        if ids is None or not (self.takes("xpath_tags_seq") or self.takes("xpath_subs_seq")) \
                or not isinstance(depth, int) or depth < 1:
            return
        generator = torch.Generator().manual_seed(3)
        units = torch.randint(1, min(depth, 4) + 1, (*ids.shape, 1), generator=generator)
        padded = torch.arange(depth) >= units  # units deeper than the token's XPath: padding
        made = []
        for name, pad_key, table_key in (("xpath_tags_seq", "tag_pad_id", "max_xpath_tag_unit_embeddings"),
                                         ("xpath_subs_seq", "subs_pad_id", "max_xpath_subs_unit_embeddings")):
            if not self.takes(name):
                continue
            table = int(_config_value(self.config, table_key, default=0) or 0)
            pad = _config_value(self.config, pad_key)
            pad = pad if isinstance(pad, int) and 0 <= pad < table else table - 1
            if pad < 1:
                continue
            value = torch.randint(0, pad, (*ids.shape, depth), generator=generator)
            inputs[name] = value.masked_fill(padded, pad)
            axes[name] = dict(axes.get("input_ids", {0: "batch_size", 1: "sequence_length"}))
            made.append(name)
        if made:
            notes.append(f"{', '.join(made)}: generated XPaths of 1 to {min(depth, 4)} units per token, padded to "
                         f"max_depth={depth} with the config's pad ids (the depth is fixed by the config)")

    def _visual_features(self, inputs, axes, notes) -> None:
        """VisualBERT's ``visual_embeds`` (region features from an external detector): ``(batch,
        regions, config.visual_embedding_dim)``, with ``visual_attention_mask`` and
        ``visual_token_type_ids`` of ones (forward's own defaults). The regions' axis is
        ``visual_seq_length`` (Optimum's name, and its size under --static-shapes); the width is
        the projection's and stays static."""
        import torch

        ids = inputs.get("input_ids")
        width = _config_value(self.config, "visual_embedding_dim")
        if ids is None or not self.takes("visual_embeds") or not isinstance(width, int) or width < 1:
            return
        # 5: none of the other axes' sizes (2, 3, 7), which torch.export would take for one symbol
        regions = int(self.sizes.get("visual_seq_length", 5))
        prefix = tuple(ids.shape[:-1])
        inputs["visual_embeds"] = torch.randn(*prefix, regions, width, generator=torch.Generator().manual_seed(4))
        names = {a: n for a, n in axes.get("input_ids", {0: "batch_size"}).items() if a < len(prefix)}
        axes["visual_embeds"] = {**names, len(prefix): "visual_seq_length"}
        if self.takes("visual_attention_mask"):
            inputs["visual_attention_mask"] = torch.ones((*prefix, regions), dtype=torch.long)
            axes["visual_attention_mask"] = {**names, len(prefix): "visual_seq_length"}
        types = int(_config_value(self.config, "type_vocab_size", default=0) or 0)
        if self.takes("visual_token_type_ids") and types >= 1:
            inputs["visual_token_type_ids"] = torch.full((*prefix, regions), 1 if types > 1 else 0, dtype=torch.long)
            axes["visual_token_type_ids"] = {**names, len(prefix): "visual_seq_length"}
        notes.append(f"visual_embeds: generated, {regions} region(s) of visual_embedding_dim={width} from the "
                     "config (the model's detector features are not part of the export)")

    def _vision(self, batch, inputs, axes, notes) -> None:
        import torch

        if not self.takes("pixel_values"):
            return
        processor = self.pre.image_processor if not {"height", "width"} & set(self.sizes) else None
        if processor is not None:
            try:
                pixels = processor(images=_generated_images(batch), return_tensors="pt")["pixel_values"]
                if pixels.ndim == 4 and pixels.shape[0] == batch:
                    inputs["pixel_values"] = pixels.float()
                    axes["pixel_values"] = {0: "batch_size", 2: "height", 3: "width"}
                    notes.append("pixel_values: the folder's image processor on generated images")
                    return
            except Exception:  # an image processor that needs more than images: sized from the config
                pass
        channels = int(self.sizes.get("num_channels") or
                       _config_value(self.config, "num_channels", "in_channels", "in_chans", default=3))
        size = _config_value(self.config, "image_size", "img_size", "input_size", default=224)
        height, width = (size[-2], size[-1]) if isinstance(size, (list, tuple)) else (size, size)
        height, width = self.sizes.get("height", height), self.sizes.get("width", width)
        inputs["pixel_values"] = torch.randn(batch, channels, int(height), int(width),
                                             generator=torch.Generator().manual_seed(1))
        axes["pixel_values"] = {0: "batch_size", 2: "height", 3: "width"}
        notes.append(f"pixel_values: generated, {channels}x{height}x{width} from the config")

    def _audio(self, batch, inputs, axes, notes) -> None:
        import torch

        name = next((n for n in MAIN_AUDIO_INPUTS if self.takes(n)), None)
        if name is None:
            return
        extractor = self.pre.feature_extractor or default_feature_extractor(self.config)
        if extractor is not None:
            rate = int(getattr(extractor, "sampling_rate", 16000) or 16000)
            seconds = self.sizes.get("audio_sequence_length", rate) / rate
            try:
                features = extractor(_generated_audio(batch, seconds, rate), sampling_rate=rate, return_tensors="pt")
            except Exception:  # an extractor that wants more than audio: sized from the config below
                features = None
            if features is not None and name in features:
                value = features[name].float()
                inputs[name] = value
                axes[name] = {0: "batch_size", **self._audio_time_axis(extractor, name, value, rate)}
                if "attention_mask" in features and self.takes("attention_mask"):
                    mask = features["attention_mask"].long()
                    inputs["attention_mask"] = mask
                    time = next((n for a, n in axes[name].items() if a and value.shape[a] == mask.shape[-1]), None)
                    axes["attention_mask"] = {0: "batch_size", **({mask.ndim - 1: time} if time else {})}
                source = "the folder's" if self.pre.feature_extractor is not None else "a default"
                notes.append(f"{name}: {source} {type(extractor).__name__} on generated audio")
                return
        if name == "input_values":
            inputs[name] = torch.randn(batch, self.sizes.get("audio_sequence_length", 16000),
                                       generator=torch.Generator().manual_seed(2))
            axes[name] = {0: "batch_size", 1: "sequence_length"}
            notes.append(f"{name}: generated from the config")
            return
        found = self._feature_layout(batch)
        if found is None:
            raise ModelExportError(f"cannot tell the layout of input_features for {type(self.model).__name__} (no "
                                   "feature extractor in the folder, and no width from the config fits); export from "
                                   "a folder that holds the model's feature extractor")
        value, time_axis = found
        inputs[name] = value
        axes[name] = {0: "batch_size", time_axis: "feature_sequence_length"}
        notes.append(f"input_features: generated, {list(value.shape)} (the layout the model's forward accepts; the "
                     "folder has no feature extractor)")

    def _feature_layout(self, batch: int):
        """(input_features, time axis) for a model whose folder has no feature extractor: the
        widths the config names, frames first or features first, the first layout the model's
        forward accepts (a forward in PyTorch per candidate)."""
        import torch

        widths = []
        channels = _config_value(self.config, "input_channels", default=1)
        per_channel = _config_value(self.config, "input_feat_per_channel")
        for width in (_config_value(self.config, "num_mel_bins"), _config_value(self.config, "feature_size"),
                      per_channel * channels if isinstance(per_channel, int) and isinstance(channels, int) else None,
                      _config_value(self.config, "feature_projection_input_dim"), 80, 128):
            if isinstance(width, int) and width > 0 and width not in widths:
                widths.append(width)
        # short clips first: attention over frames grows with their square (Wav2Vec2-BERT's relative
        # position tables at 2 x max_source_positions = 10,000 frames took 22 GB); Whisper-style
        # encoders that require 2 x max_source_positions frames (3,000) are tried after
        sources = _config_value(self.config, "max_source_positions")
        frame_counts = [200] + ([2 * sources] if isinstance(sources, int) and 2 * sources <= 3000 else []) + [3000]
        frame_counts = list(dict.fromkeys(frame_counts))
        generator = torch.Generator().manual_seed(2)
        for frames in frame_counts:
            for width in widths:
                for layout in ((batch, width, frames), (batch, frames, width)):
                    value = torch.randn(*layout, generator=generator)
                    try:
                        with torch.no_grad():
                            self.model(input_features=value)
                    except Exception:  # noqa: BLE001  (not this layout: the next is tried)
                        continue
                    return value, 2 if layout[2] == frames else 1
        return None

    def _image_tokens_from_the_model(self, sequence, inputs, axes, notes) -> bool:
        """A vision-language model without a processor in its folder: one image sized from the
        config, and as many image tokens in the prompt as the model says it has image features
        (its own check names the count: "tokens: 0, features: 36"). Models whose image inputs need
        more than pixels (Qwen2-VL's grid) are left to their processor."""
        import torch

        token = _image_token_id(self.config)
        if token is None or not (self.takes("pixel_values") and self.takes("input_ids")) or self.pre.processor:
            return False
        pixels: dict = {}
        self._vision(1, pixels, {}, [])
        text = self._ids(1, 6 + sequence % 3)
        mask_name = "attention_mask" if self.takes("attention_mask") else None

        def attempt(count: int):
            ids = torch.cat([torch.full((1, count), token, dtype=torch.long), text], dim=1)
            feed = {"input_ids": ids, **pixels}
            if mask_name:
                feed[mask_name] = torch.ones_like(ids)
            if self.takes("token_type_ids"):
                # what the processors of such models give a prompt without a suffix (PaliGemma:
                # 0 = the prefix, attended both ways). Left out, the graph has no way to say it:
                # transformers 5's PaliGemma then attends both ways in eager PyTorch and causally
                # in the trace (0.097 apart in the logits)
                feed["token_type_ids"] = torch.zeros_like(ids)
            with torch.no_grad():
                self.model(**feed)
            return feed

        try:
            feed = attempt(1)
        except Exception as e:  # noqa: BLE001  (the model's own check tells how many image tokens it wants)
            counts = _FEATURE_COUNT.findall(str(e))
            if not counts:
                return False
            # the check counts features in tokens, or (transformers 5) in values of the text's width
            width = _config_value(self.config, "hidden_size", default=1)
            for count in dict.fromkeys((int(counts[-1]), int(counts[-1]) // max(int(width), 1))):
                try:
                    feed = attempt(count)
                    break
                except Exception:  # noqa: BLE001  (not this count: the next, else left to a processor)
                    continue
            else:
                return False
        inputs.update(feed)
        for name in ("input_ids", mask_name, "token_type_ids"):
            if name in feed:
                axes[name] = {1: "sequence_length"}
        count = int((feed["input_ids"] == token).sum())
        notes.append(f"inputs: one image sized from the config and a prompt of {count} image token(s), the count "
                     "the model's own check asks for (the folder has no processor); the text's length varies")
        return True

    @staticmethod
    def _audio_time_axis(extractor, name: str, value, rate: int) -> dict[int, str]:
        """The axis that follows the clip's length: the one that changes when the extractor is
        given a shorter clip (frames are axis 1 for some extractors, axis 2 for others). Raw
        audio is [batch, samples] (Wav2Vec2) or [batch, channels, samples] (DAC, EnCodec,
        PE-Audio, OmniASR): declaring the channels axis dynamic grows its 1 to 2 for the trace
        (``grow_unit_axes``), an input the model's first conv refuses, and torch.export then
        fails inside the conv's fake kernel ("AssertionError: False != True"). An extractor that
        pads every clip to one length (AST's spectrogram ``input_values``) keeps axis 1."""
        try:
            shorter = extractor(_generated_audio(value.shape[0], 0.6, rate), sampling_rate=rate,
                                return_tensors="pt")[name]
        except Exception:  # noqa: BLE001  (no second call possible: the frames stay as traced)
            return {1: "sequence_length"} if name == "input_values" else {}
        changed = [axis for axis in range(1, value.ndim)
                   if shorter.ndim == value.ndim and shorter.shape[axis] != value.shape[axis]]
        if name == "input_values":
            return {changed[0] if len(changed) == 1 else 1: "sequence_length"}
        return {changed[0]: "feature_sequence_length"} if len(changed) == 1 else {}

    def _from_processor(self, sequence, inputs, axes, notes) -> bool:
        """Multimodal models: the processor on one sample text with its image token and one
        generated image. One prompt and one image per call: the number of image tokens must match
        the image features, and traced vision towers fix the image batch, so only the text's
        length varies (``sequence`` picks the sample text)."""
        processor = self.pre.processor
        takes_image = self.takes("pixel_values") and self.takes("input_ids")
        if processor is None or not takes_image or not hasattr(processor, "image_processor"):
            return False
        token = _image_token(processor)
        if token is None:
            return False
        text = f"{token} {SAMPLE_TEXTS[sequence % len(SAMPLE_TEXTS)]}"
        try:
            encoded = processor(text=[text], images=_generated_images(1), return_tensors="pt", padding=True)
        except Exception as e:  # noqa: BLE001  (reported: the user learns why the processor was not used)
            notes.append(f"the folder's processor failed on a generated sample ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120] if str(e) else ''})")
            return False
        for name, value in encoded.items():
            if name not in self.params or not hasattr(value, "shape"):
                continue
            inputs[name] = value
            if name in ("input_ids", "attention_mask", "token_type_ids"):
                axes[name] = {1: "sequence_length"}
        notes.append(f"inputs: the folder's {type(processor).__name__} on a sample text with its image token "
                     f"{token!r} and a generated image; one prompt and one image per call, the text's length varies")
        return True


_FEATURE_COUNT = re.compile(r"features:? (\d+)")


def _image_token_id(config) -> int | None:
    for scope in (config, getattr(config, "text_config", None)):
        for key in ("image_token_id", "image_token_index"):
            value = getattr(scope, key, None) if scope is not None else None
            if isinstance(value, int):
                return value
    return None


def default_feature_extractor(config):
    """transformers' feature extractor class for the model type, default-constructed (with the
    config's number of mel bins): the layout of ``input_features`` is the extractor's to decide."""
    try:
        import transformers
        from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES
    except ImportError:
        return None
    name = FEATURE_EXTRACTOR_MAPPING_NAMES.get(config.model_type)
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if cls is None:
        return None
    mels = _config_value(config, "num_mel_bins", "input_feat_per_channel")
    for kwargs in (({"feature_size": int(mels)},) if mels else ()) + ({},):
        try:
            return cls(**kwargs)
        except Exception:  # noqa: BLE001  (a constructor that wants files: no default extractor)
            continue
    return None
