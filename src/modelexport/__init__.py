"""modelexport: Hugging Face and PyTorch models to ONNX, every node tagged with its module.

Public API (imported lazily so that ``import modelexport`` does not pay for torch):
``export``, ``export_module``, ``load`` (run an exported folder), ``read_tags``, ``ExportResult``,
``ModelExportError``.
"""
from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"  # the package's version: pyproject.toml reads it from here

__all__ = ["export", "export_module", "read_tags", "load", "load_pipeline", "ExportResult", "ModelExportError",
           "NodeTag", "ExportedModel"]

_LAZY = {
    "export": "modelexport.exporter.pipeline",
    "export_module": "modelexport.exporter.module_export",
    "read_tags": "modelexport.hierarchy.tags",
    "NodeTag": "modelexport.hierarchy.tags",
    "ExportResult": "modelexport.exporter.result",
    "ModelExportError": "modelexport.errors",
    "load_pipeline": "modelexport.runtime.static_pipeline",
    "load": "modelexport.runtime.exported",
    "ExportedModel": "modelexport.runtime.exported",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modelexport' has no attribute {name!r}")
