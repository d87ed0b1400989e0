"""Cut one module's nodes out of a tagged model into a standalone ONNX model.

Inputs are the tensors entering the module (graph inputs or values computed outside it),
outputs the tensors it computes that are used outside it (or are graph outputs). Constants
defined outside but read inside are carried along; only the initializers the module reads are
kept; node tags are kept as they are.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from modelexport.errors import ModelExportError
from modelexport.hierarchy.tags import node_tag


@dataclass
class Extraction:
    model: object  # onnx.ModelProto
    inputs: list[str]
    outputs: list[str]
    nodes: int


def _in_module(path: str | None, module: str) -> bool:
    if path is None:
        return False
    return module == "" or path == module or path.startswith(module + ".")


def module_boundary(model, module: str) -> tuple[list[str], list[str], int]:
    graph = model.graph
    tags = [node_tag(n).module_path for n in graph.node]
    inside = [i for i, p in enumerate(tags) if _in_module(p, module)]
    if not inside:
        known = sorted({q for p in tags if p for q in _prefixes(p)})
        close = difflib.get_close_matches(module, known, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ModelExportError(f"no node of module {module!r} in this model{hint}")
    inside_set = set(inside)
    initializers = {t.name for t in graph.initializer}
    outside_constants = {o for i, n in enumerate(graph.node) if i not in inside_set and n.op_type == "Constant"
                         for o in n.output}
    produced = {o for i in inside for o in graph.node[i].output if o}
    consumed = [x for i in inside for x in graph.node[i].input if x]
    inputs = list(dict.fromkeys(x for x in consumed
                                if x not in produced and x not in initializers and x not in outside_constants))
    used_outside = {x for i, n in enumerate(graph.node) if i not in inside_set for x in n.input}
    used_outside |= {o.name for o in graph.output}
    outputs = [o for i in inside for o in graph.node[i].output if o and o in used_outside]
    return inputs, list(dict.fromkeys(outputs)), len(inside)


def _prefixes(path: str):
    atoms = path.split(".")
    for i in range(1, len(atoms) + 1):
        yield ".".join(atoms[:i])


def extract_module(model, module: str) -> Extraction:
    """``model`` must have its weights loaded (``onnx.load`` with external data)."""
    import onnx
    from onnx import helper

    inputs, outputs, count = module_boundary(model, module)
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

    tags = [node_tag(n).module_path for n in graph.node]
    inside = {i for i, p in enumerate(tags) if _in_module(p, module)}
    reads = {x for i in inside for x in _all_inputs(graph.node[i])}
    constants = {i for i, n in enumerate(graph.node)
                 if i not in inside and n.op_type == "Constant" and any(o in reads for o in n.output)}
    nodes = [graph.node[i] for i in sorted(inside | constants)]
    initializers = [t for t in graph.initializer if t.name in reads]
    sub_graph = helper.make_graph(nodes, f"{graph.name or 'graph'}:{module or 'root'}",
                                  [types[name] for name in inputs], [types[name] for name in outputs],
                                  initializers)
    sub = helper.make_model(sub_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                            producer_name="modelexport extract")
    return Extraction(sub, inputs, outputs, count)


def _all_inputs(node):
    """Tensor names a node reads, including those its subgraphs read from outside."""
    yield from (x for x in node.input if x)
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in sub.node:
                yield from _all_inputs(inner)
