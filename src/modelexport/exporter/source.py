"""Where the model comes from, which library and task it is exported for, and loading it once.

Task and library inference go through Optimum's TasksManager. Optimum refuses to infer a task
for local folders, so for those the task is read from ``config.architectures`` (or the
library: sentence-transformers models are feature extractors).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from modelexport.errors import ModelSourceError, TaskError

LIBRARIES = ("transformers", "sentence_transformers", "timm", "diffusers")


@dataclass
class ModelSource:
    name_or_path: str | None  # None for an in-memory model that came from nowhere we know
    is_local: bool
    library: str
    task: str
    model_type: str


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that is spelled like a path is one.
    return model.startswith(("/", "./", "../", "~", ".")) or model.endswith("/") or model.count("/") > 1


def check_local_folder(path: Path) -> dict:
    """Fail early and clearly on folders that are not Hugging Face models; return config.json."""
    if not path.exists():
        raise ModelSourceError(f"model folder not found: {path}")
    if not path.is_dir():
        raise ModelSourceError(f"model path is not a folder: {path}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelSourceError(f"{path} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelSourceError(f"{config_file} is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ModelSourceError(f"{config_file} must hold a JSON object, found {type(config).__name__}")
    return config


def load_config(name_or_path: str, trust_remote_code: bool):
    """The model's config through AutoConfig (no weights), with errors a user can act on."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        text = str(e)
        if "trust_remote_code" in text:
            raise ModelSourceError(
                f"{name_or_path} needs custom code from its repository; pass --trust-remote-code if you trust it"
            ) from e
        if "Unrecognized model" in text or "does not recognize" in text or "model_type" in text:
            raise ModelSourceError(
                f"{name_or_path}: config.json names a model_type this transformers version does not know"
            ) from e
        raise ModelSourceError(f"cannot read the config of {name_or_path}: {text.splitlines()[0]}") from e
    except OSError as e:
        raise ModelSourceError(
            f"cannot load {name_or_path}: not a local folder and not reachable on the Hugging Face Hub "
            f"({str(e).splitlines()[0]})"
        ) from e


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
    is_local = path.exists() or _looks_like_path(model)
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


def explain_load_failure(e: BaseException, where: str | None) -> str:
    """Name the real cause of a weight-loading failure (Optimum's retries can hide it)."""
    chain = []
    seen: BaseException | None = e
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    texts = [f"{type(x).__name__}: {x}" for x in chain]
    joined = "\n".join(texts)
    if "UnpicklingError" in joined or "Weights only load failed" in joined:
        return (f"refused to load the pickle checkpoint in {where}: it holds objects other than tensors, and "
                "loading it would run code. Only torch.load(weights_only=True) is used; convert the checkpoint "
                "to safetensors if you trust its source")
    if "SafetensorError" in joined or "deserializing header" in joined:
        detail = next(t for t in texts if "Safetensor" in t or "deserializing" in t)
        return f"the safetensors weights in {where} are truncated or corrupt ({detail.splitlines()[0][:200]})"
    if "no file named" in joined:
        return (f"no weights in {where}: expected model.safetensors (or pytorch_model.bin); "
                "a folder with only config.json cannot be exported")
    if "trust_remote_code" in joined:
        return f"{where} needs custom code from its repository; pass --trust-remote-code if you trust it"
    first = texts[-1].splitlines()[0][:300]
    return f"cannot load the model from {where}: {first}"


def prepare_for_task(model, source: ModelSource) -> None:
    """The config tweaks Optimum's main_export makes after loading."""
    config = getattr(model, "config", None)
    if config is None:
        return
    if source.task.endswith("-with-past"):
        config.use_cache = True
    elif hasattr(config, "use_cache") and source.task.startswith(("text-generation", "text2text-generation")):
        config.use_cache = False
    if source.task == "text-classification" and getattr(config, "pad_token_id", None) is None:
        from transformers import AutoTokenizer

        if source.name_or_path is None:
            raise TaskError("text-classification export needs config.pad_token_id to be set")
        pad = getattr(AutoTokenizer.from_pretrained(source.name_or_path), "pad_token_id", None)
        if pad is None:
            raise TaskError("text-classification export needs a pad token id; set pad_token_id in config.json")
        config.pad_token_id = pad
