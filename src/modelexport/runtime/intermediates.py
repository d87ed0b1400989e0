"""Run an ONNX file in ONNX Runtime with some of its intermediate values as extra outputs.

Used where a tool needs values inside the graph: static-shape measurement, per-module diffs.
A model whose weights are all in the file runs from memory; one with external weights is
written as a probe file beside the original, so they resolve by the same relative paths, and
removed as soon as the session holds it.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def session_exposing(path: Path, names: list[str], optimization: str = "disabled") -> Iterator[object]:
    """An InferenceSession of ``path`` whose outputs are the graph's own, then ``names``.

    Graph optimizations are off by default: the point is to see the values as the file computes
    them (``optimization``: a ``sessions.LEVELS`` key, for values as a deployed session gives them)."""
    import onnx

    from modelexport.runtime.sessions import new_session

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in present)
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        yield new_session(model.SerializeToString(), optimization=optimization)  # nothing written
        return
    probe = path.with_name(f".{path.stem}.{os.getpid()}.probe.onnx")
    try:
        onnx.save(model, str(probe))
        session = new_session(probe, optimization=optimization)
    finally:
        probe.unlink(missing_ok=True)
    yield session
