"""Model Explorer overlays: per-node values (time, error) as Model Explorer node data.

The ONNX adapter names each node of the converted graph by its ONNX node name, and groups nodes
into layers by our ``namespace`` tag, so an overlay keyed by node name colours the graph folded
by module. Each node gets its module's value (a module's self time, or the error it adds).
"""
from __future__ import annotations

from pathlib import Path

from modelexport.hierarchy.tags import node_tag

# Light to dark: a value's share of the largest one picks the colour.
_GRADIENT = [(0.0, "#f7fbff"), (0.25, "#c6dbef"), (0.5, "#6baed6"), (0.75, "#2171b5"), (1.0, "#08306b")]


def overlay_document(model, values_by_module: dict[str, float], title: str) -> dict:
    """Model Explorer's node-data JSON (``model_explorer.node_data_builder`` shape) for one file."""
    graph_name = model.graph.name or "main_graph"
    results = {}
    for node in model.graph.node:
        tag = node_tag(node)
        if not node.name or tag.module_path is None:
            continue
        value = values_by_module.get(tag.module_path)
        if value is not None:
            results[tag.node_name] = {"value": float(value)}
    return {graph_name: {"name": title, "results": results,
                         "gradient": [{"stop": stop, "bgColor": colour} for stop, colour in _GRADIENT]}}


def overlay_paths(path: Path, file_names: list[str]) -> dict[str, Path]:
    """Where each file's overlay goes: ``path`` itself for one file, ``STEM.<file>.json`` for several."""
    path = Path(path)
    return {name: path if len(file_names) == 1 else path.with_name(f"{path.stem}.{Path(name).stem}{path.suffix}")
            for name in file_names}


def write_overlays(path: Path, per_file: dict[str, tuple[object, dict[str, float]]], title: str,
                   force: bool = False) -> list[Path]:
    """One overlay per ONNX file (see ``overlay_paths``), each under the rule for output files."""
    import json

    from modelexport.folder.outputs import write_text

    targets = overlay_paths(path, list(per_file))
    return [write_text(targets[name], json.dumps(overlay_document(model, values, title), indent=1), force,
                       option="--overlay")
            for name, (model, values) in per_file.items()]
