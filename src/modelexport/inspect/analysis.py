"""Where nodes, op types and parameters sit in the module tree, read from the tags alone.

Every count adds up: each node belongs to exactly one module (or to "untagged"), each
initializer to the deepest module that contains all the nodes reading it, and a module's
totals are its own counts plus its descendants'.
"""
from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field

from modelexport.errors import ModelExportError
from modelexport.hierarchy import paths
from modelexport.hierarchy.module_tree import common_path_prefix
from modelexport.hierarchy.tags import iter_nodes, node_tag

UNTAGGED = "(untagged)"
MAX_DEPTH = 256  # real models nest a few dozen levels; deeper is a hostile or broken file


@dataclass
class ModuleStats:
    path: str
    class_name: str | None = None
    hierarchy_tag: str | None = None
    parent: str | None = None
    children: list[str] = field(default_factory=list)
    nodes_own: int = 0
    nodes_total: int = 0
    ops_own: Counter = field(default_factory=Counter)
    ops_total: Counter = field(default_factory=Counter)
    params_own: int = 0
    params_total: int = 0
    bytes_own: int = 0
    bytes_total: int = 0

    @property
    def depth(self) -> int:
        """Levels below the root, as the tree shows them (``encoder.layer.1`` is 3)."""
        return 1 if self.path == UNTAGGED else paths.depth(self.path)

    def as_dict(self) -> dict:
        return {
            "module_path": self.path, "class": self.class_name, "hierarchy_tag": self.hierarchy_tag,
            "parent": self.parent, "depth": self.depth,
            "nodes_own": self.nodes_own, "nodes_total": self.nodes_total,
            "ops_own": dict(self.ops_own.most_common()), "ops_total": dict(self.ops_total.most_common()),
            "parameters_own": self.params_own, "parameters_total": self.params_total,
            "parameter_bytes_own": self.bytes_own, "parameter_bytes_total": self.bytes_total,
        }


@dataclass
class FileAnalysis:
    name: str
    modules: dict[str, ModuleStats]  # parents before children
    nodes: int
    untagged_nodes: int
    parameters: int
    parameter_bytes: int

    @property
    def tagged(self) -> bool:
        return self.untagged_nodes < self.nodes

    def as_dict(self) -> dict:
        return {"nodes": self.nodes, "untagged_nodes": self.untagged_nodes, "parameters": self.parameters,
                "parameter_bytes": self.parameter_bytes,
                "modules": [m.as_dict() for m in self.modules.values()]}


def _parent(path: str) -> str | None:
    return "" if path == UNTAGGED else paths.parent(path)


def _tensor_size(tensor) -> tuple[int, int]:
    from onnx.helper import tensor_dtype_to_np_dtype

    count = 1
    for d in tensor.dims:
        count *= d
    try:
        itemsize = tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 0
    return count, count * itemsize


def analyze_model(name: str, model, module_info: dict[str, dict] | None = None) -> FileAnalysis:
    """Per-module statistics of one ONNX model. ``module_info``: metadata rows by module path."""
    modules: dict[str, ModuleStats] = {}

    def module(path: str) -> ModuleStats:
        stats = modules.get(path)
        if stats is not None:
            return stats
        if paths.depth(path) > MAX_DEPTH + 1:
            raise ModelExportError(f"a module path is nested {paths.depth(path)} levels deep "
                                   f"(more than {MAX_DEPTH}): not a real model's tags")
        missing = []  # the path and its ancestors not seen yet, created root-first
        p: str | None = path
        while p is not None and p not in modules:
            missing.append(p)
            p = _parent(p)
        for p in reversed(missing):
            parent = _parent(p)
            stats = modules[p] = ModuleStats(p, parent=parent)
            if parent is not None:
                modules[parent].children.append(p)
            if module_info and p in module_info:
                stats.class_name = module_info[p].get("class")
                stats.hierarchy_tag = module_info[p].get("hierarchy_tag")
        return modules[path]

    module("")
    consumers: dict[str, list[str]] = {}
    nodes = untagged = 0
    for node, graph_path in iter_nodes(model.graph):
        tag = node_tag(node, graph_path)
        path = tag.module_path if tag.module_path is not None else UNTAGGED
        nodes += 1
        untagged += tag.module_path is None
        stats = module(path)
        stats.nodes_own += 1
        stats.ops_own[tag.op_type] += 1
        if tag.hierarchy_tag and not stats.hierarchy_tag:
            stats.hierarchy_tag = tag.hierarchy_tag
            stats.class_name = stats.class_name or tag.hierarchy_tag.rsplit("/", 1)[-1].split(".")[0]
        for name_in in node.input:
            if name_in:
                consumers.setdefault(name_in, []).append(path)

    parameters = parameter_bytes = 0
    for tensor in model.graph.initializer:
        count, size = _tensor_size(tensor)
        parameters += count
        parameter_bytes += size
        users = [p for p in consumers.get(tensor.name, ()) if p != UNTAGGED]
        owner = module(common_path_prefix(users)) if users else module(UNTAGGED if consumers.get(tensor.name) else "")
        owner.params_own += count
        owner.bytes_own += size

    # Totals bottom-up: children were created after their parents, so reverse order works.
    for stats in reversed(list(modules.values())):
        stats.nodes_total += stats.nodes_own
        stats.ops_total.update(stats.ops_own)
        stats.params_total += stats.params_own
        stats.bytes_total += stats.bytes_own
        if stats.parent is not None:
            parent = modules[stats.parent]
            parent.nodes_total += stats.nodes_total
            parent.ops_total.update(stats.ops_total)
            parent.params_total += stats.params_total
            parent.bytes_total += stats.bytes_total
    if modules[""].class_name is None and module_info and "" in module_info:
        modules[""].class_name = module_info[""].get("class")
    return FileAnalysis(name, _module_order(modules, module_info), nodes, untagged, parameters, parameter_bytes)


def tree_order(path: str) -> list:
    """Depth-first order of module paths with numeric indices compared as numbers (layer.2
    before layer.10): a sort key."""
    return [(0, int(a), "") if a.isdigit() else (1, 0, a) for a in path.split(".")] if path else []


def _module_order(modules: dict[str, ModuleStats], module_info: dict[str, dict] | None) -> dict[str, ModuleStats]:
    """Depth first, each module's children in the model's own order (``named_modules()``, as the
    metadata lists them), not in the order the graph first uses them (T5's ``block.1`` computes
    before ``block.0`` returns); without metadata, indices compared as numbers (layer.2 before
    layer.10); ``(untagged)`` last."""
    rank = {path: i for i, path in enumerate(module_info or {})}

    def key(path: str):
        return (path == UNTAGGED, rank.get(path, len(rank)), tree_order(path if path != UNTAGGED else ""))

    ordered: dict[str, ModuleStats] = {}
    stack = [""]
    while stack:
        path = stack.pop()
        stats = modules[path]
        ordered[path] = stats
        stats.children.sort(key=key)
        stack.extend(reversed(stats.children))
    return ordered


def analyze_target(target) -> list[FileAnalysis]:
    info = None
    if target.metadata:
        info = target.metadata.modules_by_path()
    return [analyze_model(f.name, f.model, info) for f in target.files]


def select(analysis: FileAnalysis, depth: int | None = None, pattern: str | None = None) -> list[ModuleStats]:
    """Modules to show: up to ``depth``, and only those matching ``pattern`` plus their ancestors."""
    chosen = []
    keep: set[str] | None = None
    if pattern:
        keep = set()
        for path in analysis.modules:
            if fnmatch.fnmatchcase(path, pattern):
                p: str | None = path
                while p is not None and p not in keep:
                    keep.add(p)
                    p = _parent(p)
    for stats in analysis.modules.values():
        if depth is not None and stats.depth > depth:
            continue
        if keep is not None and stats.path not in keep:
            continue
        chosen.append(stats)
    return chosen
