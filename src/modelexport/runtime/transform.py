"""Optimize or quantize an exported folder with Optimum, then put the tags back on every node.

The result is a new Optimum-loadable folder (same file names, config and preprocessors copied,
metadata updated with what was done and how each node got its tag), written through the same
staged output folder as an export.
"""
from __future__ import annotations

import fnmatch
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from modelexport.errors import ModelExportError
from modelexport.exporter.metadata import METADATA_FILE


@dataclass
class TransformResult:
    output: Path
    files: dict[str, dict] = field(default_factory=dict)  # file -> restore counts (+ extras)
    kept_float: dict[str, int] = field(default_factory=dict)  # module glob -> nodes kept in float


def _copy_side_files(src: Path, dst: Path) -> None:
    for p in src.iterdir():
        if p.is_file() and p.suffix != ".onnx" and not p.name.endswith(".onnx_data") and p.name != METADATA_FILE \
                and not p.name.startswith("modelexport_report"):
            shutil.copy2(p, dst / p.name)


def _restore_all(src: Path, staging: Path, names: list[str], modules) -> dict[str, object]:
    """Restore tags on each rewritten file; returns its RestoreCounts (with per-module counts)
    and records the new graph's fingerprint on it."""
    import onnx

    from modelexport.hierarchy.fingerprint import graph_fingerprint
    from modelexport.hierarchy.restore import restore_tags

    results = {}
    for name in names:
        original = onnx.load(str(src / name), load_external_data=False)
        rewritten_path = staging / name
        rewritten = onnx.load(str(rewritten_path), load_external_data=False)
        counts = restore_tags(original, rewritten, modules)
        onnx.save(rewritten, str(rewritten_path))
        onnx.checker.check_model(str(rewritten_path), full_check=False)
        counts.graph_sha256 = graph_fingerprint(rewritten.graph)
        results[name] = counts
    return results


def _write_metadata(src: Path, staging: Path, step: dict, files: dict[str, object]) -> dict[str, dict]:
    """The source folder's metadata with this step appended and node counts of the new files;
    returns each file's restore counts as dicts."""
    from modelexport.exporter.metadata import node_totals

    meta = json.loads((src / METADATA_FILE).read_text(encoding="utf-8")) if (src / METADATA_FILE).is_file() else {
        "schema": "modelexport.metadata", "schema_version": 1, "modules": []}
    meta.setdefault("transforms", []).append(step)
    by_file = {name: counts.by_module for name, counts in files.items()}
    totals = node_totals(by_file)
    for row in meta.get("modules", []):
        path = row["module_path"]
        row["nodes"] = {name: c[path] for name, c in by_file.items() if path in c}
        row["nodes_total"] = totals.get(path, {})
    summaries = {}
    for name, counts in files.items():
        summary = summaries[name] = counts.as_dict()
        meta.setdefault("files", {}).setdefault(name, {}).update({
            "nodes": counts.nodes, "graph_sha256": counts.graph_sha256, "restored_tags": summary, "validation": None,
            "coverage": {"nodes": counts.nodes, "direct": 0, "inferred": counts.inferred + counts.by_lineage,
                         "root_fallback": counts.root, "kept": counts.kept, "by_name": counts.by_name}})
    (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return summaries


def _onnx_names(src: Path) -> list[str]:
    if not src.is_dir():
        raise ModelExportError(f"{src} is not an exported folder")
    names = sorted(p.name for p in src.glob("*.onnx"))
    if not names:
        raise ModelExportError(f"{src} holds no .onnx file")
    return names


def optimize_folder(src, out, level: str = "O2", force: bool = False) -> TransformResult:
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    from modelexport.exporter.output_dir import staged_output_dir
    from modelexport.quiet import stdout_swallowed

    src, out = Path(src), Path(out)
    names = _onnx_names(src)
    modules = _modules(src)
    with staged_output_dir(out, force) as staging:
        try:
            optimizer = ORTOptimizer.from_pretrained(src, file_names=names)
            config = AutoOptimizationConfig.with_optimization_level(optimization_level=level)
            with stdout_swallowed():  # onnxruntime.transformers prints its shape-inference failures
                optimizer.optimize(save_dir=staging, optimization_config=config, file_suffix="")
        except (ValueError, KeyError, NotImplementedError) as e:
            raise ModelExportError(f"Optimum's optimizer cannot optimize {src}: {str(e).splitlines()[0][:300]}") from e
        _copy_side_files(src, staging)
        files = _restore_all(src, staging, names, modules)
        summaries = _write_metadata(src, staging, {"step": "optimize", "level": level}, files)
    return TransformResult(out, summaries)


def excluded_node_names(model, patterns: list[str]) -> dict[str, list[str]]:
    """Node names per pattern: a node is excluded when its module or any ancestor matches."""
    from modelexport.hierarchy.tags import node_tag

    by_pattern: dict[str, list[str]] = {p: [] for p in patterns}
    for node in model.graph.node:
        path = node_tag(node).module_path
        if path is None:
            continue
        atoms = path.split(".") if path else []
        chain = [".".join(atoms[: i + 1]) for i in range(len(atoms))] or [""]
        for pattern in patterns:
            if any(fnmatch.fnmatchcase(p, pattern) for p in chain):
                by_pattern[pattern].append(node.name)
                break
    return by_pattern


def quantize_folder(src, out, exclude: list[str] | None = None, force: bool = False) -> TransformResult:
    import onnx
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from modelexport.exporter.output_dir import staged_output_dir

    src, out = Path(src), Path(out)
    names = _onnx_names(src)
    modules = _modules(src)
    exclude = exclude or []
    result = TransformResult(out)
    with staged_output_dir(out, force) as staging:
        for name in names:
            model = onnx.load(str(src / name), load_external_data=False)
            by_pattern = excluded_node_names(model, exclude)
            empty = [p for p, nodes in by_pattern.items() if not nodes]
            if empty:
                raise ModelExportError(f"--exclude-modules {empty[0]!r} matches no module of {name}")
            for pattern, nodes in by_pattern.items():
                result.kept_float[pattern] = result.kept_float.get(pattern, 0) + len(nodes)
            config = AutoQuantizationConfig.avx2(is_static=False, per_channel=False,
                                                 nodes_to_exclude=[n for ns in by_pattern.values() for n in ns])
            with tempfile.TemporaryDirectory(dir=staging) as tmp:
                try:
                    quantizer = ORTQuantizer.from_pretrained(src, file_name=name)
                    quantizer.quantize(save_dir=tmp, quantization_config=config, file_suffix="")
                except (ValueError, KeyError, NotImplementedError) as e:
                    raise ModelExportError(f"Optimum's quantizer cannot quantize {name}: {e}") from e
                for p in Path(tmp).iterdir():
                    if p.suffix == ".onnx" or p.name.endswith(".onnx_data"):
                        shutil.move(str(p), staging / p.name)
        _copy_side_files(src, staging)
        files = _restore_all(src, staging, names, modules)
        result.files = _write_metadata(src, staging, {"step": "quantize", "mode": "dynamic int8 (avx2)",
                                                      "excluded_modules": exclude,
                                                      "kept_float_nodes": result.kept_float}, files)
    return result


def _modules(src: Path):
    path = src / METADATA_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("modules")
    except ValueError:
        return None
