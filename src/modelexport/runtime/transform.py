"""Optimize or quantize an exported folder with Optimum, then put the tags back on every node.

The result is a new Optimum-loadable folder (same file names, config and preprocessors copied,
metadata updated with what was done and how each node got its tag), written through the same
staged output folder as an export.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from modelexport.errors import ModelExportError
from modelexport.compat import gemm_rewrite_suffixes
from modelexport.folder.metadata import METADATA_FILE
from modelexport.folder.side_files import copy_side_files


@dataclass
class TransformResult:
    output: Path
    files: dict[str, dict] = field(default_factory=dict)  # file -> restore counts (+ extras)
    kept_float: dict[str, int] = field(default_factory=dict)  # module glob -> nodes kept in float
    added_ops: dict[str, dict[str, int]] = field(default_factory=dict)  # file -> op type -> nodes gained
    tagged: bool = True  # False: the source had no module tags, so neither has the result


def op_counts(graph) -> dict[str, int]:
    """Nodes per op type (``domain:Op`` outside the default domain), subgraphs included."""
    from modelexport.hierarchy.tags import iter_nodes

    counts: dict[str, int] = {}
    for node, _ in iter_nodes(graph):
        key = f"{node.domain}:{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts


def added_ops(original_graph, rewritten_graph) -> dict[str, int]:
    """Nodes gained per op type outside the ONNX domain: the fused kernels of ONNX Runtime
    (``com.microsoft:Attention``...) after ``optimize``; standard ops it re-arranges are not fusions."""
    before, after = op_counts(original_graph), op_counts(rewritten_graph)
    return {op: n - before.get(op, 0) for op, n in sorted(after.items())
            if ":" in op and n > before.get(op, 0)}


def is_tagged(src: Path, names: list[str]) -> bool:
    """Whether the folder is one modelexport wrote: its metadata and tags on its nodes. Tags of a
    file without them (a plain Optimum export) cannot be restored: there are none to restore."""
    import onnx

    from modelexport.folder.metadata import read_metadata
    from modelexport.hierarchy.tags import MODULE_PATH_KEY

    meta, _ = read_metadata(src)
    if meta is None:
        return False
    model = onnx.load(str(src / names[0]), load_external_data=False)
    return any(p.key == MODULE_PATH_KEY for node in model.graph.node for p in node.metadata_props)


def untagged_note(src: Path, verb: str) -> str:
    return (f"{src} carries no module tags (not exported by modelexport): {verb} as it is; the result has no tags "
            "and no modelexport metadata")


def check_derived_folder(folder: Path, what: str, tagged: bool = True) -> None:
    """Run ``validate``'s checks on a freshly written folder before it replaces anything: a folder
    that does not load or run is an error, not a result. An untagged folder (from an untagged
    source) is held to every check but those of tags and metadata."""
    from modelexport.folder.loading import load_target
    from modelexport.inspect.validate import FAIL, TAG_CHECKS, validate_target

    failed = [c for c in validate_target(load_target(folder), run_onnxruntime=True)
              if c.status == FAIL and (tagged or c.name not in TAG_CHECKS)]
    if failed:
        first = failed[0]
        raise ModelExportError(f"the {what} folder fails `modelexport validate` ({first.name}"
                               f"{' of ' + first.file if first.file else ''}: {first.detail}); nothing was written")


def _restore_all(src: Path, staging: Path, names: list[str], modules,
                 added: dict[str, dict[str, int]] | None = None) -> dict[str, object]:
    """Restore tags on each rewritten file; returns its RestoreCounts (with per-module counts)
    and records the new graph's fingerprint on it. ``added`` receives each file's new op types."""
    import onnx

    from modelexport.hierarchy.fingerprint import graph_fingerprint
    from modelexport.hierarchy.restore import restore_tags

    results = {}
    for name in names:
        original = onnx.load(str(src / name), load_external_data=False)
        rewritten_path = staging / name
        rewritten = onnx.load(str(rewritten_path), load_external_data=False)
        counts = restore_tags(original, rewritten, modules)
        if added is not None:
            added[name] = added_ops(original.graph, rewritten.graph)
        onnx.save(rewritten, str(rewritten_path))
        onnx.checker.check_model(str(rewritten_path), full_check=False)
        counts.graph_sha256 = graph_fingerprint(rewritten.graph)
        results[name] = counts
    return results


def _write_metadata(src: Path, staging: Path, step: dict, files: dict[str, object]) -> dict[str, dict]:
    """The source folder's metadata with this step appended and node counts of the new files;
    returns each file's restore counts as dicts."""
    from modelexport.folder.metadata import node_totals

    from modelexport.folder.metadata import read_metadata

    source_meta, _ = read_metadata(src)
    # The source's document, extended: a transform is recorded in the file it started from.
    meta = dict(source_meta.raw) if source_meta is not None else {
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


def optimize_folder(src, out, level: str = "O2", force: bool = False, on_untagged=None) -> TransformResult:
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    from modelexport.folder.staging import staged_output_dir
    from modelexport.quiet import stdout_swallowed

    src, out = Path(src), Path(out)
    names = _onnx_names(src)
    modules = _modules(src)
    tagged = is_tagged(src, names)
    if not tagged and on_untagged is not None:
        on_untagged(untagged_note(src, "optimized"))
    with staged_output_dir(out, force, [src]) as staging, tempfile.TemporaryDirectory(dir=staging) as prepared:
        try:
            optimizer = ORTOptimizer.from_pretrained(_bare_gemms_given_a_bias(src, names, Path(prepared)),
                                                     file_names=names)
            config = AutoOptimizationConfig.with_optimization_level(optimization_level=level)
            with stdout_swallowed():  # onnxruntime.transformers prints its shape-inference failures
                optimizer.optimize(save_dir=staging, optimization_config=config, file_suffix="")
        except (ValueError, KeyError, NotImplementedError) as e:
            raise ModelExportError(f"Optimum's optimizer cannot optimize {src}: {str(e).splitlines()[0][:300]}") from e
        copy_side_files(src, staging)
        fused: dict[str, dict[str, int]] = {}
        summaries = {}
        if tagged:
            files = _restore_all(src, staging, names, modules, fused)
            summaries = _write_metadata(src, staging, {"step": "optimize", "level": level, "fused_ops": fused}, files)
        else:
            fused = _fused_only(src, staging, names)
        check_derived_folder(staging, "optimized", tagged)
    return TransformResult(out, summaries, added_ops=fused, tagged=tagged)


def _fused_only(src: Path, staging: Path, names: list[str]) -> dict[str, dict[str, int]]:
    import onnx

    return {name: added_ops(onnx.load(str(src / name), load_external_data=False).graph,
                            onnx.load(str(staging / name), load_external_data=False).graph) for name in names}


def _bare_gemms_given_a_bias(src: Path, names: list[str], prepared: Path) -> Path:
    """The folder ONNX Runtime's optimizer can read: ``src`` itself, or a copy in ``prepared``.

    Its GPT-2 pass rewrites each Gemm that follows a LayerNorm's Reshape into MatMul + Add and
    reads the Gemm's bias without checking there is one (IndexError). The TorchScript exporter
    writes a bias-less linear as MatMul, torch.export as a two-input Gemm (GPT-2's ``lm_head``).
    Such Gemms get an explicit zero bias of the output width (the same function; a width-1 bias
    broadcasts too, but the later BiasGelu/FastGelu fusion takes it as the bias and fails at run
    time) in a copy of the file; tags are restored against the original afterwards, so nothing
    else changes. A Gemm whose weight is not an initializer (width unknown) is left as it is."""
    import onnx

    patched = {}
    for name in names:
        model = onnx.load(str(src / name), load_external_data=False)
        weights = {t.name: t for t in model.graph.initializer}
        changed = 0
        for node in model.graph.node:
            weight = weights.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) == 2 else None
            if weight is None or len(weight.dims) != 2:
                continue
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            width = weight.dims[0] if trans_b else weight.dims[1]
            zero = onnx.helper.make_tensor(f"modelexport_gemm_zero_bias_{changed}", weight.data_type, [width],
                                           [0] * width)
            model.graph.initializer.append(zero)
            node.input.append(zero.name)
            changed += 1
        if changed:
            patched[name] = model
    if not patched:
        return src
    for p in src.iterdir():  # config, preprocessors and any external weights, as ORTOptimizer reads them
        if p.is_file() and p.name not in patched:
            (prepared / p.name).symlink_to(p.resolve())
    for name, model in patched.items():
        onnx.save(model, str(prepared / name))
    return prepared


def quantize_folder(src, out, exclude: list[str] | None = None, force: bool = False, validate: bool = True,
                    on_untagged=None) -> TransformResult:
    import onnx
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from modelexport.folder.staging import staged_output_dir
    from modelexport.hierarchy.selection import select_modules

    src, out = Path(src), Path(out)
    names = _onnx_names(src)
    modules = _modules(src)
    exclude = exclude or []
    result = TransformResult(out, tagged=is_tagged(src, names))
    if not result.tagged:
        if exclude:
            raise ModelExportError(f"--exclude-modules needs module tags; {untagged_note(src, 'quantize it')}")
        if on_untagged is not None:
            on_untagged(untagged_note(src, "quantized"))
    # A pattern has to match in one file of the folder, not in each: `encoder.block.1` is not in
    # the decoder files. Nodes inside a merged decoder's If branches are matched too.
    selection = select_modules({name: onnx.load(str(src / name), load_external_data=False) for name in names},
                               exclude) if exclude else select_modules({}, [])
    for pattern, per_file in selection.nodes.items():
        result.kept_float[pattern] = sum(len(v) for v in per_file.values())
    with staged_output_dir(out, force, [src]) as staging:
        for name in names:
            excluded = selection.names_in(name)
            # ONNX Runtime's quantizer first rewrites each Gemm as MatMul (+ Add, + Transpose),
            # named after the Gemm: excluding only the Gemm's name would quantize it anyway
            # (GPT-2's Conv1D layers are Gemms).
            excluded += [f"{n}{suffix}" for n in list(excluded) for suffix in gemm_rewrite_suffixes()]
            config = AutoQuantizationConfig.avx2(is_static=False, per_channel=False, nodes_to_exclude=excluded)
            with tempfile.TemporaryDirectory(dir=staging) as tmp:
                try:
                    quantizer = ORTQuantizer.from_pretrained(src, file_name=name)
                    quantizer.quantize(save_dir=tmp, quantization_config=config, file_suffix="")
                except (ValueError, KeyError, NotImplementedError) as e:
                    raise ModelExportError(f"Optimum's quantizer cannot quantize {name}: {e}") from e
                for p in Path(tmp).iterdir():
                    if p.suffix == ".onnx" or p.name.endswith(".onnx_data"):
                        shutil.move(str(p), staging / p.name)
        copy_side_files(src, staging)
        if result.tagged:
            files = _restore_all(src, staging, names, modules)
            result.files = _write_metadata(src, staging, {"step": "quantize", "mode": "dynamic int8 (avx2)",
                                                          "excluded_modules": exclude,
                                                          "kept_float_nodes": result.kept_float}, files)
        if validate:
            check_derived_folder(staging, "quantized", result.tagged)
    return result


def _modules(src: Path):
    from modelexport.folder.metadata import read_metadata

    meta, _ = read_metadata(src)
    return meta.modules if meta is not None else None
