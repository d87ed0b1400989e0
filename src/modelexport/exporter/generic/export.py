"""The export that needs no Optimum config: plan the files of the folder from the model and its
task, trace each with torch.export, and check each against PyTorch.

Layouts are Optimum's, so the same folder loads in its ORTModel classes:
- ``single``: ``model.onnx`` (encoders, classifiers, vision, audio, vision-language models,
  decoders whose cache is not a plain key/value cache);
- ``decoder-with-past``: ``model.onnx`` taking the KV cache (``past_key_values.N.key/value``, a past
  of length 0 on the first step) and returning it (``present.N.key/value``);
- ``seq2seq-with-past``: ``encoder_model.onnx``, ``decoder_model.onnx`` (first step) and
  ``decoder_with_past_model.onnx``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from modelexport.errors import ModelExportError
from modelexport.exporter.generic.inputs import Example, InputBuilder, Preprocessors, forward_parameters
from modelexport.exporter.generic.wrappers import (
    DecoderWithCache,
    NamedOutputs,
    Seq2SeqDecoder,
    Seq2SeqEncoder,
    cache_layers,
    indexer_keys,
    indexer_past_names,
    indexer_present_names,
    past_names,
    present_names,
    returned_cache,
    tensor_outputs,
)

PAST = 5  # example past length (distinct from batch 2, sequence 7, encoder sequence 9)
# An output agrees when max |ONNX Runtime - PyTorch| <= ATOL + RTOL * max |PyTorch|: float32 sums
# in another order differ by about 1e-6 of the values' size, and logits of tens are common.
ATOL, RTOL = 1e-4, 1e-4


@dataclass
class PlannedFile:
    name: str
    module: torch.nn.Module  # what is traced (a wrapper holding the model or one of its parts)
    root: str  # module path, in the model, of the part traced ("" = the whole model)
    example: Example  # traced with these
    checks: list[Example]  # and compared with PyTorch on these (other sizes, an empty past...)
    output_axes: dict[str, dict[int, str]] = field(default_factory=dict)


@dataclass
class Plan:
    layout: str
    task: str
    files: list[PlannedFile]
    notes: list[str] = field(default_factory=list)


def _with(example: Example, **tensors) -> Example:
    return Example({**example.inputs, **tensors}, dict(example.axes), list(example.notes))


def _layers_of(model) -> int:
    config = model.config
    for scope in (config, getattr(config, "text_config", None), getattr(config, "decoder", None)):
        for key in ("num_hidden_layers", "n_layer", "num_layers", "decoder_layers"):
            value = getattr(scope, key, None) if scope is not None else None
            if isinstance(value, int):
                return value
    raise ModelExportError(f"cannot tell the number of layers of {type(model).__name__} from its config")


def _decoder_layers_of(model) -> int:
    """The decoder's number of layers of an encoder-decoder: its own key first (4.57's XLM-ProphetNet's
    ``num_hidden_layers`` is the encoder's; BART's too, an alias of ``encoder_layers``)."""
    for key in ("num_decoder_layers", "decoder_layers"):
        value = getattr(model.config, key, None)
        if isinstance(value, int):
            return value
    return _layers_of(model)


def _call_kwargs(model) -> dict:
    params = forward_parameters(model)
    kwargs = {"return_dict": True} if "return_dict" in params else {}
    if "use_cache" in params:
        kwargs["use_cache"] = False
    return kwargs


def _unpadded(example: Example) -> Example:
    """The same inputs with every attention mask all ones: outputs at padded positions are not
    defined (PyTorch's own attention implementations disagree there), so checks skip them."""
    changed = {k: torch.ones_like(v) for k, v in example.inputs.items() if k.endswith("attention_mask")
               and v.dtype in (torch.long, torch.int32, torch.bool)}
    return _with(example, **changed)


def _sentence_transformers_inputs(example: Example) -> Example:
    """What sentence-transformers feeds its first module (as Optimum's export of such models)."""
    keep = ("input_ids", "attention_mask")
    return Example({k: v for k, v in example.inputs.items() if k in keep},
                   {k: v for k, v in example.axes.items() if k in keep}, example.notes)


def takes_one_decoder_token(model, example: Example, out, call_kwargs: dict) -> bool:
    """Whether the model's outputs change rank when given one decoder token instead of several:
    Parakeet's TDT/RNNT joint squeezes the decoder axis (``.squeeze(2)``), a no-op in PyTorch on 5
    tokens that torch.onnx writes as an ONNX Squeeze ONNX Runtime refuses. Such a decoder is fed
    one token at a time, and is exported that way."""
    ids = example.inputs.get("decoder_input_ids")
    if ids is None or ids.shape[-1] == 1:
        return False
    try:
        one = model(**{**example.inputs, "decoder_input_ids": ids[:, :1]}, **call_kwargs)
    except Exception:  # noqa: BLE001  (a model that needs its several tokens: keep them)
        return False
    ranks = {n: v.ndim for n, v in (out.items() if hasattr(out, "items") else []) if isinstance(v, torch.Tensor)}
    return any(isinstance(v, torch.Tensor) and n in ranks and v.ndim != ranks[n]
               for n, v in (one.items() if hasattr(one, "items") else []))


def plan_single(model, task: str, pre: Preprocessors, library: str, static_shapes: dict | None = None) -> Plan:
    """``static_shapes``: Optimum's dummy-shape names -> sizes; the trace then declares no dynamic
    axis and every input has those sizes."""
    positional = library == "sentence_transformers"
    # sentence-transformers: inputs are those of its transformer, called with one features dict
    builder = InputBuilder(model[0].auto_model if positional else model, task, pre, static_shapes)
    adapt = _sentence_transformers_inputs if positional else (lambda e: e)
    if static_shapes:
        adapt = (lambda e, inner=adapt: Example(inner(e).inputs, {}, inner(e).notes))
    example = adapt(builder.build(batch=static_shapes.get("batch_size", 1), sequence=static_shapes.get(
        "sequence_length", 16))) if static_shapes else adapt(builder.build(batch=2, sequence=7))
    if static_shapes and "input_values" in example.inputs and "attention_mask" in example.inputs:
        # A raw-audio model's mask turns into frame lengths, shapes that depend on the values: a
        # fixed-shape clip is padded instead, the mask left out (as Optimum's export does).
        example = Example({k: v for k, v in example.inputs.items() if k != "attention_mask"}, example.axes,
                          example.notes + ["static shapes: no attention_mask input; a shorter clip is padded"])
    call_kwargs = {} if positional else _call_kwargs(model)
    with torch.no_grad():
        try:
            out = model(dict(example.inputs)) if positional else model(**example.inputs, **call_kwargs)
        except Exception as e:  # the inputs built from the config are not what this model needs
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ModelExportError(f"{type(model).__name__} does not run on the inputs built from its signature and "
                                   f"config ({', '.join(f'{k}{list(v.shape)}' for k, v in example.inputs.items())}): "
                                   f"{type(e).__name__}: {first}; export from a folder that holds the model's "
                                   "processor or feature extractor") from e
        if not static_shapes and takes_one_decoder_token(model, example, out, call_kwargs):
            builder.decoder_tokens = None
            example = adapt(builder.build(batch=2, sequence=7))
            example = Example(example.inputs, example.axes, example.notes + [
                "decoder_input_ids: one token on a fixed axis (the model squeezes its decoder axis: "
                "transducer decoders take one token at a time)"])
            out = model(**example.inputs, **call_kwargs)
    names = [n for n in tensor_outputs(out) if n != "loss"]
    if positional:
        names = [n for n in ("token_embeddings", "sentence_embedding") if n in names]
    elif task.startswith("text-generation") and "logits" in names:
        names = ["logits"]
    if not names:
        raise ModelExportError(f"{type(model).__name__} returned no tensor on the example inputs: nothing to export")
    checks = [_unpadded(example)]
    if not static_shapes:
        try:
            checks.append(_unpadded(adapt(builder.build(batch=3, sequence=11))))
        except ModelExportError:
            pass
    wrapper = NamedOutputs(model, names, call_kwargs, positional=positional, taken=set(example.inputs))
    return Plan("single", task, [PlannedFile("model.onnx", wrapper, "", example, checks)], list(example.notes))


def plan_decoder_with_past(model, task: str, pre: Preprocessors) -> Plan | None:
    """None when the model's cache is not a plain per-layer key/value cache."""
    builder = InputBuilder(model, "text-generation", pre)
    base = _unpadded(builder.build(batch=2, sequence=7))
    with torch.no_grad():
        try:
            probe = model(**base.inputs, use_cache=True, return_dict=True)
        except Exception:  # noqa: BLE001  (a model that cannot return its cache: exported without it)
            return None
    returned = returned_cache(probe)
    layers = cache_layers(returned) if returned is not None else None
    if not layers or "logits" not in probe:
        return None
    # DeepSeek-V3.2 / HunYuan-V4: the sparse-attention indexer's keys are cached too, grown along
    # their axis 1 as the keys along axis 2; left out, a later step's indexer would see only the
    # new tokens' keys against a mask of past + new ones
    indexed = indexer_keys(returned)
    params = forward_parameters(model)

    def step(batch: int, sequence: int, past: int, seed: int) -> Example:
        example = _unpadded(builder.build(batch=batch, sequence=sequence))
        inputs = {k: v for k, v in example.inputs.items() if k in ("input_ids", "attention_mask")}
        inputs["attention_mask"] = torch.ones(batch, past + sequence, dtype=torch.long)
        if "position_ids" in params:
            inputs["position_ids"] = torch.arange(past, past + sequence).expand(batch, sequence).contiguous()
        generator = torch.Generator().manual_seed(seed)
        for name, (key, value) in zip(past_names(len(layers))[::2], layers):
            inputs[name] = torch.randn(batch, key.shape[1], past, key.shape[3], generator=generator)
            inputs[name.replace(".key", ".value")] = torch.randn(batch, value.shape[1], past, value.shape[3],
                                                                 generator=generator)
        for name, keys in zip(indexer_past_names(indexed), indexed.values()):
            inputs[name] = torch.randn(batch, past, keys.shape[2], generator=generator)
        axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
                "attention_mask": {0: "batch_size", 1: "past_sequence_length + sequence_length"},
                "position_ids": {0: "batch_size", 1: "sequence_length"}}
        axes.update({name: {0: "batch_size", 2: "past_sequence_length"} for name in past_names(len(layers))})
        axes.update({name: {0: "batch_size", 1: "past_sequence_length"} for name in indexer_past_names(indexed)})
        return Example(inputs, {k: v for k, v in axes.items() if k in inputs}, list(example.notes))

    example = step(2, 7, PAST, 0)
    wrapper = DecoderWithCache(model, len(layers), indexed=tuple(indexed))
    first = step(2, 7, 0, 1)
    # a later step fed the past the model itself returned (random pasts are not what runs)
    with torch.no_grad():
        try:
            presents = wrapper(dict(first.inputs))[1:]
        except Exception:  # noqa: BLE001  (a cache class of its own (MiniMax): exported without a cache)
            return None
    later = step(2, 2, 7, 2)
    later.inputs["attention_mask"] = torch.ones(2, 9, dtype=torch.long)
    later.inputs.update(dict(zip(past_names(len(layers)) + indexer_past_names(indexed), presents)))
    if "position_ids" in later.inputs:
        later.inputs["position_ids"] = torch.arange(7, 9).expand(2, 2).contiguous()
    checks = [first, later]
    output_axes = {"logits": {0: "batch_size", 1: "sequence_length"}}
    output_axes.update({n: {0: "batch_size", 2: "past_sequence_length + sequence_length"}
                        for n in present_names(len(layers))})
    output_axes.update({n: {0: "batch_size", 1: "past_sequence_length + sequence_length"}
                        for n in indexer_present_names(indexed)})
    notes = list(example.notes) + [f"KV cache: {len(layers)} layers, past_key_values.N.key/value in, "
                                   "present.N.key/value out"]
    if indexed:
        notes.append(f"indexer key cache: {len(indexed)} layers, past_key_values.N.indexer_key in, "
                     "present.N.indexer_key out ([batch_size, past_sequence_length, index_head_dim])")
    return Plan("decoder-with-past", task, [PlannedFile("model.onnx", wrapper, "", example, checks, output_axes)],
                notes)


def _path_of(model, part) -> str:
    return next((path for path, module in model.named_modules() if module is part), "")


def _runs(module, example: Example) -> bool:
    try:
        with torch.no_grad():
            module(dict(example.inputs))
    except Exception:  # noqa: BLE001  (whatever the model raises on these inputs)
        return False
    return True


def plan_seq2seq_with_past(model, task: str, pre: Preprocessors) -> Plan | None:
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else None
    if encoder is None:
        return None
    # image size, mel bins, vocabulary: the model's config (an encoder may have none of its own)
    encoder_builder = InputBuilder(encoder, task, pre, config=model.config)
    enc_example = encoder_builder.build(batch=2, sequence=9)
    enc_axes = {k: {a: n.replace("sequence_length", "encoder_sequence_length") if n == "sequence_length" else n
                    for a, n in v.items()} for k, v in enc_example.axes.items()}
    enc_example = Example(enc_example.inputs, enc_axes, enc_example.notes)
    with torch.no_grad():
        encoded = encoder(**enc_example.inputs, return_dict=True)
    hidden, output_type = encoded.last_hidden_state, type(encoded)
    if hidden.ndim != 3:
        return None
    encoder_mask = enc_example.inputs.get("attention_mask")
    main_input = "decoder_input_ids" if "decoder_input_ids" in forward_parameters(model) else None
    if main_input is None:
        return None
    layers = _decoder_layers_of(model)
    hidden_size = hidden.shape[-1]
    start = getattr(model.config, "decoder_start_token_id", None)
    start = start if isinstance(start, int) else 0

    def decoder_inputs(batch: int, length: int, enc: torch.Tensor, mask) -> dict:
        ids = torch.randint(3, max(4, min(int(getattr(model.config, "vocab_size", 100)), 512)), (batch, length),
                            generator=torch.Generator().manual_seed(length))
        ids[:, 0] = start
        inputs = {"input_ids": ids}
        if mask is not None:
            inputs["encoder_attention_mask"] = torch.ones(batch, enc.shape[1], dtype=torch.long)
        return inputs

    with torch.no_grad():
        first = Seq2SeqDecoder(model, layers, with_past=False, hidden_size=hidden_size,
                               encoder_output_type=output_type)
        probe_inputs = {**decoder_inputs(2, 5, hidden, encoder_mask), "encoder_hidden_states": hidden}
        try:
            presents = first(probe_inputs)[1:]
        except Exception as error:  # noqa: BLE001  (a model that takes an empty cache for a past: given none)
            first = Seq2SeqDecoder(model, layers, with_past=False, hidden_size=hidden_size,
                                   encoder_output_type=output_type, empty_cache=False)
            try:
                presents = first(probe_inputs)[1:]
            except Exception:  # noqa: BLE001
                raise error from None
    dec_axes = {"input_ids": {0: "batch_size", 1: "decoder_sequence_length"},
                "encoder_hidden_states": {0: "batch_size", 1: "encoder_sequence_length"},
                "encoder_attention_mask": {0: "batch_size", 1: "encoder_sequence_length"}}

    def with_past_example(batch: int, length: int, past: int, seed: int) -> Example:
        generator = torch.Generator().manual_seed(seed)
        inputs = decoder_inputs(batch, length, hidden, encoder_mask)
        for i in range(layers):
            sk, sv, ck, cv = presents[4 * i: 4 * i + 4]
            inputs[f"past_key_values.{i}.decoder.key"] = torch.randn(batch, sk.shape[1], past, sk.shape[3],
                                                                     generator=generator)
            inputs[f"past_key_values.{i}.decoder.value"] = torch.randn(batch, sv.shape[1], past, sv.shape[3],
                                                                       generator=generator)
            inputs[f"past_key_values.{i}.encoder.key"] = torch.randn(batch, ck.shape[1], hidden.shape[1],
                                                                     ck.shape[3], generator=generator)
            inputs[f"past_key_values.{i}.encoder.value"] = torch.randn(batch, cv.shape[1], hidden.shape[1],
                                                                       cv.shape[3], generator=generator)
        axes = {k: v for k, v in dec_axes.items() if k in inputs}
        axes.update({n: {0: "batch_size", 2: "past_decoder_sequence_length"} for n in past_names(layers, "decoder")})
        axes.update({n: {0: "batch_size", 2: "encoder_sequence_length"} for n in past_names(layers, "encoder")})
        return Example(inputs, axes, [])

    def first_example(batch: int, length: int) -> Example:
        enc = hidden[:1].expand(batch, -1, -1).contiguous() if batch != hidden.shape[0] else hidden
        inputs = {**decoder_inputs(batch, length, enc, encoder_mask), "encoder_hidden_states": enc}
        order = ["input_ids", "encoder_hidden_states", "encoder_attention_mask"]
        inputs = {k: inputs[k] for k in order if k in inputs}
        return Example(inputs, {k: v for k, v in dec_axes.items() if k in inputs}, [])

    encoder_file = PlannedFile("encoder_model.onnx", Seq2SeqEncoder(encoder), _path_of(model, encoder), enc_example,
                               [_unpadded(enc_example)], {"last_hidden_state": {0: "batch_size",
                                                                                1: "encoder_sequence_length"}})
    first_axes = {"logits": {0: "batch_size", 1: "decoder_sequence_length"}}
    first_axes.update({n: {0: "batch_size", 2: "decoder_sequence_length"} for n in present_names(layers, "decoder")})
    first_axes.update({n: {0: "batch_size", 2: "encoder_sequence_length"} for n in present_names(layers, "encoder")})
    decoder_file = PlannedFile("decoder_model.onnx", first, "", first_example(2, 5),
                               [first_example(2, 5), first_example(3, 4)], first_axes)
    past_axes = {"logits": {0: "batch_size", 1: "decoder_sequence_length"}}
    past_axes.update({n: {0: "batch_size", 2: "past_decoder_sequence_length + decoder_sequence_length"}
                      for n in present_names(layers, "decoder")})
    with_past = Seq2SeqDecoder(model, layers, with_past=True, hidden_size=hidden_size,
                               encoder_output_type=output_type)
    # checked on the past the first decoder step returns in PyTorch (random pasts are not what runs)
    first_check = first_example(2, 5)
    with torch.no_grad():
        returned = first(dict(first_check.inputs))[1:]

    def later_example(length: int) -> Example:
        later = with_past_example(2, length, 5, 1)
        for i in range(layers):
            for j, part in enumerate(("decoder.key", "decoder.value", "encoder.key", "encoder.value")):
                later.inputs[f"past_key_values.{i}.{part}"] = returned[4 * i + j]
        return later

    later, traced_length, notes = later_example(2), 3, []
    if not _runs(with_past, later) and _runs(with_past, later_example(1)):
        # a decoder that takes one new token per cached step (ProphetNet asserts it): traced and
        # checked with one, the new tokens' axis static (Optimum feeds one token with the past)
        later, traced_length = later_example(1), 1
        past_axes["logits"] = {0: "batch_size"}
        notes.append("the decoder with past takes one new token per step (its model refuses more): "
                     "decoder_with_past_model.onnx's input_ids are [batch_size, 1]")
    past_example = with_past_example(2, traced_length, PAST, 0)
    if traced_length == 1:
        past_example.axes["input_ids"] = {0: "batch_size"}
    past_file = PlannedFile("decoder_with_past_model.onnx", with_past, "", past_example, [later], past_axes)
    notes = list(enc_example.notes) + [f"encoder-decoder: {layers} decoder layers, Optimum's encoder / decoder / "
                                       "decoder-with-past files"] + notes
    return Plan("seq2seq-with-past", task, [encoder_file, decoder_file, past_file], notes)


class NoCacheLayout(ModelExportError):
    """A with-past task whose model's cache cannot be laid out as Optimum's files: where the cache
    was our choice, the export goes on without it."""


def plan_export(model, task: str, pre: Preprocessors, library: str = "transformers",
                static_shapes: dict | None = None) -> Plan:
    """The files to write for ``task``; a with-past task falls back to the plain one (with a note)
    when the model's cache cannot be laid out as Optimum's. With ``static_shapes`` one file of
    fixed input sizes (a KV cache of fixed length is not laid out yet: refused)."""
    if static_shapes:
        if task.endswith("-with-past"):
            raise ModelExportError(f"--static-shapes with a KV cache ({task}) is not supported by the generic "
                                   f"exporter; export --task {task.replace('-with-past', '')} (each step runs the "
                                   "whole sequence at the fixed length)")
        return plan_single(model, task, pre, library, static_shapes)
    if task == "text-generation-with-past":
        plan = plan_decoder_with_past(model, task, pre)
        if plan is not None:
            return plan
        plan = plan_single(model, "text-generation", pre, library)
        plan.notes.append("the model's cache is not a per-layer key/value cache (state-space or hybrid layers): "
                          "exported without it (each step runs the whole sequence)")
        return plan
    if task in ("text2text-generation-with-past", "automatic-speech-recognition-with-past"):
        plan = plan_seq2seq_with_past(model, task, pre)
        if plan is not None:
            return plan
        raise NoCacheLayout(f"{type(model).__name__} has no encoder / decoder split the export knows; "
                            f"export it with --task {task.replace('-with-past', '')}")
    return plan_single(model, task, pre, library)


@dataclass
class ExportedFileInfo:
    name: str
    root: str
    trace_warnings: list[str]
    inputs: dict  # name -> {"shape", "dtype", "dynamic_axes"} of the example traced


def weights_never_loaded(model) -> list[str]:
    """Modules of ``model`` whose weights are still on the meta device. The modules a class keeps in
    a plain Python list, tuple or dict (not registered, so neither in its state dict nor in the
    checkpoint) and built under ``from_pretrained``'s empty-weights initialisation are never
    materialised (transformers 4.57's ``Mask2FormerTransformerModule.input_projections`` when the
    feature size is not the hidden size). PyTorch's CPU kernels then read uninitialised memory:
    the model computes nothing that can be exported or checked."""
    found = []
    for name, module in model.named_modules():
        for attribute, value in vars(module).items():
            if attribute.startswith("_") or not isinstance(value, (list, tuple, dict)):
                continue
            for key, item in (value.items() if isinstance(value, dict) else enumerate(value)):
                if isinstance(item, torch.nn.Module) and \
                        any(t.is_meta for t in itertools.chain(item.parameters(), item.buffers())):
                    found.append(f"{name or type(module).__name__}.{attribute}[{key!r}]")
    return found


def trace_files(plan: Plan, model, staging: Path, opset: int) -> tuple[list[ExportedFileInfo], list[dict]]:
    """torch.export each planned file into ``staging``, with the export patches the model needs."""
    from modelexport.exporter.dynamo_trace import export_dynamo
    from modelexport.exporter.generic.patches import export_patches

    unloaded = weights_never_loaded(model)
    if unloaded:
        raise ModelExportError(
            f"{type(model).__name__}: weights never loaded in {', '.join(unloaded[:3])}"
            f"{f' and {len(unloaded) - 3} more' if len(unloaded) > 3 else ''}: modules kept in a Python list, tuple or dict (not registered, so "
            f"not in the checkpoint) left on the meta device; PyTorch computes them from uninitialised memory")
    infos = []
    with export_patches(model) as applied, torch.no_grad():
        for planned in plan.files:
            axes = {**planned.example.axes, **planned.output_axes}
            # by keyword: torch.onnx.export reads a dict at the end of the positional arguments as keywords
            try:
                warnings = export_dynamo(planned.module, (), {"inputs": dict(planned.example.inputs)},
                                         staging / planned.name, input_names=list(planned.example.inputs),
                                         output_names=list(planned.module.output_names), dynamic_axes=axes,
                                         opset=opset)
            except ModelExportError:
                raise
            except Exception as e:  # torch.export / torch.onnx limits on this model's code: one line
                from modelexport.errors import disk_error_message
                from modelexport.exporter.dynamo_trace import export_error_summary

                disk = disk_error_message(e)
                raise ModelExportError(disk or f"torch.export could not export {planned.name} of "
                                       f"{type(model).__name__}: {export_error_summary(e)}") from e
            infos.append(ExportedFileInfo(planned.name, planned.root, warnings, {
                name: {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", ""),
                       "dynamic_axes": {str(a): n for a, n in planned.example.axes.get(name, {}).items()}}
                for name, value in planned.example.inputs.items()}))
        patches = [p.as_dict() for p in applied]
    return infos, patches


def validate_files(plan: Plan, model, staging: Path) -> dict[str, dict]:
    """Each file against PyTorch on its check inputs (other sizes than the trace's, an empty past):
    the max |ONNX Runtime - PyTorch| per output, NaN/Inf and shape mismatches counted apart."""
    from modelexport.runtime.sessions import new_session
    from modelexport.runtime.topk_ties import replayed_run

    results = {}
    for planned in plan.files:
        try:
            session = new_session(staging / planned.name, "basic")
        except Exception as e:  # noqa: BLE001  (ONNX Runtime's own error types: a file torch.onnx wrote invalid)
            raise ModelExportError(f"ONNX Runtime refuses {planned.name} as torch.onnx (dynamo) wrote it: "
                                   f"{str(e).strip().splitlines()[0][:300]}") from e
        names = [o.name for o in session.get_outputs()]
        fixed = {i.name: i.shape for i in session.get_inputs()}
        report = {"atol": ATOL, "rtol": RTOL, "max_abs_diff": 0.0, "outputs": {}, "shape_mismatches": [],
                  "nonfinite": [], "above_tolerance": [], "errors": [], "checked_shapes": [], "not_checked": []}
        for example in planned.checks:
            # an axis the trace fixed (a warning on the file says so) cannot take other sizes
            misfit = [k for k, v in example.inputs.items() if k in fixed and any(
                isinstance(d, int) and d != n for d, n in zip(fixed[k], v.shape))]
            if misfit:
                report["not_checked"].append({k: list(v.shape) for k, v in example.inputs.items()})
                continue
            # ONNX Runtime's feed copied before PyTorch runs, and PyTorch given clones: a forward
            # may change an input in place (XGLM's positions: ``position_ids += self.offset``)
            feed = {k: v.numpy().copy() for k, v in example.inputs.items()}

            def forward(example=example):
                return planned.module({k: v.clone() for k, v in example.inputs.items()})

            with torch.no_grad():
                reference = forward()
            report["checked_shapes"].append({k: list(v.shape) for k, v in example.inputs.items()})
            try:
                got = session.run(names, feed)
            except Exception as e:  # noqa: BLE001  (ONNX Runtime's own error types: the file fails its check)
                report["errors"].append(f"ONNX Runtime failed on {report['checked_shapes'][-1]}: "
                                        f"{str(e).strip().splitlines()[0][:300]}")
                continue
            found = _compared(planned.module.output_names, reference, got)
            if found["above_tolerance"]:
                # a top-k whose candidates tie at float precision: replay ONNX Runtime's choice in
                # PyTorch; agreeing then, the file is right and the report says why (topk_ties)
                replay = replayed_run(staging / planned.name, names, feed, forward, ATOL, RTOL)
                if replay is not None and replay[2].complete:
                    again = _compared(planned.module.output_names, replay[1], replay[0])
                    if not (again["above_tolerance"] or again["shape_mismatches"] or again["nonfinite"]):
                        report.setdefault("topk_ties", []).append(
                            {**replay[2].as_dict(), "shapes": report["checked_shapes"][-1],
                             "before_replay": found["outputs"]})
                        found = again
            for key in ("shape_mismatches", "nonfinite", "above_tolerance"):
                report[key] += found[key]
            for name, diff in found["outputs"].items():
                report["outputs"][name] = max(report["outputs"].get(name, 0.0), diff)
                report["max_abs_diff"] = max(report["max_abs_diff"], diff)
        report["passed"] = not report["shape_mismatches"] and not report["nonfinite"] and \
            not report["above_tolerance"] and not report["errors"]
        results[planned.name] = report
        del session
    return results


def _compared(output_names: list[str], reference, got) -> dict:
    """Per output: max |ONNX Runtime - PyTorch|, and the outputs past tolerance, of other shape or
    not finite."""
    from modelexport.runtime.numeric import output_difference

    found = {"outputs": {}, "shape_mismatches": [], "nonfinite": [], "above_tolerance": []}
    for name, ref, value in zip(output_names, reference, got):
        ref = ref.detach().float().numpy()
        if ref.shape != value.shape:
            found["shape_mismatches"].append(f"{name}: {list(value.shape)} vs PyTorch {list(ref.shape)}")
            continue
        diff, problem = output_difference(ref, value)
        if problem:
            found["nonfinite"].append(f"{name}: {problem}")
        scale = float(abs(ref[np.isfinite(ref)]).max()) if np.isfinite(ref).any() else 0.0
        if diff > ATOL + RTOL * scale:
            found["above_tolerance"].append(f"{name}: {diff:.3g} (values up to {scale:.3g})")
        found["outputs"][name] = diff
    return found
