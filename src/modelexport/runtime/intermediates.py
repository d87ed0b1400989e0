"""Run an ONNX file in ONNX Runtime with some of its intermediate values as extra outputs.

Used where a tool needs values inside the graph: static-shape measurement, per-module diffs.
The probe file is written beside the original so external weights resolve by the same relative
paths, and removed as soon as the session holds it.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def session_exposing(path: Path, names: list[str]) -> Iterator[object]:
    """An InferenceSession of ``path`` whose outputs are the graph's own, then ``names``.

    Graph optimizations are off: the point is to see the values as the file computes them."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in present)
    probe = path.with_name(f".{path.stem}.{os.getpid()}.probe.onnx")
    try:
        onnx.save(model, str(probe))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4
        session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
    finally:
        probe.unlink(missing_ok=True)
    yield session
