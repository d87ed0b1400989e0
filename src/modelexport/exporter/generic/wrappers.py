"""The modules the Optimum-free path hands to torch.export: the user's model, called as it is
called in use, with named tensors in and named tensors out.

Each wrapper holds the model as its child ``model`` and adds no module of its own, so the module
stack torch.export records is ``model.<named_modules() path>``: the tagging pass strips the
``model`` prefix (``SCOPE_PREFIX``) and reads the model's own paths. Inputs are one dict (a
pytree torch.export flattens in insertion order, so input names are the dict's keys); outputs a
tuple in the order of ``output_names``.

- ``NamedOutputs``: encoders, classifiers, vision and audio models, sentence-transformers.
- ``DecoderWithCache``: a decoder with its KV cache flattened as Optimum names it
  (``past_key_values.N.key`` in, ``present.N.key`` out), the cache rebuilt inside the graph.
- ``Seq2SeqEncoder`` / ``Seq2SeqDecoder``: Optimum's encoder / decoder / decoder-with-past files.
"""
from __future__ import annotations

import inspect

import torch

SCOPE_PREFIX = "model"


def tensor_outputs(output) -> list[str]:
    """Names of the tensors a forward returned, in order: ModelOutput / dict fields that are
    tensors (nested outputs, caches and tuples of hidden states are not graph outputs here)."""
    if isinstance(output, torch.Tensor):
        return ["output"]
    items = list(output.items()) if hasattr(output, "items") else []
    names = [k for k, v in items if isinstance(v, torch.Tensor)]
    if names:
        return names
    # no tensor field at all: a field that is a tuple of tensors is the output (MGP-STR's logits are
    # (characters, BPE, WordPiece)), each member named FIELD.N as Optimum flattens a collection
    return [f"{k}.{i}" for k, v in items if isinstance(v, (tuple, list)) and v
            and all(isinstance(t, torch.Tensor) for t in v) for i in range(len(v))]


def pick(output, names: list[str]) -> tuple:
    if isinstance(output, torch.Tensor):
        return (output,)
    return tuple(output[n] if n in output else output[n.rsplit(".", 1)[0]][int(n.rsplit(".", 1)[1])]
                 for n in names)


class NamedOutputs(torch.nn.Module):
    """``model(**inputs)`` (or ``model(inputs)`` for sentence-transformers) -> the named outputs."""

    def __init__(self, model, output_names: list[str], call_kwargs: dict | None = None, positional: bool = False,
                 taken: set[str] = frozenset()):
        super().__init__()
        self.model = model
        self.fields = list(output_names)  # what the forward's output calls them
        # the graph's names: an output named as an input (Parakeet's encoder returns the
        # `attention_mask` of its downsampled frames) would define that name twice in the graph
        self.output_names = [f"{n}_output" if n in taken else n for n in output_names]
        self.call_kwargs = dict(call_kwargs or {})
        self.positional = positional  # sentence-transformers: forward(features: dict)

    def forward(self, inputs: dict):
        out = self.model(dict(inputs)) if self.positional else self.model(**inputs, **self.call_kwargs)
        return pick(out, self.fields)


# -- KV caches ----------------------------------------------------------------------------------
def cache_argument(model) -> str:
    """The name forward takes the cache by: ``cache`` in transformers 5 (``past_key_values`` is a
    deprecated alias there until 5.40), ``past_key_values`` before."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(output):
    """The cache a forward returned, under either name."""
    found = output.get("cache") if hasattr(output, "get") else None
    return found if found is not None else getattr(output, "past_key_values", None)


def new_cache(config):
    """An empty DynamicCache laid out for the model's layers (sliding-window layers where the
    config has them), in transformers 4.57 and 5.x."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:
        return DynamicCache()


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """(key, value) per layer of a returned cache; None when it is not a plain key/value cache
    (state-space or hybrid caches)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        legacy = cache.to_legacy_cache() if hasattr(cache, "to_legacy_cache") else cache
        if isinstance(legacy, (list, tuple)) and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in legacy):
            return [(k, v) for k, v in legacy]
        return None
    found = []
    for layer in layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor) or keys.ndim != 4:
            return None
        found.append((keys, values))
    return found


def indexer_keys(cache) -> dict[int, torch.Tensor]:
    """The sparse-attention indexer's keys a cache holds besides its keys and values, by layer
    (``DynamicIndexedLayer``: DeepSeek-V3.2, HunYuan-V4, ...; ``[batch, sequence, index_head_dim]``,
    grown along axis 1). Layers without an indexer (or whose indexer is shared) hold none."""
    found = {}
    for i, layer in enumerate(getattr(cache, "layers", None) or ()):
        keys = getattr(layer, "indexer_keys", None)
        if getattr(layer, "is_indexer_initialized", False) and isinstance(keys, torch.Tensor) and keys.ndim == 3:
            found[i] = keys
    return found


def filled_cache(config, pairs, indexed: dict[int, torch.Tensor] | None = None):
    """A cache holding ``pairs`` (key, value per layer) and, for the layers of ``indexed``, the
    indexer's keys (given back to the cache the way the model grows them: ``update_indexer``)."""
    cache = new_cache(config)
    for i, (key, value) in enumerate(pairs):
        cache.update(key, value, i)
    for i, keys in (indexed or {}).items():
        cache.update_indexer(keys, i)
    return cache


def past_names(layers: int, kind: str = "") -> list[str]:
    """``past_key_values.N.key`` / ``.value`` (``kind``: "decoder"/"encoder" for seq2seq)."""
    middle = f".{kind}" if kind else ""
    return [f"past_key_values.{i}{middle}.{part}" for i in range(layers) for part in ("key", "value")]


def present_names(layers: int, kind: str = "") -> list[str]:
    return [n.replace("past_key_values", "present") for n in past_names(layers, kind)]


def indexer_past_names(indexed) -> list[str]:
    """``past_key_values.N.indexer_key`` for the layers whose indexer keys are cached."""
    return [f"past_key_values.{i}.indexer_key" for i in indexed]


def indexer_present_names(indexed) -> list[str]:
    return [n.replace("past_key_values", "present") for n in indexer_past_names(indexed)]


class DecoderWithCache(torch.nn.Module):
    """A causal LM step: ``input_ids``, ``attention_mask`` (past + new), ``position_ids`` and the
    past keys/values of every layer in; ``logits`` and the new keys/values out. A past of length
    0 is the first step (Optimum's single-file decoder layout)."""

    def __init__(self, model, layers: int, logits_name: str = "logits", indexed: tuple[int, ...] = ()):
        super().__init__()
        self.model = model
        self.layers = layers
        self.logits_name = logits_name
        # layers whose sparse-attention indexer keys are cached too: past_key_values.N.indexer_key
        # in, present.N.indexer_key out (after every layer's key and value)
        self.indexed = tuple(indexed)
        self.output_names = [logits_name] + present_names(layers) + indexer_present_names(self.indexed)

    def forward(self, inputs: dict):
        names = past_names(self.layers)
        pairs = [(inputs[names[2 * i]], inputs[names[2 * i + 1]]) for i in range(self.layers)]
        indexed = {i: inputs[n] for i, n in zip(self.indexed, indexer_past_names(self.indexed))}
        kwargs = {k: v for k, v in inputs.items() if not k.startswith("past_key_values.")}
        kwargs[cache_argument(self.model)] = filled_cache(self.model.config, pairs, indexed)
        out = self.model(**kwargs, use_cache=True)
        returned = returned_cache(out)
        layers = cache_layers(returned)
        grown = indexer_keys(returned)
        return (out[self.logits_name], *[t for pair in layers for t in pair], *[grown[i] for i in self.indexed])


class Seq2SeqEncoder(torch.nn.Module):
    """The encoder file: the model's encoder alone (its path in the model is the file's root)."""

    def __init__(self, encoder):
        super().__init__()
        self.model = encoder
        self.output_names = ["last_hidden_state"]

    def forward(self, inputs: dict):
        return (self.model(**inputs, return_dict=True).last_hidden_state,)


class Seq2SeqDecoder(torch.nn.Module):
    """Optimum's decoder files of an encoder-decoder model.

    Without past (``decoder_model.onnx``): ``input_ids`` (decoder), ``encoder_hidden_states``,
    ``encoder_attention_mask`` in; ``logits`` and every layer's self-attention and cross-attention
    keys/values out. With past (``decoder_with_past_model.onnx``): the same keys/values in, and
    only the self-attention ones out (the cross-attention ones do not change), as Optimum lays
    them out; the encoder's hidden states are not needed then, only its length (from the cached
    cross-attention keys)."""

    def __init__(self, model, layers: int, with_past: bool, hidden_size: int, input_key: str = "decoder_input_ids",
                 encoder_output_type=None, empty_cache: bool = True):
        super().__init__()
        self.model = model
        # False: the first step is given no cache at all (transformers 4.57's deprecated
        # XLM-ProphetNet takes any cache, even an empty one, for a cached step of one token)
        self.empty_cache = empty_cache
        # the class the model's encoder returns: given back to the model as `encoder_outputs`
        self.encoder_output_type = encoder_output_type
        self.layers = layers
        self.with_past = with_past
        self.hidden_size = hidden_size
        self.input_key = input_key
        self.output_names = ["logits"] + (present_names(layers, "decoder") if with_past else
                                          [n for i in range(layers) for n in
                                           present_names(layers, "decoder")[2 * i:2 * i + 2]
                                           + present_names(layers, "encoder")[2 * i:2 * i + 2]])

    def _encoder_outputs(self, hidden, mask):
        """The encoder's output as the model's own encoder returns it (its class), not a tuple:
        NLLB-MoE, T5Gemma, Switch (transformers 5) read ``encoder_outputs.last_hidden_state`` or
        ``.router_logits`` without wrapping a tuple first, Cohere ASR reads ``.attention_mask``."""
        from transformers.modeling_outputs import BaseModelOutput

        cls = self.encoder_output_type or BaseModelOutput
        fields = {"last_hidden_state": hidden}
        if mask is not None and "attention_mask" in getattr(cls, "__dataclass_fields__", {}):
            fields["attention_mask"] = mask
        return cls(**fields)

    def forward(self, inputs: dict):
        from transformers import EncoderDecoderCache

        config = self.model.config
        if self.with_past:
            self_pairs = [(inputs[f"past_key_values.{i}.decoder.key"], inputs[f"past_key_values.{i}.decoder.value"])
                          for i in range(self.layers)]
            cross_pairs = [(inputs[f"past_key_values.{i}.encoder.key"], inputs[f"past_key_values.{i}.encoder.value"])
                           for i in range(self.layers)]
            cache = EncoderDecoderCache(filled_cache(config, self_pairs), filled_cache(config, cross_pairs))
            first_key = cross_pairs[0][0]
            # the encoder's output is read from the cache; only its shape is used (masks)
            hidden = first_key.new_zeros(first_key.shape[0], first_key.shape[2], self.hidden_size)
        else:
            cache = EncoderDecoderCache(new_cache(config), new_cache(config)) if self.empty_cache else None
            hidden = inputs["encoder_hidden_states"]
        kwargs = {"encoder_outputs": self._encoder_outputs(hidden, inputs.get("encoder_attention_mask")),
                  self.input_key: inputs["input_ids"], cache_argument(self.model): cache,
                  "use_cache": True, "return_dict": True}
        if "encoder_attention_mask" in inputs:
            kwargs["attention_mask"] = inputs["encoder_attention_mask"]
        if "output_router_logits" in inspect.signature(self.model.forward).parameters:
            # router logits feed the training losses only; 4.57's Switch Transformers would unpack
            # them from the encoder output given here, which has none ("torch.cat(): expected a
            # non-empty list of Tensors")
            kwargs["output_router_logits"] = False
        out = self.model(**kwargs)
        returned = returned_cache(out)
        if isinstance(returned, (tuple, list)):
            # a legacy cache (4.57's XLM-ProphetNet): per layer (self key, self value, cross key, cross value)
            self_layers = [(layer[0], layer[1]) for layer in returned]
            cross_layers = [(layer[2], layer[3]) for layer in returned]
        else:
            self_layers = cache_layers(returned.self_attention_cache)
            cross_layers = None if self.with_past else cache_layers(returned.cross_attention_cache)
        if self.with_past:
            return (out.logits, *[t for pair in self_layers for t in pair])
        flat = []
        for (sk, sv), (ck, cv) in zip(self_layers, cross_layers):
            flat += [sk, sv, ck, cv]
        return (out.logits, *flat)
