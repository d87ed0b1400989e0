"""Every use of Optimum's and torch's private names, behind one adapter.

optimum-onnx has no public API for what the export needs (the file -> submodel pairs Optimum
validates, whether a model type has an ONNX config, the opsets the TorchScript exporter writes),
so these calls reach into private names that change between releases. They live here only, and
the installed versions are checked once, before the first such call: a version the project was
not tested with fails in one line instead of deep inside a private function.
"""
from __future__ import annotations

import contextlib
import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from modelexport.errors import ModelExportError

# package -> (lowest, below) version tested: the ranges pyproject.toml declares.
TESTED = {"optimum-onnx": ((0, 1), (0, 2)), "torch": ((2, 13), (2, 14))}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() < len(piece):  # "0rc1": a pre-release tag ends the numeric part
            break
    return tuple(parts)


@lru_cache(maxsize=None)
def check_versions() -> None:
    for package, (low, high) in TESTED.items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            raise ModelExportError(f"{package} is not installed; install modelexport's dependencies") from None
        if not low <= _version_tuple(installed)[:2] < high:
            raise ModelExportError(
                f"{package} {installed} is not a version modelexport was tested with "
                f"({'.'.join(map(str, low))} <= version < {'.'.join(map(str, high))}): it relies on that release's "
                f"internals; install {package}>={'.'.join(map(str, low))},<{'.'.join(map(str, high))}")


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


def torchscript_opset_range() -> tuple[int, int]:
    """Opsets the TorchScript exporter (the one Optimum calls) can write."""
    check_versions()
    from torch.onnx._constants import ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET

    return ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET


def dynamo_opset_range() -> tuple[int, int]:
    """Opsets the dynamo exporter writes without a version conversion afterwards (torchlib's
    functions start at 18; lower opsets are converted down, which fails on many graphs)."""
    check_versions()
    from torch.onnx._constants import ONNX_MAX_OPSET
    from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET

    return TORCHLIB_OPSET, ONNX_MAX_OPSET


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
              opset_version=None, kwargs=None, **_ignored):  # do_constant_folding, dynamo: TorchScript's
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
