"""ONNX Runtime's quantizers, called directly (no Optimum): dynamic int8 (``quantize_dynamic``,
QOperator format: ``MatMulInteger``/``DynamicQuantizeLinear``) and static QDQ
(``quantize_static``: ``QuantizeLinear``/``DequantizeLinear`` pairs, calibrated on real inputs),
with the settings of the CPU preset chosen for the machine (``cpu_presets.py``).

What is quantized is decided here, per node name, so that the module selection of the per-module
tools (``--exclude-modules``, the accuracy-target search) applies the same way to both modes:

- dynamic: every op ONNX Runtime's integer registry handles (MatMul with a constant B, Gemm,
  Conv, Gather of a constant table, Attention, LSTM), except lookup tables that hold under 1% of
  the file's quantizable weights (position and token-type embeddings: quantized per tensor they
  cost accuracy and save almost nothing; measured in ``benchmarks/quantize_presets.py``);
- static, ``weights`` (default): the ops with a constant weight (MatMul with a constant B, Gemm,
  Conv), their activation inputs and weights in QDQ, their outputs left float (quantizing every
  op's output costs MiniLM 0.2 of cosine); ``all``: every op ONNX Runtime's QDQ quantizer handles.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from modelexport.errors import ModelExportError
from modelexport.runtime.cpu_presets import CpuChoice
from modelexport.runtime.smoothing import DEFAULT_ALPHA, smooth_file

SMALL_TABLE_SHARE = 0.01  # lookup tables below this share of a file's quantizable bytes stay float

_DYNAMIC_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Gather": 0, "Attention": 1, "LSTM": 1}
_STATIC_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1}
_SUBGRAPH_OPS = ("If", "Loop", "Scan", "SequenceMap")


@dataclass(frozen=True)
class QuantSettings:
    choice: CpuChoice
    per_channel: bool = True
    static: bool = False
    static_ops: str = "weights"  # static only: "weights" or "all"
    small_tables_float: bool = True  # dynamic only: see SMALL_TABLE_SHARE
    smoothing: float = DEFAULT_ALPHA  # SmoothQuant alpha (runtime/smoothing.py); 0: off

    @property
    def mode(self) -> str:
        return "static" if self.static else "dynamic"

    def weight_type(self) -> str:
        # QDQ weights are int8 symmetric on every preset (what NPU toolchains and ORT's QDQ CPU
        # kernels take); the dynamic presets follow Optimum's (uint8 weights on AVX2).
        return "QInt8" if self.static else self.choice.preset.weight_type

    def describe(self) -> str:
        scales = "per-channel" if self.per_channel else "per-tensor"
        if self.static:
            ops = ("weight ops (MatMul/Gemm/Conv inputs)" if self.static_ops == "weights"
                   else "every op ORT's QDQ quantizer handles")
            what = f"static QDQ int8 of {ops}, {scales} weights, uint8 activations calibrated by min/max"
        else:
            what = f"dynamic int8 ({self.choice.preset.description}), {scales} weights"
        range_note = ", 7-bit weights" if self.choice.preset.reduce_range and "7 bits" not in what else ""
        if self.smoothing:
            range_note += f", activations smoothed into the weights (SmoothQuant, alpha {self.smoothing:g})"
        return f"{what}{range_note}; preset {self.choice.preset.name}: {self.choice.reason}"

    def as_dict(self) -> dict:
        return {"mode": self.mode, "format": "QDQ" if self.static else "QOperator", "per_channel": self.per_channel,
                "weight_type": self.weight_type(), "activation_type": "QUInt8",
                "reduce_range": self.choice.preset.reduce_range, "smoothing_alpha": self.smoothing,
                **({"static_ops": self.static_ops, "calibration": "minmax"} if self.static else
                   {"small_tables_float": self.small_tables_float}),
                "cpu": self.choice.as_dict()}


@dataclass
class WeightNode:
    name: str
    op_type: str
    weight: str  # initializer name
    nbytes: int  # float bytes of the weight


@dataclass
class FileWeights:
    """The quantizable nodes of one ONNX file (main graph and subgraphs), by node name."""
    nodes: dict[str, WeightNode] = field(default_factory=dict)
    has_subgraphs: bool = False
    external_data: bool = False

    def total_bytes(self) -> int:
        return sum({n.weight: n.nbytes for n in self.nodes.values()}.values())


def _tensor_bytes(tensor) -> int:
    import onnx

    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 4
    count = 1
    for d in tensor.dims:
        count *= d
    return count * itemsize


def file_weights(model, static: bool, static_ops: str = "weights") -> FileWeights:
    """Which nodes of ``model`` (weights not needed) the quantizer would give integer weights."""
    import onnx

    from modelexport.hierarchy.tags import iter_nodes

    table = _STATIC_WEIGHT_INPUT if static else _DYNAMIC_WEIGHT_INPUT
    result = FileWeights()
    initializers: dict[str, object] = {}
    graphs = [model.graph]
    while graphs:  # initializers of subgraphs are visible to their nodes
        graph = graphs.pop()
        for t in graph.initializer:
            initializers[t.name] = t
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    graphs.extend(attr.graphs)
    result.external_data = any(t.data_location == onnx.TensorProto.EXTERNAL for t in initializers.values())
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    for node, graph_path in iter_nodes(model.graph):
        if node.op_type in _SUBGRAPH_OPS:
            result.has_subgraphs = True
        index = table.get(node.op_type)
        if index is None or len(node.input) <= index or not node.name:
            continue
        weight = initializers.get(node.input[index])
        if weight is None or weight.data_type not in float_types:
            continue
        result.nodes[node.name] = WeightNode(node.name, node.op_type, weight.name, _tensor_bytes(weight))
    return result


def small_tables(weights: FileWeights) -> list[str]:
    """Gather nodes whose table is under SMALL_TABLE_SHARE of the file's quantizable bytes."""
    total = weights.total_bytes()
    return [n.name for n in weights.nodes.values() if n.op_type == "Gather" and n.nbytes < SMALL_TABLE_SHARE * total]


def refuse_static_subgraphs(folder: Path) -> None:
    """Static quantization of a folder with merged decoders is refused before any work."""
    import onnx

    from modelexport.hierarchy.tags import iter_nodes

    for path in sorted(Path(folder).glob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        if any(node.op_type in _SUBGRAPH_OPS for node, _ in iter_nodes(model.graph)):
            raise ModelExportError(f"{path.name} has If/Loop subgraphs (a merged decoder), which ONNX Runtime's static "
                                   "quantizer does not quantize; quantize the folder dynamically (no --static)")


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs through the root logger ("Please consider to run
    pre-processing...") and prints calibration progress: neither is for the user."""
    from modelexport.quiet import stdout_swallowed

    disabled = logging.root.manager.disable
    logging.disable(max(disabled, logging.WARNING))
    try:
        with stdout_swallowed():
            yield
    finally:
        logging.disable(disabled)


class FeedReader:
    """ONNX Runtime's CalibrationDataReader over a list of feeds (only the graph's inputs)."""

    def __init__(self, feeds: list[dict], input_names: set[str]):
        self._feeds = [{k: v for k, v in f.items() if k in input_names} for f in feeds]
        self._next = 0

    def get_next(self):
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def __len__(self) -> int:
        return len(self._feeds)

    def rewind(self) -> None:
        self._next = 0


def linked_source(src: Path, names: list[str], into: Path) -> Path:
    """``into`` holding symlinks to ``src``'s ONNX files ``names`` and copies of the external data
    files they name (one shared file, or one per tensor as the exporters write them above 2 GiB):
    ONNX Runtime's quantizers write shape-inferred copies beside the file they are given, which
    must not be the user's folder. The data is copied: onnx (1.23) refuses external data reached
    through a symlink ("it is a symbolic link") or a hard link ("potential hardlink attack"), and
    ONNX Runtime (1.32) data whose symlink leaves the model's folder."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    into.mkdir(parents=True, exist_ok=True)
    src = Path(src)
    for name in names:
        link = into / name
        if not link.exists():
            link.symlink_to((src / name).resolve())
        for tensor in onnx.load(str(src / name), load_external_data=False).graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = ExternalDataInfo(tensor).location
            copy = into / location
            if not copy.exists():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2((src / location).resolve(), copy)
    return into


def quantize_file(src: Path, dst: Path, settings: QuantSettings, weights: FileWeights,
                  exclude: list[str] | tuple = (), only: list[str] | None = None,
                  calibration: list[dict] | None = None, input_names: set[str] | None = None,
                  calibration_cache: Path | None = None, maxima=None) -> int:
    """Quantize one ONNX file ``src`` (a path ONNX Runtime may write beside: see
    ``linked_source``) into ``dst``. ``exclude``: node names kept float; ``only``: when given,
    quantize no node outside it; ``maxima``: the activation statistics for smoothing (an
    ``ActivationMaxima``, used when ``settings.smoothing``). Returns how many weight nodes were
    quantized (0: ``dst`` is a copy of ``src``)."""
    chosen = [n for n in weights.nodes if n not in set(exclude)]
    if not settings.static and settings.small_tables_float:
        small = set(small_tables(weights))
        chosen = [n for n in chosen if n not in small]
    if only is not None:
        wanted = set(only)
        chosen = [n for n in chosen if n in wanted]
    if not chosen:
        _copy_model(src, dst)
        return 0
    if settings.smoothing and maxima is not None and maxima.maxima:
        # every activation is smoothed, whatever is kept float: the graph (and so a static
        # calibration cache) is then the same for every trial of a search
        smoothed = Path(dst).parent / f".smoothed-{Path(dst).name}"
        try:
            if smooth_file(src, smoothed, maxima, settings.smoothing, weights.external_data):
                return _quantize_chosen(smoothed, dst, settings, weights, chosen, exclude, only, calibration,
                                        input_names, calibration_cache)
        finally:
            for p in (smoothed, smoothed.with_name(smoothed.name + ".data")):
                p.unlink(missing_ok=True)
    return _quantize_chosen(src, dst, settings, weights, chosen, exclude, only, calibration, input_names,
                            calibration_cache)


def _quantize_chosen(src, dst, settings, weights, chosen, exclude, only, calibration, input_names,
                     calibration_cache) -> int:
    from modelexport.compat import gemm_rewrite_suffixes
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    weight_type = getattr(QuantType, settings.weight_type())
    try:
        if not settings.static:
            # Gemms are rewritten as MatMul (+ Add, + Transpose) named after them before quantizing.
            names = chosen + [f"{n}{s}" for n in chosen if weights.nodes[n].op_type == "Gemm"
                              for s in gemm_rewrite_suffixes()]
            with _quiet():
                quantize_dynamic(src, dst, per_channel=settings.per_channel,
                                 reduce_range=settings.choice.preset.reduce_range, weight_type=weight_type,
                                 nodes_to_quantize=names, use_external_data_format=weights.external_data,
                                 extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                                "EnableSubgraph": weights.has_subgraphs, "MatMulConstBOnly": True})
            return len(chosen)
        if weights.has_subgraphs:
            raise ModelExportError(f"{Path(src).name} has If/Loop subgraphs (a merged decoder): ONNX Runtime's static "
                                   "quantizer does not quantize inside them; quantize dynamically (no --static)")
        if not calibration:
            raise ModelExportError("static quantization needs calibration inputs (--text-file, --image, --inputs)")
        reader = FeedReader(calibration, input_names or set(calibration[0]))
        extra = {"WeightSymmetric": True, "ActivationSymmetric": False,
                 "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}
        if settings.static_ops == "weights":
            extra["OpTypesToExcludeOutputQuantization"] = list(_STATIC_WEIGHT_INPUT)
            nodes, op_types = chosen, list(_STATIC_WEIGHT_INPUT)
        else:
            # every op the QDQ quantizer handles (only those of `only`, when given); weight nodes
            # outside `chosen` kept float
            nodes, op_types = (list(only) if only is not None else []), None
            exclude = sorted(set(exclude) | (set(weights.nodes) - set(chosen)))
        with _quiet():
            quantize_static(src, dst, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                            per_channel=settings.per_channel, reduce_range=settings.choice.preset.reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=weight_type, nodes_to_quantize=nodes,
                            nodes_to_exclude=list(exclude) if settings.static_ops != "weights" else None,
                            use_external_data_format=weights.external_data, calibrate_method=CalibrationMethod.MinMax,
                            extra_options=extra,
                            calibration_cache_path=str(calibration_cache) if calibration_cache else None)
        return len(chosen)
    except (ValueError, KeyError, NotImplementedError, IndexError) as e:
        raise ModelExportError(f"ONNX Runtime's quantizer cannot quantize {Path(src).name}: "
                               f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from e


def _copy_model(src: Path, dst: Path) -> None:
    import onnx

    model = onnx.load(str(src))
    external = any(t.data_location == onnx.TensorProto.EXTERNAL
                   for t in onnx.load(str(src), load_external_data=False).graph.initializer)
    if external:
        onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{Path(dst).name}.data")
    else:
        shutil.copyfile(os.path.realpath(src), dst)
