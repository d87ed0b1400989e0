"""The one place ONNX Runtime sessions are made: CPU provider, ORT's own log lines off (failures
reach the user as one line from the caller), the optimization level asked for, optional
profiling. Every verb that runs a model goes through here."""
from __future__ import annotations

from pathlib import Path

LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


def session_options(optimization: str = "all", threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[optimization])
    if threads:
        options.intra_op_num_threads = threads
    return options


def new_session(model, optimization: str = "all", options=None, threads: int | None = None):
    """An InferenceSession on the CPU of ``model``: a path, or serialized ModelProto bytes.
    ``options`` (from ``session_options``) when the caller sets more (profiling, saving the
    optimized graph)."""
    import onnxruntime as ort

    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options or session_options(optimization, threads),
                                providers=["CPUExecutionProvider"])
