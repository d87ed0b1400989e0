"""What an export returns to its caller."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FileReport:
    name: str
    root_module: str  # module path of the module Optimum traced for this file ("" = whole model)
    nodes: int
    coverage: dict
    validation: dict | None = None  # None when validation was skipped
    graph_sha256: str = ""
    warnings: list[str] = field(default_factory=list)  # what the user should know about this file's tags


@dataclass
class ExportResult:
    output: Path  # the folder (export) or the ONNX file (export_module)
    files: list[FileReport]
    task: str | None = None
    library: str | None = None
    opset: int | None = None
    artifacts: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    metadata_path: Path | None = None
    ort_model_class: str | None = None  # the optimum.onnxruntime class that loads the folder
    exporter: str = "torchscript"  # the path: "torchscript", "dynamo" (Optimum's configs) or "generic"
    exporter_reason: str = ""  # why that path (what ``auto`` decided, or "asked for")

    @property
    def max_abs_diff(self) -> float | None:
        diffs = [f.validation["max_abs_diff"] for f in self.files if f.validation]
        return max(diffs) if diffs else None

    @property
    def total_nodes(self) -> int:
        return sum(f.nodes for f in self.files)
