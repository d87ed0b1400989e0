"""Every use of Optimum's private names, behind one adapter (torch's are in ``modelexport.compat``).

optimum-onnx has no public API for what the export needs (the file -> submodel pairs Optimum
validates, whether a model type has an ONNX config, its one ``torch.onnx.export`` call), so these
calls reach into private names that change between releases. They live here only, and the
installed versions are checked once, before the first such call: a version the project was not
tested with fails in one line instead of deep inside a private function.
"""
from __future__ import annotations

import contextlib
import sys
from functools import lru_cache
from pathlib import Path

from modelexport.compat import check_tested, check_version

# package -> (lowest, below) version tested: the ranges pyproject.toml declares for the extra.
TESTED = {"optimum-onnx": ((0, 1), (0, 2))}


@lru_cache(maxsize=None)
def check_versions() -> None:
    check_tested("optimum-onnx", TESTED)
    check_version("torch")


def submodels_and_onnx_configs(model, task: str, library: str):
    """Optimum's (main OnnxConfig, {name: (submodel, OnnxConfig)}) for the files it will write."""
    check_versions()
    from optimum.exporters.onnx.utils import _get_submodels_and_onnx_configs

    model_type = getattr(model.config, "export_model_type", None) or model.config.model_type
    custom = library == "transformers" and model_type not in supported_types("transformers")
    return _get_submodels_and_onnx_configs(
        model=model, task=task, monolith=False, custom_onnx_configs={}, custom_architecture=custom,
        float_dtype="fp32", fn_get_submodels=None, preprocessors=None, _variant="default", library_name=library,
        model_kwargs=None)


def supported_types(library: str) -> dict[str, list[str]]:
    """Model type -> ONNX tasks Optimum has configs for, for one library."""
    check_versions()
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the configs)
    from optimum.exporters.tasks import TasksManager

    table = TasksManager._LIBRARY_TO_SUPPORTED_MODEL_TYPES.get(library, {})
    return {model_type: sorted(backends.get("onnx", {})) for model_type, backends in table.items()
            if "onnx" in backends}


@contextlib.contextmanager
def optimum_traces_with_dynamo(warnings: dict[str, list[str]] | None = None):
    """Inside the block, Optimum's ``export_pytorch`` traces with torch.export.

    optimum-onnx 0.1.0 hard-codes ``torch.onnx.export(model, (dummy_inputs,), f=..., input_names=...,
    output_names=..., dynamic_axes=..., do_constant_folding=..., opset_version=..., dynamo=False)``
    (it imports ``torch.onnx.export`` at call time); everything around the call (the model
    patcher, dummy inputs, names, dynamic axes, external data, post-processing) stays Optimum's.
    Only that call is replaced, by one that passes the same description to the dynamo exporter.
    ``warnings`` receives, per file name, what the trace could not keep as declared.
    """
    check_versions()
    import torch.onnx

    from modelexport.exporter.dynamo_trace import export_dynamo

    original = torch.onnx.export

    def trace(model, args=(), f=None, *, input_names=None, output_names=None, dynamic_axes=None,
              opset_version=None, kwargs=None, **others):  # do_constant_folding, dynamo: TorchScript's
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if not caller.startswith("optimum."):
            # Another thread or library exporting meanwhile: its call is not ours to change.
            return original(model, args, f, input_names=input_names, output_names=output_names,
                            dynamic_axes=dynamic_axes, opset_version=opset_version, kwargs=kwargs, **others)
        args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
        if args and isinstance(args[-1], dict) and kwargs is None:  # TorchScript's "dict last" convention
            args, kwargs = args[:-1], args[-1]
        notes = export_dynamo(model, args, kwargs, Path(f), input_names=list(input_names or []) or None,
                              output_names=list(output_names or []) or None, dynamic_axes=dynamic_axes,
                              opset=opset_version, onnx_export=original)
        if warnings is not None and notes:
            warnings.setdefault(Path(f).name, []).extend(notes)

    torch.onnx.export = trace
    try:
        yield
    finally:
        torch.onnx.export = original


@contextlib.contextmanager
def no_preprocessor_reload(config):
    """Optimum re-loads and saves the preprocessors from ``config._name_or_path`` (four Auto*
    loaders, ~60 ms on MiniLM, errors swallowed); artifacts.py writes them itself, with a record of
    each file, so Optimum is given no path to load from while it exports."""
    name_or_path = getattr(config, "_name_or_path", None)
    if config is not None:
        config._name_or_path = ""
    try:
        yield
    finally:
        if config is not None:
            config._name_or_path = name_or_path
