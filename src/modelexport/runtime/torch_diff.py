"""``diff A --pytorch``: an export against the PyTorch model it came from, module by module.

PyTorch side: forward hooks on every module record what each module returns (a KV cache
flattened as Optimum's ``present.N.key``/``present.N.value`` outputs are: per layer, key then
value). The PyTorch model gets the very inputs ONNX Runtime gets: a past given to the ONNX file
becomes the model's cache (empty: none, so the model starts one), and an input the model's
``forward`` does not take is refused rather than silently dropped.

ONNX side: the module's boundary values (diff.py). A module's outputs are paired with its
boundary tensors by order and shape, only where that is unambiguous: per shape, one output and
one boundary tensor pair (or several that hold one value: an alias output); several of one shape
pair in order only when the graph fixes their order (they are graph outputs, whose order is the
model's output order); an output the model names as a graph output is that output; any other coincidence
of shapes, a module with no node in the graph, or one called more than once is listed as
unpaired with the reason, never guessed.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modelexport.errors import ModelExportError
from modelexport.runtime.diff import TensorError, _json_number, module_boundaries, tree_order


class ModelRefusedInputs(ModelExportError):
    """The PyTorch model raised on the inputs both sides were to run (a vision-language model
    given dummy token ids without its image tokens)."""


@dataclass
class TorchModuleDiff:
    module_path: str
    hierarchy_tag: str
    paired: bool
    reason: str = ""  # why not paired
    max_abs: float | None = None
    rel_l2: float | None = None
    cosine: float | None = None
    tensors: int = 0
    state: str = ""  # for paired modules: ok | nonfinite | uncompared | zero_reference (runtime/diff.py)

    def as_dict(self) -> dict:
        return {k: _json_number(v) for k, v in asdict(self).items()}


def _named_tensors(value) -> list[tuple[str | None, object]]:
    """``_flat_tensors`` with each tensor's name where the output names it at the top level
    (a dict or ModelOutput key holding a tensor: ``logits``, sentence-transformers'
    ``sentence_embedding``)."""
    import torch

    if isinstance(value, dict) or (hasattr(value, "to_tuple") and hasattr(value, "keys")):
        named = []
        for key in list(value.keys()):
            item = value[key]
            if isinstance(item, torch.Tensor):
                named.append((str(key), item))
            else:
                named += [(None, t) for t in _flat_tensors(item)]
        return named
    return [(None, t) for t in _flat_tensors(value)]


def _flat_tensors(value) -> list:
    """Tensors of a module's output in order; a cache as its legacy layout (per layer: key,
    value[, cross key, cross value]), the order of Optimum's ``present.*`` outputs."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if hasattr(value, "get_seq_length"):  # a transformers Cache (4.57 and 5.x layouts)
        from modelexport.exporter.generic.wrappers import cache_layers

        layers = cache_layers(value)
        if layers is None and hasattr(value, "to_legacy_cache"):
            layers = value.to_legacy_cache()
        return [t for layer in layers or () for t in _flat_tensors(layer)]
    if isinstance(value, dict) or hasattr(value, "to_tuple"):
        items = value.values() if isinstance(value, dict) else value.to_tuple()
        return [t for v in items for t in _flat_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat_tensors(v)]
    return []


def source_folder(meta, source: str | None) -> Path:
    """The folder ``--pytorch`` loads: the one given, else the local one the metadata records."""
    path = source or (meta.source.get("model") if meta.source.get("local") else None)
    if not path or not Path(path).is_dir():
        given = f"{source} is not a folder" if source else "the metadata names no source folder that exists here"
        raise ModelExportError(f"--pytorch needs the source model folder: {given}; pass --pytorch PATH")
    return Path(path)


def export_inputs(model, meta, folder: Path, input_names: set[str]) -> tuple[list[dict], str]:
    """The inputs a generic single-file export was traced and validated on, made again the same
    way (``InputBuilder``: image tokens as many as the model asks for, the folder's tokenizer or
    processor), as ONNX Runtime feeds."""
    from modelexport.exporter.generic.inputs import InputBuilder, Preprocessors

    example = InputBuilder(model, meta.task, Preprocessors(folder)).build(batch=1)
    feed = {k: v.detach().numpy() for k, v in example.inputs.items() if k in input_names}
    return [feed], "the export's own inputs (" + "; ".join(example.notes) + ")"


def load_source_model(meta, source: str | None):
    """The PyTorch model an export came from: ``source`` or the local folder the metadata names;
    loaded as the export loaded it (Optimum's loader for its task where Optimum is here, else
    transformers' Auto class or sentence-transformers, as the export without Optimum does)."""
    from modelexport.exporter.optimum import available
    from modelexport.exporter.source import ModelSource

    path = source_folder(meta, source)
    model_source = ModelSource(str(path), True, meta.library, meta.task, meta.source.get("model_type", ""))
    if available() and meta.exporter != "generic":
        from modelexport.exporter.optimum.tasks import load_model

        return load_model(model_source, trust_remote_code=False)
    from modelexport.exporter.generic.source import load

    return load(model_source, trust_remote_code=False, task_given=True)


_PAST = re.compile(r"past_key_values\.(\d+)\.(?:(decoder|encoder)\.)?(key|value|indexer_key)$")


def torch_inputs(model, library: str, feed: dict):
    """The keyword arguments (or, for sentence-transformers, the features dict) that give the
    PyTorch model the inputs of ``feed``; a past becomes the model's cache."""
    import torch

    # copies, not views of the feed ONNX Runtime also reads: a forward may change an input in
    # place (XGLM's ``position_ids += self.offset``)
    if library == "sentence_transformers":
        return {k: torch.from_numpy(np.array(v)) for k, v in feed.items()}
    accepted = inspect.signature(model.forward).parameters
    kwargs, past = {}, {}
    for name, value in feed.items():
        m = _PAST.match(name)
        if m:
            past[(int(m.group(1)), m.group(2) or "", m.group(3))] = torch.from_numpy(np.array(value))
            continue
        if name == "use_cache_branch":
            continue  # the merged decoder's switch: the model decides from its cache
        if name not in accepted:
            raise ModelExportError(f"the PyTorch model's forward takes no input {name!r}, which the ONNX file "
                                   "takes: the two cannot be run on the same inputs")
        kwargs[name] = torch.from_numpy(np.array(value))
    if past:
        from modelexport.exporter.generic.wrappers import cache_argument, filled_cache

        argument = cache_argument(model)  # `cache` in transformers 5, `past_key_values` before
        if argument not in accepted:
            raise ModelExportError("the ONNX file takes a past (past_key_values.*) that the PyTorch model's forward "
                                   "does not")
        layers = sorted({k[0] for k in past if k[2] != "indexer_key"})
        if any(t.shape[-2] for k, t in past.items() if k[2] != "indexer_key"):  # an empty past is no cache: the model starts one
            if any(k[1] for k in past) or any((i, "", kv) not in past for i in layers for kv in ("key", "value")):
                raise ModelExportError("a seq2seq past is not given to PyTorch here: --pytorch compares "
                                       "single-file exports")
            kwargs[argument] = filled_cache(model.config, [(past[(i, "", "key")], past[(i, "", "value")])
                                                           for i in layers],
                                            {k[0]: t for k, t in past.items() if k[2] == "indexer_key"})
        if "use_cache" in accepted:
            kwargs["use_cache"] = True
    return kwargs


def diff_against_pytorch(onnx_path: Path, model, library: str, feeds: list[dict]) -> list[TorchModuleDiff]:
    import onnx
    import torch

    from modelexport.runtime.intermediates import session_exposing

    graph_model = onnx.load(str(onnx_path), load_external_data=False)
    bounds = module_boundaries(graph_model)
    output_index = {o.name: i for i, o in enumerate(graph_model.graph.output)}
    order = {o: i for i, n in enumerate(graph_model.graph.node) for o in n.output}
    exposed = sorted({t for ts in bounds.outputs.values() for t in ts}, key=lambda t: order.get(t, -1))
    records: dict[str, list[list[np.ndarray]]] = {}
    output_names: dict[str, list[str | None]] = {}
    hooks = []
    for path, module in model.named_modules():
        def hook(_module, _inputs, output, path=path):
            named = _named_tensors(output)
            output_names[path] = [n for n, _ in named]
            records.setdefault(path, []).append([t.detach().float().cpu().numpy() for _, t in named])
        hooks.append(module.register_forward_hook(hook))
    errors: dict[str, TensorError] = {}
    reasons: dict[str, str] = {}
    aliases: dict[str, list[list[str]]] = {}
    pairs: dict[str, list[tuple[int, str]]] = {}
    try:
        with session_exposing(onnx_path, exposed) as session:
            names = {i.name for i in session.get_inputs()}
            for run, feed in enumerate(feeds):
                records.clear()
                ort_feed = {k: v for k, v in feed.items() if k in names}
                inputs = torch_inputs(model, library, ort_feed)
                try:
                    with torch.inference_mode():
                        model(inputs) if library == "sentence_transformers" else model(**inputs)
                except Exception as e:  # the model's own check of its inputs, said as such
                    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                    raise ModelRefusedInputs(f"the PyTorch model refused input {run + 1} ({type(e).__name__}: "
                                             f"{first}); give inputs it accepts: --text/--image through the "
                                             "folder's tokenizer or processor, or --inputs FILE.npz") from e
                values = dict(zip(exposed, session.run(exposed, ort_feed)))
                if run == 0:
                    pairs = pair_outputs(bounds, records, values, reasons, output_index, output_names, aliases)
                for module, groups in aliases.items():
                    if module in pairs and any(not np.array_equal(values[t], values[g[0]]) for g in groups for t in g):
                        del pairs[module]  # the tensors paired as one value differ on this input
                        errors.pop(module, None)
                        reasons[module] = "boundary tensors of one shape that held one value differ on another input"
                for module, matched in pairs.items():
                    err = errors.setdefault(module, TensorError())
                    calls = records.get(module)
                    for k, name in matched:
                        err.add(calls[0][k] if calls and k < len(calls[0]) else None, values[name])
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for path in sorted(set(bounds.tags) | set(reasons), key=tree_order):
        if path in errors:
            e = errors[path]
            rows.append(TorchModuleDiff(path, bounds.tags.get(path, ""), True, "", e.max_abs_or_none, e.rel_l2,
                                        e.cosine, len(pairs[path]), e.state))
        else:
            rows.append(TorchModuleDiff(path, bounds.tags.get(path, ""), False, reasons.get(path, "no boundary")))
    return rows


def pair_outputs(bounds, records, values, reasons, output_index: dict[str, int] | None = None,
                 names: dict[str, list] | None = None, aliases: dict | None = None) -> dict[str, list[tuple[int, str]]]:
    """Module -> [(index of its PyTorch output, ONNX tensor)], for modules paired without doubt
    (by order and shape, see the module docstring; an output the model names like a graph output,
    ``logits``, is that output); the others get a reason."""
    output_index = output_index or {}
    names = names or {}
    aliases = {} if aliases is None else aliases
    pairs = {}
    for module in set(records) | set(bounds.outputs):
        calls = records.get(module)
        tensors = [t for t in bounds.outputs.get(module, []) if t in values
                   and np.issubdtype(np.asarray(values[t]).dtype, np.floating)]
        if not calls:
            reasons[module] = "not called by PyTorch on these inputs"
            continue
        if not bounds.outputs.get(module):
            reasons[module] = "no node in the graph (never traced, or folded into another)"
            continue
        if len(calls) > 1:
            reasons[module] = f"called {len(calls)} times: its boundary mixes the calls"
            continue
        outputs = [(k, t) for k, t in enumerate(calls[0]) if np.issubdtype(np.asarray(t).dtype, np.floating)]
        output_names = names.get(module) or []
        matched, problem = [], ""
        by_name = {}
        for k, out in outputs:
            name = output_names[k] if k < len(output_names) else None
            if name in tensors and name in output_index and np.shape(values[name]) == np.shape(out):
                by_name[k] = name
        matched += sorted(by_name.items())
        by_shape: dict[tuple, tuple[list, list]] = {}
        for k, out in outputs:
            if k not in by_name:
                by_shape.setdefault(tuple(np.shape(out)), ([], []))[0].append(k)
        for t in tensors:
            shape = tuple(np.shape(values[t]))
            if shape in by_shape and t not in by_name.values():
                by_shape[shape][1].append(t)
        for shape, (ks, ts) in by_shape.items():
            if not ts:
                continue  # an output the graph does not hand on (attention weights, a cache updated in place)
            if len(ks) == len(ts) == 1:
                matched.append((ks[0], ts[0]))
            elif len(ks) == 1 and all(np.array_equal(values[t], values[ts[0]]) for t in ts[1:]):
                matched.append((ks[0], ts[0]))  # one value under several names (an alias output): no doubt
                aliases.setdefault(module, []).append(ts)  # checked again on every other input
            elif len(ks) == len(ts) and all(t in output_index for t in ts):
                matched += list(zip(ks, sorted(ts, key=output_index.get)))  # the graph's outputs keep the order
            else:
                problem = (f"{len(ks)} output(s) and {len(ts)} boundary tensor(s) of shape {list(shape)}: "
                           "which is which is not known")
                break
        graph_ordered = sorted((k, output_index[t]) for k, t in matched if t in output_index)
        if not problem and [i for _, i in graph_ordered] != sorted(i for _, i in graph_ordered):
            problem = "its outputs come in another order than the graph's"
        if problem:
            reasons[module] = problem
        elif matched:
            pairs[module] = sorted(matched)
        else:
            reasons[module] = "no output of a shape found at its boundary"
    return pairs
