"""``modelexport.load(folder)``: run an exported folder with ONNX Runtime alone, no Optimum.

The folder's own preprocessors make the inputs (``preprocess``), the ONNX files run on them
(``__call__``), and generative models generate with their KV cache (``generate``), greedy or
sampling, through transformers' own logits processors and stopping criteria, so the tokens are
those of transformers' ``generate`` on the PyTorch model. Works on every layout the exporters
write: one ``model.onnx`` (with or without a KV cache), and an encoder with decoder files
(``decoder_model.onnx`` + ``decoder_with_past_model.onnx``, or Optimum's merged decoder).

    model = modelexport.load("out/")
    model(**model.preprocess(text=["a sentence"]))          # {"logits": array, ...}
    model.generate(**model.preprocess(text=["Once"]), max_new_tokens=20)   # token ids
    model.embed(["a sentence"])                              # sentence embeddings
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modelexport.errors import ModelExportError

_SEQ2SEQ_FILES = ("encoder_model.onnx", "decoder_model.onnx")
_NUMPY_OF = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(double)": np.float64}


def _numpy(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class _File:
    """One ONNX file and its session (made on first use)."""

    def __init__(self, path: Path):
        self.path = path
        self._session = None

    @property
    def session(self):
        if self._session is None:
            from modelexport.runtime.sessions import new_session

            self._session = new_session(self.path)
        return self._session

    @property
    def inputs(self) -> dict:
        return {i.name: i for i in self.session.get_inputs()}

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict) -> dict[str, np.ndarray]:
        inputs = self.inputs
        missing = sorted(set(inputs) - set(feed))
        if missing:
            raise ModelExportError(f"{self.path.name} needs input(s) {', '.join(missing)}")
        arrays = {}
        for name, spec in inputs.items():
            value = _numpy(feed[name])
            dtype = _NUMPY_OF.get(spec.type)
            arrays[name] = value.astype(dtype) if dtype is not None and value.dtype != dtype else value
        return dict(zip(self.output_names, self.session.run(None, arrays)))


def _past_axis(dims) -> int:
    """The axis of a past input its length runs along: the one whose symbolic name says past
    (``past_sequence_length``), else Optimum's axis 2 of ``[batch, heads, past, head_dim]``."""
    return next((a for a, d in enumerate(dims) if isinstance(d, str) and "past" in d.lower()), 2)


class ExportedModel:
    """An exported folder, ready to run: see the module's docstring."""

    def __init__(self, folder):
        from modelexport.folder.metadata import read_metadata

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ModelExportError(f"no such folder: {self.folder}")
        self.metadata, _ = read_metadata(self.folder)
        names = {p.name for p in self.folder.glob("*.onnx")}
        if not names:
            raise ModelExportError(f"{self.folder} holds no .onnx file")
        self.files = {name: _File(self.folder / name) for name in sorted(names)}
        try:
            self.config_dict = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.config_dict = {}
        self.task = self.metadata.task if self.metadata is not None else None
        if set(_SEQ2SEQ_FILES) <= names or {"encoder_model.onnx", "decoder_model_merged.onnx"} <= names:
            self.layout = "seq2seq"
        elif "model.onnx" in names and any(n.startswith("past_key_values.") for n in self.files["model.onnx"].inputs):
            self.layout = "decoder-with-past"
        else:
            self.layout = "single"
        self._config = None
        self._preprocessors: dict[str, object] = {}

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.folder)!r}, task={self.task!r}, layout={self.layout!r})"

    # -- configuration and preprocessors --------------------------------------------------------
    @property
    def config(self):
        """The folder's transformers config (loaded on first use)."""
        if self._config is None:
            from modelexport.exporter.source import load_config

            self._config = load_config(str(self.folder), False)
        return self._config

    def _preprocessor(self, kind: str):
        if kind not in self._preprocessors:
            import transformers

            from modelexport.folder.side_files import has_tokenizer_files

            if kind == "AutoTokenizer" and not has_tokenizer_files(self.folder):
                self._preprocessors[kind] = None  # transformers 5 would make an empty default one
                return None
            loader = getattr(transformers, kind)
            try:
                self._preprocessors[kind] = loader.from_pretrained(self.folder)
            except Exception:  # noqa: BLE001  ("the folder has none": transformers raises many types)
                self._preprocessors[kind] = None
        return self._preprocessors[kind]

    def preprocess(self, text=None, images=None, audio=None, sampling_rate: int | None = None, **kwargs) -> dict:
        """Inputs for the model from text, images and/or audio, made by the folder's own
        preprocessors (its processor when it combines several), as numpy arrays."""
        if text is None and images is None and audio is None:
            raise ModelExportError("give text, images or audio to preprocess")
        several = sum(x is not None for x in (text, images, audio)) > 1
        processor = self._preprocessor("AutoProcessor") if several else None
        args = {}
        if text is not None:
            args["text"] = text
        if images is not None:
            args["images"] = images
        if audio is not None:
            args["audio"] = audio
        if processor is not None and several:
            out = processor(**args, return_tensors="np", padding=True, **kwargs)
        elif text is not None:
            tokenizer = self._preprocessor("AutoTokenizer")
            if tokenizer is None:
                raise ModelExportError(f"{self.folder} has no tokenizer to turn text into inputs")
            if tokenizer.pad_token is None and tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token
            out = tokenizer(text, return_tensors="np", padding=True, **kwargs)
        elif images is not None:
            processor = self._preprocessor("AutoImageProcessor")
            if processor is None:
                raise ModelExportError(f"{self.folder} has no image processor to turn images into inputs")
            out = processor(images=images, return_tensors="np", **kwargs)
        else:
            extractor = self._preprocessor("AutoFeatureExtractor")
            if extractor is None:
                raise ModelExportError(f"{self.folder} has no feature extractor to turn audio into inputs")
            rate = sampling_rate or getattr(extractor, "sampling_rate", 16000)
            out = extractor(audio, sampling_rate=rate, return_tensors="np", **kwargs)
        return {k: np.asarray(v) for k, v in out.items()}

    # -- running ------------------------------------------------------------------------------
    def main_file(self) -> _File:
        if "model.onnx" in self.files:
            return self.files["model.onnx"]
        if len(self.files) == 1:
            return next(iter(self.files.values()))
        raise ModelExportError(f"{self.folder} holds {len(self.files)} ONNX files; call run(file_name, ...) or "
                               "generate()")

    def run(self, file_name: str, **inputs) -> dict[str, np.ndarray]:
        """One ONNX file of the folder on named inputs (numpy arrays or tensors)."""
        if file_name not in self.files:
            raise ModelExportError(f"{self.folder} has no {file_name} ({', '.join(self.files)})")
        return self.files[file_name].run(self._completed(self.files[file_name], inputs))

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        """The model on named inputs; inputs the graph takes that were not given are made as
        transformers makes them (zero ``token_type_ids``; ``position_ids`` from the mask; an empty
        past for a decoder's first step). Encoder-decoder folders run their encoder here."""
        if self.layout == "seq2seq":
            return self.run("encoder_model.onnx", **inputs)
        f = self.main_file()
        return f.run(self._completed(f, inputs))

    def _completed(self, f: _File, inputs: dict) -> dict:
        feed = {k: _numpy(v) for k, v in inputs.items()}
        specs = f.inputs
        reference = next((feed[k] for k in ("input_ids", "attention_mask") if k in feed), None)
        if "token_type_ids" in specs and "token_type_ids" not in feed and reference is not None:
            feed["token_type_ids"] = np.zeros_like(feed.get("input_ids", reference), dtype=np.int64)
        batch = next(iter(feed.values())).shape[0] if feed else 1
        past_length = 0
        for name, spec in specs.items():
            if not name.startswith("past_key_values."):
                continue
            axis = _past_axis(spec.shape)  # 2 for keys / values, 1 for an indexer's keys
            if name not in feed:
                shape = [0 if a == axis else batch if a == 0 else d for a, d in enumerate(spec.shape)]
                if not all(isinstance(d, int) for d in shape):
                    raise ModelExportError(f"{name} has no fixed head count / head size in {f.path.name}: give the "
                                           "past yourself")
                feed[name] = np.zeros(shape, np.float32)
            elif ".encoder." not in name:
                past_length = feed[name].shape[axis]
        if "attention_mask" in specs and "attention_mask" not in feed and "input_ids" in feed:
            feed["attention_mask"] = np.ones((batch, past_length + feed["input_ids"].shape[1]), np.int64)
        if "position_ids" in specs and "position_ids" not in feed and "attention_mask" in feed:
            mask = feed["attention_mask"].astype(np.int64)
            positions = np.cumsum(mask, -1) - 1
            positions[mask == 0] = 1
            feed["position_ids"] = positions[:, -feed["input_ids"].shape[1]:]
        return feed

    # -- embeddings ----------------------------------------------------------------------------
    def embed(self, texts) -> np.ndarray:
        """Sentence embeddings: the model's ``sentence_embedding`` output where it has one
        (sentence-transformers exports), else ``last_hidden_state`` mean-pooled over real tokens."""
        if isinstance(texts, str):
            texts = [texts]
        inputs = self.preprocess(text=list(texts))
        out = self(**{k: v for k, v in inputs.items() if k in self.main_file().inputs})
        if "sentence_embedding" in out:
            return out["sentence_embedding"]
        hidden = out.get("last_hidden_state", out.get("token_embeddings"))
        if hidden is None:
            raise ModelExportError("the model returns neither sentence embeddings nor hidden states")
        mask = inputs["attention_mask"][..., None].astype(hidden.dtype)
        return (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0)

    def sentence_transformer(self):
        """A ``SentenceTransformer`` whose transformer runs this folder's ONNX file and whose other
        modules (Pooling, Normalize, ...) are the folder's own: for transformers 5, where
        sentence-transformers' ``backend="onnx"`` cannot load (it imports Optimum)."""
        from modelexport.runtime.sentence_transformers_onnx import build_sentence_transformer

        return build_sentence_transformer(self)

    # -- generation ----------------------------------------------------------------------------
    def generate(self, input_ids=None, attention_mask=None, *, seed: int | None = None, **generation_kwargs):
        """Token ids, as transformers' ``generate`` returns them (prompt included for decoders,
        the decoder's ids for encoder-decoders). Greedy by default; ``do_sample=True``,
        ``top_k``, ``temperature``, ... as in transformers; ``seed`` seeds torch's sampler (the
        same seed before ``model.generate`` gives the same tokens). Other inputs of the model
        (``pixel_values``, ``input_features``, ...) are passed by keyword."""
        import torch

        from modelexport.compat import generation_components

        extra = {k: v for k, v in generation_kwargs.items() if k in self._model_input_names()}
        options = {k: v for k, v in generation_kwargs.items() if k not in extra}
        if self.layout == "seq2seq":
            return self._generate_seq2seq(input_ids, attention_mask, extra, options, seed)
        if input_ids is None:
            raise ModelExportError("generate needs input_ids (model.preprocess(text=...) makes them)")
        if "logits" not in self.main_file().output_names:
            raise ModelExportError(f"{self.folder} has no logits output: it does not generate")
        ids = torch.as_tensor(_numpy(input_ids)).long()
        mask = torch.as_tensor(_numpy(attention_mask)).long() if attention_mask is not None else torch.ones_like(ids)
        config, generation_config = self._generation_configs()
        prepared, processors, stopping = generation_components(config, generation_config, ids, **options)
        if seed is not None:
            torch.manual_seed(seed)
        types = self._token_types(extra.pop("token_type_ids", None))
        step = self._cached_step(extra, types) if self.layout == "decoder-with-past" else self._full_step(extra, types)
        return _decode(step, ids, mask, prepared, processors, stopping).numpy()

    def _token_types(self, given):
        """``length -> token_type_ids`` for the prompt's and the generated tokens, as transformers'
        generate extends them: the last column repeated (``GenerationMixin``), or the value the
        model's own override gives generated tokens (``GENERATED_TOKEN_TYPE``); None if not given."""
        if given is None:
            return None
        types = _numpy(given).astype(np.int64)
        model_type = self.config_dict.get("model_type")
        fill = GENERATED_TOKEN_TYPE.get(model_type)

        def upto(length: int) -> np.ndarray:
            missing = length - types.shape[1]
            if missing <= 0:
                return types[:, :length]
            tail = (np.full((types.shape[0], missing), fill, np.int64) if fill is not None
                    else np.repeat(types[:, -1:], missing, axis=1))
            return np.concatenate([types, tail], axis=1)

        return upto

    def _model_input_names(self) -> set[str]:
        return {name for f in self.files.values() for name in f.inputs}

    def _generation_configs(self):
        from transformers import GenerationConfig

        try:
            generation_config = GenerationConfig.from_pretrained(self.folder)
        except (OSError, ValueError):
            generation_config = None
        return self.config, generation_config

    def _cached_step(self, extra: dict, types=None):
        f = self.main_file()
        past_inputs = [n for n in f.inputs if n.startswith("past_key_values.")]

        def step(ids, mask, positions, state):
            import torch

            feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), **extra}
            if types is not None:  # the new tokens' types (the cache holds the earlier ones)
                feed["token_type_ids"] = types(mask.shape[1])[:, -ids.shape[1]:]
            if "position_ids" in f.inputs:
                feed["position_ids"] = positions.numpy()
            if state is not None:
                feed.update(state)
            out = f.run(self._completed(f, feed))
            new_state = {n: out[n.replace("past_key_values.", "present.")] for n in past_inputs}
            return torch.from_numpy(out["logits"]), new_state

        return step

    def _full_step(self, extra: dict, types=None):
        """No cache in the graph: every step runs the whole sequence so far."""
        f = self.main_file()

        def step(ids, mask, positions, previous):
            import torch

            tokens = ids if previous is None else torch.cat([previous["ids"], ids], dim=-1)
            feed = {"input_ids": tokens.numpy(), "attention_mask": mask.numpy(), **extra}
            if types is not None:
                feed["token_type_ids"] = types(tokens.shape[1])
            out = f.run(self._completed(f, {k: v for k, v in feed.items() if k in f.inputs}))
            return torch.from_numpy(out["logits"]), {"ids": tokens}

        return step

    def _generate_seq2seq(self, input_ids, attention_mask, extra: dict, options: dict, seed):
        import torch

        from modelexport.compat import generation_components

        encoder = self.files["encoder_model.onnx"]
        encoder_feed = dict(extra)
        if input_ids is not None:
            encoder_feed["input_ids"] = _numpy(input_ids)
        if attention_mask is not None:
            encoder_feed["attention_mask"] = _numpy(attention_mask)
        if "attention_mask" in encoder.inputs and "attention_mask" not in encoder_feed and "input_ids" in encoder_feed:
            encoder_feed["attention_mask"] = np.ones_like(encoder_feed["input_ids"], dtype=np.int64)
        encoder_feed = {k: v for k, v in encoder_feed.items() if k in encoder.inputs}
        hidden = encoder.run(encoder_feed)["last_hidden_state"]
        batch = hidden.shape[0]
        config, generation_config = self._generation_configs()
        start = options.pop("decoder_start_token_id", None)
        if start is None:
            start = getattr(generation_config, "decoder_start_token_id", None) if generation_config else None
        if start is None:
            start = getattr(config, "decoder_start_token_id", None)
        if start is None:
            raise ModelExportError("the config names no decoder_start_token_id: pass decoder_start_token_id=...")
        prompt = [int(start)]
        # Whisper-style prompts: tokens forced at the first positions (language, task) lead the decoder
        forced = getattr(generation_config, "forced_decoder_ids", None) if generation_config else None
        for position, token in sorted(forced or []):
            if position == len(prompt) and token is not None:
                prompt.append(int(token))
        decoder_ids = torch.tensor([prompt] * batch, dtype=torch.long)
        if forced:
            options.setdefault("forced_decoder_ids", None)
        prepared, processors, stopping = generation_components(config, generation_config, decoder_ids, **options)
        if seed is not None:
            torch.manual_seed(seed)
        encoder_mask = encoder_feed.get("attention_mask")
        first = self.files.get("decoder_model.onnx")
        with_past = self.files.get("decoder_with_past_model.onnx")
        merged = self.files.get("decoder_model_merged.onnx")

        def step(ids, _mask, _positions, state):
            feed = {"input_ids": ids.numpy(), "encoder_hidden_states": hidden}
            if encoder_mask is not None:
                feed["encoder_attention_mask"] = encoder_mask
            if merged is not None:
                f = merged
                feed["use_cache_branch"] = np.array([state is not None])
                feed.update(state or {})
                feed = self._completed(f, feed)
            elif state is None:
                f = first
            else:
                f = with_past
                feed.update(state)
            out = f.run({k: v for k, v in feed.items() if k in f.inputs})
            new_state = dict(state or {})
            for name, value in out.items():
                if name.startswith("present."):
                    if ".encoder." in name and state is not None:
                        continue  # cross-attention keys do not change after the first step
                    new_state[name.replace("present.", "past_key_values.")] = value
            return torch.from_numpy(out["logits"]), new_state

        tokens = _decode(step, decoder_ids, torch.ones_like(decoder_ids), prepared, processors, stopping).numpy()
        # Whisper's generate returns the tokens after its prompt (start, language, task); others the whole sequence
        return tokens[:, len(prompt):] if getattr(config, "model_type", "") == "whisper" else tokens


# transformers' generate extends token_type_ids by repeating the last column; these model types
# override it for generated tokens: PaliGemma gives them 1 (the suffix, attended causally), where a
# repeated 0 would put them in the prefix that is attended both ways
GENERATED_TOKEN_TYPE = {"paligemma": 1}


def _decode(step, input_ids, attention_mask, prepared, processors, stopping):
    """``GenerationMixin._sample``'s token selection around a step function (4.57 and 5.x):
    processors on the last position's logits in float32, then argmax or one multinomial draw;
    finished rows get the pad token; stop when every row is finished.

    ``step(new_ids, attention_mask, position_ids, state) -> (logits, state)``, state None first."""
    import torch

    batch = input_ids.shape[0]
    unfinished = torch.ones(batch, dtype=torch.long)
    pad = prepared._pad_token_tensor
    has_eos = any(hasattr(c, "eos_token_id") for c in stopping)
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 1)
    chunk, state = input_ids, None
    while True:
        logits, state = step(chunk, attention_mask, positions, state)
        scores = processors(input_ids, logits[:, -1, :].to(dtype=torch.float32, copy=True))
        if prepared.do_sample:
            next_tokens = torch.multinomial(torch.nn.functional.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            next_tokens = torch.argmax(scores, dim=-1)
        if has_eos and pad is not None:
            next_tokens = next_tokens * unfinished + pad * (1 - unfinished)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        unfinished = unfinished & ~stopping(input_ids, None)
        if unfinished.max() == 0:
            return input_ids
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=-1)
        positions = positions[:, -1:] + 1
        chunk = next_tokens[:, None]


def load(folder) -> ExportedModel:
    """Open an exported folder for running: see ``ExportedModel``."""
    return ExportedModel(folder)
