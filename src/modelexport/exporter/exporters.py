"""Which exporter writes the files, and the opsets each can write.

- ``torchscript``: Optimum's ONNX config and its TorchScript trace (needs Optimum);
- ``dynamo``: Optimum's ONNX config, traced by torch.export (needs Optimum and onnxscript);
- ``generic``: no Optimum config: inputs, axes and files from the model itself, traced by
  torch.export (needs onnxscript), for every model type transformers builds;
- ``auto`` (default): ``torchscript`` where Optimum is installed and has a config for the model
  type, else ``generic``.
"""
from __future__ import annotations

import importlib.util

from modelexport.compat import dynamo_opset_range, torchscript_opset_range
from modelexport.errors import ModelExportError

EXPORTERS = ("auto", "torchscript", "dynamo", "generic")
TORCH_EXPORT = ("dynamo", "generic")  # the exporters that trace with torch.export




def check_exporter(exporter: str, keep_source_info: bool = False, allowed=EXPORTERS) -> None:
    """Refuse, before any work, an exporter that does not exist or cannot run here."""
    if exporter not in allowed:
        raise ModelExportError(f"unknown exporter {exporter!r}: {', '.join(allowed)}")
    if keep_source_info and exporter == "torchscript":
        raise ModelExportError("--keep-source-info applies to the exporters that trace with torch.export (dynamo, "
                               "generic): TorchScript files carry no source information")
    if exporter in ("torchscript", "dynamo"):
        from modelexport.exporter.optimum import require

        require(f"--exporter {exporter} (Optimum's ONNX configs)")
    if exporter in TORCH_EXPORT and importlib.util.find_spec("onnxscript") is None:
        raise ModelExportError(f"the {exporter} exporter needs onnxscript: pip install onnxscript")


def check_module_exporter(exporter: str, keep_source_info: bool = False) -> None:
    """``export_module`` calls torch.onnx.export itself: TorchScript or torch.export, no Optimum."""
    if exporter not in ("torchscript", "dynamo"):
        raise ModelExportError(f"unknown exporter {exporter!r}: torchscript or dynamo")
    if keep_source_info and exporter != "dynamo":
        raise ModelExportError("--keep-source-info applies to the dynamo exporter only: TorchScript files carry no "
                               "source information")
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise ModelExportError("the dynamo exporter needs onnxscript: pip install onnxscript")


def choose_exporter(exporter: str, model_type: str | None, library: str) -> tuple[str, str]:
    """The exporter ``auto`` means for this model, and why, in words."""
    if exporter != "auto":
        return exporter, "asked for"
    from modelexport.exporter.optimum import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        return "generic", reason.split(":")[0]
    from modelexport.exporter.optimum.compat import supported_types

    if library not in ("transformers", "sentence_transformers") or model_type is None:
        return "torchscript", "Optimum's exporter"
    optimum_type = ("clip" if model_type == "clip" else "transformer") if library == "sentence_transformers" \
        else model_type
    if optimum_type in supported_types(library):
        return "torchscript", f"Optimum has an ONNX config for {model_type}"
    return "generic", f"Optimum has no ONNX config for {model_type}"


def check_opset(opset: int | None, exporter: str = "torchscript") -> None:
    """Refuse, before any work, an opset the exporter cannot write."""
    if opset is None:
        return
    if exporter in TORCH_EXPORT:
        low, high = dynamo_opset_range()
        if not low <= opset <= high:
            raise ModelExportError(f"opset {opset} is not supported by the dynamo exporter: it writes opsets "
                                   f"{low} to {high} (lower ones would need a version conversion that fails on "
                                   "many graphs; use --exporter torchscript for them)")
        return
    ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET = torchscript_opset_range()  # noqa: N806
    if not ONNX_MIN_OPSET <= opset <= ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET:
        raise ModelExportError(f"opset {opset} is not supported: torch.onnx (TorchScript), which Optimum uses, "
                               f"writes opsets {ONNX_MIN_OPSET} to {ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET}")
