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
) -> ExportResult:
    """Trace ``module(*args)`` with torch.onnx (TorchScript, as Optimum does) and tag every node.

    The file appears at ``path`` only once it is complete and tagged. torch's tracer warnings
    are silenced unless ``verbose``.
    """
    from modelexport.quiet import silenced

    with silenced(not verbose):
        return _export_module(module, args, path, input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset=opset)


def _export_module(module, args, path, *, input_names, output_names, dynamic_axes, opset) -> ExportResult:
    import torch

    from modelexport.hierarchy.module_tree import ModuleTree
    from modelexport.hierarchy.tagging import tag_file

    if not isinstance(args, tuple):
        args = (args,)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    tree = ModuleTree.from_module(module)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        module.eval()
        t = time.perf_counter()
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(tmp),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
            )
        timings["export"] = time.perf_counter() - t
        t = time.perf_counter()
        tagged, file_opset = tag_file(tmp, tree, "")
        timings["tag"] = time.perf_counter() - t
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    timings["total"] = time.perf_counter() - started
    report = FileReport(path.name, "", tagged.coverage.nodes, tagged.coverage.as_dict())
    return ExportResult(output=path, files=[report], opset=file_opset, timings=timings)
