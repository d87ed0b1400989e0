"""Activation smoothing before int8 quantization (SmoothQuant, Xiao et al., ICML 2023).

ONNX Runtime quantizes a MatMul's activation with one scale for the whole tensor (dynamic: per
run; static: calibrated), while its weight gets one scale per output channel. Transformer
activations have a few channels tens of times larger than the rest (after LayerNorm, after GELU):
one per-tensor scale sized for them leaves the other channels a handful of int8 steps. Smoothing
divides channel k of the activation X by s_k and multiplies row k of the weight W by s_k, so
X @ W is unchanged in float and the outliers move into the weights, where per-channel scales
absorb them:

    s_k = max|X_k| ** alpha / max|W_k,:| ** (1 - alpha)

The division is one ``Mul`` by a constant before the MatMuls that read X (shared by Q, K and V),
tagged with the module that holds all of them. Only MatMuls of the main graph whose weight is a
float32 2-D initializer that no other node reads are smoothed. max|X| comes from the calibration
inputs, or without them from random token ids (``statistics_feeds``). alpha: measured on MiniLM in
``benchmarks/quantize_smoothing.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_ALPHA = 0.6
STATISTICS_SAMPLES = 4  # random-id inputs when no calibration inputs are given
_SCALE_LIMITS = (1e-4, 1e4)


@dataclass
class ActivationMaxima:
    """Per-channel max |x| of the activations entering weight MatMuls, by tensor name."""
    maxima: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""  # what the statistics were measured on


def smoothable_groups(model) -> dict[str, list]:
    """Activation tensor -> the main-graph MatMul nodes that multiply it by a float32 2-D weight
    read by that node only (a weight shared by two nodes cannot take two scalings)."""
    import onnx

    from modelexport.hierarchy.tags import iter_nodes

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node, _ in iter_nodes(graph):
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    groups: dict[str, list] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        x, w = node.input
        t = inits.get(w)
        if (t is None or x in inits or t.data_type != onnx.TensorProto.FLOAT or len(t.dims) != 2
                or readers.get(w, 0) != 1):
            continue
        groups.setdefault(x, []).append(node)
    return groups


def activation_maxima(path: Path, feeds: list[dict], source: str) -> ActivationMaxima:
    """Run ``path`` on ``feeds`` with the smoothable activations as extra outputs."""
    import onnx

    from modelexport.runtime.intermediates import session_exposing

    tensors = sorted(smoothable_groups(onnx.load(str(path), load_external_data=False)))
    maxima: dict[str, np.ndarray] = {}
    if not tensors or not feeds:
        return ActivationMaxima(maxima, source)
    # ORT's full optimizations, as the quantized model will run: the scales are sensitive to the
    # last bits of max|x| (measured: statistics without them moved MiniLM's held-out min by 4e-4)
    with session_exposing(Path(path), tensors, optimization="all") as session:
        inputs = {i.name for i in session.get_inputs()}
        for feed in feeds:
            values = session.run(tensors, {k: v for k, v in feed.items() if k in inputs})
            for name, value in zip(tensors, values):
                if value.ndim < 1 or value.shape[-1] == 0:
                    continue
                channel = np.abs(value.reshape(-1, value.shape[-1]).astype(np.float64)).max(axis=0)
                maxima[name] = channel if name not in maxima else np.maximum(maxima[name], channel)
    return ActivationMaxima(maxima, source)


def statistics_feeds(session, config: dict, samples: int = STATISTICS_SAMPLES) -> list[dict]:
    """Inputs for the statistics when none are given: the latency inputs (batch 1 at the model's
    typical length) with token ids drawn at random from the whole vocabulary and token types of
    the first segment. Measured on MiniLM
    they give the same alpha window as real sentences (``benchmarks/quantize_smoothing.py``);
    all-ones ids (the dummy inputs) do not: one token says nothing about the channel ranges."""
    from modelexport.runtime.dummy_inputs import make_inputs
    from modelexport.runtime.quantize_measure import typical_sequence

    rng = np.random.default_rng(0)
    vocab = _vocab_size(config)
    feeds = []
    for _ in range(samples):
        feed = make_inputs(session, config, 1, typical_sequence(config))
        for name, value in feed.items():
            if not np.issubdtype(value.dtype, np.integer):
                continue
            if vocab and name.endswith("input_ids"):
                feed[name] = rng.integers(0, vocab, value.shape).astype(value.dtype)
            elif name.endswith("type_ids"):
                # the first segment, as a single text is encoded (MiniLM: segment 1 puts the
                # activations elsewhere; smoothing for it cost 0.03 of cosine on sentences)
                feed[name] = np.zeros_like(value)
        feeds.append(feed)
    return feeds


def _vocab_size(config: dict) -> int | None:
    for scope in (config, config.get("text_config") or {}, config.get("decoder") or {}):
        if isinstance(scope, dict) and isinstance(scope.get("vocab_size"), int) and scope["vocab_size"] > 0:
            return scope["vocab_size"]
    return None


def smooth_model(model, maxima: ActivationMaxima, alpha: float) -> int:
    """Smooth ``model`` in place (its weights loaded); returns how many activations were smoothed."""
    import onnx
    from onnx import numpy_helper

    from modelexport.hierarchy.restore import ModuleIndex
    from modelexport.hierarchy.tags import node_tag, write_tag

    graph = model.graph
    index = None
    inits = {t.name: t for t in graph.initializer}
    inserted: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
    for x, nodes in smoothable_groups(model).items():
        if x not in maxima.maxima:
            continue
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        if any(w.shape[0] != maxima.maxima[x].shape[0] for w in weights):
            continue
        x_max = maxima.maxima[x]
        w_max = np.max(np.stack([np.abs(w).max(axis=1) for w in weights]), axis=0).astype(np.float64)
        usable = (x_max > 0) & (w_max > 0) & np.isfinite(x_max) & np.isfinite(w_max)
        scale = np.ones_like(x_max)
        scale[usable] = x_max[usable] ** alpha / w_max[usable] ** (1 - alpha)
        scale = np.clip(scale, *_SCALE_LIMITS)
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), _unique(f"{x}_smooth_scale", inits))
        graph.initializer.append(inverse)
        inits[inverse.name] = inverse
        smoothed = _unique(f"{x}_smoothed", inits)
        mul = onnx.helper.make_node("Mul", [x, inverse.name], [smoothed], name=f"{nodes[0].name}_smooth")
        paths = [node_tag(n).module_path for n in nodes]
        if all(p is not None for p in paths):  # tagged: the module that holds every reader
            index = index or ModuleIndex(model)
            owner = index.common(paths)
            write_tag(mul, owner, index.tag.get(owner, ""), index.namespace.get(owner))
        for node, w in zip(nodes, weights):
            t = inits[node.input[1]]
            t.CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32), t.name))
            node.input[0] = smoothed
        inserted.append((nodes[0], mul))
    if inserted:
        order = list(graph.node)
        for first, mul in inserted:
            order.insert(order.index(first), mul)
        del graph.node[:]
        graph.node.extend(order)
    return len(inserted)


def _unique(name: str, taken) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    return candidate


def smooth_file(src: Path, dst: Path, maxima: ActivationMaxima, alpha: float, external: bool) -> int:
    """Write the smoothed float model of ``src`` to ``dst`` (``external``: ``src`` keeps its weights
    outside, and so will ``dst``, beside it); returns how many activations were smoothed (0:
    ``dst`` is not written)."""
    import onnx

    model = onnx.load(str(src))
    count = smooth_model(model, maxima, alpha)
    if count:
        if external:
            onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=f"{Path(dst).name}.data")
        else:
            onnx.save(model, str(dst))
    return count


def folder_maxima(folder: Path, names: list[str], settings, feeds_by_file: dict[str, list[dict]] | None,
                  config: dict) -> dict[str, ActivationMaxima]:
    """Statistics for each ONNX file of a folder when ``settings`` smooth (else empty): on its
    calibration feeds when given, else on random token ids (``statistics_feeds``; ``config``: the
    exported folder's, for the vocabulary size). Feeds whose token ids are one repeated id (the
    dummy inputs) count as not given: one token says nothing about the channel ranges."""
    import onnx

    out = {}
    if not settings.smoothing:
        return out
    for name in names:
        feeds = (feeds_by_file or {}).get(name)
        if feeds and not _constant_token_ids(feeds):
            out[name] = activation_maxima(Path(folder) / name, feeds, f"{len(feeds)} calibration input(s)")
        else:
            proto = onnx.load(str(Path(folder) / name), load_external_data=False)
            feeds = statistics_feeds(proto, config)
            out[name] = activation_maxima(Path(folder) / name, feeds,
                                          f"{len(feeds)} inputs of random token ids (no calibration texts given)")
    return out


def _constant_token_ids(feeds: list[dict]) -> bool:
    ids = [v for feed in feeds for k, v in feed.items() if k.endswith("input_ids") and v.size]
    return bool(ids) and all(np.all(v == v.flat[0]) for v in ids) and len({int(v.flat[0]) for v in ids}) == 1
