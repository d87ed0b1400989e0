"""Where the model comes from and which task it is exported for, without Optimum: transformers'
AutoConfig and Auto mappings, sentence-transformers folders by their ``modules.json``."""
from __future__ import annotations

from pathlib import Path

from modelexport.errors import ModelSourceError, TaskError
from modelexport.exporter.generic.tasks import GENERATIVE, accepts_cache, infer_task, load_model, spec_of
from modelexport.exporter.source import ModelSource, check_local_folder, load_config, looks_like_path, registered_type

GENERIC_LIBRARIES = ("transformers", "sentence_transformers")


def is_sentence_transformers_folder(path: Path) -> bool:
    return (path / "modules.json").is_file() and (path / "config_sentence_transformers.json").is_file()


def resolve(model: str, task: str, library: str, trust_remote_code: bool) -> tuple[ModelSource, object]:
    """Check a model id or folder, settle library and task (``-with-past`` decided after loading,
    by ``settle_cache``). Returns (source, config)."""
    path = Path(model).expanduser()
    is_local = path.exists() or looks_like_path(model)
    if is_local:
        check_local_folder(path)
        name_or_path = str(path.resolve())
    else:
        name_or_path = model
    config = load_config(name_or_path, trust_remote_code)
    model_type = registered_type(config)
    if library == "auto":
        library = "sentence_transformers" if is_local and is_sentence_transformers_folder(path) else "transformers"
    elif library not in GENERIC_LIBRARIES:
        raise TaskError(f"--library {library}: the export without Optimum handles transformers and "
                        f"sentence_transformers models; {library} models need Optimum "
                        "(pip install 'modelexport[optimum]')")
    if library == "sentence_transformers" and not (is_local and is_sentence_transformers_folder(path)):
        raise TaskError(f"{name_or_path} is not a sentence-transformers folder (no modules.json); drop --library")
    if library == "sentence_transformers":
        if task not in ("auto", "feature-extraction"):
            raise TaskError(f"sentence-transformers models are exported for feature-extraction, not {task!r}")
        task = "feature-extraction"
    elif task == "auto":
        task = infer_task(config)
    else:
        spec_of(task, model_type)  # refuses a task the model type has no head for
    return ModelSource(name_or_path, is_local, library, task, model_type), config


def load(source: ModelSource, trust_remote_code: bool, task_given: bool, config=None):
    """The model, loaded once; a generative task gets the KV-cache variant unless the user named
    the task (as Optimum's CLI does). ``config``: the one ``resolve`` read (read again if not given)."""
    if source.library == "sentence_transformers":
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ModelSourceError("this is a sentence-transformers folder: pip install sentence-transformers "
                                   "(or pass --library transformers to export its transformer alone)") from e
        try:
            model = SentenceTransformer(source.name_or_path, device="cpu", trust_remote_code=trust_remote_code)
        except Exception as e:  # third-party loading: every failure explained
            from modelexport.exporter.source import explain_load_failure

            raise ModelSourceError(explain_load_failure(e, source.name_or_path)) from e
        return model.eval()
    model = load_model(source.name_or_path, spec_of(source.task, source.model_type), trust_remote_code, config)
    settle_cache(model, source, task_given)
    return model


def settle_cache(model, source: ModelSource, task_given: bool) -> None:
    base = source.task.replace("-with-past", "")
    if not task_given and base in GENERATIVE and accepts_cache(model):
        source.task = base + "-with-past"
        source.past_chosen = True
    if source.task.endswith("-with-past") and not accepts_cache(model):
        raise TaskError(f"{type(model).__name__} takes no KV cache: export it with --task {base}")
