"""Every transformers model type Optimum's ONNX exporter supports, tiny, exported both ways.

``check_model_type`` builds a tiny random model of one type from its default config (sizes
shrunk generically, no Hub), picks a task, exports it with plain Optimum and with modelexport,
and measures: did each export, coverage, the parameter oracle, validation, the ORTModel load.
scripts/breadth_table.py runs it for every type (one process each) and writes docs/breadth.md;
tests/test_breadth.py runs a representative subset.

The parameter oracle does not use our naming, nor the initializers' names: an initializer whose
value equals one module's parameter (or its transpose) belongs to that module, and a node that
reads it must be tagged with that module or one of its descendants. Every parameter of the tiny
model is nudged at random first, so no two are equal and the exporter de-duplicates none.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Task preference: the heads users export most, generation with the KV cache first.
TASK_PREFERENCE = (
    "text2text-generation-with-past", "automatic-speech-recognition-with-past", "text-generation-with-past",
    "image-to-text-with-past", "text-classification", "image-classification", "audio-classification",
    "object-detection", "semantic-segmentation", "fill-mask", "question-answering", "token-classification",
    "multiple-choice", "zero-shot-image-classification", "automatic-speech-recognition", "image-to-text",
    "text-generation", "text2text-generation", "audio-frame-classification", "audio-xvector", "depth-estimation",
    "image-segmentation", "masked-im", "feature-extraction",
)

# Generic shrinking: attribute -> small value. Heads divide every width below; depth 2.
_SMALL = {
    **dict.fromkeys(("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "word_embed_proj_dim", "projection_dim",
                     "text_embed_dim", "vision_embed_dim", "encoder_hidden_size", "decoder_hidden_size",
                     "hidden_dim_text"), 32),
    **dict.fromkeys(("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
                     "num_decoder_layers", "num_encoder_layers", "encoder_num_layers", "decoder_num_layers"), 2),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "encoder_attention_heads",
                     "decoder_attention_heads", "num_heads", "encoder_num_attention_heads",
                     "decoder_num_attention_heads"), 4),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff", "n_inner",
                     "hidden_dim", "encoder_intermediate_size", "decoder_intermediate_size",
                     "moe_intermediate_size", "shared_expert_intermediate_size"), 64),
    "num_key_value_heads": 2, "head_dim": 8, "d_kv": 8, "num_experts": 4, "num_local_experts": 4,
    "num_experts_per_tok": 2, "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4,
    "v_head_dim": 8, "embedding_size": 32, "first_k_dense_replace": 1,
    # widths that must follow the hidden size, and rotary widths that must fit a head of 8
    "pooler_hidden_size": 32, "rotary_dim": 4, "qk_head_dim": 8,
}
_LIST_SHRINK = {"depths": 1, "num_layers_list": 1}
_NESTED = ("text_config", "vision_config", "audio_config", "encoder_config", "decoder_config", "backbone_config",
           "qformer_config", "speech_config", "encoder", "decoder")


@dataclass
class BreadthRow:
    model_type: str
    task: str | None = None
    optimum: str = "not run"  # "ok" or the error
    modelexport: str = "not run"
    files: list[str] = field(default_factory=list)
    nodes: int = 0
    direct: int = 0
    inferred: int = 0
    root_fallback: int = 0
    partial: int = 0
    untagged: int = 0
    oracle_checked: int = 0  # nodes reading a distinct-valued parameter
    oracle_violations: list[str] = field(default_factory=list)  # node: tag vs owner
    max_abs_diff: float | None = None
    validation_passed: bool | None = None
    ort_model_class: str | None = None
    ort_load: str = "not run"
    seconds: float = 0.0
    stage: str = ""  # where it stopped: build, optimum, modelexport, check

    def as_dict(self) -> dict:
        return asdict(self)


def supported_model_types() -> dict[str, list[str]]:
    """transformers model type -> ONNX tasks, as optimum-onnx registers them."""
    from modelexport.exporter.optimum.compat import supported_types

    return supported_types("transformers")


def choose_task(tasks: list[str]) -> str:
    for task in TASK_PREFERENCE:
        if task in tasks:
            return task
    return sorted(tasks)[0]


def shrink_config(values: dict, depth: int = 0) -> dict:
    """A default config's dict made tiny (nested configs too). Derived fields (a backbone's stage
    names and out features) are dropped, so the config class recomputes them for the new depth."""
    values = dict(values)
    if depth > 3:
        return values
    for name, value in _SMALL.items():
        current = values.get(name)
        if isinstance(current, int) and not isinstance(current, bool) and current > value:
            values[name] = value
    for name, count in _LIST_SHRINK.items():
        current = values.get(name)
        if isinstance(current, (list, tuple)) and current:
            values[name] = [count] * len(current)
    sizes = values.get("hidden_sizes")
    # HGNetV2 (D-FINE's backbone) takes its channels from stage_*_channels, which must agree
    if isinstance(sizes, (list, tuple)) and sizes and all(isinstance(v, int) for v in sizes) \
            and "stage_out_channels" not in values:
        values["hidden_sizes"] = [8 * 2 ** i for i in range(len(sizes))]
    layers = values.get("num_hidden_layers")
    if isinstance(values.get("layer_types"), list) and isinstance(layers, int):
        values["layer_types"] = values["layer_types"][:layers]
    # A backbone's stage names and out features follow from its depth: dropped, so the config
    # recomputes them; the stages it outputs (out_indices) are kept, clipped to the new depth.
    stages = len(values.get("depths") or []) or values.get("num_hidden_layers")
    indices = values.get("out_indices", values.get("_out_indices"))
    for derived in ("stage_names", "out_features", "out_indices", "_out_features", "_out_indices"):
        values.pop(derived, None)
    if isinstance(indices, (list, tuple)) and indices and isinstance(stages, int) and stages > 0:
        values["out_indices"] = sorted({min(int(i), stages) for i in indices})
    for name in _NESTED:
        if isinstance(values.get(name), dict):
            values[name] = shrink_config(values[name], depth + 1)
    return values


def _value_key(array) -> tuple:
    import numpy as np

    array = np.ascontiguousarray(array)
    return array.shape, str(array.dtype), hashlib.sha1(array.tobytes()).hexdigest()


def parameter_names_by_value(model) -> dict[tuple, str]:
    """Value of each parameter (and its transpose: the exporters transpose MatMul weights and
    rename them) -> its ``named_parameters()`` name, for values exactly one parameter has."""
    by_value: dict[tuple, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        array = p.detach().cpu().numpy()
        keys = {_value_key(array)}
        if array.ndim == 2:
            keys.add(_value_key(array.T))
        for key in keys:
            by_value.setdefault(key, set()).add(name)
    # A tied parameter has several names for one value: keep it only when they share an owner.
    unique = {}
    for key, names in by_value.items():
        owners = {n.rpartition(".")[0] for n in names}
        if len(owners) == 1:
            unique[key] = min(names)
    return unique


def parameter_owners_by_value(model) -> dict[tuple, str]:
    """Value of each parameter (or its transpose) -> owning module, for values one module has."""
    return {key: name.rpartition(".")[0] for key, name in parameter_names_by_value(model).items()}


def nudge_parameters(model, scale: float = 0.01, seed: int = 0) -> None:
    """A fresh model has many equal tensors (all-ones norms, zero biases), which the exporters
    store once: nudge every parameter so each is unique and the oracle can follow it."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)


def tags_by_parameter(onnx_path: Path, names: dict[tuple, str]) -> dict[str, set[str]]:
    """Parameter name (found by value, see ``parameter_names_by_value``) -> module paths of the
    nodes reading it, over every graph of the file: the comparison of two exports of one model
    that does not depend on how either exporter names its tensors."""
    import onnx
    from onnx import numpy_helper

    from modelexport.hierarchy.tags import iter_nodes, node_tag

    model = onnx.load(str(onnx_path))
    initializers = {}
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for init in graph.initializer:
            name = names.get(_value_key(numpy_helper.to_array(init)))
            if name is not None:
                initializers[init.name] = name
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        name = names.get(_value_key(numpy_helper.to_array(attr.t)))
                        if name is not None:
                            initializers[node.output[0]] = name
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
    readers: dict[str, set[str]] = {}
    for node, graph_path in iter_nodes(model.graph):
        for x in node.input:
            if x in initializers:
                readers.setdefault(initializers[x], set()).add(node_tag(node, graph_path).module_path)
    return readers


def oracle_violations(onnx_path: Path, owners: dict[tuple, str],
                      classes: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Nodes reading an initializer whose value is one module's parameter, tagged outside it."""
    import onnx
    from onnx import numpy_helper

    from modelexport.hierarchy.module_tree import ModuleTree
    from modelexport.hierarchy.tags import iter_nodes, node_tag

    model = onnx.load(str(onnx_path))
    owner_of = {}
    for init in model.graph.initializer:
        owner = owners.get(_value_key(numpy_helper.to_array(init)))
        if owner is not None:
            owner_of[init.name] = owner
    classes = classes or {}

    def folded(node, owner: str, tag: str) -> bool:
        # A Conv the exporter merged with the BatchNorm after it reads the BatchNorm's values; its
        # tag is then the module holding both (tagging.py says so in a warning).
        return node.op_type == "Conv" and "BatchNorm" in classes.get(owner, "") and \
            tag == owner.rpartition(".")[0]

    checked, bad = 0, []
    for node, graph_path in iter_nodes(model.graph):
        tag = node_tag(node, graph_path).module_path
        read = {owner_of[x] for x in node.input if x in owner_of}
        for name in node.input:
            owner = owner_of.get(name)
            if owner is None:
                continue
            checked += 1
            # A module applying itself to another's parameter (SEW-D: LayerNorm(rel_embeddings.weight))
            # is tagged with itself: its own parameters are read by the same node.
            applies = tag in read and tag != owner
            if tag is None or not (ModuleTree.contains(owner, tag) or folded(node, owner, tag) or applies):
                bad.append(f"{onnx_path.name}:{node.name} reads {name}: tagged {tag!r}, owner {owner!r}")
    return checked, bad


def build_tiny(model_type: str, task: str, folder: Path):
    import torch
    from optimum.exporters.tasks import TasksManager
    from transformers import AutoConfig

    defaults = AutoConfig.for_model(model_type).to_dict()
    values = shrink_config({k: v for k, v in defaults.items() if k not in ("model_type", "transformers_version")})
    config = AutoConfig.for_model(model_type, **values)
    if getattr(config, "pad_token_id", None) is None and task == "text-classification":
        config.pad_token_id = 0
    base_task = task.replace("-with-past", "")
    model_class = TasksManager.get_model_class_for_task(base_task, framework="pt", model_type=model_type,
                                                        library="transformers")
    torch.manual_seed(0)
    model = (model_class.from_config(config) if hasattr(model_class, "from_config") else model_class(config)).eval()
    nudge_parameters(model)
    model.save_pretrained(folder)
    return model


def check_model_type(model_type: str, tasks: list[str], work: Path) -> BreadthRow:
    import onnxruntime  # noqa: F401  (imported before torch: its own thread pools first)

    import modelexport
    from modelexport.quiet import silenced

    row = BreadthRow(model_type, choose_task(tasks))
    started = time.perf_counter()
    with silenced():
        try:
            row.stage = "build"
            model = build_tiny(model_type, row.task, work / "model")
            row.stage = "optimum"
            from optimum.exporters.onnx import onnx_export_from_model

            try:
                with _optimum_warnings() as warned:
                    onnx_export_from_model(model, work / "optimum", task=row.task, do_validation=True)
                # Optimum's own validation: a difference above its tolerance is a warning there too
                row.optimum = "ok" if not warned else f"ok, validation: {warned[0]}"
            except Exception as e:  # Optimum's own failure is a result, not a crash of the table
                row.optimum = _first_line(e)
            row.stage = "modelexport"
            try:
                result = modelexport.export(str(work / "model"), work / "modelexport", task=row.task)
                row.modelexport = "ok"
            except Exception as e:
                row.modelexport = _first_line(e)
                return row
            row.stage = "check"
            _measure(row, result, model, work / "modelexport")
        except Exception as e:
            if row.stage == "build":
                row.optimum = row.modelexport = f"cannot build tiny: {_first_line(e)}"
            else:
                row.modelexport = f"{row.stage}: {_first_line(e)}"
        finally:
            row.seconds = round(time.perf_counter() - started, 2)
    return row


def _measure(row: BreadthRow, result, model, out: Path) -> None:
    from modelexport.hierarchy.tags import read_tags

    owners = parameter_owners_by_value(model)
    passed = []
    for f in result.files:
        row.files.append(f.name)
        c = f.coverage
        row.nodes += c["nodes"]
        row.direct += c["direct"]
        row.inferred += c["inferred"]
        row.root_fallback += c["root_fallback"]
        row.partial += c.get("partial_scope", 0)
        row.untagged += sum(t.module_path is None for t in read_tags(out / f.name))
        checked, bad = oracle_violations(out / f.name, owners,
                                         {p: type(m).__name__ for p, m in model.named_modules()})
        row.oracle_checked += checked
        row.oracle_violations += bad
        if f.validation:
            diff = f.validation["max_abs_diff"]
            row.max_abs_diff = diff if row.max_abs_diff is None else max(row.max_abs_diff, diff)
            passed.append(f.validation["passed"])
    row.validation_passed = all(passed) if passed else None
    row.ort_model_class = result.ort_model_class
    if result.ort_model_class:
        import optimum.onnxruntime as ortm

        try:
            getattr(ortm, result.ort_model_class).from_pretrained(out)
            row.ort_load = "ok"
        except Exception as e:
            row.ort_load = _first_line(e)
    else:
        row.ort_load = "no ORTModel class for the task"


@contextlib.contextmanager
def _optimum_warnings():
    """The warnings Optimum's export logs about its own validation (values above its atol)."""
    import logging

    caught: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            text = record.getMessage()
            if "succeeded with the warning" in text:
                caught.append(text.split("warning:", 1)[-1].strip().splitlines()[0][:160])

    handler = Catch(logging.WARNING)
    logger = logging.getLogger("optimum")
    disabled = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    logger.addHandler(handler)
    try:
        yield caught
    finally:
        logger.removeHandler(handler)
        logging.disable(disabled)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:300]


def main(argv: list[str]) -> int:
    """Worker entry: ``python -m modelexport.testing.breadth MODEL_TYPE WORKDIR OUT.json TASK...``."""
    model_type, work, out, tasks = argv[0], Path(argv[1]), Path(argv[2]), argv[3:]
    row = check_model_type(model_type, tasks, work)
    out.write_text(json.dumps(row.as_dict()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
