"""Every private name of torch, ONNX Runtime and Model Explorer that modelexport uses, behind one
adapter (Optimum's own are in ``exporter/optimum/compat.py``).

These names have no public equivalent (pytree flattening as the exporters flatten inputs, the
opsets each torch exporter writes, Model Explorer's update check, the names ONNX Runtime's
quantizer gives the nodes it makes from a Gemm) and may change in any release. The installed
version of each library is checked once, before the first use of its private names: a version
modelexport was not tested with fails in one line instead of deep inside a private function.
"""
from __future__ import annotations

import contextlib
import importlib
import re
import sys
from functools import lru_cache
from importlib import metadata

from modelexport.errors import ModelExportError

# package -> (lowest, below) version tested, or several such ranges: what pyproject.toml declares.
TESTED = {
    "torch": ((2, 13), (2, 14)),
    "onnxruntime": ((1, 32), (1, 33)),
    "ai-edge-model-explorer": ((0, 1), (0, 2)),
    "transformers": (((4, 57), (4, 58)), ((5, 0), (6, 0))),
    "onnxscript": ((0, 7), (0, 8)),
}


def version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() < len(piece):  # "0rc1": a pre-release tag ends the numeric part
            break
    return tuple(parts)


# distribution -> (package that must already be imported, module holding its ``__version__``).
# importlib.metadata parses the distribution's METADATA file on every call (1-4 ms each here,
# about 12 ms of a 0.24 s export of a tiny GPT-2); a library already imported says its version
# for free, and it is the version that runs (a small version module is imported with it).
_VERSION_MODULES = {"modelexport": ("modelexport", "modelexport"), "torch": ("torch", "torch"),
                    "transformers": ("transformers", "transformers"), "onnx": ("onnx", "onnx"),
                    "onnxruntime": ("onnxruntime", "onnxruntime"), "onnxscript": ("onnxscript", "onnxscript"),
                    "sentence-transformers": ("sentence_transformers", "sentence_transformers"),
                    "optimum": ("optimum", "optimum.version"), "optimum-onnx": ("optimum.onnx", "optimum.onnx.version")}


def installed_version(package: str) -> str | None:
    """The version of an installed distribution (None: not installed)."""
    loaded, holder = _VERSION_MODULES.get(package, ("", ""))
    if loaded in sys.modules:
        try:
            version = getattr(importlib.import_module(holder), "__version__", None)
        except ImportError:
            version = None
        if isinstance(version, str):
            return version
    return _metadata_version(package)


@lru_cache(maxsize=None)
def _metadata_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_tested(package: str, tested: dict) -> None:
    """Refuse, in one line, a version of ``package`` outside ``tested[package]`` (one range, or a
    tuple of ranges)."""
    ranges = tested[package]
    ranges = (ranges,) if isinstance(ranges[0][0], int) else ranges
    installed = installed_version(package)
    if installed is None:
        raise ModelExportError(f"{package} is not installed; install modelexport's dependencies")
    if not any(low <= version_tuple(installed)[:2] < high for low, high in ranges):
        spans = " or ".join(f"{'.'.join(map(str, low))} <= version < {'.'.join(map(str, high))}"
                            for low, high in ranges)
        low_s, high_s = ".".join(map(str, ranges[0][0])), ".".join(map(str, ranges[0][1]))
        raise ModelExportError(
            f"{package} {installed} is not a version modelexport was tested with ({spans}): "
            f"it relies on that release's internals; install {package}>={low_s},<{high_s}")


@lru_cache(maxsize=None)
def check_version(package: str) -> None:
    check_tested(package, TESTED)


# -- torch ------------------------------------------------------------------------------------
def tree_flatten(value):
    """(leaves, spec) of nested inputs, flattened as both torch exporters flatten them."""
    check_version("torch")
    from torch.utils import _pytree as pytree

    return pytree.tree_flatten(value)


def tree_unflatten(leaves, spec):
    check_version("torch")
    from torch.utils import _pytree as pytree

    return pytree.tree_unflatten(leaves, spec)


def torchscript_opset_range() -> tuple[int, int]:
    """Opsets the TorchScript exporter (the one Optimum 0.1 calls) can write."""
    check_version("torch")
    from torch.onnx._constants import ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET

    return ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET


def dynamo_opset_range() -> tuple[int, int]:
    """Opsets the dynamo exporter writes without a version conversion afterwards (torchlib's
    functions start at 18; lower opsets are converted down, which fails on many graphs)."""
    check_version("torch")
    from torch.onnx._constants import ONNX_MAX_OPSET
    from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET

    return TORCHLIB_OPSET, ONNX_MAX_OPSET


_TORCHLIB_REGISTRIES: dict = {}


@contextlib.contextmanager
def torchlib_registry_reused():
    """Inside the block, every ``torch.onnx.export(dynamo=True)`` starts from one copy of the ONNX
    registry it builds from torchlib (about a second per export on this machine: 560 functions
    wrapped each time), made once per opset and process. Each export gets its own copy of the
    table (the exporter may add custom translations to it)."""
    check_version("torch")
    from torch.onnx._internal.exporter import _registration

    registry_class = _registration.ONNXRegistry
    original = registry_class.__dict__["from_torchlib"]

    def reused(cls, opset_version=None):
        key = opset_version
        if key not in _TORCHLIB_REGISTRIES:
            built = original.__func__(cls) if opset_version is None else original.__func__(cls, opset_version)
            _TORCHLIB_REGISTRIES[key] = built
        cached = _TORCHLIB_REGISTRIES[key]
        copy = cls()
        copy._opset_version = cached._opset_version
        copy.functions = {target: list(metas) for target, metas in cached.functions.items()}
        return copy

    registry_class.from_torchlib = classmethod(reused)
    try:
        yield
    finally:
        registry_class.from_torchlib = original


@contextlib.contextmanager
def _fx_nodes_rewritten(rewrite):
    """Inside the block, ``rewrite(graph, node) -> bool`` (True: it changed the node) runs on every
    node of torch.onnx's FX graph just before its type-promotion pass, the last point where aten
    ops can still be replaced by others the translation handles."""
    check_version("torch")
    from torch.onnx._internal.exporter import _fx_passes

    original = _fx_passes.insert_type_promotion_nodes

    def rewritten(graph_module):
        for module in graph_module.modules():
            graph = getattr(module, "graph", None)
            changed = False
            for node in list(graph.nodes) if graph is not None else ():
                changed |= bool(rewrite(graph, node))
            if changed:
                module.recompile()
        return original(graph_module)

    _fx_passes.insert_type_promotion_nodes = rewritten
    try:
        yield
    finally:
        _fx_passes.insert_type_promotion_nodes = original


@contextlib.contextmanager
def number_minus_tensor_rewritten():
    """Inside the block, ``torch.onnx.export(dynamo=True)`` can export ``1.0 - mask`` for an integer
    ``mask`` (XLNet's and ProphetNet's attention masks). Decomposition turns it into
    ``aten.sub.Tensor(1.0, mask)``, and torch.onnx's type-promotion pass then looks for a ``sub``
    overload taking a number first, finds none and fails ("Cannot find a compatible OpOverload for
    aten.sub"); ``rsub`` has no ONNX function either. Before that pass each such node becomes
    ``add(neg(mask), 1.0)``: the same value, the same promotion to float."""
    import numbers

    import torch

    sub, add, neg = torch.ops.aten.sub.Tensor, torch.ops.aten.add.Tensor, torch.ops.aten.neg.default

    def rewrite(graph, node) -> bool:
        if not (node.op == "call_function" and node.target is sub and len(node.args) == 2
                and isinstance(node.args[0], numbers.Number) and not isinstance(node.args[0], bool)
                and isinstance(node.args[1], torch.fx.Node) and node.kwargs.get("alpha", 1) == 1):
            return False
        number, tensor = node.args
        with graph.inserting_before(node):
            negated = graph.call_function(neg, (tensor,))
        # the subtraction's module stack (the tags), the operand's shape and dtype
        negated.meta = {**node.meta, "val": tensor.meta.get("val")}
        node.target, node.args, node.kwargs = add, (negated, number), {}
        return True

    with _fx_nodes_rewritten(rewrite):
        yield


@contextlib.contextmanager
def trilu_in_types_ort_runs():
    """Inside the block, ``torch.tril`` / ``torch.triu`` of a dtype ONNX Runtime's CPU Trilu kernel
    lacks (uint8, int8, int16, uint16, uint32, bfloat16; it has bool, int32, int64, float16, float,
    double) is exported as a cast to a type it has, the Trilu, and a cast back: the same values.
    With a static shape the exporter folds such a mask into a constant; with a dynamic one
    (GPTSan's ``torch.tril(torch.ones((n, n), dtype=torch.uint8))``) ONNX Runtime refused the file
    ("Could not find an implementation for Trilu(14)")."""
    import torch

    wider = {torch.uint8: torch.int32, torch.int8: torch.int32, torch.int16: torch.int32,
             torch.uint16: torch.int32, torch.uint32: torch.int64, torch.bfloat16: torch.float32}
    targets = (torch.ops.aten.tril.default, torch.ops.aten.triu.default)
    cast = torch.ops.prims.convert_element_type.default

    def rewrite(graph, node) -> bool:
        value = node.meta.get("val") if node.op == "call_function" and node.target in targets else None
        if not isinstance(value, torch.Tensor) or value.dtype not in wider:
            return False
        to = wider[value.dtype]
        with graph.inserting_before(node):
            widened = graph.call_function(cast, (node.args[0], to))
            trilu = graph.call_function(node.target, (widened, *node.args[1:]), dict(node.kwargs))
        # the Trilu's module stack (the tags) on the new nodes, each one's shape and dtype
        widened.meta = {**node.meta, "val": value.to(to)}
        trilu.meta = {**node.meta, "val": value.to(to)}
        # the node itself becomes the cast back: its name stays the one an output refers to
        node.target, node.args, node.kwargs = cast, (trilu, value.dtype), {}
        return True

    with _fx_nodes_rewritten(rewrite):
        yield


@contextlib.contextmanager
def safe_onnxscript_rewrites():
    """Inside the block, the onnxscript optimizer that ``torch.onnx.export(dynamo=True)`` runs
    leaves values as PyTorch computes them and writes a valid graph:

    - a rule's constants match to float32 precision, not within its default ``rel_tol=1e-5`` /
      ``abs_tol=1e-8``. With those, its no-op rules remove real arithmetic: ``x * 0.999999``
      becomes ``x`` (``mul_by_1``; transformers 4.57's Idefics3 vision positions), ``x + 1e-9``
      becomes ``x`` (``add_0``). Float32 rounding of a rule's own constants (GELU's 0.044715) is
      6e-8 relative at most: those rules still match.
    - the rules fusing Min/Max into Clip are left out: their new bounds are initializers that do
      not reach the file when the fused nodes came from a function inlined later (Gemma 4's audio
      encoder: "Node input 'mul_8_min_1' is not a graph input, initializer, or output of a
      previous node", ONNX Runtime refuses the file). Min and Max stay as they are.
    - constant folding leaves a ``SplitToSequence`` whose split size is a scalar computed in the
      graph as it is: onnxscript 0.7's folding reads the value it does not have and fails
      ("'NoneType' object has no attribute 'ndim'": torch's ``chunk`` of a dynamic length,
      ProphetNet's n-gram attention). ONNX Runtime runs the node and its ``SequenceAt`` readers."""
    check_version("onnxscript")
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding
    from onnxscript.rewriter import _matcher
    from onnxscript.rewriter.rules.common import _min_max_to_clip

    original = _matcher.SimplePatternMatcher._match_constant
    rules = rewriter._DEFAULT_REWRITE_RULES

    def exact(self, pattern_constant, value):
        saved = pattern_constant._rel_tol, pattern_constant._abs_tol
        pattern_constant._rel_tol, pattern_constant._abs_tol = min(saved[0], _FLOAT32_REL_TOL), 0.0
        try:
            return original(self, pattern_constant, value)
        finally:
            pattern_constant._rel_tol, pattern_constant._abs_tol = saved

    def unknown_split_kept(fold):
        def split_to_sequence(node, op, state):
            split = node.inputs[1] if len(node.inputs) > 1 else None
            if split is not None and _constant_folding._get_numpy_value(split) is None and not (
                    split.shape is not None and split.shape.is_static() and len(split.shape) == 1):
                return None  # neither the split's value nor its number of pieces is known: as it is
            return fold(node, op, state)
        return split_to_sequence

    splits = _constant_folding.registry.op_evaluators.get(("", "SplitToSequence"), [])
    folds = [evaluator.function for evaluator in splits]
    clip_rules = {id(rule) for rule in _min_max_to_clip.rules}
    _matcher.SimplePatternMatcher._match_constant = exact
    rewriter._DEFAULT_REWRITE_RULES = tuple(rule for rule in rules if id(rule) not in clip_rules)
    for evaluator, fold in zip(splits, folds):
        evaluator.function = unknown_split_kept(fold)
    try:
        yield
    finally:
        _matcher.SimplePatternMatcher._match_constant = original
        rewriter._DEFAULT_REWRITE_RULES = rules
        for evaluator, fold in zip(splits, folds):
            evaluator.function = fold


_FLOAT32_REL_TOL = 1.2e-7  # float32's machine epsilon: a double rounded to float32 is within half of it


# -- ONNX Runtime -----------------------------------------------------------------------------
def gemm_rewrite_suffixes() -> tuple[str, ...]:
    """ONNX Runtime's quantizer first rewrites each Gemm as MatMul (+ Add, + Transpose) named after
    the Gemm with these suffixes (``onnxruntime/quantization/onnx_model.py``, ``replace_gemm_with_matmul``):
    excluding a Gemm from quantization means excluding those names too."""
    check_version("onnxruntime")
    return ("_MatMul", "_Add", "_Transpose")


# -- Model Explorer ---------------------------------------------------------------------------
def disable_model_explorer_update_check() -> None:
    """Model Explorer asks its package index for a newer version in the background on every
    start; a viewer of local files has no business on the network."""
    check_version("ai-edge-model-explorer")
    import model_explorer.server as me_server

    me_server._check_new_version = lambda print_msg=True: None


# -- transformers -------------------------------------------------------------------------------
def generation_components(config, generation_config, input_ids, **generation_kwargs):
    """(generation config, logits processors, stopping criteria) exactly as ``generate()`` builds
    them before its sampling loop, for a decoding loop that runs ONNX files.

    transformers has no public builder; ``GenerationMixin``'s private helpers take the same
    arguments in 4.57 and 5.x (``_prepare_generation_config``, ``_prepare_special_tokens``,
    ``_prepare_generated_length``, ``_get_logits_processor``, ``_get_stopping_criteria``), called
    on a stand-in that has what they read (``config``, ``generation_config``, ``device``)."""
    check_version("transformers")
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
    from transformers.generation import GenerationMixin

    class _StandIn(GenerationMixin):
        def __init__(self):
            self.config = config
            self.generation_config = generation_config if generation_config is not None else \
                GenerationConfig.from_model_config(config)
            self.device = torch.device("cpu")

    stand_in = _StandIn()
    prepared, model_kwargs = stand_in._prepare_generation_config(None, **generation_kwargs)
    if version_tuple(installed_version("transformers"))[0] >= 5:
        stand_in._prepare_special_tokens(prepared, True, device=stand_in.device, batch_size=input_ids.shape[0])
        default_max = generation_kwargs.get("max_length") is None and stand_in.generation_config.max_length is None
        default_min = generation_kwargs.get("min_length") is None and stand_in.generation_config.min_length is None
    else:
        stand_in._prepare_special_tokens(prepared, True, device=stand_in.device)
        default_max = generation_kwargs.get("max_length") is None and prepared.max_length is not None
        default_min = generation_kwargs.get("min_length") is None and prepared.min_length is not None
    prepared = stand_in._prepare_generated_length(
        generation_config=prepared, has_default_max_length=default_max, has_default_min_length=default_min,
        model_input_name="input_ids", inputs_tensor=input_ids, input_ids_length=input_ids.shape[1])
    processors = stand_in._get_logits_processor(
        generation_config=prepared, input_ids_seq_length=input_ids.shape[1], encoder_input_ids=input_ids,
        prefix_allowed_tokens_fn=None, logits_processor=LogitsProcessorList(), device=stand_in.device,
        model_kwargs=model_kwargs)
    stopping = stand_in._get_stopping_criteria(generation_config=prepared, stopping_criteria=StoppingCriteriaList())
    return prepared, processors, stopping
