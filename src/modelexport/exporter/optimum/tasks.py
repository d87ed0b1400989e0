"""Task, library and loading through Optimum's ``TasksManager`` (the Optimum export path).

Optimum refuses to infer a task for local folders, so for those the task is read from
``config.architectures`` (or the library: sentence-transformers models are feature extractors).
"""
from __future__ import annotations

from pathlib import Path

from modelexport.errors import ModelSourceError, TaskError
from modelexport.exporter.source import (
    LIBRARIES,
    ModelSource,
    check_local_folder,
    explain_load_failure,
    load_config,
    looks_like_path,
    prepare_for_task,
)


def _supported_tasks(model_type: str, library: str) -> list[str]:
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs)
    from optimum.exporters.tasks import TasksManager

    try:
        return list(TasksManager.get_supported_tasks_for_model_type(model_type, "onnx", library_name=library))
    except KeyError as e:
        raise TaskError(f"Optimum's ONNX exporter does not support model type {model_type!r} ({library})") from e


def _export_model_type(model_type: str, library: str) -> str:
    # Optimum registers sentence-transformers models under their first module's kind.
    if library == "sentence_transformers":
        return "clip" if model_type == "clip" else "transformer"
    return model_type


def _infer_library(name_or_path: str) -> str:
    from optimum.exporters.tasks import TasksManager

    try:
        return TasksManager.infer_library_from_model(name_or_path)
    except (ValueError, OSError, KeyError) as e:
        raise ModelSourceError(f"cannot tell which library {name_or_path} belongs to; pass --library") from e


def _infer_task_from_config(config, library: str) -> str:
    import transformers
    from optimum.exporters.tasks import TasksManager

    if library == "sentence_transformers":
        return "feature-extraction"
    for architecture in getattr(config, "architectures", None) or []:
        model_class = getattr(transformers, architecture, None)
        if model_class is None:
            continue
        try:
            return TasksManager.infer_task_from_model(model_class)
        except (ValueError, KeyError):
            continue
    raise TaskError("cannot infer the task from config.architectures; pass --task")


def _blame_library(name_or_path: str, requested: str) -> None:
    """When ``--library`` was given and the model belongs to another library, that is the problem
    to report, not the tasks the wrong library would support."""
    if requested == "auto":
        return
    try:
        actual = _infer_library(name_or_path)
    except ModelSourceError:
        return
    if actual != requested:
        raise TaskError(f"{name_or_path} is a {actual} model, not a {requested} one; drop --library "
                        f"(or pass --library {actual})")


def resolve_source(model: str, task: str, library: str, trust_remote_code: bool) -> tuple[ModelSource, object]:
    """Check a model id or folder and settle library and task. Returns (source, config)."""
    path = Path(model).expanduser()
    is_local = path.exists() or looks_like_path(model)
    if is_local:
        check_local_folder(path)
        name_or_path = str(path.resolve())
    else:
        name_or_path = model
    config = load_config(name_or_path, trust_remote_code)
    from optimum.exporters.tasks import TasksManager

    requested_library = library
    if library == "auto":
        library = _infer_library(name_or_path)
    elif library not in LIBRARIES:
        raise TaskError(f"unknown library {library!r}; choose one of {', '.join(LIBRARIES)}")

    model_type = config.model_type
    try:
        supported = _supported_tasks(_export_model_type(model_type, library), library)
    except TaskError:
        _blame_library(name_or_path, requested_library)
        raise
    if task == "auto":
        if is_local:
            task = _infer_task_from_config(config, library)
        else:
            try:
                task = TasksManager.infer_task_from_model(name_or_path, library_name=library)
            except (KeyError, RuntimeError, ValueError, OSError) as e:
                task = _infer_task_from_config(config, library) if getattr(config, "architectures", None) else None
                if task is None:
                    raise TaskError(f"cannot infer the task of {name_or_path}; pass --task") from e
        task = TasksManager.map_from_synonym(task)
        # As Optimum's own CLI does: decoders get the KV-cache variant unless a task was given.
        if task + "-with-past" in supported:
            task += "-with-past"
    else:
        task = TasksManager.map_from_synonym(task)
    if task not in supported:
        _blame_library(name_or_path, requested_library)
        raise TaskError(
            f"{model_type} models cannot be exported for task {task!r}; tasks Optimum supports for it: "
            + ", ".join(sorted(supported))
        )
    return ModelSource(name_or_path, is_local, library, task, model_type), config


def source_of_loaded_model(model, task: str) -> ModelSource:
    """Library and task for a model object the caller already loaded."""
    from optimum.exporters.tasks import TasksManager

    try:
        library = TasksManager.infer_library_from_model(model)
    except ValueError as e:
        raise ModelSourceError(f"{type(model).__name__} is not a transformers/sentence-transformers model; "
                               "use export_module for plain torch modules") from e
    TasksManager.standardize_model_attributes(model, library_name=library)
    model_type = model.config.model_type
    supported = _supported_tasks(getattr(model.config, "export_model_type", None) or model_type, library)
    if task == "auto":
        task = "feature-extraction" if library == "sentence_transformers" else TasksManager.infer_task_from_model(model)
        if task + "-with-past" in supported and getattr(model.config, "use_cache", False):
            task += "-with-past"
    task = TasksManager.map_from_synonym(task)
    if task not in supported:
        raise TaskError(f"{model_type} models cannot be exported for task {task!r}; supported: {', '.join(sorted(supported))}")
    name = getattr(model.config, "_name_or_path", "") or None
    is_local = bool(name) and Path(name).is_dir()
    return ModelSource(name if is_local else None, is_local, library, task, model_type)


def load_model(source: ModelSource, trust_remote_code: bool):
    """Load the weights once, with Optimum's loader for the task.

    transformers reads safetensors when present and pickle checkpoints only with
    ``torch.load(weights_only=True)``, which refuses pickles that would run code.
    """
    from optimum.exporters.tasks import TasksManager

    try:
        model = TasksManager.get_model_from_task(
            source.task,
            source.name_or_path,
            framework="pt",
            library_name=source.library,
            trust_remote_code=trust_remote_code,
        )
    except Exception as e:  # loading third-party weights: every failure is explained to the user
        raise ModelSourceError(explain_load_failure(e, source.name_or_path)) from e
    prepare_for_task(model, source)
    return model
