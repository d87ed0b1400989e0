"""Task, head and loading for the export path that needs no Optimum config.

The task comes from ``config.architectures`` looked up in transformers' own ``AutoModelFor*``
mappings (the classes ``AutoModelForXxx.from_pretrained`` would build), so every model type
transformers maps is covered, in 4.57 and 5.x alike. Task names are Optimum's, so a folder
reads the same whichever path made it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from modelexport.errors import ModelSourceError, TaskError


@dataclass(frozen=True)
class TaskSpec:
    task: str  # Optimum's name, e.g. "text-classification"
    mapping: str  # transformers.models.auto.modeling_auto.<mapping>
    auto_class: str  # transformers.<AutoModelForXxx>


# Most specific heads first: a type listed in several mappings takes the first that names its
# architecture. The base model (feature-extraction) is last.
TASKS = (
    TaskSpec("text-generation", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM"),
    TaskSpec("text2text-generation", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "AutoModelForSeq2SeqLM"),
    TaskSpec("automatic-speech-recognition", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES", "AutoModelForSpeechSeq2Seq"),
    TaskSpec("image-text-to-text", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "AutoModelForImageTextToText"),
    TaskSpec("image-to-text", "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES", "AutoModelForVision2Seq"),
    TaskSpec("text-classification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
             "AutoModelForSequenceClassification"),
    TaskSpec("token-classification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "AutoModelForTokenClassification"),
    TaskSpec("question-answering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "AutoModelForQuestionAnswering"),
    TaskSpec("multiple-choice", "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES", "AutoModelForMultipleChoice"),
    TaskSpec("fill-mask", "MODEL_FOR_MASKED_LM_MAPPING_NAMES", "AutoModelForMaskedLM"),
    TaskSpec("image-classification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "AutoModelForImageClassification"),
    TaskSpec("zero-shot-image-classification", "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES",
             "AutoModelForZeroShotImageClassification"),
    TaskSpec("object-detection", "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES", "AutoModelForObjectDetection"),
    TaskSpec("semantic-segmentation", "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
             "AutoModelForSemanticSegmentation"),
    TaskSpec("depth-estimation", "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES", "AutoModelForDepthEstimation"),
    TaskSpec("masked-im", "MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING_NAMES", "AutoModelForMaskedImageModeling"),
    TaskSpec("audio-classification", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES", "AutoModelForAudioClassification"),
    TaskSpec("automatic-speech-recognition", "MODEL_FOR_CTC_MAPPING_NAMES", "AutoModelForCTC"),
    TaskSpec("audio-frame-classification", "MODEL_FOR_AUDIO_FRAME_CLASSIFICATION_MAPPING_NAMES",
             "AutoModelForAudioFrameClassification"),
    TaskSpec("audio-xvector", "MODEL_FOR_AUDIO_XVECTOR_MAPPING_NAMES", "AutoModelForAudioXVector"),
    TaskSpec("feature-extraction", "MODEL_MAPPING_NAMES", "AutoModel"),
)
# Tasks whose heads generate: the default export carries the KV cache, as Optimum's CLI does.
GENERATIVE = ("text-generation", "text2text-generation", "automatic-speech-recognition")


def _names(mapping_attr: str) -> dict[str, tuple[str, ...]]:
    """model type -> class names of one Auto mapping (a type may map to several classes)."""
    from transformers.models.auto import modeling_auto

    mapping = getattr(modeling_auto, mapping_attr, None) or {}
    return {t: (c,) if isinstance(c, str) else tuple(c) for t, c in mapping.items()}


def specs_for_class(class_name: str) -> list[TaskSpec]:
    """Every task whose Auto mapping builds ``class_name``."""
    return [spec for spec in TASKS if any(class_name in classes for classes in _names(spec.mapping).values())]


def specs_for_type(model_type: str) -> list[TaskSpec]:
    """Every task transformers has a head for, for this model type."""
    return [spec for spec in TASKS if model_type in _names(spec.mapping)]


def spec_of(task: str, model_type: str) -> TaskSpec:
    base = task.replace("-with-past", "")
    specs = [s for s in specs_for_type(model_type) if s.task == base]
    if not specs:
        supported = sorted({s.task for s in specs_for_type(model_type)})
        raise TaskError(f"{model_type} models cannot be exported for task {task!r}: transformers has no head for it "
                        f"(tasks it has: {', '.join(supported) or 'none'})")
    return specs[0]


def infer_task(config) -> str:
    """The task of the head ``config.architectures`` names; the base model when it names none."""
    for architecture in getattr(config, "architectures", None) or []:
        specs = specs_for_class(architecture)
        if specs:
            return specs[0].task
    from modelexport.exporter.source import registered_type

    specs = specs_for_type(registered_type(config))
    if specs:
        return "feature-extraction" if any(s.task == "feature-extraction" for s in specs) else specs[0].task
    raise TaskError(f"transformers maps model type {config.model_type!r} to no PyTorch model class; "
                    "pass --task, or check that transformers supports it")


def accepts_cache(model) -> bool:
    """Whether the model's forward takes a KV cache (``past_key_values``, ``cache`` in transformers 5)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "past_key_values" in params or "cache" in params


def load_model(name_or_path: str, spec: TaskSpec, trust_remote_code: bool, config=None):
    """The model of one head, with transformers' Auto class (safetensors first; pickles only with
    ``weights_only=True``). ``config``: the folder's, when already read (``load_config``)."""
    import transformers

    from modelexport.exporter.source import explain_load_failure, load_config, registered_type

    if config is None:
        config = load_config(name_or_path, trust_remote_code)
    # a config AutoConfig cannot read itself (its class declares another model_type than its Auto
    # key: 4.57's Evolla, MLCD) is given; any other is read by from_pretrained as usual
    given = {"config": config} if registered_type(config) != config.model_type else {}
    auto = getattr(transformers, spec.auto_class)
    try:
        try:
            model = auto.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **given)
        except ValueError as e:
            # transformers' task mapping names a head its Auto class cannot build from the config
            # (transformers 5's Evolla: AutoModelForImageTextToText refuses EvollaConfig): the
            # head config.architectures names, when that mapping lists it, loaded by its own class
            head = _listed_head(config, spec) if "Unrecognized configuration class" in str(e) else None
            if head is None:
                raise
            model = head.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **given)
    except Exception as e:  # loading third-party weights: every failure is explained to the user
        raise ModelSourceError(explain_load_failure(e, name_or_path)) from e
    return model.eval()


def _listed_head(config, spec: TaskSpec):
    """The transformers class of ``config.architectures`` that ``spec``'s mapping lists, or None."""
    import transformers

    architectures = getattr(config, "architectures", None) or []
    listed = {c for classes in _names(spec.mapping).values() for c in classes}
    return next((getattr(transformers, a) for a in architectures if a in listed and hasattr(transformers, a)), None)


def task_of_loaded_model(model) -> str:
    """The task of an already loaded model, from its class."""
    specs = specs_for_class(type(model).__name__)
    if specs:
        return specs[0].task
    raise TaskError(f"{type(model).__name__} is not a class transformers' Auto mappings know; pass task=... or use "
                    "export_module for plain torch modules")
