"""``modelexport.export_module``: any ``torch.nn.Module`` with example inputs to one tagged ONNX file."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from modelexport.exporter.result import ExportResult, FileReport


def export_module(
    module,
    args: tuple,
    path,
    *,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_axes: dict | None = None,
    opset: int | None = None,
    verbose: bool = False,
    exporter: str = "torchscript",
    keep_source_info: bool = False,
) -> ExportResult:
    """Export ``module(*args)`` to ONNX and tag every node with its module.

    ``exporter="torchscript"`` (default) traces with ``torch.onnx.export(dynamo=False)``, as
    Optimum does, and reconstructs modules from node-name scopes; ``exporter="dynamo"`` uses
    ``torch.export`` and reads the module stack the exporter records on each node (needs
    ``onnxscript``); its stack traces and FX node text (local paths, source) are dropped unless
    ``keep_source_info``. The file appears at ``path`` only once it is complete and tagged.
    The exporters' warnings and progress prints are silenced unless ``verbose``.
    """
    from modelexport.exporter.exporters import check_module_exporter, check_opset
    from modelexport.quiet import silenced, stdout_swallowed

    check_module_exporter(exporter, keep_source_info)
    check_opset(opset, exporter)
    with silenced(not verbose), stdout_swallowed(not verbose):
        return _export_module(module, args, path, input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset=opset, exporter=exporter,
                              keep_source_info=keep_source_info)


def _export_module(module, args, path, *, input_names, output_names, dynamic_axes, opset, exporter,
                   keep_source_info) -> ExportResult:
    import torch

    from modelexport.hierarchy.module_tree import ModuleTree
    from modelexport.hierarchy.tagging import tag_file

    if not isinstance(args, tuple):
        args = (args,)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    trace_warnings: list[str] = []
    started = time.perf_counter()
    tree = ModuleTree.from_module(module)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        module.eval()
        t = time.perf_counter()
        with torch.no_grad():
            if exporter == "dynamo":
                from modelexport.exporter.dynamo_trace import export_dynamo
                from modelexport.compat import dynamo_opset_range

                trace_warnings = export_dynamo(module, args, None, tmp, input_names=input_names,
                                               output_names=output_names, dynamic_axes=dynamic_axes,
                                               opset=opset or dynamo_opset_range()[0])
            else:
                torch.onnx.export(module, args, str(tmp), input_names=input_names, output_names=output_names,
                                  dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
        timings["export"] = time.perf_counter() - t
        t = time.perf_counter()
        if exporter == "dynamo":
            from modelexport.hierarchy.dynamo_tags import DynamoTaggingPass

            tagger = DynamoTaggingPass(tree, "", keep_source_info)
        else:  # weights TorchScript folds under other names are found by value
            from modelexport.hierarchy.tagging import TaggingPass

            tagger = TaggingPass(tree, "", parameters=dict(module.named_parameters(remove_duplicate=False)))
        tagged, file_opset = tag_file(tmp, tree, "", tagger=tagger, private=True)
        timings["tag"] = time.perf_counter() - t
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    timings["total"] = time.perf_counter() - started
    report = FileReport(path.name, "", tagged.coverage.nodes, tagged.coverage.as_dict(),
                        warnings=trace_warnings + tagged.warnings)
    return ExportResult(output=path, files=[report], opset=file_opset, timings=timings, exporter=exporter)

