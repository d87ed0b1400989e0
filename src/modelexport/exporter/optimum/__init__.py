"""Everything that needs Optimum (optimum-onnx) lives in this subpackage: the export through
Optimum's ONNX configs, its private names, its task inference, validation through its OnnxConfig
and the names of its ORTModel classes. The rest of modelexport never imports Optimum, so it runs
without it (``pip install modelexport``); ``pip install 'modelexport[optimum]'`` adds it, and with
it the ``transformers<4.58`` that optimum-onnx 0.1 requires.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache

INSTALL_HINT = "pip install 'modelexport[optimum]' (optimum-onnx 0.1 requires transformers<4.58)"


@lru_cache(maxsize=None)
def unavailable_reason() -> str | None:
    """None when Optimum's exporter can be used here, else why not, in words."""
    try:  # find_spec of a submodule imports its parent, which may fail as any import can
        found = all(importlib.util.find_spec(name) is not None
                    for name in ("optimum", "optimum.exporters", "optimum.onnxruntime"))
    except ImportError:
        found = False
    if not found:
        return f"Optimum (optimum-onnx) is not installed: {INSTALL_HINT}"
    from modelexport.compat import installed_version, version_tuple

    transformers_version = installed_version("transformers")
    if version_tuple(transformers_version)[:2] >= (4, 58):
        return (f"optimum-onnx 0.1 does not work with transformers {transformers_version} "
                "(it requires transformers<4.58)")
    return None


def available() -> bool:
    return unavailable_reason() is None


def require(what: str) -> None:
    """Refuse ``what`` in one line when Optimum cannot be used here."""
    from modelexport.errors import ModelExportError

    reason = unavailable_reason()
    if reason is not None:
        raise ModelExportError(f"{what} needs Optimum; {reason}")
