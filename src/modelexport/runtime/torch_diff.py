"""``diff A --pytorch``: an export against the PyTorch model it came from, module by module.

PyTorch side: forward hooks on every module record what each module returns. ONNX side: the
module's boundary values (diff.py). A module's outputs are paired with its boundary tensors by
order and shape, and only where that is unambiguous: a module with no node in the graph, one
called more than once, or one whose outputs match several boundary tensors of the same shape is
listed as unpaired, with the reason, never guessed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modelexport.errors import ModelExportError
from modelexport.runtime.diff import TensorError, _tree_order, module_boundaries


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

    def as_dict(self) -> dict:
        return asdict(self)


def _flat_tensors(value) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict) or hasattr(value, "to_tuple"):
        items = value.values() if isinstance(value, dict) else value.to_tuple()
        return [t for v in items for t in _flat_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat_tensors(v)]
    return []


def load_source_model(meta, source: str | None):
    """The PyTorch model an export came from: ``source`` or the local folder the metadata names."""
    from modelexport.exporter.optimum.tasks import load_model
    from modelexport.exporter.source import ModelSource

    path = source or (meta.source.get("model") if meta.source.get("local") else None)
    if not path or not Path(path).is_dir():
        raise ModelExportError("--pytorch needs the source model folder: the metadata names none that exists here; "
                               "pass --pytorch PATH")
    return load_model(ModelSource(str(path), True, meta.library, meta.task, meta.source.get("model_type", "")),
                      trust_remote_code=False)


def diff_against_pytorch(onnx_path: Path, model, library: str, feeds: list[dict]) -> list[TorchModuleDiff]:
    import onnx
    import torch

    from modelexport.runtime.intermediates import session_exposing

    graph_model = onnx.load(str(onnx_path), load_external_data=False)
    bounds = module_boundaries(graph_model)
    order = {o: i for i, n in enumerate(graph_model.graph.node) for o in n.output}
    exposed = sorted({t for ts in bounds.outputs.values() for t in ts}, key=lambda t: order.get(t, -1))
    records: dict[str, list[list[np.ndarray]]] = {}
    hooks = []
    for path, module in model.named_modules():
        def hook(_module, _inputs, output, path=path):
            records.setdefault(path, []).append([t.detach().float().cpu().numpy() for t in _flat_tensors(output)])
        hooks.append(module.register_forward_hook(hook))
    errors: dict[str, TensorError] = {}
    reasons: dict[str, str] = {}
    pairs: dict[str, list[tuple[int, str]]] = {}
    try:
        with session_exposing(onnx_path, exposed) as session:
            names = {i.name for i in session.get_inputs()}
            for run, feed in enumerate(feeds):
                records.clear()
                with torch.inference_mode():
                    inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in feed.items() if k in names}
                    model(inputs) if library == "sentence_transformers" else model(**inputs)
                values = dict(zip(exposed, session.run(exposed, {k: v for k, v in feed.items() if k in names})))
                if run == 0:
                    pairs = _pair(bounds, records, values, reasons)
                for module, matched in pairs.items():
                    err = errors.setdefault(module, TensorError())
                    for k, name in matched:
                        calls = records.get(module)
                        if calls and k < len(calls[0]) and np.shape(calls[0][k]) == np.shape(values[name]):
                            err.add(calls[0][k], values[name])
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for path in sorted(set(bounds.tags) | set(reasons), key=_tree_order):
        if path in errors:
            e = errors[path]
            rows.append(TorchModuleDiff(path, bounds.tags.get(path, ""), True, "", e.max_abs, e.rel_l2, e.cosine,
                                        len(pairs[path])))
        else:
            rows.append(TorchModuleDiff(path, bounds.tags.get(path, ""), False, reasons.get(path, "no boundary")))
    return rows


def _pair(bounds, records, values, reasons) -> dict[str, list[tuple[int, str]]]:
    """Module -> [(index of its PyTorch output, ONNX tensor)], for modules paired without doubt."""
    pairs = {}
    for module in set(records) | set(bounds.outputs):
        calls = records.get(module)
        tensors = [t for t in bounds.outputs.get(module, []) if t in values]
        if not calls:
            reasons[module] = "not called by PyTorch on these inputs"
            continue
        if not tensors:
            reasons[module] = "no node in the graph (never traced, or folded into another)"
            continue
        if len(calls) > 1:
            reasons[module] = f"called {len(calls)} times: its boundary mixes the calls"
            continue
        outputs = [(k, t) for k, t in enumerate(calls[0]) if np.issubdtype(np.asarray(t).dtype, np.floating)]
        matched, used = [], set()
        for k, out in outputs:
            same = [t for t in tensors if t not in used and np.shape(values[t]) == np.shape(out)
                    and np.issubdtype(np.asarray(values[t]).dtype, np.floating)]
            if len(same) == 1:
                matched.append((k, same[0]))
                used.add(same[0])
            elif len(same) > 1:
                matched = []
                reasons[module] = f"output {k} matches {len(same)} boundary tensors of shape {list(np.shape(out))}"
                break
        if matched:
            pairs[module] = matched
        elif module not in reasons:
            reasons[module] = "no output of a shape found at its boundary"
    return pairs
