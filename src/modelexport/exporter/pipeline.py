"""``modelexport.export``: a Hugging Face model to an Optimum-ready folder, every node tagged.

Two paths write the ONNX files (``exporters.py`` chooses): Optimum's ONNX config for the model
type (``torchscript``, ``dynamo``), or the model itself (``generic``: inputs, axes and files from
its signature, config and preprocessors, traced by torch.export), for every type transformers
builds. Everything around them is shared: one load of the model, the module tree, the staged
output folder, tagging, config and preprocessors, the metadata file.
"""
from __future__ import annotations

import os

import time
from dataclasses import dataclass, field
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
    exporter: str = "auto",
    keep_source_info: bool = False,
) -> ExportResult:
    """Export ``model`` (Hub id, local folder or loaded ``PreTrainedModel``) into ``output_dir``.

    The folder is written beside ``output_dir`` and moved into place only when complete.
    ``exporter``: ``auto`` (Optimum's TorchScript export where Optimum is installed and has a
    config for the model type, else ``generic``), ``torchscript``, ``dynamo`` (Optimum's config
    traced by torch.export) or ``generic`` (no Optimum: the model's own inputs, traced by
    torch.export). Files traced by torch.export carry the exporter's stack traces and FX node
    text (local paths, source) only with ``keep_source_info``. The libraries' warnings, logs and
    prints are silenced unless ``verbose``.
    """
    from modelexport.quiet import silenced

    with silenced(not verbose):
        return _export(model, output_dir, task=task, library=library, opset=opset, force=force,
                       trust_remote_code=trust_remote_code, validate=validate, static_shapes=static_shapes,
                       reporter=reporter, exporter=exporter, keep_source_info=keep_source_info)


@dataclass
class TracedFile:
    """One ONNX file the path wrote into the staging folder, before tagging."""
    name: str
    root: str  # module path of the part of the model traced for it ("" = the whole model)
    warnings: list[str] = field(default_factory=list)


@dataclass
class PathOutput:
    """What an export path hands to the shared steps."""
    files: list[TracedFile]
    validate: object  # () -> {file: validation dict or None}
    ort_model_class: str | None
    details: dict = field(default_factory=dict)  # path-specific metadata (inputs, axes, patches, layout)
    scope_prefix: str = ""  # the wrapper's name for the model in torch.export's module stack
    # (keep_for_validation) -> None: after tagging, the ONNX Runtime sessions the path's own checks
    # need (Optimum's output-axes check), kept for validation when it follows
    open_sessions: object = None


def _export(model, output_dir, *, task, library, opset, force, trust_remote_code, validate, static_shapes,
            reporter, exporter, keep_source_info) -> ExportResult:
    from modelexport.errors import ModelExportError
    from modelexport.exporter.exporters import TORCH_EXPORT, check_exporter
    from modelexport.folder import side_files
    from modelexport.folder.metadata import METADATA_FILE, module_table, tool_versions, write_metadata
    from modelexport.folder.staging import check_output_dir, recover_leftovers, staged_output_dir
    from modelexport.exporter.model_state import ConfigSnapshot
    from modelexport.hierarchy.module_tree import ModuleTree

    started = time.perf_counter()
    phases = Phases(reporter)
    output_dir = Path(output_dir)
    recover_leftovers(output_dir.resolve())  # an earlier export here that was killed
    sources = [model_folder(model)]
    check_output_dir(output_dir.resolve(), force, sources)
    check_exporter(exporter, keep_source_info)
    if isinstance(static_shapes, str):
        from modelexport.exporter.static_shapes import parse_static_shapes

        static_shapes = parse_static_shapes(static_shapes)

    with phases("load", "Loading model"):
        requested = exporter
        exporter, why, source, config, loaded = _resolve_and_load(model, task, library, trust_remote_code, exporter,
                                                                  opset)
        if keep_source_info and exporter not in TORCH_EXPORT:
            from modelexport.errors import ModelExportError

            raise ModelExportError(f"--keep-source-info applies to files traced by torch.export; {source.model_type} "
                                   f"is exported with {exporter} ({why}): add --exporter dynamo (Optimum's config) or "
                                   "--exporter generic")
        tree = ModuleTree.from_module(loaded)
        if static_shapes:
            from modelexport.exporter.static_shapes import check_against_config

            check_against_config(static_shapes, getattr(loaded, "config", config))

    # Optimum's export changes the configs it is given (T5's encoder is left with use_cache=True,
    # which its generate then refuses): a caller's model gets its own back, whatever happens
    configs = ConfigSnapshot(loaded)
    with staged_output_dir(output_dir, force, sources) as staging, configs.restored_after():
        # auto: where Optimum's own export fails (or ONNX Runtime refuses its file), the path
        # without its config is tried on the same loaded model, and the metadata says why
        may_fall_back = requested == "auto" and opset is None

        def without_optimum(e: ModelExportError) -> PathOutput:
            nonlocal exporter, why
            _empty(staging)
            configs.restore()  # as the caller gave them, not as Optimum's export left them
            exporter, why = "generic", f"Optimum's export failed ({str(e)[:200]}): exported without its config"
            return _generic_path(loaded, source, staging, opset, phases, trust_remote_code, static_shapes)

        if may_fall_back and exporter != "generic" and _draws_noise(loaded):
            # ViT-MAE masks patches by noise forward draws unless given it; Optimum's configs never
            # feed `noise`, so its file would keep the one draw of the trace (validation compares
            # two masks). The generic path makes noise an input.
            exporter, why = "generic", ("forward draws random noise (its noise argument) that Optimum's config "
                                        "does not feed, so its file would keep one draw: exported without its "
                                        "config, noise as an input")
        if exporter == "generic":
            path = _generic_path(loaded, source, staging, opset, phases, trust_remote_code, static_shapes)
        else:
            try:
                path = _optimum_path(loaded, source, staging, opset, static_shapes, exporter, phases)
            except ModelExportError as e:
                if not may_fall_back:
                    raise
                path = without_optimum(e)

        alias_step = None
        if source.library == "sentence_transformers":  # what SentenceTransformer(backend="onnx") reads
            from modelexport.exporter.sentence_transformers_layout import add_last_hidden_state as alias_step

        def tag_files() -> tuple[list[FileReport], dict[str, dict[str, int]], int | None]:
            from modelexport.exporter.dynamo_trace import FOLDED_PARAMETERS
            from modelexport.hierarchy.tagging import tag_file

            reports: list[FileReport] = []
            node_counts: dict[str, dict[str, int]] = {}
            file_opset = None
            with phases("tag", "Tagging nodes with their modules"):
                parameters = None
                for item in path.files:
                    if exporter in TORCH_EXPORT:
                        from modelexport.hierarchy.dynamo_tags import DynamoTaggingPass

                        aliases = FOLDED_PARAMETERS.pop(str((staging / item.name).resolve()), None)
                        tagger = DynamoTaggingPass(tree, item.root, keep_source_info, scope_prefix=path.scope_prefix,
                                                   aliases=aliases)
                    else:
                        from modelexport.hierarchy.tagging import TaggingPass

                        # TorchScript folds weights a parent transposes into constants of other
                        # names: their values say whose they are (TaggingPass._children_read_by_value)
                        if parameters is None:
                            parameters = dict(loaded.named_parameters(remove_duplicate=False))
                        tagger = TaggingPass(tree, item.root, parameters=parameters)
                    tagged, opset_of_file = tag_file(staging / item.name, tree, item.root, before=alias_step,
                                                     tagger=tagger, private=True)
                    file_opset = file_opset or opset_of_file
                    node_counts[item.name] = tagged.node_count_by_module
                    reports.append(FileReport(item.name, item.root, tagged.coverage.nodes,
                                              tagged.coverage.as_dict(), graph_sha256=tagged.graph_sha256,
                                              warnings=[f"{item.name}: {w}" for w in item.warnings + tagged.warnings]))
                # files the exporter wrote and Optimum then replaced (a merged decoder): nothing to tag
                for key in [k for k in FOLDED_PARAMETERS if k.startswith(str(staging.resolve()) + os.sep)]:
                    del FOLDED_PARAMETERS[key]
            if path.open_sessions is not None:
                with phases("sessions", "Opening the files in ONNX Runtime"):
                    path.open_sessions(validate)
            return reports, node_counts, file_opset

        try:
            reports, node_counts, file_opset = tag_files()
        except ModelExportError as e:  # ONNX Runtime refused a file of Optimum's export
            if exporter == "generic" or not may_fall_back:
                raise
            path = without_optimum(e)
            reports, node_counts, file_opset = tag_files()

        with phases("artifacts", "Writing config and preprocessors"):
            generation_config = getattr(loaded, "generation_config", None)
            can_generate = getattr(loaded, "can_generate", lambda: False)()
            records = side_files.write_artifacts(
                source.name_or_path,
                config,
                staging,
                trust_remote_code=trust_remote_code,
                generation_config=generation_config if can_generate else None,
            )
            if source.library == "sentence_transformers" and source.is_local:
                from modelexport.exporter.sentence_transformers_layout import copy_module_files

                st_files = copy_module_files(Path(source.name_or_path), staging)
                records.append(side_files.ArtifactRecord("sentence_transformers", "written" if st_files
                                                         else "skipped", st_files,
                                                         "" if st_files else "the folder has no modules.json"))
            static_changes = []
            if static_shapes:
                from modelexport.exporter.static_shapes import record_in_preprocessors

                static_changes = record_in_preprocessors(staging, static_shapes)

        if validate:
            with phases("validate", "Comparing ONNX Runtime with PyTorch"):
                by_file = path.validate()
                for report in reports:
                    report.validation = by_file.get(report.name)  # None: e.g. files superseded by a merged one

        result = ExportResult(
            output=output_dir,
            files=reports,
            task=source.task,
            library=source.library,
            opset=file_opset,
            artifacts=side_files.records_as_dicts(records),
            timings=phases.timings,
            ort_model_class=path.ort_model_class,
            exporter=exporter,
            exporter_reason=why,
        )
        result.timings["total"] = time.perf_counter() - started
        document = {
            "tool_versions": tool_versions(),
            "source": {"model": source.name_or_path, "local": source.is_local, "model_type": source.model_type,
                       "model_class": type(loaded).__name__},
            "task": source.task,
            "library": source.library,
            "exporter": exporter,
            "exporter_reason": why,
            "source_info_kept": keep_source_info if exporter in TORCH_EXPORT else None,
            "ort_model_class": result.ort_model_class,
            "static_shapes": static_shapes or None,
            "static_preprocessing": static_changes or None,
            "opset": file_opset,
            # the path's own record: the generic path's layout, inputs, axes and patches; the
            # Optimum path's patches (dense MoE experts under its TorchScript trace)
            **({("generic" if exporter == "generic" else "optimum"): path.details} if path.details else {}),
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


def _resolve_and_load(model, task, library, trust_remote_code, exporter, opset):
    """(exporter, why, source, config, loaded model): the exporter ``auto`` resolves to needs the
    model type, so the config is read first; the opset is checked against the chosen exporter;
    the weights are loaded once, by the chosen path."""
    from modelexport.exporter.exporters import check_opset, choose_exporter

    if isinstance(model, (str, Path)):
        model_type, detected_library = _peek(str(model), library, trust_remote_code)
        exporter, why = choose_exporter(exporter, model_type, detected_library)
        check_opset(opset, exporter)
        if exporter != "generic":
            from modelexport.errors import TaskError
            from modelexport.exporter.optimum.tasks import load_model, resolve_source

            try:
                source, config = resolve_source(str(model), task, library, trust_remote_code)
            except TaskError as e:
                from modelexport.exporter.generic.source import GENERIC_LIBRARIES

                if why == "asked for" or detected_library not in GENERIC_LIBRARIES:
                    raise
                # auto: Optimum knows the type but not this task (its head): the generic path's
                exporter, why = "generic", f"Optimum's config for {model_type} has no such task ({e})"
            else:
                return exporter, why, source, config, load_model(source, trust_remote_code)
        from modelexport.exporter.generic import source as generic_source

        source, config = generic_source.resolve(str(model), task, library, trust_remote_code)
        loaded = generic_source.load(source, trust_remote_code, task_given=task != "auto", config=config)
        return exporter, why, source, config, loaded
    loaded = model
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    is_st = type(model).__name__ == "SentenceTransformer"
    exporter, why = choose_exporter(exporter, model_type, "sentence_transformers" if is_st else "transformers")
    check_opset(opset, exporter)
    if exporter == "generic":
        source, config = _generic_source_of_loaded(model, task)
    else:
        from modelexport.exporter.optimum.tasks import prepare_for_task, source_of_loaded_model

        source = source_of_loaded_model(loaded, task)
        prepare_for_task(loaded, source)
        config = loaded.config
    return exporter, why, source, config, loaded


def _draws_noise(model) -> bool:
    """Whether the model's forward takes the random noise it otherwise draws itself."""
    import inspect

    from modelexport.exporter.generic.inputs import NOISE_ARGUMENTS

    try:
        return any(name in inspect.signature(model.forward).parameters for name in NOISE_ARGUMENTS)
    except (TypeError, ValueError):
        return False


def _peek(model: str, library: str, trust_remote_code: bool) -> tuple[str | None, str]:
    """The model type and library, from config.json alone (no weights), to choose the exporter."""
    from modelexport.exporter.generic.source import is_sentence_transformers_folder
    from modelexport.exporter.source import check_local_folder, looks_like_path

    path = Path(model).expanduser()
    if path.exists() or looks_like_path(model):
        config = check_local_folder(path)
        detected = library if library != "auto" else (
            "sentence_transformers" if is_sentence_transformers_folder(path) else "transformers")
        model_type = config.get("model_type")
        return (model_type if isinstance(model_type, str) else None), detected
    from modelexport.exporter.source import load_config

    return load_config(model, trust_remote_code).model_type, library if library != "auto" else "transformers"


def _generic_source_of_loaded(model, task: str):
    from modelexport.exporter.generic.tasks import accepts_cache, spec_of, task_of_loaded_model, GENERATIVE
    from modelexport.exporter.source import ModelSource, registered_type

    is_st = type(model).__name__ == "SentenceTransformer"
    config = model[0].auto_model.config if is_st else model.config
    if is_st:
        task = "feature-extraction"
    elif task == "auto":
        task = task_of_loaded_model(model)
        if task in GENERATIVE and accepts_cache(model):
            task += "-with-past"
    else:
        spec_of(task, registered_type(config))
    name = getattr(config, "_name_or_path", "") or None
    is_local = bool(name) and Path(name).is_dir()
    return ModelSource(name if is_local else None, is_local, "sentence_transformers" if is_st else "transformers",
                       task, registered_type(config)), config


def _optimum_path(loaded, source, staging: Path, opset, static_shapes, exporter: str, phases) -> PathOutput:
    from modelexport.errors import ModelExportError
    from modelexport.exporter.dynamo_trace import export_error_summary
    from modelexport.exporter.optimum.bridge import export_with_optimum
    from modelexport.exporter.optimum.ort_class import fed_by, ort_model_class_name
    from modelexport.exporter.optimum.validation import merge_validations, validate_file, validation_session

    trace = "torch.export" if exporter == "dynamo" else "TorchScript trace"
    with phases("export", f"Exporting with Optimum ({trace})"):
        exported = export_with_optimum(loaded, source.task, source.library, staging, opset, static_shapes,
                                       exporter=exporter)
    instance_paths = {id(m): p for p, m in loaded.named_modules()}
    files = []
    for item in exported.files:
        root, warnings = traced_root(item, instance_paths)
        files.append(TracedFile(item.name, root, warnings + exported.trace_warnings.get(item.name, [])))

    sessions: dict[str, object] = {}  # file -> the session its axes were checked in

    def open_sessions(keep_for_validation: bool) -> None:
        from modelexport.exporter.optimum.bridge import settle_axes

        for name, check in exported.pending_axis_checks.items():
            try:
                session = settle_axes(staging / name, check, validation_session(staging / name))
            except Exception as e:  # as a failure of the same check inside Optimum's export is
                raise ModelExportError(f"the ONNX export ({exporter}) failed: checking {name} in ONNX Runtime: "
                                       f"{export_error_summary(e)}") from e
            if keep_for_validation and session is not None:
                sessions[name] = session

    def validate() -> dict:
        by_file: dict[str, list] = {}
        for target in exported.validations:
            if target.file not in sessions:
                sessions[target.file] = validation_session(staging / target.file)
            by_file.setdefault(target.file, []).append(
                (target.label, validate_file(staging / target.file, target.submodel, target.onnx_config,
                                             output_names=target.output_names, input_shapes=static_shapes,
                                             session=sessions[target.file])))
        return {name: merge_validations(results) for name, results in by_file.items()}

    ort_class = fed_by(ort_model_class_name(source.task, source.library, getattr(loaded, "config", None)), staging,
                       [f.name for f in exported.files])
    return PathOutput(files, validate, ort_class,
                      open_sessions=open_sessions if exported.pending_axis_checks else None,
                      details={"patches": exported.patches} if exported.patches else {})


def _generic_path(loaded, source, staging: Path, opset, phases, trust_remote_code: bool,
                  static_shapes: dict | None = None) -> PathOutput:
    from modelexport.compat import dynamo_opset_range
    from modelexport.errors import ModelExportError
    from modelexport.exporter.generic.export import NoCacheLayout, plan_export, trace_files, validate_files
    from modelexport.exporter.generic.inputs import Preprocessors
    from modelexport.exporter.generic.wrappers import SCOPE_PREFIX
    from modelexport.exporter.optimum.ort_class import ort_model_class_for_io

    folder = Path(source.name_or_path) if source.is_local and source.name_or_path else None
    with phases("export", "Exporting with torch.export (inputs from the model, no Optimum config)"):
        # Where the KV cache was our choice (the user named no task), a model whose cache cannot be
        # laid out, whose cache export fails or does not run as PyTorch runs is exported without it,
        # and a warning says why. A task the user named is theirs: the error stands.
        def plain_plan(note: str):
            plain = plan_export(loaded, source.task.replace("-with-past", ""),
                                Preprocessors(folder, trust_remote_code), source.library)
            plain.notes.append(note)
            return plain

        unlaid = None
        try:
            plan = plan_export(loaded, source.task, Preprocessors(folder, trust_remote_code), source.library,
                               static_shapes)
        except NoCacheLayout as e:
            if not source.past_chosen:
                raise
            # GPTSan: a "ForConditionalGeneration" prefix LM with no encoder / decoder split
            unlaid = (f"{str(e).split(';')[0]}: exported without the KV cache (each step runs the whole "
                      "sequence)")
            plan = plain_plan(unlaid)
        may_drop_cache = source.past_chosen and plan.layout == "decoder-with-past"

        def without_cache(what_happened: str):
            _empty(staging)
            note = (f"the export with the KV cache {what_happened}: exported without it (each step runs the whole "
                    f"sequence; --task {source.task} keeps the cache)")
            plain = plain_plan(note)
            traced, applied = trace_files(plain, loaded, staging, opset or dynamo_opset_range()[0])
            traced[0].trace_warnings.append(note)  # printed, not only recorded
            return plain, traced, applied

        validated = None
        try:
            infos, patches = trace_files(plan, loaded, staging, opset or dynamo_opset_range()[0])
        except ModelExportError as e:
            # DeepSeek-V3.2's indexer keys, cached apart from the key/value layers
            if not may_drop_cache:
                raise
            plan, infos, patches = without_cache(f"failed ({e})")
        else:
            if may_drop_cache:
                # checked now, on a first step (empty past) and a later one: CPM-Ant drops its
                # prompt tokens only when the past is empty, a branch the trace with a past left out
                validated = validate_files(plan, loaded, staging)
                broken = [p for r in validated.values() for p in r["shape_mismatches"] + r["errors"]]
                if broken:
                    plan, infos, patches = without_cache(f"does not run as PyTorch runs ({broken[0]})")
                    validated = None
        source.task = plan.task
        if unlaid:
            infos[0].trace_warnings.append(unlaid)  # printed, not only recorded
        if static_shapes:  # every value's shape fixed, for compilers (see static_shapes.py)
            from modelexport.exporter.static_shapes import infer_static_shapes

            config = getattr(loaded, "config", None)
            for info in infos:
                info.trace_warnings += infer_static_shapes(staging / info.name,
                                                           config.to_dict() if hasattr(config, "to_dict") else None)
    files = [TracedFile(info.name, info.root, info.trace_warnings) for info in infos]
    details = {"layout": plan.layout, "inputs": {info.name: info.inputs for info in infos},
               "input_notes": plan.notes, "patches": patches}
    return PathOutput(files, lambda: validated or validate_files(plan, loaded, staging),
                      ort_model_class_for_io(plan.task, source.library, plan.layout, staging, [f.name for f in files]),
                      details, scope_prefix=SCOPE_PREFIX)


def _empty(folder: Path) -> None:
    """Remove what a failed attempt left in the staging folder."""
    import shutil

    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


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
    return "", [f"the module Optimum traced ({type(item.submodel).__name__}) is not part of the "
                "model; its scopes were resolved from the whole model"]
