"""Imported once by the breadth table's fork server (scripts/breadth_table.py), before it forks a
worker per model type: the libraries every worker needs, so that no worker pays their import
(seconds each, hundreds of types). Nothing here starts a thread or a session."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import onnxruntime  # noqa: E402,F401  (before torch, as the workers import them)
import onnx  # noqa: E402,F401
import torch  # noqa: E402,F401
import torch.onnx  # noqa: E402,F401
import transformers  # noqa: E402,F401
import transformers.modeling_utils  # noqa: E402,F401
import transformers.generation  # noqa: E402,F401

try:
    import onnxscript  # noqa: F401
    import torch.onnx._internal.exporter._core  # noqa: F401
except ImportError:  # the anchor and the generic path report it
    pass

import modelexport  # noqa: E402,F401
import modelexport.exporter.pipeline  # noqa: E402,F401
import modelexport.exporter.generic.export  # noqa: E402,F401
import modelexport.runtime.exported  # noqa: E402,F401
import modelexport.testing.breadth  # noqa: E402,F401

from modelexport.exporter import optimum  # noqa: E402

if optimum.available():  # transformers 4.57: Optimum's exporter and ORTModel classes
    from modelexport.exporter.optimum import plain  # noqa: E402

    plain.preload()
