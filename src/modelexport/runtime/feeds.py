"""Inputs to run an exported model on: the user's texts, images or arrays, else dummy inputs.

One input group for every verb that runs a model (``profile``, ``diff``, ``sensitivity``,
``quantize --target-*``): ``--inputs``, ``--text``/``--text-file``, ``--image``, and ``--batch``/
``--seq-len`` for dummy inputs.

Text goes through the folder's own tokenizer and images through its image processor (as the
model will see them in use); each text or image is one run, so results aggregate over them.
What a tokenizer does not give is built as Optimum's ORTModel classes build it on a first
generation step:

- decoders with a KV cache (``past_key_values.N.key``): an empty past (length 0; heads and head
  size read from the graph input's static dims), ``position_ids`` from the attention mask;
- merged decoders: ``use_cache_branch`` false, so the branch without cache runs;
- seq2seq decoders (``encoder_hidden_states``): the folder's encoder file run on the same text,
  the decoder start token as ``input_ids``; a decoder with past gets the second step: the first
  step's ``present.*`` as its past and the first step's greedy token.

Each file's description says which inputs it got.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelexport.errors import ModelExportError

_ELEM_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
               10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype (None when not a tensor type we feed), dims (an int for
    a static size, the dim's name for a symbolic one, None when unnamed)."""

    name: str
    dtype: object
    dims: tuple

    def describe(self) -> str:
        dtype = np.dtype(self.dtype).name if self.dtype is not None else "?"
        return f"{self.name} {dtype}[{', '.join('?' if d is None else str(d) for d in self.dims)}]"


def input_specs(model) -> list[InputSpec]:
    """The inputs a feed must fill, read from the graph (initializers listed as inputs by old
    exporters are not inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for i in model.graph.input:
        if i.name in initializers:
            continue
        tensor = i.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        specs.append(InputSpec(i.name, _ELEM_TYPES.get(tensor.elem_type), dims))
    return specs


def _input_names(model) -> set[str]:
    return {s.name for s in input_specs(model)}


def _texts(args) -> list[str]:
    texts = list(getattr(args, "text", None) or [])
    if getattr(args, "text_file", None):
        try:
            lines = Path(args.text_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ModelExportError(f"cannot read --text-file {args.text_file}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise ModelExportError(f"--text-file {args.text_file} is not UTF-8 text") from e
        texts += [line for line in lines if line.strip()]
        if not texts:
            raise ModelExportError(f"--text-file {args.text_file} holds no text")
    return texts


def check_input_options(args) -> None:
    """Options of the input group that would do nothing together are refused before any run."""
    given = [name for name, on in (("--inputs", getattr(args, "inputs", None)),
                                   ("--text/--text-file", _texts_given(args)),
                                   ("--image", getattr(args, "image", None))) if on]
    if len(given) > 1:
        raise ModelExportError(f"give one kind of input: {' or '.join(given)}")
    sized = [name for name, value in (("--batch", getattr(args, "batch", None)),
                                      ("--seq-len", getattr(args, "seq_len", None))) if value is not None]
    if sized and given:
        raise ModelExportError(f"{' and '.join(sized)} size dummy inputs; {given[0]} brings its own shapes: "
                               f"drop {' and '.join(sized)}")
    for name in ("batch", "seq_len"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ModelExportError(f"--{name.replace('_', '-')} must be at least 1")


def _check_inputs_fit(target, args) -> None:
    """Texts for a model no file of which takes tokens, images for one that takes no pixels, would
    do nothing: refused before anything runs (a folder where some files take them and others not
    says per file which got dummy inputs)."""
    names = set().union(*(_input_names(f.model) for f in target.files))
    for given, needed, option in ((_texts_given(args), "input_ids", "--text/--text-file"),
                                  (getattr(args, "image", None), "pixel_values", "--image")):
        if given and needed not in names:
            raise ModelExportError(f"{option}: no ONNX file of {target.path} takes {needed} (its inputs: "
                                   f"{', '.join(sorted(names))}); give --inputs FILE.npz, or leave inputs out for "
                                   "dummy ones")


def _texts_given(args) -> bool:
    return bool(getattr(args, "text", None) or getattr(args, "text_file", None))


def feeds_for(target, onnx_file, args, default_seq_len: int | None = None) -> tuple[list[dict], str]:
    """The feeds for one ONNX file of ``target``, and a few words saying what they are.
    ``default_seq_len``: the verb's sequence length for dummy inputs when --seq-len is not given."""
    check_input_options(args)
    _check_inputs_fit(target, args)
    specs = input_specs(onnx_file.model)
    names = {s.name for s in specs}
    folder = Path(target.folder)
    if getattr(args, "inputs", None):
        feed = _npz(args.inputs)
        missing = sorted(names - set(feed))
        if missing:
            raise ModelExportError(f"{args.inputs} has no array for input(s) {', '.join(missing)} of {onnx_file.name}")
        feed = {k: v for k, v in feed.items() if k in names}
        check_feed(feed, specs, f"{args.inputs}", onnx_file.name)
        return [feed], f"arrays from {args.inputs}"
    texts, images = _texts(args), list(getattr(args, "image", None) or [])
    if texts and "input_ids" in names:
        if "encoder_hidden_states" in names or _is_seq2seq_with_past(specs):
            chain = _seq2seq_chain(target, texts)
            if chain is not None:
                return chain.feeds(onnx_file, specs)
        elif not _needs_outside_values(specs):
            return text_feeds(folder, texts, specs), _text_words(len(texts), specs)
    if images and "pixel_values" in names:
        feeds = image_feeds(folder, images, specs)
        for feed in feeds:
            check_feed(feed, specs, "--image", onnx_file.name)
        return feeds, f"{len(images)} image(s) through the folder's image processor"
    from modelexport.runtime.dummy_inputs import SEQUENCE_LENGTH, make_inputs

    batch = getattr(args, "batch", None) or 1
    sequence = getattr(args, "seq_len", None) or default_seq_len or SEQUENCE_LENGTH
    feed = make_inputs(onnx_file.model, _config(folder), batch, sequence)
    return [feed], f"dummy inputs (batch {batch}, sequence {sequence})" + (
        " (the texts/images given do not fit this file's inputs)" if texts or images else "")


def _npz(path) -> dict:
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as e:
        raise ModelExportError(f"cannot read inputs from {path}: {e}") from e


def check_feed(feed: dict, specs: list[InputSpec], source: str, file_name: str) -> None:
    """Each array has the input's dtype, rank and static sizes: one line naming the first that
    does not, instead of ONNX Runtime's exception after the run started."""
    for spec in specs:
        if spec.name not in feed:
            raise ModelExportError(f"{source} gives no value for input {spec.name} of {file_name}")
        value = np.asarray(feed[spec.name])
        if spec.dtype is not None and value.dtype != np.dtype(spec.dtype):
            raise ModelExportError(f"{source}: input {spec.name} of {file_name} is {value.dtype}, the graph takes "
                                   f"{np.dtype(spec.dtype).name}")
        if spec.dims and (value.ndim != len(spec.dims) or any(
                isinstance(d, int) and d > 0 and d != n for d, n in zip(spec.dims, value.shape))):
            raise ModelExportError(f"{source}: input {spec.name} of {file_name} has shape {list(value.shape)}, the "
                                   f"graph takes {spec.describe()}")


def _needs_outside_values(specs: list[InputSpec]) -> bool:
    return any(s.name == "encoder_hidden_states" for s in specs)


def _is_seq2seq_with_past(specs: list[InputSpec]) -> bool:
    return any(s.name.startswith("past_key_values.") and ".encoder." in s.name for s in specs)


def _text_words(count: int, specs: list[InputSpec]) -> str:
    words = f"{count} text(s) through the folder's tokenizer"
    names = {s.name for s in specs}
    built = [w for w, present in (("an empty past", any(n.startswith("past_key_values.") for n in names)),
                                  ("position_ids from the mask", "position_ids" in names),
                                  ("use_cache_branch false", "use_cache_branch" in names)) if present]
    return words + (f", {', '.join(built)}" if built else "")


def load_tokenizer(folder: Path):
    """The folder's tokenizer, or one line saying there is none (transformers' own errors for a
    folder without tokenizer files range from OSError to AttributeError)."""
    folder = Path(folder)
    known = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
             "sentencepiece.bpe.model", "tokenizer.model")
    if not any((folder / name).is_file() for name in known):
        raise ModelExportError(f"{folder} has no tokenizer files ({', '.join(known[:3])}, ...) to turn --text "
                               "into inputs; give --inputs FILE.npz instead")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - whatever transformers raises, the folder's tokenizer is unusable
        raise ModelExportError(f"{folder}: its tokenizer does not load ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from e


def text_feeds(folder: Path, texts: list[str], specs) -> list[dict]:
    """One feed per text. ``specs``: the inputs the model takes (``input_specs``), or only their
    names (then nothing beyond the tokenizer's outputs and ``token_type_ids`` is built)."""
    tokenizer = load_tokenizer(folder)
    specs = list(specs)
    full = [s for s in specs if isinstance(s, InputSpec)]
    names = {s.name if isinstance(s, InputSpec) else s for s in specs}
    feeds = []
    for text in texts:
        encoded = tokenizer(text, return_tensors="np", truncation=True)
        feed = {k: np.asarray(v).astype(np.int64) for k, v in encoded.items() if k in names}
        if "token_type_ids" in names and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        if "attention_mask" in names and "attention_mask" not in feed:
            feed["attention_mask"] = np.ones_like(feed["input_ids"])
        if full:
            feed = complete_feed(feed, full)
        feeds.append(feed)
    return feeds


def complete_feed(feed: dict, specs: list[InputSpec]) -> dict:
    """Add what a first generation step gives besides the tokens, as Optimum does: an empty past,
    ``position_ids`` from the attention mask, ``use_cache_branch`` false. Sizes of symbolic dims
    come from the arrays already in the feed (``encoder_sequence_length`` from the encoder's mask),
    past lengths are 0. An input that cannot be built is one line naming it."""
    feed = dict(feed)
    sizes = bind_dims(feed, specs)
    for spec in specs:
        if spec.name in feed:
            continue
        if spec.name == "use_cache_branch":
            feed[spec.name] = np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in spec.dims] or [1], np.bool_)
        elif spec.name == "position_ids" and "attention_mask" in feed and "input_ids" in feed:
            mask = np.asarray(feed["attention_mask"]).astype(np.int64)
            positions = np.cumsum(mask, axis=-1) - 1
            positions[mask == 0] = 1
            feed[spec.name] = positions[:, -feed["input_ids"].shape[1]:].astype(spec.dtype or np.int64)
        elif spec.name.startswith("past_key_values."):
            feed[spec.name] = np.zeros(_past_shape(spec, sizes), spec.dtype or np.float32)
        else:
            raise ModelExportError(f"input {spec.describe()} is not something a text gives; give --inputs "
                                   "FILE.npz with it")
    for spec in specs:  # ids and masks as the graph takes them (int32 in some exports)
        value = np.asarray(feed[spec.name])
        if spec.dtype is not None and value.dtype != np.dtype(spec.dtype) and \
                np.issubdtype(value.dtype, np.integer) and np.issubdtype(np.dtype(spec.dtype), np.integer):
            feed[spec.name] = value.astype(spec.dtype)
    return feed


def bind_dims(feed: dict, specs: list[InputSpec]) -> dict[str, int]:
    """Symbolic dim name -> size, read from the arrays the feed has."""
    sizes: dict[str, int] = {}
    for spec in specs:
        value = feed.get(spec.name)
        if value is None:
            continue
        for dim, n in zip(spec.dims, np.shape(value)):
            if isinstance(dim, str):
                sizes.setdefault(dim, int(n))
    return sizes


def _past_shape(spec: InputSpec, sizes: dict[str, int]) -> list[int]:
    shape = []
    for axis, dim in enumerate(spec.dims):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif isinstance(dim, str) and dim in sizes:
            shape.append(sizes[dim])
        elif isinstance(dim, str) and "past" in dim.lower():
            shape.append(0)
        elif axis == 0 or (isinstance(dim, str) and "batch" in dim.lower()):
            shape.append(sizes.get("batch_size", 1))
        else:
            raise ModelExportError(f"cannot build an empty past for {spec.describe()}: axis {axis} is neither "
                                   "static, a batch nor a past length; give --inputs FILE.npz")
    return shape


class _Seq2SeqChain:
    """Encoder output and first decoder step of an encoder-decoder folder, run once per text on
    the folder's own files (the reference A in ``diff``), as generation does."""

    def __init__(self, target, texts: list[str], encoder, first_step):
        self.target, self.texts = target, texts
        self.encoder, self.first_step = encoder, first_step
        self._encoded: list[dict] | None = None
        self._first: list[dict] | None = None

    def _start_token(self) -> int:
        config = _config(Path(self.target.folder)) or {}
        for key in ("decoder_start_token_id", "pad_token_id", "bos_token_id"):
            value = config.get(key)
            if isinstance(value, int):
                return value
        raise ModelExportError(f"{self.target.folder}/config.json names no decoder_start_token_id: the decoder's "
                               "first token is unknown; give --inputs FILE.npz")

    def encoded(self) -> list[dict]:
        """Per text: the encoder's feed and its last_hidden_state."""
        if self._encoded is None:
            from modelexport.runtime.sessions import new_session

            specs = input_specs(self.encoder.model)
            feeds = text_feeds(Path(self.target.folder), self.texts, specs)
            session = new_session(self.encoder.path)
            out = [o.name for o in session.get_outputs()]
            self._encoded = [{"feed": f, "hidden": dict(zip(out, session.run(None, f)))["last_hidden_state"]}
                             for f in feeds]
        return self._encoded

    def decoder_feed(self, specs: list[InputSpec], encoded: dict, input_ids) -> dict:
        mask = encoded["feed"].get("attention_mask", np.ones_like(encoded["feed"]["input_ids"]))
        feed = {"input_ids": np.asarray(input_ids, np.int64)}
        names = {s.name for s in specs}
        if "encoder_hidden_states" in names:
            feed["encoder_hidden_states"] = encoded["hidden"]
        if "encoder_attention_mask" in names:
            feed["encoder_attention_mask"] = mask
        if "attention_mask" in names:  # decoders that take their own mask (BART-style): all tokens
            feed["attention_mask"] = np.ones_like(feed["input_ids"])
        return feed

    def first_steps(self) -> list[dict]:
        """Per text: the first step's outputs (logits, present.*) by name."""
        if self._first is None:
            from modelexport.runtime.sessions import new_session

            specs = input_specs(self.first_step.model)
            session = new_session(self.first_step.path)
            out = [o.name for o in session.get_outputs()]
            start = [[self._start_token()]]
            self._first = []
            for encoded in self.encoded():
                feed = complete_feed(self.decoder_feed(specs, encoded, start), specs)
                self._first.append(dict(zip(out, session.run(None, feed))))
        return self._first

    def feeds(self, onnx_file, specs: list[InputSpec]) -> tuple[list[dict], str]:
        n = len(self.texts)
        if onnx_file.name == self.encoder.name:
            return [e["feed"] for e in self.encoded()], _text_words(n, specs)
        names = {s.name for s in specs}
        start = [[self._start_token()]]
        if "encoder_hidden_states" in names:  # a first step (decoder_model, or merged without cache)
            feeds = [complete_feed(self.decoder_feed(specs, e, start), specs) for e in self.encoded()]
            merged = " (use_cache_branch false)" if "use_cache_branch" in names else ""
            return feeds, (f"{n} text(s): the decoder's first step{merged} on {self.encoder.name}'s output for "
                           "each text, the decoder start token")
        feeds = []
        for encoded, first in zip(self.encoded(), self.first_steps()):
            token = np.argmax(first["logits"][:, -1, :], axis=-1)[:, None]
            feed = self.decoder_feed(specs, encoded, token)
            for spec in specs:
                if spec.name.startswith("past_key_values."):
                    present = "present." + spec.name[len("past_key_values."):]
                    if present not in first:
                        raise ModelExportError(f"{self.first_step.name} has no output {present} to give "
                                               f"{onnx_file.name} its past; give --inputs FILE.npz")
                    feed[spec.name] = first[present]
            feeds.append(complete_feed(feed, specs))
        return feeds, (f"{n} text(s): the decoder's second step, its past and greedy token from "
                       f"{self.first_step.name}'s first step on {self.encoder.name}'s output")


_CHAINS: dict = {}


def _seq2seq_chain(target, texts: list[str]) -> _Seq2SeqChain | None:
    """The chain for an encoder-decoder folder: its encoder file (takes input_ids, gives
    last_hidden_state) and a first-step decoder (decoder_model.onnx, else the merged one)."""
    key = (str(Path(target.folder).resolve()), tuple(texts))
    if key in _CHAINS:
        return _CHAINS[key]
    encoder = first = None
    for f in target.files:
        names = _input_names(f.model)
        outputs = {o.name for o in f.model.graph.output}
        if "input_ids" in names and "last_hidden_state" in outputs and "encoder_hidden_states" not in names:
            encoder = encoder or f
        elif "encoder_hidden_states" in names:
            if first is None or "use_cache_branch" not in names:
                first = f
    chain = _Seq2SeqChain(target, texts, encoder, first) if encoder is not None and first is not None else None
    _CHAINS.clear()  # one folder and text list at a time
    _CHAINS[key] = chain
    return chain


def image_feeds(folder: Path, images: list[str], specs=None) -> list[dict]:
    from transformers import AutoImageProcessor

    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with the image extras
        raise ModelExportError("--image needs Pillow: pip install pillow") from e
    try:
        processor = AutoImageProcessor.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - any failure means the folder has no usable processor
        raise ModelExportError(f"{folder} has no image processor to turn --image into inputs") from e
    feeds = []
    for path in images:
        try:
            image = Image.open(path).convert("RGB")
        except OSError as e:
            raise ModelExportError(f"cannot read image {path}: {e}") from e
        feeds.append({"pixel_values": processor(images=image, return_tensors="np")["pixel_values"]})
    return feeds


def _config(folder: Path) -> dict | None:
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
