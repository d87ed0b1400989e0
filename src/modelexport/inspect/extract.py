"""Cut one module's nodes out of a tagged model into a standalone ONNX model.

Inputs are the tensors entering the module (graph inputs or values computed outside it, also
those its If/Loop bodies read from the enclosing graph), outputs the tensors it computes that
are used outside it (or are graph outputs). Constants defined outside but read inside are
carried along; only the initializers the module reads are kept; node tags are kept as they are.
The cut itself is ``inspect/cut.py``, shared with ``diff``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from modelexport.errors import ModelExportError
from modelexport.hierarchy import paths
from modelexport.hierarchy.tags import node_tag
from modelexport.inspect.cut import GraphCut


@dataclass
class Extraction:
    model: object  # onnx.ModelProto
    inputs: list[str]
    outputs: list[str]
    nodes: int


def module_boundary(model, module: str, cut: GraphCut | None = None) -> tuple[list[str], list[str], int]:
    """The module's inputs, outputs and node count (``inspect/cut.py``); an unknown module is an
    error naming close matches."""
    cut = cut or GraphCut(model)
    inside = cut.inside(module) if any(node_tag(n).module_path is not None for n in cut.nodes) else []
    if not inside:
        known = sorted(paths.with_ancestors(p for n, p in zip(cut.nodes, cut.paths)
                                            if node_tag(n).module_path is not None) - {""})
        close = difflib.get_close_matches(module, known, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ModelExportError(f"no node of module {module!r} in this model{hint}")
    boundary = cut.boundary(module)
    return boundary.inputs, boundary.outputs, len(inside)


def extract_module(model, module: str) -> Extraction:
    """``model`` must have its weights loaded (``onnx.load`` with external data)."""
    import onnx
    from onnx import helper

    cut = GraphCut(model)
    inputs, outputs, count = module_boundary(model, module, cut)
    if not outputs:
        raise ModelExportError(f"module {module!r} computes nothing used outside it: nothing to extract")
    graph = model.graph
    # Types of the boundary tensors: from shape inference over a copy without the weights
    # (inference does not need them, and copying them would double the memory).
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    del skeleton.graph.initializer[:]
    skeleton.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                for t in graph.initializer)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton)
    except (onnx.shape_inference.InferenceError, ValueError) as e:
        raise ModelExportError(f"shape inference failed, so the module's boundary cannot be typed: {e}") from e
    types = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)
             + list(inferred.graph.output)}
    missing = [name for name in inputs + outputs if name not in types]
    if missing:
        raise ModelExportError(f"no type known for {', '.join(missing[:3])}: cannot extract {module!r}")
    sub = cut.piece(module, [types[name] for name in inputs], [types[name] for name in outputs])
    sub.producer_name = "modelexport extract"
    return Extraction(sub, inputs, outputs, count)
