"""``modelexport.export``: a Hugging Face model to an Optimum-ready folder, every node tagged."""
from __future__ import annotations

import time
from pathlib import Path

from modelexport.exporter.result import ExportResult, FileReport
from modelexport.phases import PhaseReporter, Phases


def export(
    model,
    output_dir,
    *,
    task: str = "auto",
    library: str = "auto",
    opset: int | None = None,
    force: bool = False,
    trust_remote_code: bool = False,
    validate: bool = True,
    static_shapes: dict[str, int] | str | None = None,
    reporter: PhaseReporter | None = None,
    verbose: bool = False,
    exporter: str = "torchscript",
    keep_source_info: bool = False,
) -> ExportResult:
    """Export ``model`` (Hub id, local folder or loaded ``PreTrainedModel``) into ``output_dir``.

    The folder is written beside ``output_dir`` and moved into place only when complete.
    ``exporter="dynamo"`` traces with torch.export instead of TorchScript (Optimum still decides
    inputs, dynamic axes, files and validation); its files carry the exporter's stack traces and
    FX node text (local paths, source) only with ``keep_source_info``.
    The libraries' warnings, logs and prints (tracer warnings, Optimum's notes, torch.onnx's
    progress) are silenced unless ``verbose``.
    """
    from modelexport.quiet import silenced

    with silenced(not verbose):
        return _export(model, output_dir, task=task, library=library, opset=opset, force=force,
                       trust_remote_code=trust_remote_code, validate=validate, static_shapes=static_shapes,
                       reporter=reporter, exporter=exporter, keep_source_info=keep_source_info)


def _export(model, output_dir, *, task, library, opset, force, trust_remote_code, validate, static_shapes,
            reporter, exporter, keep_source_info) -> ExportResult:
    from modelexport.folder import side_files as artifacts_mod
    from modelexport.folder.metadata import METADATA_FILE, module_table, tool_versions, write_metadata
    from modelexport.exporter.optimum.bridge import check_exporter, check_opset, export_with_optimum
    from modelexport.exporter.optimum.ort_class import ort_model_class_name
    from modelexport.folder.staging import check_output_dir, recover_leftovers, staged_output_dir
    from modelexport.exporter.optimum.tasks import (
        load_model,
        prepare_for_task,
        resolve_source,
        source_of_loaded_model,
    )
    from modelexport.exporter.optimum.validation import merge_validations, validate_file
    from modelexport.hierarchy.module_tree import ModuleTree
    from modelexport.hierarchy.tagging import tag_file

    started = time.perf_counter()
    phases = Phases(reporter)
    output_dir = Path(output_dir)
    recover_leftovers(output_dir.resolve())  # an earlier export here that was killed
    sources = [model_folder(model)]
    check_output_dir(output_dir.resolve(), force, sources)
    check_exporter(exporter, keep_source_info)
    check_opset(opset, exporter)
    if isinstance(static_shapes, str):
        from modelexport.exporter.static_shapes import parse_static_shapes

        static_shapes = parse_static_shapes(static_shapes)

    with phases("load", "Loading model"):
        if isinstance(model, (str, Path)):
            source, config = resolve_source(str(model), task, library, trust_remote_code)
            loaded = load_model(source, trust_remote_code)
        else:
            loaded = model
            source = source_of_loaded_model(loaded, task)
            prepare_for_task(loaded, source)
            config = loaded.config
        tree = ModuleTree.from_module(loaded)
        if static_shapes:
            from modelexport.exporter.static_shapes import check_against_config

            check_against_config(static_shapes, getattr(loaded, "config", config))

    with staged_output_dir(output_dir, force, sources) as staging:
        trace = "torch.export" if exporter == "dynamo" else "TorchScript trace"
        with phases("export", f"Exporting with Optimum ({trace})"):
            exported = export_with_optimum(loaded, source.task, source.library, staging, opset, static_shapes,
                                           exporter=exporter)

        instance_paths = {id(m): p for p, m in loaded.named_modules()}
        reports: list[FileReport] = []
        node_counts: dict[str, dict[str, int]] = {}
        file_opset = None
        alias_step = None
        if source.library == "sentence_transformers":  # what SentenceTransformer(backend="onnx") reads
            from modelexport.exporter.sentence_transformers_layout import add_last_hidden_state as alias_step
        with phases("tag", "Tagging nodes with their modules"):
            for item in exported.files:
                root, warnings = traced_root(item, instance_paths)
                warnings += [f"{item.name}: {w}" for w in exported.trace_warnings.get(item.name, [])]
                tagger = None
                if exporter == "dynamo":
                    from modelexport.hierarchy.dynamo_tags import DynamoTaggingPass

                    tagger = DynamoTaggingPass(tree, root, keep_source_info)
                tagged, opset_of_file = tag_file(staging / item.name, tree, root, before=alias_step, tagger=tagger)
                file_opset = file_opset or opset_of_file
                node_counts[item.name] = tagged.node_count_by_module
                reports.append(FileReport(item.name, root, tagged.coverage.nodes, tagged.coverage.as_dict(),
                                          graph_sha256=tagged.graph_sha256,
                                          warnings=warnings + [f"{item.name}: {w}" for w in tagged.warnings]))

        with phases("artifacts", "Writing config and preprocessors"):
            generation_config = getattr(loaded, "generation_config", None)
            can_generate = getattr(loaded, "can_generate", lambda: False)()
            records = artifacts_mod.write_artifacts(
                source.name_or_path,
                config,
                staging,
                trust_remote_code=trust_remote_code,
                generation_config=generation_config if can_generate else None,
            )
            if source.library == "sentence_transformers" and source.is_local:
                from modelexport.exporter.sentence_transformers_layout import copy_module_files

                st_files = copy_module_files(Path(source.name_or_path), staging)
                records.append(artifacts_mod.ArtifactRecord("sentence_transformers", "written" if st_files
                                                            else "skipped", st_files,
                                                            "" if st_files else "the folder has no modules.json"))
            static_changes = []
            if static_shapes:
                from modelexport.exporter.static_shapes import record_in_preprocessors

                static_changes = record_in_preprocessors(staging, static_shapes)

        if validate:
            with phases("validate", "Comparing ONNX Runtime with PyTorch"):
                by_file: dict[str, list] = {}
                for target in exported.validations:
                    by_file.setdefault(target.file, []).append(
                        (target.label, validate_file(staging / target.file, target.submodel, target.onnx_config,
                                                     output_names=target.output_names,
                                                     input_shapes=static_shapes)))
                for report in reports:
                    if report.name in by_file:
                        report.validation = merge_validations(by_file[report.name])
                    else:
                        report.validation = None  # e.g. decoder files superseded by the merged one

        result = ExportResult(
            output=output_dir,
            files=reports,
            task=source.task,
            library=source.library,
            opset=file_opset,
            artifacts=artifacts_mod.records_as_dicts(records),
            timings=phases.timings,
            ort_model_class=ort_model_class_name(source.task, source.library, config),
            exporter=exporter,
        )
        result.timings["total"] = time.perf_counter() - started
        document = {
            "tool_versions": tool_versions(),
            "source": {"model": source.name_or_path, "local": source.is_local, "model_type": source.model_type,
                       "model_class": type(loaded).__name__},
            "task": source.task,
            "library": source.library,
            "exporter": exporter,
            "source_info_kept": keep_source_info if exporter == "dynamo" else None,
            "ort_model_class": result.ort_model_class,
            "static_shapes": static_shapes or None,
            "static_preprocessing": static_changes or None,
            "opset": file_opset,
            "files": {r.name: {"root_module": r.root_module, "nodes": r.nodes, "coverage": r.coverage,
                               "graph_sha256": r.graph_sha256, "validation": r.validation,
                               "warnings": r.warnings} for r in reports},
            "artifacts": result.artifacts,
            "modules": module_table(tree, node_counts),
            "timings_seconds": {k: round(v, 4) for k, v in result.timings.items()},
        }
        write_started = time.perf_counter()
        write_metadata(staging, document)
    # "write": the metadata file and moving the folder into place; known only after the metadata
    # is written, so it is in the returned timings, not in the file's.
    result.timings["write"] = time.perf_counter() - write_started
    result.timings["total"] = time.perf_counter() - started
    result.metadata_path = output_dir / METADATA_FILE
    return result


def model_folder(model) -> Path | None:
    """The local folder a model is read from (a path given, or a loaded model's ``_name_or_path``)."""
    if isinstance(model, (str, Path)):
        path = Path(model).expanduser()
    else:
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
        path = Path(name) if isinstance(name, str) and name else None
    return path if path is not None and path.is_dir() else None


def traced_root(item, instance_paths: dict[int, str]) -> tuple[str, list[str]]:
    """The module path Optimum traced for a file, and a warning when it is not one of the model's
    modules (then scopes are resolved from the whole model, and the user is told)."""
    if item.submodel is None or id(item.submodel) in instance_paths:
        return instance_paths.get(id(item.submodel), ""), []
    # A wrapper around modules of the model (Optimum patches some encoders this way): the
    # deepest module holding every module it wraps.
    from modelexport.hierarchy.module_tree import common_path_prefix

    inner = [instance_paths[id(m)] for m in getattr(item.submodel, "modules", lambda: ())()
             if id(m) in instance_paths]
    if inner:
        return common_path_prefix(inner), []
    return "", [f"{item.name}: the module Optimum traced ({type(item.submodel).__name__}) is not part of the "
                "model; its scopes were resolved from the whole model"]
