"""Inputs to run an exported model on: the user's texts, images or arrays, else dummy inputs.

Text goes through the folder's own tokenizer and images through its image processor (as the
model will see them in use); each text or image is one run, so results aggregate over them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modelexport.errors import ModelExportError


def _texts(args) -> list[str]:
    texts = list(getattr(args, "text", None) or [])
    if getattr(args, "text_file", None):
        try:
            lines = Path(args.text_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ModelExportError(f"cannot read --text-file {args.text_file}: {e.strerror or e}") from e
        texts += [line for line in lines if line.strip()]
    return texts


def _input_names(model) -> set[str]:
    """The graph inputs a feed must fill (initializers listed as inputs by old exporters are not)."""
    initializers = {t.name for t in model.graph.initializer}
    return {i.name for i in model.graph.input if i.name not in initializers}


def feeds_for(target, onnx_file, args) -> tuple[list[dict], str]:
    """The feeds for one ONNX file of ``target``, and a few words saying what they are."""
    from modelexport.runtime.dummy_inputs import make_inputs

    specs = _input_names(onnx_file.model)
    folder = Path(target.folder)
    if getattr(args, "inputs", None):
        try:
            with np.load(args.inputs) as data:
                feed = {k: data[k] for k in data.files}
        except (OSError, ValueError) as e:
            raise ModelExportError(f"cannot read inputs from {args.inputs}: {e}") from e
        missing = sorted(set(specs) - set(feed))
        if missing:
            raise ModelExportError(f"{args.inputs} has no array for input(s) {', '.join(missing)} of {onnx_file.name}")
        return [feed], f"arrays from {args.inputs}"
    texts, images = _texts(args), list(getattr(args, "image", None) or [])
    if texts and {"input_ids"} <= set(specs):
        return text_feeds(folder, texts, specs), f"{len(texts)} text(s) through the folder's tokenizer"
    if images and "pixel_values" in specs:
        return image_feeds(folder, images), f"{len(images)} image(s) through the folder's image processor"
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(str(onnx_file.path), options, providers=["CPUExecutionProvider"])
    return [make_inputs(session, _config(folder))], "dummy inputs" + (
        " (the texts/images given do not fit this file's inputs)" if texts or images else "")


def text_feeds(folder: Path, texts: list[str], specs) -> list[dict]:
    """One feed per text; ``specs``: the input names the model takes."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ModelExportError(f"{folder} has no tokenizer to turn --text into inputs") from e
    feeds = []
    for text in texts:
        encoded = tokenizer(text, return_tensors="np", truncation=True)
        feed = {k: v.astype(np.int64) for k, v in encoded.items() if k in specs}
        if "token_type_ids" in specs and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        feeds.append(feed)
    return feeds


def image_feeds(folder: Path, images: list[str]) -> list[dict]:
    from PIL import Image
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ModelExportError(f"{folder} has no image processor to turn --image into inputs") from e
    feeds = []
    for path in images:
        try:
            image = Image.open(path).convert("RGB")
        except OSError as e:
            raise ModelExportError(f"cannot read image {path}: {e}") from e
        feeds.append({"pixel_values": processor(images=image, return_tensors="np")["pixel_values"]})
    return feeds


def _config(folder: Path) -> dict | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
