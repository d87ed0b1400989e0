"""A ``SentenceTransformer`` whose transformer is the exported ONNX file, for transformers 5.

sentence-transformers' own ``backend="onnx"`` imports Optimum (5.7 and 6.2 alike), which cannot
be installed beside transformers 5 (optimum-onnx 0.1 requires transformers<4.58). Here the first
module of ``modules.json`` (the transformer) is replaced by a module that tokenizes with the
folder's tokenizer and runs ``model.onnx`` in ONNX Runtime; every other module (Pooling,
Normalize, Dense...) is the folder's own, loaded by its sentence-transformers class.
"""
from __future__ import annotations

import importlib
import json

import torch

from modelexport.errors import ModelExportError


class OnnxTransformer(torch.nn.Module):
    """Tokenize like sentence-transformers' Transformer module; ``token_embeddings`` from ONNX."""

    def __init__(self, exported, max_seq_length: int | None, do_lower_case: bool = False):
        super().__init__()
        self.exported = exported
        self.max_seq_length = max_seq_length
        self.do_lower_case = do_lower_case
        self.tokenizer = exported._preprocessor("AutoTokenizer")
        if self.tokenizer is None:
            raise ModelExportError(f"{exported.folder} has no tokenizer")

    def tokenize(self, texts, padding: str | bool = True, **_):
        texts = [t.lower() for t in texts] if self.do_lower_case else list(texts)
        return dict(self.tokenizer(texts, padding=padding, truncation="longest_first", return_tensors="pt",
                                   max_length=self.max_seq_length))

    def forward(self, features: dict, **_) -> dict:
        f = self.exported.main_file()
        out = self.exported(**{k: v for k, v in features.items() if k in f.inputs})
        name = "token_embeddings" if "token_embeddings" in out else "last_hidden_state"
        features["token_embeddings"] = torch.from_numpy(out[name])
        return features

    def get_word_embedding_dimension(self) -> int:
        return int(self.exported.config.hidden_size)


def _module_class(ref: str):
    """Only sentence-transformers' own classes: a folder must not make us import arbitrary code."""
    if not ref.startswith("sentence_transformers."):
        raise ModelExportError(f"modules.json names {ref!r}, not a sentence-transformers class: not loaded")
    module_name, _, class_name = ref.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def build_sentence_transformer(exported):
    from sentence_transformers import SentenceTransformer

    folder = exported.folder
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelExportError(f"{folder} has no readable modules.json: not a sentence-transformers export") from e
    try:
        settings = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        settings = {}
    built = []
    for entry in sorted(modules, key=lambda m: m.get("idx", 0)):
        if not entry.get("path"):
            built.append(OnnxTransformer(exported, settings.get("max_seq_length"), settings.get("do_lower_case", False)))
            continue
        built.append(_module_class(entry["type"]).load(str(folder), subfolder=entry["path"]))
    return SentenceTransformer(modules=built, device="cpu")
