"""``onnx.checker`` for the files we write, including those ONNX Runtime's optimizer rewrote.

That optimizer writes a few of ONNX Runtime's own ops in the default ONNX domain (T5's RMS norms
become ``SimplifiedLayerNormalization``), which ONNX Runtime runs and ``onnx.checker`` does not
know ("No Op registered for SimplifiedLayerNormalization"). Those nodes are checked as the
contrib ops they are; everything else as usual."""
from __future__ import annotations

from pathlib import Path

# Registered by ONNX Runtime in the ONNX domain (onnxruntime/core/graph/contrib_ops), written there
# by onnxruntime.transformers' fusions.
ORT_OPS_IN_ONNX_DOMAIN = frozenset({"SimplifiedLayerNormalization"})


def check_file(path: Path, full_check: bool = False) -> list[str]:
    """Raise ``onnx.checker.ValidationError`` (or the checker's other errors) for an invalid file;
    returns the ONNX Runtime ops in the ONNX domain that were checked as contrib ops."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=full_check)
        return []
    except onnx.checker.ValidationError as e:
        if not any(f"No Op registered for {op} " in str(e) for op in ORT_OPS_IN_ONNX_DOMAIN):
            raise
    model = onnx.load(str(path), load_external_data=False)
    found = set()
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.domain in ("", "ai.onnx") and node.op_type in ORT_OPS_IN_ONNX_DOMAIN:
                node.domain = "com.microsoft"
                found.add(node.op_type)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.add(domain="com.microsoft", version=1)
    # weights stay out (they are on disk or inline as they were): the graph's structure is checked
    for tensor in model.graph.initializer:
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    onnx.checker.check_model(model, full_check=full_check)
    return sorted(found)


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)
