"""Per-module error between two exports of one model (float vs quantized, optimized, another opset).

Both files run in ONNX Runtime on the same inputs with every module's boundary values exposed:
the tensors a module's nodes produce that are used outside it (or are graph outputs). Per module:
max |A - B|, relative L2 error and cosine similarity over its boundary values, and the error it
adds itself: its relative error minus the largest of the tensors entering it and of its
children's outputs (as self time is to total time in a profile), so the module where the error
appears stands out and those that only pass it on do not.

Tensors are matched by name. A module none of whose boundary tensors exists in B (an optimizer
fused them away) is reported as ``fused`` and compared at the nearest enclosing module that still
has one. Values inside If/Loop bodies cannot be exposed as outputs: those modules are ``none``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from modelexport.hierarchy.module_tree import ModuleTree
from modelexport.hierarchy.tags import node_tag


@dataclass
class Boundaries:
    outputs: dict[str, list[str]]  # module -> tensors leaving its subtree
    inputs: dict[str, list[str]]  # module -> tensors entering its subtree
    tags: dict[str, str]  # module -> hierarchy tag
    children: dict[str, list[str]]  # module -> modules one level below it that have nodes


def _ancestors(path: str) -> list[str]:
    """path, its parent, ..., "" (the root)."""
    chain = [path]
    while path:
        path = path.rpartition(".")[0]
        chain.append(path)
    return chain


def module_boundaries(model) -> Boundaries:
    """Boundary tensors of every module that has nodes in the main graph (and of its ancestors)."""
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    producer: dict[str, str] = {}
    consumers: dict[str, list[str]] = {}
    tags: dict[str, str] = {}
    for node in graph.node:
        tag = node_tag(node)
        path = tag.module_path if tag.module_path is not None else ""
        if tag.hierarchy_tag:
            tags.setdefault(path, tag.hierarchy_tag)
        if node.op_type == "Constant":
            constants.update(node.output)
        for name in node.output:
            if name:
                producer[name] = path
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(path)
    graph_outputs = {o.name for o in graph.output}
    outputs: dict[str, list[str]] = {}
    inputs: dict[str, list[str]] = {}
    for name, source in producer.items():
        if name in constants:
            continue
        users = consumers.get(name, [])
        for module in _ancestors(source):
            leaves = name in graph_outputs or any(not ModuleTree.contains(module, u) for u in users)
            if not leaves:
                break  # every reader is inside this module, and so inside its ancestors
            outputs.setdefault(module, []).append(name)
    for name, users in consumers.items():
        if name in constants:
            continue
        source = producer.get(name)  # None: a graph input
        for user in set(users):
            for module in _ancestors(user):
                if source is not None and ModuleTree.contains(module, source):
                    break
                inputs.setdefault(module, [])
                if name not in inputs[module]:
                    inputs[module].append(name)
    modules = set(outputs) | {m for path in producer.values() for m in _ancestors(path)}
    children: dict[str, list[str]] = {m: [] for m in modules}
    for m in modules:
        if m:
            parent = m.rpartition(".")[0]
            while parent not in modules and parent:
                parent = parent.rpartition(".")[0]
            children.setdefault(parent, []).append(m)
    for m in modules:
        if m not in tags:
            tags[m] = ""
    return Boundaries(outputs, inputs, tags, children)


@dataclass
class TensorError:
    """Sums over every input run, so several inputs aggregate exactly."""

    max_abs: float = 0.0
    diff_sq: float = 0.0
    ref_sq: float = 0.0
    other_sq: float = 0.0
    dot: float = 0.0
    nonfinite: int = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        finite = np.isfinite(a64) & np.isfinite(b64)
        self.nonfinite += int(np.count_nonzero(np.isfinite(a64) & ~np.isfinite(b64)))
        a64, b64 = a64[finite], b64[finite]
        if a64.size:
            d = a64 - b64
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))
            self.diff_sq += float(d @ d)
            self.ref_sq += float(a64 @ a64)
            self.other_sq += float(b64 @ b64)
            self.dot += float(a64 @ b64)

    def merged(self, others: list["TensorError"]) -> "TensorError":
        out = TensorError()
        for e in [self, *others]:
            out.max_abs = max(out.max_abs, e.max_abs)
            out.diff_sq += e.diff_sq
            out.ref_sq += e.ref_sq
            out.other_sq += e.other_sq
            out.dot += e.dot
            out.nonfinite += e.nonfinite
        return out

    @property
    def rel_l2(self) -> float:
        if self.ref_sq == 0.0:
            return 0.0 if self.diff_sq == 0.0 else math.inf
        return math.sqrt(self.diff_sq / self.ref_sq)

    @property
    def cosine(self) -> float:
        if self.ref_sq == 0.0 or self.other_sq == 0.0:
            return 1.0 if self.ref_sq == self.other_sq else 0.0
        return self.dot / math.sqrt(self.ref_sq * self.other_sq)


@dataclass
class ModuleDiff:
    module_path: str
    hierarchy_tag: str
    max_abs: float | None
    rel_l2: float | None
    cosine: float | None
    added_rel_l2: float | None
    boundary: str  # own | fused | none
    compared_at: str | None = None  # for fused: the enclosing module whose boundary was compared
    tensors: int = 0  # boundary tensors compared
    # B's nodes of this module alone, run on A's values entering it, against A's values leaving it:
    # the error the module makes by itself, whatever it was handed.
    isolated_rel_l2: float | None = None
    isolated_max_abs: float | None = None
    added_from: str = ""  # "isolated" (B's module alone on A's inputs) or "propagated" (boundary errors)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FileDiff:
    file: str
    inputs_run: int
    modules: list[ModuleDiff] = field(default_factory=list)
    nonfinite: int = 0  # values finite in A and NaN/Inf in B

    def as_dict(self) -> dict:
        return {"inputs_run": self.inputs_run, "nonfinite_in_b": self.nonfinite,
                "modules": [m.as_dict() for m in self.modules]}


def _value_names(model) -> set[str]:
    graph = model.graph
    names = {i.name for i in graph.input}
    for node in graph.node:
        names.update(o for o in node.output if o)
    return names


def _comparable(a, b) -> bool:
    return a is not None and b is not None and np.shape(a) == np.shape(b) and \
        np.issubdtype(np.asarray(a).dtype, np.number) and np.issubdtype(np.asarray(b).dtype, np.number)


def diff_files(path_a: Path, path_b: Path, feeds: list[dict], isolate: bool = True) -> FileDiff:
    """Per-module error of B against A (A is the reference) over every feed."""
    import onnx

    from modelexport.runtime.intermediates import session_exposing

    model_a = onnx.load(str(path_a), load_external_data=False)
    model_b = onnx.load(str(path_b), load_external_data=False)
    bounds = module_boundaries(model_a)
    bounds_b = module_boundaries(model_b)
    in_a, in_b = _value_names(model_a), _value_names(model_b)
    wanted = sorted({t for ts in bounds.outputs.values() for t in ts} | {t for ts in bounds.inputs.values() for t in ts})
    shared = [t for t in wanted if t in in_b]
    # A's values at B's module boundaries too: what B's modules are fed when run alone.
    a_side = sorted(set(shared) | {t for side in (bounds_b.outputs, bounds_b.inputs) for ts in side.values()
                                   for t in ts if t in in_a})
    errors = {t: TensorError() for t in shared}
    a_runs: list[dict] = []
    with session_exposing(path_a, a_side) as sa, session_exposing(path_b, shared) as sb:
        names_a = {i.name for i in sa.get_inputs()}
        names_b = {i.name for i in sb.get_inputs()}
        for feed in feeds:
            values_a = dict(zip(a_side, sa.run(a_side, {k: v for k, v in feed.items() if k in names_a})))
            values_a.update({k: v for k, v in feed.items() if k in names_a})
            a_runs.append(values_a)
            vb = sb.run(shared, {k: v for k, v in feed.items() if k in names_b})
            for name, b in zip(shared, vb):
                if _comparable(values_a[name], b):
                    errors[name].add(values_a[name], b)
    isolated = _isolated_errors(path_b, bounds_b, a_runs) if isolate else {}
    result = FileDiff(Path(path_a).name, len(feeds))
    result.nonfinite = sum(e.nonfinite for e in errors.values())
    graph_inputs = {i.name for i in model_a.graph.input}
    own: dict[str, TensorError] = {}
    for module, tensors in bounds.outputs.items():
        present = [errors[t] for t in tensors if t in errors]
        if present:
            own[module] = present[0].merged(present[1:])
    for module in sorted(bounds.tags, key=_tree_order):
        err = own.get(module)
        if err is not None:
            alone = isolated.get(module)
            if alone is not None:
                # what the module does by itself, less what its own children already do
                below = [isolated[c].rel_l2 for c in bounds.children.get(module, []) if c in isolated]
                added, source = max(0.0, alone.rel_l2 - max(below, default=0.0)), "isolated"
            else:
                entering = [errors[t].rel_l2 for t in bounds.inputs.get(module, []) if t in errors]
                entering += [0.0 for t in bounds.inputs.get(module, []) if t in graph_inputs]
                below = [own[c].rel_l2 for c in bounds.children.get(module, []) if c in own]
                added, source = max(0.0, err.rel_l2 - max(entering + below, default=0.0)), "propagated"
            result.modules.append(ModuleDiff(module, bounds.tags.get(module, ""), err.max_abs, err.rel_l2,
                                             err.cosine, added, "own", tensors=len(bounds.outputs[module]),
                                             isolated_rel_l2=alone.rel_l2 if alone else None,
                                             isolated_max_abs=alone.max_abs if alone else None, added_from=source))
        elif module in bounds.outputs:
            holder = next((m for m in _ancestors(module)[1:] if m in own), None)
            base = own.get(holder) if holder is not None else None
            result.modules.append(ModuleDiff(
                module, bounds.tags.get(module, ""), base.max_abs if base else None, base.rel_l2 if base else None,
                base.cosine if base else None, None, "fused", compared_at=holder))
        else:
            result.modules.append(ModuleDiff(module, bounds.tags.get(module, ""), None, None, None, None, "none"))
    return result


def _tree_order(path: str) -> list:
    """Depth-first order with numeric indices compared as numbers (layer.2 before layer.10)."""
    return [(0, int(a), "") if a.isdigit() else (1, 0, a) for a in path.split(".")] if path else []


def _isolated_errors(path_b: Path, bounds_b: Boundaries, a_runs: list[dict]) -> dict[str, TensorError]:
    """For each module of B: its nodes alone, fed A's values of the tensors entering it, against
    A's values of the tensors leaving it. Modules whose boundary A does not have (fused, renamed)
    are left out."""
    import onnx
    import onnxruntime as ort

    model_b = onnx.load(str(path_b))  # with weights: the pieces run
    graph = model_b.graph
    tags = [node_tag(n).module_path or "" for n in graph.node]
    initializers = {t.name: t for t in graph.initializer}
    constant_nodes = {o: n for n in graph.node if n.op_type == "Constant" for o in n.output}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    found: dict[str, TensorError] = {}
    first = a_runs[0] if a_runs else {}
    for module, outputs in bounds_b.outputs.items():
        inputs = [t for t in bounds_b.inputs.get(module, []) if t not in constant_nodes]
        if not outputs or any(t not in first for t in inputs + outputs):
            continue
        inside = [n for n, p in zip(graph.node, tags) if ModuleTree.contains(module, p)]
        reads = {x for n in inside for x in n.input if x}
        carried = [constant_nodes[x] for x in reads if x in constant_nodes and constant_nodes[x] not in inside]
        piece = onnx.helper.make_graph(
            carried + inside, f"isolated:{module}",
            [onnx.helper.make_tensor_value_info(t, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(first[t]).dtype),
                                                [f"{t}_{i}" for i in range(np.ndim(first[t]))]) for t in inputs],
            [onnx.ValueInfoProto(name=t) for t in outputs],
            [initializers[x] for x in reads if x in initializers])
        sub = onnx.helper.make_model(piece, opset_imports=list(model_b.opset_import), ir_version=model_b.ir_version)
        try:
            session = ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])
            err = TensorError()
            for values in a_runs:
                got = session.run(outputs, {t: values[t] for t in inputs})
                for name, b in zip(outputs, got):
                    if _comparable(values[name], b):
                        err.add(values[name], b)
        except Exception:  # a piece ONNX Runtime cannot run alone (e.g. >2 GB): no isolated number
            continue
        found[module] = err
    return found
