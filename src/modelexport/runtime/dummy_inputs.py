"""Inputs for running an ONNX file in ONNX Runtime without knowing its task.

Shapes come from the graph; symbolic dimensions get sizes from the dimension's name and the
model's config.json (image size, mel bins, audio length), read as plain JSON.
"""
from __future__ import annotations

import numpy as np

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}


def _config_value(config: dict, *keys, default=None):
    for key in keys:
        for scope in (config, config.get("vision_config") or {}, config.get("text_config") or {}):
            if isinstance(scope, dict) and key in scope:
                return scope[key]
    return default


PAST_LENGTH, SEQUENCE_LENGTH = 1, 8


def _dim(input_name: str, axis: int, dim, config: dict, rank: int, batch: int = 1,
         sequence: int = SEQUENCE_LENGTH) -> int:
    if isinstance(dim, int) and dim > 0:
        return dim
    name = (dim or "").lower() if isinstance(dim, str) else ""
    if "+" in name:  # Optimum names e.g. "past_sequence_length + sequence_length"
        return sum(_dim(input_name, axis, part.strip(), config, rank, batch, sequence)
                   if not part.strip().isdigit() else int(part) for part in name.split("+"))
    if "batch" in name or axis == 0:
        return batch
    if "past" in name:
        return PAST_LENGTH
    if input_name == "pixel_values":
        if axis == 1:
            return int(_config_value(config, "num_channels", default=3))
        size = _config_value(config, "image_size", default=224)
        return int(size[axis - 2] if isinstance(size, (list, tuple)) else size)
    if input_name == "input_values":
        return 16000
    if input_name == "input_features":
        if axis == 1:
            return int(_config_value(config, "num_mel_bins", "feature_size", default=80))
        return 2 * int(_config_value(config, "max_source_positions", default=1500))
    named = _config_value(config, name) if name else None
    if isinstance(named, int) and not isinstance(named, bool) and named > 0:
        return named  # an axis Optimum names after the config attribute that fixes it (max_depth, visual_embedding_dim)
    return sequence


def _specs(source) -> list[tuple[str, object, list]]:
    """(name, numpy dtype or None, dims) of each input, from an ORT session or an ONNX ModelProto
    (no session needed to read the graph's inputs)."""
    if hasattr(source, "get_inputs"):
        return [(s.name, _ORT_TYPES.get(s.type), list(s.shape)) for s in source.get_inputs()]
    from modelexport.runtime.feeds import input_specs

    return [(s.name, s.dtype, list(s.dims)) for s in input_specs(source)]


def make_inputs(source, config: dict | None = None, batch: int = 1,
                sequence: int = SEQUENCE_LENGTH) -> dict[str, np.ndarray]:
    """Inputs for every graph input of ``source`` (an ORT session or an ONNX ModelProto);
    ``batch`` and ``sequence`` size the symbolic dimensions."""
    config = config or {}
    rng = np.random.default_rng(0)
    feed = {}
    for name, dtype, dims in _specs(source):
        if dtype is None:
            from modelexport.errors import ModelExportError

            raise ModelExportError(f"input {name} has a type dummy inputs cannot be made for; give --inputs "
                                   "FILE.npz")
        shape = [_dim(name, i, d, config, len(dims), batch, sequence) for i, d in enumerate(dims)]
        if dtype is np.bool_:
            feed[name] = np.zeros(shape, dtype=dtype)  # e.g. use_cache_branch: first step
        elif np.issubdtype(dtype, np.integer):
            # ids inside any vocabulary; masks of ones
            feed[name] = np.ones(shape, dtype=dtype)
        else:
            feed[name] = rng.standard_normal(shape).astype(dtype)
    return feed


POSITION_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_target_positions")


def position_limit(config: dict | None) -> int | None:
    """The longest token sequence the model's position tables hold (the shortest limit its config
    names, a decoder's included: Whisper's max_target_positions), or None."""
    limits = []
    for scope in (config or {}, (config or {}).get("text_config") or {}, (config or {}).get("decoder") or {}):
        if isinstance(scope, dict):
            limits += [v for k, v in scope.items() if k in POSITION_LIMIT_KEYS and isinstance(v, int) and v > 0]
    return min(limits) if limits else None
