"""Optimize or quantize an exported folder with ONNX Runtime, then put the tags back on every node.

ONNX Runtime's transformer optimizer (``onnxruntime.transformers.optimizer``, with Optimum's
O1-O4 levels) and its quantizers (``runtime/quantize_ort.py``) are called directly: no Optimum
is needed. The result is a new Optimum-loadable folder (same file names, config, preprocessors
and every other side file copied, metadata updated with what was done and how each node got its
tag), written through the same staged output folder as an export and validated before it
replaces anything.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from modelexport.errors import ModelExportError
from modelexport.folder.side_files import copy_side_files


@dataclass
class TransformResult:
    output: Path
    files: dict[str, dict] = field(default_factory=dict)  # file -> restore counts (+ extras)
    kept_float: dict[str, int] = field(default_factory=dict)  # module glob -> nodes kept in float
    added_ops: dict[str, dict[str, int]] = field(default_factory=dict)  # file -> op type -> nodes gained
    tagged: bool = True  # False: the source had no module tags, so neither has the result
    settings: dict = field(default_factory=dict)  # quantize: what was used (QuantSettings.as_dict)
    quantized_nodes: dict[str, int] = field(default_factory=dict)  # quantize: file -> weight nodes quantized


def op_counts(graph) -> dict[str, int]:
    """Nodes per op type (``domain:Op`` outside the default domain), subgraphs included."""
    from modelexport.hierarchy.tags import iter_nodes

    counts: dict[str, int] = {}
    for node, _ in iter_nodes(graph):
        key = f"{node.domain}:{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts


def added_ops(original_graph, rewritten_graph) -> dict[str, int]:
    """Nodes gained per op type outside the ONNX domain: the fused kernels of ONNX Runtime
    (``com.microsoft:Attention``...) after ``optimize``; standard ops it re-arranges are not fusions."""
    before, after = op_counts(original_graph), op_counts(rewritten_graph)
    return {op: n - before.get(op, 0) for op, n in sorted(after.items())
            if ":" in op and n > before.get(op, 0)}


def is_tagged(src: Path, names: list[str]) -> bool:
    """Whether the folder is one modelexport wrote: its metadata and tags on its nodes. Tags of a
    file without them (a plain Optimum export) cannot be restored: there are none to restore."""
    import onnx

    from modelexport.folder.metadata import read_metadata
    from modelexport.hierarchy.tags import MODULE_PATH_KEY

    meta, _ = read_metadata(src)
    if meta is None:
        return False
    model = onnx.load(str(src / names[0]), load_external_data=False)
    return any(p.key == MODULE_PATH_KEY for node in model.graph.node for p in node.metadata_props)


def untagged_note(src: Path, verb: str) -> str:
    return (f"{src} carries no module tags (not exported by modelexport): {verb} as it is; the result has no tags "
            "and no modelexport metadata")


def check_derived_folder(folder: Path, what: str, tagged: bool = True) -> None:
    """Run ``validate``'s checks on a freshly written folder before it replaces anything: a folder
    that does not load or run is an error, not a result. An untagged folder (from an untagged
    source) is held to every check but those of tags and metadata."""
    from modelexport.folder.loading import load_target
    from modelexport.inspect.validate import FAIL, TAG_CHECKS, validate_target

    # without a usable Optimum, validate itself skips (not fails) its Optimum loading check
    skipped = set() if tagged else set(TAG_CHECKS)
    failed = [c for c in validate_target(load_target(folder), run_onnxruntime=True)
              if c.status == FAIL and c.name not in skipped]
    if failed:
        first = failed[0]
        raise ModelExportError(f"the {what} folder fails `modelexport validate` ({first.name}"
                               f"{' of ' + first.file if first.file else ''}: {first.detail}); nothing was written")


def _restore_all(src: Path, staging: Path, names: list[str], modules,
                 added: dict[str, dict[str, int]] | None = None) -> dict[str, object]:
    """Restore tags on each rewritten file; returns its RestoreCounts (with per-module counts)
    and records the new graph's fingerprint on it. ``added`` receives each file's new op types."""
    import onnx

    from modelexport.hierarchy.fingerprint import graph_fingerprint
    from modelexport.hierarchy.restore import restore_tags
    from modelexport.inspect.checker import check_file

    results = {}
    for name in names:
        original = onnx.load(str(src / name), load_external_data=False)
        rewritten_path = staging / name
        rewritten = onnx.load(str(rewritten_path), load_external_data=False)
        counts = restore_tags(original, rewritten, modules)
        if added is not None:
            added[name] = added_ops(original.graph, rewritten.graph)
        onnx.save(rewritten, str(rewritten_path))
        check_file(rewritten_path)
        counts.graph_sha256 = graph_fingerprint(rewritten.graph)
        results[name] = counts
    return results


def _write_metadata(src: Path, staging: Path, step: dict, files: dict[str, object]) -> dict[str, dict]:
    """The source folder's metadata with this step appended and node counts of the new files
    (``folder.metadata.derive_metadata``); returns each file's restore counts as dicts."""
    from modelexport.folder.metadata import derive_metadata

    summaries = {name: counts.as_dict() for name, counts in files.items()}
    entries = {name: {"nodes": counts.nodes, "graph_sha256": counts.graph_sha256, "restored_tags": summaries[name],
                      "validation": None,
                      "coverage": {"nodes": counts.nodes, "direct": 0, "inferred": counts.inferred + counts.by_lineage,
                                   "root_fallback": counts.root, "kept": counts.kept, "by_name": counts.by_name}}
               for name, counts in files.items()}
    derive_metadata(src, staging, step, entries, {name: counts.by_module for name, counts in files.items()})
    return summaries


def _onnx_names(src: Path) -> list[str]:
    if not src.is_dir():
        raise ModelExportError(f"{src} is not an exported folder")
    names = sorted(p.name for p in src.glob("*.onnx"))
    if not names:
        raise ModelExportError(f"{src} holds no .onnx file")
    return names


# -- optimize: ONNX Runtime's transformer optimizer, with Optimum's levels ---------------------
# What Optimum's O1..O4 mean (optimum/onnxruntime/configuration.py, AutoOptimizationConfig._LEVELS
# and OptimizationConfig's defaults), passed to onnxruntime.transformers.optimizer.optimize_model
# as ORTOptimizer.optimize passes them; tests/test_optimize_parity.py compares the graphs.
OPTIMIZATION_LEVELS = {
    "O1": {"opt_level": 1, "fusions": False, "gelu_approximation": False, "fp16": False},
    "O2": {"opt_level": 2, "fusions": True, "gelu_approximation": False, "fp16": False},
    "O3": {"opt_level": 2, "fusions": True, "gelu_approximation": True, "fp16": False},
    "O4": {"opt_level": 2, "fusions": True, "gelu_approximation": True, "fp16": True},  # fp16: for GPUs
}

# Hugging Face model type -> ONNX Runtime optimizer model type (Optimum's ORTConfigManager._conf).
ORT_MODEL_TYPES = {
    "albert": "bert", "bart": "bart", "bert": "bert", "big_bird": "bert", "bigbird_pegasus": "bart",
    "blenderbot": "bert", "bloom": "gpt2", "camembert": "bert", "codegen": "gpt2", "clip": "clip",
    "deberta": "bert", "deberta-v2": "bert", "dinov2": "vit", "distilbert": "bert", "electra": "bert",
    "gpt2": "gpt2", "gpt_bigcode": "gpt2", "gpt_neo": "gpt2", "gpt_neox": "gpt2", "gptj": "gpt2", "granite": "gpt2",
    "longt5": "bert", "llama": "gpt2", "marian": "bart", "mbart": "bart", "mistral": "gpt2", "modernbert": "bert",
    "mpnet": "bert", "mt5": "bart", "m2m_100": "bart", "nystromformer": "bert", "pegasus": "bert", "roberta": "bert",
    "segformer": "vit", "t5": "bert", "vit": "vit", "whisper": "bart", "xlm-roberta": "bert", "pix2struct": "vit",
}
# The ORT model types whose fusions Optimum runs (ORTConfigManager.check_optimization_supported_model).
_FUSABLE = ("bart", "bert", "gpt2", "tnlr", "t5", "unet", "vae", "clip", "vit", "swin", "swinv2")

# config.json keys for the attention heads and hidden size, in the order Optimum's normalized
# configs read them (NormalizedTextConfig and its GPT-2, T5, BART, DistilBERT variants).
_HEADS_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")


def _read_config(src: Path) -> dict:
    try:
        config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelExportError(f"{src} has no readable config.json (the optimizer needs the model type): {e}") from e
    if not isinstance(config, dict):
        raise ModelExportError(f"{src / 'config.json'} is not a JSON object")
    return config


def attention_shape(config: dict) -> tuple[int, int]:
    """(attention heads, hidden size) from a config.json, as Optimum reads them for the optimizer;
    0 lets ONNX Runtime find them in the graph (lists, as SegFormer's per-stage sizes, too)."""
    scope = config.get("text_config") if config.get("model_type") in ("clip", "pix2struct") else config
    scope = scope if isinstance(scope, dict) else config

    def first(keys):
        for key in keys:
            value = scope.get(key)
            if value is not None:
                return value if isinstance(value, int) and not isinstance(value, bool) else 0
        return 0

    return first(_HEADS_KEYS), first(_HIDDEN_KEYS)


def fusion_options(ort_model_type: str, level: str):
    """ONNX Runtime's FusionOptions for an Optimum level: Optimum's OptimizationConfig defaults
    (EmbedLayerNormalization, GroupNorm and packed KV off) plus the level's Gelu approximation."""
    from argparse import Namespace

    from onnxruntime.transformers.fusion_options import FusionOptions

    args = Namespace(
        model_type=ort_model_type, disable_gelu=False, disable_layer_norm=False, disable_rotary_embeddings=False,
        disable_attention=False, use_multi_head_attention=False, disable_skip_layer_norm=False,
        disable_embed_layer_norm=True, disable_bias_skip_layer_norm=False, disable_bias_gelu=False,
        enable_gelu_approximation=OPTIMIZATION_LEVELS[level]["gelu_approximation"], disable_shape_inference=False,
        enable_gemm_fast_gelu=False, use_mask_index=False, use_raw_attention_mask=False, no_attention_mask=False,
        use_group_norm_channels_first=False, disable_nhwc_conv=False, disable_group_norm=True,
        disable_skip_group_norm=False, disable_bias_splitgelu=False, disable_packed_qkv=False, disable_packed_kv=True,
        disable_bias_add=False)
    return FusionOptions.parse(args)


def ort_model_type(config: dict, level: str) -> str:
    """The optimizer's model type for this config at this level; an unsupported one is refused
    at O2-O4 (their fusions are per architecture). O1, ONNX Runtime's own basic optimizations,
    works on any graph."""
    model_type = config.get("model_type")
    ort_type = ORT_MODEL_TYPES.get(model_type)
    if OPTIMIZATION_LEVELS[level]["fusions"] and (ort_type is None or ort_type not in _FUSABLE):
        raise ModelExportError(f"ONNX Runtime's transformer optimizer has no fusions for model type {model_type!r} "
                               f"(--level {level}); use --level O1 (ONNX Runtime's basic graph optimizations), or a "
                               f"model type among {', '.join(sorted(ORT_MODEL_TYPES))}")
    return ort_type or "bert"


def optimize_file(src_file: Path, dst_file: Path, config: dict, level: str) -> None:
    """``optimize_model`` as Optimum's ORTOptimizer.optimize calls it, then saved (weights outside
    the file when the source had them outside)."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    from modelexport.quiet import stdout_swallowed

    settings = OPTIMIZATION_LEVELS[level]
    ort_type = ort_model_type(config, level)
    heads, hidden = attention_shape(config)
    src_file, dst_file = Path(src_file).resolve(), Path(dst_file).resolve()
    external = any(t.data_location == onnx.TensorProto.EXTERNAL
                   for t in onnx.load(str(src_file), load_external_data=False).graph.initializer)
    # onnxruntime.transformers prints its shape-inference failures, and its symbolic shape
    # inference saves the graph it gave up on (sym_shape_infer_temp.onnx and a data file) in the
    # working directory: both stay in a scratch folder
    with stdout_swallowed(), tempfile.TemporaryDirectory(dir=dst_file.parent) as scratch, _working_directory(scratch):
        optimizer = optimize_model(str(src_file), ort_type, heads, hidden, opt_level=settings["opt_level"],
                                   optimization_options=fusion_options(ort_type, level), use_gpu=settings["fp16"],
                                   only_onnxruntime=not settings["fusions"])
        if settings["fp16"]:
            optimizer.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True)
        optimizer.save_model_to_file(str(dst_file), use_external_data_format=external, all_tensors_to_one_file=True)


@contextlib.contextmanager
def _working_directory(path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def optimize_folder(src, out, level: str = "O2", force: bool = False, on_untagged=None) -> TransformResult:
    from modelexport.folder.staging import staged_output_dir

    src, out = Path(src), Path(out)
    names = _onnx_names(src)
    if level not in OPTIMIZATION_LEVELS:
        raise ModelExportError(f"unknown optimization level {level!r}; choose one of {', '.join(OPTIMIZATION_LEVELS)}")
    config = _read_config(src)
    ort_model_type(config, level)  # refused before any work
    modules = _modules(src)
    tagged = is_tagged(src, names)
    if not tagged and on_untagged is not None:
        on_untagged(untagged_note(src, "optimized"))
    names, left_out = _merged_decoders_left_out(src, names)
    with staged_output_dir(out, force, [src]) as staging, tempfile.TemporaryDirectory(dir=staging) as prepared:
        if left_out and on_untagged is not None:  # said once the output folder is accepted
            on_untagged(f"{', '.join(left_out)} left out: ONNX Runtime's optimizer drops a merged decoder's If "
                        "node (Optimum's ORTOptimizer refuses merged decoders too); the optimized "
                        "decoder_model.onnx and decoder_with_past_model.onnx load in its place")
        readable = _bare_gemms_given_a_bias(src, names, Path(prepared))
        for name in names:
            try:
                optimize_file(readable / name, staging / name, config, level)
            except (ValueError, KeyError, NotImplementedError, AssertionError, IndexError) as e:
                raise ModelExportError(f"ONNX Runtime's optimizer cannot optimize {name}: "
                                       f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from e
        copy_side_files(src, staging)
        fused: dict[str, dict[str, int]] = {}
        summaries = {}
        if tagged:
            files = _restore_all(src, staging, names, modules, fused)
            summaries = _write_metadata(src, staging, {"step": "optimize", "level": level,
                                                       "settings": {**OPTIMIZATION_LEVELS[level],
                                                                    "ort_model_type": ort_model_type(config, level),
                                                                    "num_heads_hidden_size": attention_shape(config)},
                                                       "fused_ops": fused, "left_out": left_out}, files)
        else:
            fused = _fused_only(src, staging, names)
        check_derived_folder(staging, "optimized", tagged)
    return TransformResult(out, summaries, added_ops=fused, tagged=tagged)


def _merged_decoders_left_out(src: Path, names: list[str]) -> tuple[list[str], list[str]]:
    """(files to optimize, merged decoders left out). ONNX Runtime's optimizer removes the top-level
    If node of Optimum's merged decoder (the graph comes back empty); where the two decoders it was
    merged from are in the folder, they are optimized and the merged one is left out. A merged
    decoder alone is refused."""
    merged = [n for n in names if n.endswith("_merged.onnx")]
    left_out = []
    for name in merged:
        stem = name[:-len("_merged.onnx")]
        if f"{stem}.onnx" in names and f"{stem.replace('_model', '')}_with_past_model.onnx" in names:
            left_out.append(name)
        else:
            raise ModelExportError(f"ONNX Runtime's optimizer cannot optimize {name}, a merged decoder (it drops the "
                                   "If node), and the two decoders it was merged from are not in the folder")
    return [n for n in names if n not in left_out], left_out


def _fused_only(src: Path, staging: Path, names: list[str]) -> dict[str, dict[str, int]]:
    import onnx

    return {name: added_ops(onnx.load(str(src / name), load_external_data=False).graph,
                            onnx.load(str(staging / name), load_external_data=False).graph) for name in names}


def _bare_gemms_given_a_bias(src: Path, names: list[str], prepared: Path) -> Path:
    """The folder ONNX Runtime's optimizer can read: ``src`` itself, or a copy in ``prepared``.

    Its GPT-2 pass rewrites each Gemm that follows a LayerNorm's Reshape into MatMul + Add and
    reads the Gemm's bias without checking there is one (IndexError). The TorchScript exporter
    writes a bias-less linear as MatMul, torch.export as a two-input Gemm (GPT-2's ``lm_head``).
    Such Gemms get an explicit zero bias of the output width (the same function; a width-1 bias
    broadcasts too, but the later BiasGelu/FastGelu fusion takes it as the bias and fails at run
    time) in a copy of the file; tags are restored against the original afterwards, so nothing
    else changes. A Gemm whose weight is not an initializer (width unknown) is left as it is."""
    import onnx

    patched = {}
    for name in names:
        model = onnx.load(str(src / name), load_external_data=False)
        weights = {t.name: t for t in model.graph.initializer}
        changed = 0
        for node in model.graph.node:
            weight = weights.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) == 2 else None
            if weight is None or len(weight.dims) != 2:
                continue
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            width = weight.dims[0] if trans_b else weight.dims[1]
            zero = onnx.helper.make_tensor(f"modelexport_gemm_zero_bias_{changed}", weight.data_type, [width],
                                           [0] * width)
            model.graph.initializer.append(zero)
            node.input.append(zero.name)
            changed += 1
        if changed:
            patched[name] = model
    if not patched:
        return src
    for p in src.iterdir():  # config, preprocessors and any external weights, as ORTOptimizer reads them
        if p.is_file() and p.name not in patched:
            (prepared / p.name).symlink_to(p.resolve())
    for name, model in patched.items():
        onnx.save(model, str(prepared / name))
    return prepared


def quantize_folder(src, out, exclude: list[str] | None = None, force: bool = False, validate: bool = True,
                    on_untagged=None, settings=None, calibration: dict[str, list[dict]] | None = None,
                    extra_step: dict | None = None) -> TransformResult:
    """Quantize every ONNX file of an exported folder with ONNX Runtime (``settings``: a
    ``QuantSettings``, by default dynamic int8 with this machine's preset), keeping the nodes of
    the ``exclude`` module patterns float; tags restored, side files copied, the result
    validated before it replaces anything. ``calibration``: file -> feeds, for static QDQ."""
    import onnx

    from modelexport.folder.staging import staged_output_dir
    from modelexport.hierarchy.selection import select_modules
    from modelexport.runtime.cpu_presets import this_machine
    from modelexport.runtime.quantize_measure import folder_config
    from modelexport.runtime.quantize_ort import QuantSettings, file_weights, linked_source, quantize_file
    from modelexport.runtime.smoothing import folder_maxima

    src, out = Path(src), Path(out)
    names = _onnx_names(src)
    modules = _modules(src)
    settings = settings or QuantSettings(this_machine())
    exclude = exclude or []
    result = TransformResult(out, tagged=is_tagged(src, names))
    if not result.tagged:
        if exclude:
            raise ModelExportError(f"--exclude-modules needs module tags; {untagged_note(src, 'quantize it')}")
        if on_untagged is not None:
            on_untagged(untagged_note(src, "quantized"))
    graphs = {name: onnx.load(str(src / name), load_external_data=False) for name in names}
    # A pattern has to match in one file of the folder, not in each: `encoder.block.1` is not in
    # the decoder files. Nodes inside a merged decoder's If branches are matched too.
    selection = select_modules(graphs, exclude) if exclude else select_modules({}, [])
    for pattern, per_file in selection.nodes.items():
        result.kept_float[pattern] = sum(len(v) for v in per_file.values())
    weights = {name: file_weights(graphs[name], settings.static, settings.static_ops) for name in names}
    if settings.static and any(w.has_subgraphs for w in weights.values()):
        raise ModelExportError(f"{src} has merged decoders (If subgraphs), which ONNX Runtime's static quantizer "
                               "does not quantize; quantize it dynamically (no --static)")
    with staged_output_dir(out, force, [src]) as staging, tempfile.TemporaryDirectory(dir=staging) as tmp:
        readable = linked_source(src, names, Path(tmp) / "source")
        maxima = folder_maxima(readable, names, settings, calibration, folder_config(src))
        quantized = {}
        for name in names:
            inputs = {i.name for i in graphs[name].graph.input}
            quantized[name] = quantize_file(readable / name, staging / name, settings, weights[name],
                                            selection.names_in(name), calibration=(calibration or {}).get(name),
                                            input_names=inputs, maxima=maxima.get(name))
        shutil.rmtree(Path(tmp) / "source")
        copy_side_files(src, staging)
        result.settings = settings.as_dict()
        if maxima:
            result.settings["smoothing_statistics"] = sorted({m.source for m in maxima.values()})
        result.quantized_nodes = quantized
        if result.tagged:
            files = _restore_all(src, staging, names, modules)
            step = {"step": "quantize", "mode": f"{settings.mode} int8 ({settings.choice.preset.name})",
                    "settings": result.settings, "quantized_weight_nodes": quantized,
                    "excluded_modules": exclude, "kept_float_nodes": result.kept_float, **(extra_step or {})}
            result.files = _write_metadata(src, staging, step, files)
        if validate:
            check_derived_folder(staging, "quantized", result.tagged)
    return result


def _modules(src: Path):
    from modelexport.folder.metadata import read_metadata

    meta, _ = read_metadata(src)
    return meta.modules if meta is not None else None
