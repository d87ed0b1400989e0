"""Fixed input shapes for NPUs and compilers: parse, check, and record them with the preprocessors.

Names are those of Optimum's dummy-input shapes (``optimum.utils.DEFAULT_DUMMY_SHAPES`` in
optimum-onnx 0.1, written out here so that they mean the same without Optimum): batch_size,
sequence_length, height, width, num_channels, feature_size, nb_max_frames, audio_sequence_length...
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from modelexport.errors import ModelExportError


# optimum-onnx 0.1's DEFAULT_DUMMY_SHAPES: name -> the size Optimum uses when none is given
DUMMY_SHAPES = {"batch_size": 2, "sequence_length": 16, "num_choices": 4, "width": 64, "height": 64,
                "num_channels": 3, "point_batch_size": 3, "nb_points_per_image": 2, "visual_seq_length": 16,
                "feature_size": 80, "nb_max_frames": 3000, "audio_sequence_length": 16000}


def shape_names() -> list[str]:
    return sorted(DUMMY_SHAPES)


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


def infer_static_shapes(path: Path, config: dict | None = None) -> list[str]:
    """Write fixed sizes on every value of the graph, not only its inputs: compilers and NPU
    toolchains read value_info and reject a symbolic dimension anywhere.

    ONNX's own inference leaves shapes computed at run time (the attention-mask Expand of BERT)
    symbolic, so ONNX Runtime's symbolic inference runs first; what it still leaves open
    (``unk__0``: e.g. a Reshape whose target shape is computed) is measured in one run of the
    model on inputs of the fixed shapes, which is exact because every input shape is fixed.
    Returns the warnings for the file: values whose shape depends on the input values (they stay
    symbolic; see ``measure_open_shapes``).
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    inferred = None
    if not external:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        try:
            # it writes scratch files (sym_shape_infer_temp.onnx, *.data) into the working folder
            with _in_scratch_folder():
                inferred = SymbolicShapeInference.infer_shapes(onnx.load(str(path)), auto_merge=False)
        except Exception:  # its failures are its own; ONNX's inference below still runs
            inferred = None
        if inferred is not None:
            onnx.save(inferred, str(path))
    if inferred is None:
        onnx.shape_inference.infer_shapes_path(str(path), str(path), data_prop=True)
    _, dependent = measure_open_shapes(path, config)
    return [data_dependent_warning(dependent)] if dependent else []


@contextlib.contextmanager
def _in_scratch_folder():
    """Run with a temporary working folder (removed after), for tools that write beside the cwd."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="modelexport-shapes-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


def data_dependent_warning(names: list[str]) -> str:
    return (f"{len(names)} values have shapes that depend on the input values, not only on the fixed input shapes "
            f"(e.g. {names[0]}): they stay symbolic; a compiler that needs every shape fixed will refuse them")


def _open_values(graph) -> list[str]:
    """Main-graph values with a symbolic or unknown dimension, or with no shape at all."""
    known = {}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        t = value.type.tensor_type if value.type.HasField("tensor_type") else None
        known[value.name] = t is not None and t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim)
    initializers = {t.name for t in graph.initializer}
    names = [v.name for v in graph.input] + [o for n in graph.node for o in n.output if o]
    return [n for n in dict.fromkeys(names) if n not in initializers and not known.get(n, False)]


def _varied(feed: dict, config: dict | None) -> dict:
    """The same shapes, other values: masks with padding at the end, ids spread over the vocabulary,
    other random floats. A dimension that differs between the two runs depends on the values."""
    import numpy as np

    rng = np.random.default_rng(1)
    vocab = int((config or {}).get("vocab_size") or 2)
    varied = {}
    for name, value in feed.items():
        value = np.array(value, copy=True)
        if "mask" in name and value.ndim >= 1 and value.shape[-1] > 1 and np.issubdtype(value.dtype, np.integer):
            value[..., max(1, value.shape[-1] * 3 // 4):] = 0
        elif np.issubdtype(value.dtype, np.integer) and value.dtype != np.bool_ and "ids" in name:
            value = rng.integers(0, max(2, vocab), value.shape).astype(value.dtype)
        elif np.issubdtype(value.dtype, np.floating):
            value = rng.standard_normal(value.shape).astype(value.dtype)
        varied[name] = value
    return varied


def measure_open_shapes(path: Path, config: dict | None = None) -> tuple[list[str], list[str]]:
    """Fill the dimensions symbolic inference left open with those of ONNX Runtime runs on inputs
    of the fixed shapes. Two runs on different values: a dimension that differs between them
    (downstream of NonZero, a mask's sum...) depends on the data and is left open. Returns the
    values measured and those whose shape depends on the data."""
    import onnx

    from modelexport.runtime.dummy_inputs import make_inputs
    from modelexport.runtime.intermediates import session_exposing

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    names = _open_values(graph)
    if not names:
        return [], []
    with session_exposing(path, names) as session:
        feed = make_inputs(session, config)
        values = session.run(names, feed)
        other = session.run(names, _varied(feed, config))
    shapes = {n: v.shape for n, v, w in zip(names, values, other) if hasattr(v, "shape") and v.shape == w.shape}
    dependent = sorted(n for n, v, w in zip(names, values, other) if hasattr(v, "shape") and v.shape != w.shape)
    types = {n: onnx.helper.np_dtype_to_tensor_dtype(v.dtype) for n, v in zip(names, values) if hasattr(v, "dtype")}
    entries = {v.name: v for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    for name, shape in shapes.items():
        entry = entries.get(name)
        if entry is None:
            entry = graph.value_info.add()
            entry.name = name
        tensor = entry.type.tensor_type
        if not tensor.elem_type:
            tensor.elem_type = types[name]
        tensor.shape.ClearField("dim")
        for size in shape:
            tensor.shape.dim.add().dim_value = int(size)
    onnx.save(model, str(path))  # external weights stay where they are: only their references are written
    return sorted(shapes), dependent


def is_fully_static(path: Path) -> list[str]:
    """Names of the graph's inputs and node outputs whose shape has a symbolic dimension or is
    not recorded at all (empty when every value has a fixed shape)."""
    import onnx

    return _open_values(onnx.load(str(path), load_external_data=False).graph)
