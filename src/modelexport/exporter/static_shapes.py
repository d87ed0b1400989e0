"""Fixed input shapes for NPUs and compilers: parse, check, and record them with the preprocessors.

Names are those of Optimum's dummy-input shapes (``optimum.utils.DEFAULT_DUMMY_SHAPES``):
batch_size, sequence_length, height, width, num_channels, feature_size, nb_max_frames,
audio_sequence_length, ...
"""
from __future__ import annotations

from pathlib import Path

from modelexport.errors import ModelExportError


def shape_names() -> list[str]:
    from optimum.utils import DEFAULT_DUMMY_SHAPES

    return sorted(DEFAULT_DUMMY_SHAPES)


def parse_static_shapes(text: str) -> dict[str, int]:
    """``"batch_size=1,sequence_length=128"`` -> ``{"batch_size": 1, "sequence_length": 128}``."""
    shapes: dict[str, int] = {}
    valid = shape_names()
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ModelExportError(f"--static-shapes: {item!r} is not NAME=SIZE")
        if name not in valid:
            raise ModelExportError(f"--static-shapes: unknown shape name {name!r}; known: {', '.join(valid)}")
        try:
            size = int(value)
        except ValueError:
            raise ModelExportError(f"--static-shapes: {name}={value!r} is not a whole number") from None
        if size <= 0:
            raise ModelExportError(f"--static-shapes: {name} must be positive, got {size}")
        shapes[name] = size
    if not shapes:
        raise ModelExportError("--static-shapes: give at least one NAME=SIZE")
    return shapes


def check_against_config(shapes: dict[str, int], config) -> None:
    """Sizes the model cannot take, refused before any work."""
    limit = getattr(config, "max_position_embeddings", None)
    seq = shapes.get("sequence_length")
    if seq is not None and isinstance(limit, int) and seq > limit:
        raise ModelExportError(f"sequence_length={seq} is more than the model takes "
                               f"(max_position_embeddings={limit})")
    image_size = getattr(config, "image_size", None)
    for name in ("height", "width"):
        if name in shapes and isinstance(image_size, int) and shapes[name] != image_size \
                and getattr(config, "model_type", "") in ("vit", "deit", "beit", "clip_vision_model"):
            raise ModelExportError(f"{name}={shapes[name]}: this {config.model_type} model takes {image_size}x"
                                   f"{image_size} images (its position embeddings are sized for it)")


def record_in_preprocessors(folder: Path, shapes: dict[str, int]) -> list[str]:
    """Make the saved preprocessors produce the fixed shapes; returns what was changed."""
    from transformers import AutoImageProcessor, AutoTokenizer

    changed = []
    if "sequence_length" in shapes and (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.model_max_length = shapes["sequence_length"]
        tokenizer.save_pretrained(folder)
        changed.append(f"tokenizer model_max_length={shapes['sequence_length']}")
    if ("height" in shapes or "width" in shapes) and (folder / "preprocessor_config.json").is_file():
        try:
            processor = AutoImageProcessor.from_pretrained(folder)
        except (OSError, ValueError):
            processor = None
        if processor is not None and hasattr(processor, "size"):
            h = shapes.get("height", shapes.get("width"))
            w = shapes.get("width", shapes.get("height"))
            processor.size = {"height": h, "width": w}
            if hasattr(processor, "crop_size"):
                processor.crop_size = {"height": h, "width": w}
            processor.save_pretrained(folder)
            changed.append(f"image processor size={h}x{w}")
    return changed


def infer_static_shapes(path: Path) -> None:
    """Write fixed sizes on every value of the graph, not only its inputs: compilers read
    value_info. ONNX's own inference leaves shapes computed at run time (the attention-mask
    Expand of BERT) symbolic; ONNX Runtime's symbolic inference folds them, so it runs first."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    if not external:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        try:
            inferred = SymbolicShapeInference.infer_shapes(onnx.load(str(path)), auto_merge=False)
        except Exception:  # its failures are its own; ONNX's inference below still runs
            inferred = None
        if inferred is not None:
            onnx.save(inferred, str(path))
            return
    onnx.shape_inference.infer_shapes_path(str(path), str(path), data_prop=True)


def is_fully_static(path: Path) -> list[str]:
    """Names of graph inputs, outputs and inferred values that still have a symbolic dimension."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dynamic = []
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if value.type.HasField("tensor_type"):
            dims = value.type.tensor_type.shape.dim
            if any(not d.HasField("dim_value") for d in dims):
                dynamic.append(value.name)
    return dynamic
