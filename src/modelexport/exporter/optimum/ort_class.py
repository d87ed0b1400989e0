"""Which Optimum ``ORTModelForXxx`` class loads an exported folder, read from Optimum's own mapping."""
from __future__ import annotations


def ort_model_class_name(task: str, library: str, config=None) -> str | None:
    """Name of the ORTModel class for this task, or None when Optimum has none.

    sentence-transformers exports have ``token_embeddings``/``sentence_embedding`` outputs,
    which ``ORTModelForFeatureExtraction`` does not read: Optimum loads them with
    ``ORTModelForCustomTasks``.
    """
    if library == "sentence_transformers":
        return "ORTModelForCustomTasks"
    from optimum.onnxruntime.pipelines import ORT_TASKS_MAPPING, get_ort_model_class

    base = task.replace("-with-past", "")
    if base not in ORT_TASKS_MAPPING:
        return None
    try:
        return get_ort_model_class(base, config=config).__name__
    except (KeyError, TypeError, AttributeError):
        return ORT_TASKS_MAPPING[base][0].__name__
