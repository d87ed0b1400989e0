"""The one place that calls Optimum's exporter.

The graph written is exactly the one Optimum writes: we call ``onnx_export_from_model`` on the
model we loaded (so it is loaded once) and tag the files afterwards. Optimum's own validation
is replaced by ours (validation.py), which runs on the tagged files and reports the max diff.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ExportedFile:
    name: str  # file name relative to the output folder, e.g. "model.onnx"
    submodel: object  # the nn.Module Optimum traced for this file
    onnx_config: object  # Optimum's OnnxConfig for it (dummy inputs, outputs, atol)


def _submodels(model, task: str, library: str) -> dict:
    from optimum.exporters.onnx.utils import _get_submodels_and_onnx_configs
    from optimum.exporters.tasks import TasksManager

    model_type = getattr(model.config, "export_model_type", None) or model.config.model_type
    custom = library == "transformers" and model_type not in TasksManager._SUPPORTED_MODEL_TYPE
    _, models_and_configs = _get_submodels_and_onnx_configs(
        model=model,
        task=task,
        monolith=False,
        custom_onnx_configs={},
        custom_architecture=custom,
        float_dtype="fp32",
        fn_get_submodels=None,
        preprocessors=None,
        _variant="default",
        library_name=library,
        model_kwargs=None,
    )
    return models_and_configs


def export_with_optimum(model, task: str, library: str, output_dir: Path, opset: int | None) -> list[ExportedFile]:
    """Run Optimum's export into ``output_dir``; list the ONNX files it wrote with their submodels."""
    from optimum.exporters.onnx import onnx_export_from_model

    onnx_export_from_model(model, output_dir, task=task, opset=opset, do_validation=False)
    files = []
    for name, (submodel, onnx_config) in _submodels(model, task, library).items():
        file_name = f"{name}.onnx"
        if (output_dir / file_name).exists():
            files.append(ExportedFile(file_name, submodel, onnx_config))
    if not files:
        raise RuntimeError(f"Optimum wrote no ONNX file into {output_dir}")
    return files


def default_opset(model, task: str, library: str) -> int:
    """The opset Optimum picks for this model and task when none is given."""
    models_and_configs = _submodels(model, task, library)
    return next(iter(models_and_configs.values()))[1].DEFAULT_ONNX_OPSET
