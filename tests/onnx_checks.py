"""Checks on ONNX files that do not use the code under test."""
from __future__ import annotations

from pathlib import Path

import onnx


def symbolic_dims(path: Path) -> list[str]:
    """Every dimension that is not a number, over inputs, outputs and value_info, and every node
    output with no recorded shape: what an NPU compiler would reject. Independent of the code
    under test (static_shapes.is_fully_static)."""
    model = onnx.load(path, load_external_data=False)
    g = model.graph
    found, shaped = [], set()
    for value in list(g.input) + list(g.output) + list(g.value_info):
        shaped.add(value.name)
        for i, d in enumerate(value.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                found.append(f"{value.name}[{i}]={d.dim_param or '?'}")
    initializers = {t.name for t in g.initializer}
    found += [f"{o} (no shape)" for n in g.node for o in n.output if o and o not in shaped and o not in initializers]
    return found
