"""The dynamo trace: ``torch.onnx.export(dynamo=True)`` called with TorchScript's arguments.

Optimum (and ``export_module``) describe a trace the TorchScript way: example inputs (nested
lists and tuples for ``past_key_values``), ``input_names`` for the flattened tensors in order,
and ``dynamic_axes`` ({name: {axis: axis name}}) for inputs and outputs. torch.export wants
``dynamic_shapes`` with the structure of the inputs, and names its symbolic dims itself
(``s11``, ``s0 + s28``). This module converts the one into the other and, after the export,
names the file's dims as TorchScript would: inputs and outputs get the axis names given, and
every derived expression is rewritten in those names. Optimum depends on that: its
``fix_dynamic_axes`` pins any output dim whose name it did not declare, and merging decoders
needs matching dynamic outputs.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
from pathlib import Path

from modelexport.errors import ModelExportError

_SYMBOL = re.compile(r"\b[su]\d+\b")


def tensor_leaves(inputs):
    """(leaves, spec) of ``inputs`` flattened as both exporters flatten them."""
    from modelexport.compat import tree_flatten

    return tree_flatten(inputs)


@contextlib.contextmanager
def _export_error_log_off():
    """torch.export logs a failed trace at ERROR ("always_classified is unsupported") before it
    raises the same failure: the exception is what we report (one line, or a retry that works)."""
    logger = logging.getLogger("torch.export._trace")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def dynamic_shapes_for(inputs, input_names: list[str] | None, dynamic_axes: dict | None, auto: bool = False):
    """``dynamic_shapes`` with the structure of ``inputs`` (a tuple of positional arguments or a
    dict of keyword arguments): every tensor leaf, in flattening order, is the input
    ``input_names[i]`` and gets its ``dynamic_axes`` entry (as axis-name strings, which
    torch.onnx turns into ``Dim.DYNAMIC``: an error if the trace fixes them, never a silent
    specialisation). ``auto``: ``Dim.AUTO`` instead, which lets the trace fix an axis the model's
    code fixes. Non-tensor leaves (``None`` in ``encoder_outputs``) get ``None``."""
    import torch
    from modelexport.compat import tree_unflatten

    if not dynamic_axes:
        return None
    leaves, spec = tensor_leaves(inputs)
    names = list(input_names or [])
    tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
    if names and len(names) != len(tensors):
        raise ModelExportError(f"cannot map {len(names)} input names onto {len(tensors)} example tensors "
                               "for the dynamo export")
    shapes, index = [], 0
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            shapes.append(None)
            continue
        name = names[index] if index < len(names) else None
        index += 1
        axes = dynamic_axes.get(name) if name is not None else None
        shapes.append({int(a): torch.export.Dim.AUTO if auto else str(n) for a, n in axes.items()} if axes else None)
    return tree_unflatten(shapes, spec)


def grow_unit_axes(inputs, input_names: list[str] | None, dynamic_axes: dict | None):
    """Example inputs with every dynamic axis of size 1 grown to 2.

    torch.export specialises a dimension whose example size is 1 (its 0/1 specialisation) without
    an error: Optimum's decoder-with-past inputs (one new token) gave a T5 decoder whose ONNX
    input is symbolic but whose graph only runs one token. Axes named as a sum
    (``past_sequence_length + sequence_length``) grow with their terms, so inputs stay
    consistent; a grown axis repeats its last slice (values do not matter to the trace)."""
    import torch
    from modelexport.compat import tree_unflatten

    if not dynamic_axes or not input_names:
        return inputs
    leaves, spec = tensor_leaves(inputs)
    tensors = [(i, leaf) for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    if len(tensors) != len(input_names):
        return inputs
    axes_of = [(i, leaf, {int(a): str(n) for a, n in (dynamic_axes.get(name) or {}).items()})
               for (i, leaf), name in zip(tensors, input_names) if isinstance(dynamic_axes.get(name), dict)]
    grow = {n for _, leaf, axes in axes_of for a, n in axes.items() if "+" not in n and leaf.shape[a] == 1}
    if not grow:
        return inputs
    leaves = list(leaves)
    for i, leaf, axes in axes_of:
        for axis, name in axes.items():
            delta = sum(term.strip() in grow for term in name.split("+"))
            if delta:
                last = leaf.narrow(axis, leaf.shape[axis] - 1, 1)
                leaf = torch.cat([leaf] + [last] * delta, dim=axis)
        leaves[i] = leaf
    return tree_unflatten(leaves, spec)


def axes_by_name(dynamic_axes: dict | None) -> dict[str, dict[int, str]] | None:
    """torch.onnx's ``dynamic_axes`` with its list form ({"x": [0]}) written out as names."""
    if not dynamic_axes:
        return None
    return {name: ({int(a): str(n) for a, n in axes.items()} if isinstance(axes, dict)
                   else {int(a): f"{name}_dim_{a}" for a in axes})
            for name, axes in dynamic_axes.items()}


def in_signature_order(module, kwargs: dict) -> dict:
    """Keyword inputs in the order of ``module.forward``'s parameters: the order Optimum's input
    names follow and the one torch.export needs for dynamic shapes given by keyword."""
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return kwargs
    position = {name: i for i, name in enumerate(params)}
    return {k: kwargs[k] for k in sorted(kwargs, key=lambda k: position.get(k, len(position)))}


def name_axes(model, input_names: list[str] | None, output_names: list[str] | None, dynamic_axes: dict | None):
    """Rename torch.export's symbolic dims (``s11``) in ``model`` (an ``onnx.ModelProto``) to the
    axis names of ``dynamic_axes``: inputs first (which defines each symbol's name), then every
    expression in outputs and intermediate shapes; outputs listed in ``dynamic_axes`` get the
    declared name on those axes, as TorchScript writes them. Returns the symbol -> name map and
    the declared input axes the trace fixed (one sentence each)."""
    if not dynamic_axes:
        return {}, []
    graph = model.graph
    mapping: dict[str, str] = {}
    fixed: list[str] = []
    for value in graph.input:
        axes = dynamic_axes.get(value.name) or {}
        dims = value.type.tensor_type.shape.dim
        for axis, name in (axes.items() if isinstance(axes, dict) else ()):
            axis = int(axis)
            if axis >= len(dims):
                continue
            dim = dims[axis]
            if not dim.HasField("dim_param"):
                fixed.append(f"axis {axis} ({name}) of input {value.name} is fixed at {dim.dim_value}: the model's "
                             "code does not let it vary (declared dynamic)")
                continue
            mapping.setdefault(dim.dim_param, str(name))
            dim.dim_param = str(name)

    def rename(text: str) -> str:
        return _SYMBOL.sub(lambda m: mapping.get(m.group(), m.group()), text)

    for value in list(graph.output) + list(graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = rename(dim.dim_param)
    for value in graph.output:
        axes = dynamic_axes.get(value.name)
        dims = value.type.tensor_type.shape.dim
        for axis, name in (axes.items() if isinstance(axes, dict) else ()):
            if int(axis) < len(dims) and dims[int(axis)].HasField("dim_param"):
                dims[int(axis)].dim_param = str(name)
    return mapping, fixed


def export_dynamo(module, args: tuple, kwargs: dict | None, path: Path, *, input_names=None, output_names=None,
                  dynamic_axes=None, opset: int, onnx_export=None) -> list[str]:
    """Trace ``module(*args, **kwargs)`` with torch.export and write the ONNX file to ``path``,
    with dims named as ``dynamic_axes`` names them. ``onnx_export``: torch's ``torch.onnx.export``
    when that name is replaced for Optimum (see ``optimum_traces_with_dynamo``). Needs onnxscript
    (``check_exporter`` says so before any work).

    Axes are first declared ``Dim.DYNAMIC``: a trace that fixes one fails. Only then is it traced
    again with ``Dim.AUTO``, and each declared axis the model's code fixed (ViT's image size and
    channels: its patch embedding checks them) is returned as a warning, not hidden."""
    import onnx
    import torch

    dynamic_axes = axes_by_name(dynamic_axes)
    if kwargs:
        if args:  # one structure for dynamic_shapes: positional arguments bound to their names
            kwargs = {**inspect.signature(module.forward).bind_partial(*args).arguments, **kwargs}
            args = ()
        kwargs = in_signature_order(module, kwargs)
    if kwargs:
        kwargs = grow_unit_axes(kwargs, input_names, dynamic_axes)
    else:
        args = grow_unit_axes(tuple(args), input_names, dynamic_axes)
    inputs = kwargs if kwargs else tuple(args)

    def trace(auto: bool):
        from modelexport.compat import (number_minus_tensor_rewritten, safe_onnxscript_rewrites,
                                        torchlib_registry_reused, trilu_in_types_ort_runs)

        with torchlib_registry_reused(), number_minus_tensor_rewritten(), trilu_in_types_ort_runs(), \
                safe_onnxscript_rewrites(), _export_error_log_off():
            return _trace(auto)

    def _trace(auto: bool):
        return (onnx_export or torch.onnx.export)(
            module, tuple(args), kwargs=kwargs or None, input_names=input_names, output_names=output_names,
            dynamic_shapes=dynamic_shapes_for(inputs, input_names, dynamic_axes, auto=auto), opset_version=opset,
            dynamo=True, verbose=False)

    fixed_by_code: list[tuple[str, int, int, str]] = []
    try:
        program = trace(auto=False)
    except Exception as e:
        fixed_by_code = _fixed_by_the_model(e, dynamic_axes)
        if not dynamic_axes or not fixed_by_code:
            raise
        program = trace(auto=True)
    # Weights inside the file below protobuf's 2 GiB limit, as the TorchScript exporter writes them.
    # Optimum's own switch for external data at any size (its TorchScript path honours it too).
    forced = os.environ.get("FORCE_ONNX_EXTERNAL_DATA", "0") == "1"
    ranges = _input_ranges(program)
    model = _in_memory(program) if not forced else None
    data_files: set[str] = set()
    if model is None:  # above protobuf's 2 GiB, or asked for: through the files torch writes
        program.save(str(path), external_data=True if forced else None)
        del program
        model = onnx.load(str(path), load_external_data=False)
        data_files = _external_data_files(model)
        if data_files:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, str(path.parent))
    else:
        del program
    if not data_files:
        FOLDED_PARAMETERS[str(Path(path).resolve())] = folded_parameters(module, model)
    narrowed = narrowed_axes(model, ranges, dynamic_axes, {(name, axis) for name, axis, *_ in fixed_by_code})
    _, fixed = name_axes(model, input_names, output_names, dynamic_axes)
    pin_fixed_axes(model, fixed_by_code)
    # The exporter's notes on graph inputs and outputs (torch.export's input kinds, FX names):
    # Optimum's decoder merge compares output ValueInfos whole and fails on them.
    for value in list(model.graph.input) + list(model.graph.output):
        del value.metadata_props[:]
    if data_files:
        # Above 2 GiB torch writes every weight into one `model.onnx.data`; Optimum then packs the
        # weights into `model.onnx_data` and deletes each tensor's file once per tensor, which
        # fails on a shared file. One file per tensor is what the TorchScript exporter writes.
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=1024)
        for name in data_files:
            (path.parent / name).unlink(missing_ok=True)
    else:
        onnx.save(model, str(path))
    return [sentence for *_, sentence in fixed_by_code] + fixed + narrowed


def _input_ranges(program) -> list[dict[int, tuple[int, int | None]]]:
    """Per user input of the exported program (the ONNX graph's inputs, in order): axis -> torch.export's
    range of its symbolic size (lower, upper; None: unbounded above). Empty where the program does
    not say."""
    import torch
    from torch.export.graph_signature import InputKind
    from torch.utils._sympy.numbers import int_oo

    try:
        exported = program.exported_program
        constraints = {str(k): v for k, v in exported.range_constraints.items()}
        users = {spec.arg.name for spec in exported.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT}
    except AttributeError:
        return []
    found = []
    for node in exported.graph.nodes:
        if node.op != "placeholder" or node.name not in users:
            continue
        value, axes = node.meta.get("val"), {}
        for axis, size in enumerate(getattr(value, "shape", ())):
            bounds = constraints.get(str(size.node.expr)) if isinstance(size, torch.SymInt) else None
            if bounds is None:
                continue
            try:
                upper = None if bounds.upper == int_oo or bounds.upper.is_infinite else int(bounds.upper)
                axes[axis] = (int(bounds.lower), upper)
            except (TypeError, ValueError, AttributeError):  # a bound torch.export left symbolic
                continue
        found.append(axes)
    return found


def narrowed_axes(model, ranges: list[dict[int, tuple[int, int | None]]], dynamic_axes: dict | None,
                  fixed: set[tuple[str, int]] = frozenset()) -> list[str]:
    """Declared dynamic input axes the trace kept symbolic but valid only for some sizes: the
    model's code branches on the size (DeepSeek-V4's compressors on whole windows: sequence length
    4 to 7 when traced at 7), and torch.export narrows the symbol's range instead of fixing it. The
    file then fails in the middle of the graph outside that range; said as a warning per axis. A
    lower bound of 2 or less is torch.export's own (sizes 0 and 1 specialise), not the model's.
    ``fixed``: (input, axis) the trace fixed, already said by ``_fixed_by_the_model``."""
    if not dynamic_axes or len(ranges) != len(model.graph.input):
        return []
    found = []
    for value, axes_ranges in zip(model.graph.input, ranges):
        declared = dynamic_axes.get(value.name) or {}
        for axis, (lower, upper) in axes_ranges.items():
            if not isinstance(declared, dict) or axis not in declared or (lower <= 2 and upper is None) \
                    or (value.name, axis) in fixed:
                continue
            sizes = f"{lower} to {upper}" if upper is not None else f"{lower} or more"
            found.append(f"axis {axis} ({declared[axis]}) of input {value.name} takes only sizes {sizes}: the "
                         "model's code branches on it (declared dynamic; at other sizes the file fails or is not "
                         "what PyTorch computes)")
    return found


# Written file -> {initializer: parameter} (see ``folded_parameters``), for the tagging pass of
# the same export (``DynamoTaggingPass(aliases=...)``), taken from here once.
FOLDED_PARAMETERS: dict[str, dict[str, str]] = {}


def folded_parameters(module, model) -> dict[str, str]:
    """Initializers torch.onnx's optimizer made out of one parameter under a new name (a weight
    transposed or reshaped by the model's own forward and folded to a constant: ``val_241`` for
    WavLM's ``q_proj.weight``, ``unsqueeze_2`` for LFM's conv weight) -> that parameter's name
    (as ``module`` names it), when its values are those of exactly one module's parameters. A node
    reading one then reads that parameter, which the tagging pass needs to place it."""
    import hashlib

    import numpy as np
    from onnx import helper, numpy_helper

    parameters = list(module.named_parameters(remove_duplicate=False))
    names = {n for n, _ in parameters}
    unnamed: dict[tuple, list] = {}
    for tensor in model.graph.initializer:
        if tensor.name in names or tensor.data_location == tensor.EXTERNAL:
            continue
        size = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
        if size >= 16:  # small constants (scalars, shapes) are not told apart by value
            unnamed.setdefault((size, tensor.data_type), []).append(tensor)
    if not unnamed:
        return {}

    def key(array) -> tuple:
        array = np.ascontiguousarray(array)
        return str(array.dtype), hashlib.sha1(array.tobytes()).hexdigest()

    by_value: dict[tuple, set[str]] = {}
    for name, parameter in parameters:
        array = parameter.detach().cpu().numpy()
        if (array.size, helper.np_dtype_to_tensor_dtype(array.dtype)) not in unnamed:
            continue
        if array.size and array.min() == array.max():
            continue  # all one value (a fresh norm's ones): says nothing about which tensor it is
        for variant in ((array, array.T) if array.ndim == 2 else (array,)):  # reshaped: same bytes
            by_value.setdefault(key(variant), set()).add(name)
    aliases = {}
    for tensors in unnamed.values():
        for tensor in tensors:
            array = numpy_helper.to_array(tensor)
            if array.min() == array.max():
                continue
            found = by_value.get(key(array), set())
            if found and len({n.rpartition(".")[0] for n in found}) == 1:  # one module's (tied names too)
                aliases[tensor.name] = min(found)
    return aliases


def _in_memory(program):
    """The exported model as a ModelProto without writing and reading it back (one 90 MB round trip
    less on MiniLM); None when it is too large for one protobuf (then it goes through files)."""
    total = 0
    for value in program.model.graph.initializers.values():
        tensor = value.const_value
        total += int(getattr(tensor, "nbytes", 0) or 0) if tensor is not None else 0
    if total > 1.8 * 2**30:
        return None
    return program.model_proto


def _external_data_files(model) -> set[str]:
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    return {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}


# "static shape of 3000 for dimension inputs['input_features'].shape[2]", or with the inputs nested
# in a dict argument (the generic path): inputs['inputs']['input_features'].shape[2]
_FIXED = re.compile(r"static shape of (\d+) for dimension inputs((?:\['[^']+'\])+)((?:\[\d+\])*)\.shape\[(\d+)\]")


def _fixed_by_the_model(error: BaseException, dynamic_axes: dict | None) -> list[tuple[str, int, int, str]]:
    """What torch.export said when it refused ``Dim.DYNAMIC`` axes the traced code fixes (ViT's
    patch embedding checks channels and image size): (input, axis, size, sentence) per axis of a
    top-level input ("" and -1 when the error names none); empty for any other failure."""
    seen, found, conflict = set(), [], False
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if "user-specified ranges and inferred ranges" in text or "Constraints violated" in text:
            conflict = True
            for size, keys, index, axis in _FIXED.findall(text):
                name = re.findall(r"\['([^']+)'\]", keys)[-1]
                declared = (dynamic_axes or {}).get(name) if not index else None
                label = f" ({declared[int(axis)]})" if isinstance(declared, dict) and int(axis) in declared else ""
                sentence = (f"axis {axis}{label} of input {name}{index} is fixed at {size} by the model's code "
                            "(declared dynamic; other sizes will fail at run time)")
                entry = (name if not index else "", int(axis), int(size), sentence)
                if entry not in found:
                    found.append(entry)
        error = error.__cause__ or error.__context__
    if conflict and not found:
        found.append(("", -1, -1, "torch.export found input axes the model's code fixes (declared dynamic)"))
    return found


def pin_fixed_axes(model, fixed: list[tuple[str, int, int, str]]) -> None:
    """Write the sizes the model's code fixed on the graph's inputs: torch.export may keep such an
    input symbolic while the graph inside only works at the traced size; declared as a number,
    ONNX Runtime refuses other sizes with a clear message instead of failing in the middle."""
    inputs = {value.name: value for value in model.graph.input}
    for name, axis, size, _ in fixed:
        value = inputs.get(name)
        if value is None or axis < 0:
            continue
        dims = value.type.tensor_type.shape.dim
        if axis < len(dims):
            dims[axis].Clear()
            dims[axis].dim_value = size


def export_error_summary(error: BaseException) -> str:
    """One line for a failed trace. torch.export's errors open with a multi-line, coloured
    how-to-debug banner; what went wrong is under their "## Exception summary"."""
    import re

    message = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1:]
        if after:
            return after[0][:200]
    cause = error.__cause__
    if lines and lines[0].startswith("Failed to ") and cause is not None:
        return export_error_summary(cause)
    return lines[0][:200] if lines else type(error).__name__
