"""Which Optimum ``ORTModelForXxx`` class loads an exported folder, read from Optimum's own mapping."""
from __future__ import annotations


def ort_model_class_name(task: str, library: str, config=None) -> str | None:
    """Name of the ORTModel class for this task, or None when Optimum has none: what
    ``optimum.onnxruntime.pipelines.get_ort_model_class`` answers, without importing that module
    (it imports every transformers pipeline: ~50 ms of a 0.25 s tiny-model export; a test checks
    the two agree on every task).

    sentence-transformers exports have ``token_embeddings``/``sentence_embedding`` outputs,
    which ``ORTModelForFeatureExtraction`` does not read: Optimum loads them with
    ``ORTModelForCustomTasks``.
    """
    if library == "sentence_transformers":
        return "ORTModelForCustomTasks"
    base = task.replace("-with-past", "")
    if base.startswith("translation_"):
        base = "translation"
    names = ORT_TASK_CLASSES.get(base)
    if names is None:
        return None
    if len(names) > 1:  # automatic-speech-recognition: CTC heads, else the encoder-decoder class
        architectures = getattr(config, "architectures", None)
        if architectures is not None and not any(a.endswith("ForCTC") for a in architectures):
            return names[1]
    return names[0]


# optimum-onnx 0.1's ORT_TASKS_MAPPING (optimum/onnxruntime/pipelines.py), by class name.
ORT_TASK_CLASSES = {
    "audio-classification": ("ORTModelForAudioClassification",),
    "automatic-speech-recognition": ("ORTModelForCTC", "ORTModelForSpeechSeq2Seq"),
    "feature-extraction": ("ORTModelForFeatureExtraction",),
    "fill-mask": ("ORTModelForMaskedLM",),
    "image-classification": ("ORTModelForImageClassification",),
    "image-segmentation": ("ORTModelForSemanticSegmentation",),
    "image-to-image": ("ORTModelForImageToImage",),
    "image-to-text": ("ORTModelForVision2Seq",),
    "question-answering": ("ORTModelForQuestionAnswering",),
    "summarization": ("ORTModelForSeq2SeqLM",),
    "text2text-generation": ("ORTModelForSeq2SeqLM",),
    "text-classification": ("ORTModelForSequenceClassification",),
    "text-generation": ("ORTModelForCausalLM",),
    "token-classification": ("ORTModelForTokenClassification",),
    "translation": ("ORTModelForSeq2SeqLM",),
    "zero-shot-classification": ("ORTModelForSequenceClassification",),
    "zero-shot-image-classification": ("ORTModelForZeroShotImageClassification",),
}


# The ORTModel classes of optimum-onnx 0.1 by the inputs they feed and the output they read
# (optimum/onnxruntime/modeling.py, modeling_decoder.py, modeling_seq2seq.py): names only, so the
# Optimum-free path can say which class loads its folder without importing Optimum.
_BY_TASK = {
    "feature-extraction": ("ORTModelForFeatureExtraction", {"input_ids", "attention_mask", "token_type_ids",
                                                            "position_ids", "pixel_values", "input_features",
                                                            "input_values"}, "last_hidden_state"),
    "text-classification": ("ORTModelForSequenceClassification", {"input_ids", "attention_mask", "token_type_ids"},
                            "logits"),
    "token-classification": ("ORTModelForTokenClassification", {"input_ids", "attention_mask", "token_type_ids"},
                             "logits"),
    "question-answering": ("ORTModelForQuestionAnswering", {"input_ids", "attention_mask", "token_type_ids"},
                           "start_logits"),
    "fill-mask": ("ORTModelForMaskedLM", {"input_ids", "attention_mask", "token_type_ids"}, "logits"),
    "multiple-choice": ("ORTModelForMultipleChoice", {"input_ids", "attention_mask", "token_type_ids"}, "logits"),
    "image-classification": ("ORTModelForImageClassification", {"pixel_values"}, "logits"),
    "semantic-segmentation": ("ORTModelForSemanticSegmentation", {"pixel_values"}, "logits"),
    "audio-classification": ("ORTModelForAudioClassification", {"input_values", "attention_mask"}, "logits"),
    "audio-frame-classification": ("ORTModelForAudioFrameClassification", {"input_values"}, "logits"),
    "audio-xvector": ("ORTModelForAudioXVector", {"input_values"}, "logits"),
    "automatic-speech-recognition": ("ORTModelForCTC", {"input_values"}, "logits"),
}


def ort_model_class_for_io(task: str, library: str, layout: str, folder, files: list[str]) -> str:
    """The ORTModel class whose inputs and outputs match the files written, else
    ``ORTModelForCustomTasks`` (which feeds whatever the graph takes and returns every output)."""
    import onnx

    if library == "sentence_transformers":
        return "ORTModelForCustomTasks"
    if layout == "seq2seq-with-past":
        return "ORTModelForSpeechSeq2Seq" if task.startswith("automatic-speech-recognition") else "ORTModelForSeq2SeqLM"
    model = onnx.load(str(folder / files[0]), load_external_data=False)
    inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    if layout == "decoder-with-past":
        # an indexer's cached keys (past_key_values.N.indexer_key) are no past Optimum feeds
        cached = {n for n in inputs if n.startswith("past_key_values.")}
        plain = all(n.endswith((".key", ".value")) and not n.endswith(".indexer_key") for n in cached)
        return "ORTModelForCausalLM" if plain else "ORTModelForCustomTasks"
    outputs = {o.name for o in model.graph.output}
    entry = _BY_TASK.get(task.replace("-with-past", ""))
    if entry is not None and inputs <= entry[1] and entry[2] in outputs:
        return entry[0]
    return "ORTModelForCustomTasks"


def fed_by(class_name: str | None, folder, files: list[str]) -> str | None:
    """``class_name`` (Optimum's class for the task), or ``ORTModelForCustomTasks`` when the
    folder is one file taking inputs that class never feeds (MarkupLM's xpath ids: Optimum's
    ``ORTModelForTokenClassification`` feeds input_ids, attention_mask, token_type_ids and fails
    with "Input xpath_tags_seq is required by model but not provided")."""
    import onnx

    entry = next((e for e in _BY_TASK.values() if e[0] == class_name), None)
    if entry is None or len(files) != 1:
        return class_name
    graph = onnx.load(str(folder / files[0]), load_external_data=False).graph
    inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    return class_name if inputs <= entry[1] else "ORTModelForCustomTasks"


def load_ort_model(folder, class_name: str):
    """The folder in Optimum's ``class_name`` (``ORTModelForCausalLM``...): for the checks that a
    folder loads where Optimum is installed (validate, the test helpers)."""
    import optimum.onnxruntime as ortm

    return getattr(ortm, class_name).from_pretrained(folder)
