"""``modelexport.load_pipeline(folder)``: run a static-shape export on inputs of any length.

Optimum's ORTModel classes and transformers' pipelines pass inputs at their natural size; a
model exported with fixed shapes needs every batch padded to the fixed batch size and every
sequence padded (or truncated, with a warning) to the fixed length. This helper does that with
the folder's own preprocessors and returns one result per input.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from modelexport.errors import ModelExportError


class StaticShapePipeline:
    def __init__(self, folder):
        from modelexport.folder.metadata import read_metadata
        from modelexport.runtime.exported import ExportedModel

        self.folder = Path(folder)
        meta, problem = read_metadata(self.folder)
        if meta is None:
            raise ModelExportError(f"{folder}: {problem}")
        self.shapes = meta.static_shapes
        if not self.shapes:
            raise ModelExportError(f"{folder} was not exported with --static-shapes; use its ORTModel class directly")
        self.task = meta.task
        if self.task not in _TEXT_TASKS and not self.task.startswith(("image", "audio")) \
                and self.task != "automatic-speech-recognition":
            raise ModelExportError(f"load_pipeline does not handle task {self.task!r}: it runs classifiers, "
                                   "token/QA/fill-mask heads and embedding models (feature-extraction)")
        self.batch_size = self.shapes.get("batch_size", 1)
        # ONNX Runtime through modelexport.load: the same with or without Optimum installed
        self.model = ExportedModel(self.folder)
        self.config = self.model.config
        self.input_names = set(self.model.main_file().inputs)

    # -- preprocessing to the fixed shapes ----------------------------------------------------
    def _text(self, texts: list[str]) -> dict:
        from transformers import AutoTokenizer

        length = self.shapes["sequence_length"]
        tokenizer = AutoTokenizer.from_pretrained(self.folder)
        natural = tokenizer(texts)["input_ids"]
        longer = [i for i, ids in enumerate(natural) if len(ids) > length]
        if longer:
            warnings.warn(f"{len(longer)} input(s) longer than the exported sequence_length={length} were "
                          "truncated", stacklevel=3)
        return dict(tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="np"))

    def _images(self, images) -> dict:
        from transformers import AutoImageProcessor

        return dict(AutoImageProcessor.from_pretrained(self.folder)(images=images, return_tensors="np"))

    def _audio(self, clips, sampling_rate: int) -> dict:
        from transformers import AutoFeatureExtractor

        length = self.shapes.get("audio_sequence_length", 16000)
        if any(len(c) > length for c in clips):
            warnings.warn(f"audio longer than the exported audio_sequence_length={length} was truncated",
                          stacklevel=3)
        extractor = AutoFeatureExtractor.from_pretrained(self.folder)
        features = extractor(list(clips), sampling_rate=sampling_rate, padding="max_length", max_length=length,
                             truncation=True, return_tensors="np")
        return {k: v for k, v in features.items() if k in self.input_names}

    def preprocess(self, inputs, sampling_rate: int = 16000) -> dict:
        if self.task in _TEXT_TASKS:
            return self._text(list(inputs))
        if self.task.startswith("image"):
            return self._images(list(inputs))
        if self.task.startswith("audio") or self.task == "automatic-speech-recognition":
            return self._audio(list(inputs), sampling_rate)
        raise ModelExportError(f"load_pipeline does not handle task {self.task!r} yet")

    # -- running in fixed-size batches --------------------------------------------------------
    def __call__(self, inputs, sampling_rate: int = 16000) -> list[dict]:
        """One dict per input: ``logits`` (for that input only) and, for classifiers, ``label``."""
        if isinstance(inputs, (str, bytes)) or (isinstance(inputs, np.ndarray) and inputs.ndim == 1):
            inputs = [inputs]
        inputs = list(inputs)
        if not inputs:
            return []
        features = self.preprocess(inputs, sampling_rate)
        features = {k: v for k, v in features.items() if k in self.input_names}
        n, bs = len(inputs), self.batch_size
        results = []
        for start in range(0, n, bs):
            chunk = {k: v[start:start + bs] for k, v in features.items()}
            real = next(iter(chunk.values())).shape[0]
            if real < bs:  # the last batch: fill with copies of its first row, dropped below
                chunk = {k: np.concatenate([v, np.repeat(v[:1], bs - real, axis=0)]) for k, v in chunk.items()}
            output = self.model(**chunk)
            if output.get("logits") is not None:
                for row in np.asarray(output["logits"])[:real]:
                    entry = {"logits": row}
                    id2label = getattr(self.config, "id2label", None)
                    if row.ndim == 1 and id2label:
                        entry["label"] = id2label.get(int(row.argmax()), str(int(row.argmax())))
                    results.append(entry)
            else:
                results.extend(_embeddings(output, chunk.get("attention_mask"), real))
        return results


_TEXT_TASKS = ("text-classification", "token-classification", "fill-mask", "question-answering",
               "feature-extraction", "multiple-choice")


def _embeddings(output, attention_mask, real: int) -> list[dict]:
    """Embedding models: a sentence-transformers export has its pooled ``sentence_embedding``;
    a plain encoder's ``last_hidden_state`` is mean-pooled over the real (unpadded) tokens, the
    pooling that does not depend on the padding the fixed shape forced."""
    sentence = output.get("sentence_embedding") if hasattr(output, "get") else None
    hidden = output.get("last_hidden_state", output.get("token_embeddings")) if hasattr(output, "get") else None
    rows = []
    for i in range(real):
        entry = {}
        if hidden is not None:
            h = np.asarray(hidden)[i]
            mask = np.asarray(attention_mask)[i].astype(h.dtype)[:, None] if attention_mask is not None else None
            entry["last_hidden_state"] = h if mask is None else h[: int(mask.sum())]
            entry["embedding"] = h.mean(0) if mask is None else (h * mask).sum(0) / max(float(mask.sum()), 1.0)
        if sentence is not None:
            entry["embedding"] = np.asarray(sentence)[i]
        if not entry:
            raise ModelExportError("the model returned neither logits nor embeddings")
        rows.append(entry)
    return rows


def load_pipeline(folder) -> StaticShapePipeline:
    return StaticShapePipeline(folder)
