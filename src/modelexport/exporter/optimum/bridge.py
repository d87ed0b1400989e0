"""The one place that calls Optimum's exporter.

The graph written is exactly the one Optimum writes: ``onnx_export_from_model`` on the model
we loaded (so it is loaded once), then the same post-processing Optimum runs (e.g. merging
decoder and decoder-with-past into ``decoder_model_merged.onnx``), called here so that we get
back the file -> (submodel, OnnxConfig) pairs Optimum validates. Optimum's own validation is
replaced by ours (validation.py), which runs on the tagged files and reports the max diff.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from modelexport.errors import ModelExportError, disk_error_message
from modelexport.compat import dynamo_opset_range
from modelexport.exporter.dynamo_trace import export_error_summary
from modelexport.exporter.optimum.compat import (
    no_preprocessor_reload,
    optimum_traces_with_dynamo,
    submodels_and_onnx_configs,
)


@dataclass
class ExportedFile:
    name: str  # file name relative to the output folder, e.g. "model.onnx"
    submodel: object  # the nn.Module Optimum traced for this file (its tags start there)


@dataclass
class ValidationTarget:
    file: str
    submodel: object
    onnx_config: object  # Optimum's OnnxConfig: dummy inputs, output names, atol
    label: str  # Optimum's name for the submodel, e.g. "decoder_with_past_model"
    output_names: list[str]  # what the submodel's own export produced (as Optimum validates)


@dataclass
class OptimumExport:
    files: list[ExportedFile]
    validations: list[ValidationTarget]
    trace_warnings: dict[str, list[str]] = field(default_factory=dict)  # file -> what the trace fixed
    # file -> Optimum's dynamic-axes check not yet run on it (see deferred_axis_checks)
    pending_axis_checks: dict[str, tuple] = field(default_factory=dict)
    patches: list[dict] = field(default_factory=list)  # export patches applied during the trace


@contextlib.contextmanager
def deferred_axis_checks(pending: dict, deferrable: set[str]):
    """Optimum opens an ONNX Runtime session on each file right after tracing it, only to read its
    output shapes (``OnnxConfig.fix_dynamic_axes``: an axis named by the trace but not by the
    config is fixed to its size). Validation then opens another on the same file; for MiniLM each
    costs 0.1 s. For the files in ``deferrable`` the check is recorded instead and run later by
    ``settle_axes`` in the session validation uses, on the tagged file. Files that
    post-processing merges (a decoder and its with-past twin) are checked when Optimum checks
    them: the merged file inherits what the check fixes."""
    from optimum.exporters.onnx.base import OnnxConfig

    original = OnnxConfig.fix_dynamic_axes

    def record(self, model_path, *args, **kwargs):
        if Path(model_path).name in deferrable:
            pending[Path(model_path).name] = (self, args, kwargs)
        else:
            original(self, model_path, *args, **kwargs)

    OnnxConfig.fix_dynamic_axes = record
    try:
        yield
    finally:
        OnnxConfig.fix_dynamic_axes = original


def settle_axes(path: Path, check: tuple, session):
    """Run Optimum's deferred output-axes check on ``path`` in ``session`` (a session on the file as
    it is now). Returns the session, or None when the check rewrote the file (an axis fixed: the
    session no longer matches it)."""
    import os

    import onnxruntime
    from optimum.exporters.onnx.base import OnnxConfig

    config, args, kwargs = check
    before = os.stat(path)
    make_session = onnxruntime.InferenceSession
    onnxruntime.InferenceSession = lambda *a, **k: session  # the check imports it when it runs
    try:
        OnnxConfig.fix_dynamic_axes(config, path, *args, **kwargs)
    finally:
        onnxruntime.InferenceSession = make_session
    after = os.stat(path)
    return session if (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size) else None


def export_with_optimum(model, task: str, library: str, output_dir: Path, opset: int | None,
                        static_shapes: dict[str, int] | None = None, exporter: str = "torchscript") -> OptimumExport:
    """Run Optimum's export and post-processing into ``output_dir``; list what it wrote.

    ``exporter="dynamo"``: the same, with Optimum's one ``torch.onnx.export`` call traced by
    torch.export (see ``optimum_traces_with_dynamo``).
    """
    from optimum.exporters.onnx import onnx_export_from_model

    from modelexport.hierarchy.node_splice import graph_output_names

    main_config, models_and_configs = submodels_and_onnx_configs(model, task, library)
    default = getattr(main_config, "DEFAULT_ONNX_OPSET", None)
    if exporter == "dynamo" and opset is None:
        opset = max(default or 0, dynamo_opset_range()[0])
    trace_warnings: dict[str, list[str]] = {}
    trace = optimum_traces_with_dynamo(trace_warnings) if exporter == "dynamo" else contextlib.nullcontext()
    pending_axis_checks: dict[str, tuple] = {}
    merged = {"decoder_model", "decoder_with_past_model"} <= set(models_and_configs)
    deferrable = set() if static_shapes else {
        f"{name}.onnx" for name in models_and_configs
        if not (merged and name in ("decoder_model", "decoder_with_past_model"))}
    from modelexport.exporter.generic.patches import export_patches

    try:
        # A TorchScript trace of a loop over the experts the router hit keeps only the experts hit
        # on the dummy inputs (DeepSeek-V3's 256): a file right on those inputs, wrong on others.
        # The generic path's dense-experts patch (every expert, weighted by the router) applies here too.
        with no_preprocessor_reload(getattr(model, "config", None)), trace, \
                deferred_axis_checks(pending_axis_checks, deferrable), \
                export_patches(model, only=("dense-moe-experts",)) as applied:
            onnx_export_from_model(model, output_dir, task=task, opset=opset, do_validation=False,
                                   no_post_process=True, no_dynamic_axes=bool(static_shapes),
                                   **(static_shapes or {}))
    except ModelExportError:
        raise
    except Exception as e:  # torch.onnx / Optimum failures reach the user as one line
        disk = disk_error_message(e)
        if disk:
            raise ModelExportError(disk) from e
        hint = ""
        if opset is not None and default is not None and opset < default:
            hint = f"; opset {opset} is below Optimum's default for this model ({default}): try --opset {default}"
        raise ModelExportError(f"the ONNX export ({exporter}) failed at opset {opset or default}: "
                               f"{export_error_summary(e)}{hint}") from e
    subpaths = [f"{name}.onnx" for name in models_and_configs]
    traced = {path: models_and_configs[name][0] for name, path in zip(models_and_configs, subpaths)}
    # Outputs of each submodel's own file, read before post-processing merges files: a merged
    # decoder's with-past branch also returns placeholders that are not to be compared.
    exported_outputs = {name: graph_output_names(output_dir / path)
                        for name, path in zip(models_and_configs, subpaths)}
    if library != "diffusers":
        try:
            models_and_configs, subpaths = main_config.post_process_exported_models(
                output_dir, models_and_configs, subpaths)
        except Exception as e:  # Optimum wraps any failure here the same way
            raise RuntimeError(f"Optimum's post-processing of the ONNX files failed: {e}") from e
    validations = []
    for (label, (submodel, onnx_config)), path in zip(models_and_configs.items(), subpaths):
        validations.append(ValidationTarget(path, submodel, onnx_config, label, exported_outputs[label]))
        traced.setdefault(path, submodel)  # files made by post-processing (merged decoders)
    files = [ExportedFile(p.name, traced.get(p.name)) for p in sorted(output_dir.glob("*.onnx"))]
    if not files:
        raise RuntimeError(f"Optimum wrote no ONNX file into {output_dir}")
    if static_shapes:
        from modelexport.exporter.static_shapes import infer_static_shapes

        config = getattr(model, "config", None)
        config_dict = config.to_dict() if hasattr(config, "to_dict") else None
        for f in files:
            trace_warnings.setdefault(f.name, []).extend(infer_static_shapes(output_dir / f.name, config_dict))
    vanished = sorted(k for k in pending_axis_checks if not (output_dir / k).is_file())
    if vanished:  # post-processing used a file before its check: deferring it was wrong here
        raise RuntimeError(f"Optimum's post-processing removed {', '.join(vanished)} before its output-axes check")
    return OptimumExport(files, validations, trace_warnings, pending_axis_checks,
                         [p.as_dict() for p in applied])
