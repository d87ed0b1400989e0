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
    past_chosen: bool = False  # the KV-cache task was our choice (the user named no task)


def looks_like_path(model: str) -> bool:
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
            config = _config_by_declared_type(name_or_path, trust_remote_code)
            if config is not None:
                return config
            raise ModelSourceError(
                f"{name_or_path}: config.json names a model_type this transformers version does not know"
            ) from e
        raise ModelSourceError(f"cannot read the config of {name_or_path}: {text.splitlines()[0]}") from e
    except OSError as e:
        raise ModelSourceError(
            f"cannot load {name_or_path}: not a local folder and not reachable on the Hugging Face Hub "
            f"({str(e).splitlines()[0]})"
        ) from e


def _config_by_declared_type(name_or_path: str, trust_remote_code: bool):
    """The config of a folder whose ``model_type`` is the one a transformers config class declares
    but not the key AutoConfig registers that class under (4.57's ``EvollaConfig`` saves
    "EvollaModel" for "evolla", ``MLCDVisionConfig`` "mlcd_vision_model" for "mlcd"), so
    ``AutoConfig`` cannot read back what ``save_pretrained`` wrote. None when no class declares it.
    Imports every config class (a few seconds), only on this path."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

    try:
        declared = PretrainedConfig.get_config_dict(name_or_path)[0].get("model_type")
    except (OSError, ValueError):
        return None
    for key in CONFIG_MAPPING_NAMES:
        try:
            cls = CONFIG_MAPPING[key]
        except (ImportError, AttributeError):  # a config class this installation cannot import
            continue
        if declared and cls.model_type == declared and key != declared:
            return cls.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return None


def registered_type(config) -> str:
    """The model type transformers' Auto mappings know the config's class by: ``config.model_type``
    except where the class declares another (``_config_by_declared_type``)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    name = type(config).__name__
    if CONFIG_MAPPING_NAMES.get(config.model_type) == name:
        return config.model_type
    return next((key for key, cls in CONFIG_MAPPING_NAMES.items() if cls == name), config.model_type)


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
