"""The tagging pass: give every ONNX node the module that produced it.

Raw material is what the TorchScript exporter records in node names: the scope of the
module call stack, e.g. ``/bert/encoder/layer.0/attention/self/query/MatMul``. Each scope
component is the module's TorchScript scope name (see ``torchscript_scope_name``).
Traps handled here:
- a second call of a module is written ``name_1`` (shared modules, tied weights);
- a module that calls a grandchild's ``forward`` directly leaves a level out;
- nodes without a scope (constants, folded shape arithmetic, post-processing) are tagged
  from the nodes that consume, then produce, their values; only then the root.
"""
from __future__ import annotations

import gc
import re
from dataclasses import asdict, dataclass

import onnx

from modelexport.hierarchy.module_tree import ModuleTree
from modelexport.hierarchy.neighbours import infer_from_neighbours
from modelexport.hierarchy.tags import namespace_for, write_tag

_CALL_SUFFIX = re.compile(r"^(.+)_(\d+)$")


@dataclass
class Coverage:
    """How each node of one ONNX file got its tag."""

    nodes: int = 0
    direct: int = 0  # the exporter's scope named the module
    inferred: int = 0  # from the nodes around it
    root_fallback: int = 0  # nothing fitted: tagged with the file's root module
    partial_scope: int = 0  # direct, but some scope component matched no module
    at_root: int = 0  # nodes whose module is the root, for whatever reason

    def as_dict(self) -> dict:
        d = asdict(self)
        d["direct_pct"] = round(100.0 * self.direct / self.nodes, 2) if self.nodes else 0.0
        return d


@dataclass
class TaggingResult:
    coverage: Coverage
    node_count_by_module: dict[str, int]
    graph_sha256: str = ""  # structure fingerprint (see fingerprint.py)


class ScopeResolver:
    """Maps TorchScript scope names to module paths, below the file's traced root."""

    def __init__(self, tree: ModuleTree, root_path: str = ""):
        self.tree = tree
        self.root_path = root_path
        self._cache: dict[str, tuple[str, bool]] = {}

    def resolve(self, scope: str) -> tuple[str, bool]:
        """Module path for a scope string ``a/b.0/c``; the flag is True when all of it matched."""
        hit = self._cache.get(scope)
        if hit is not None:
            return hit
        current, complete = self.root_path, True
        for component in scope.split("/") if scope else ():
            found = self.tree.find_scope_child(current, component)
            if found is None:
                m = _CALL_SUFFIX.match(component)
                if m:
                    found = self.tree.find_scope_child(current, m.group(1))
            if found is None:
                complete = False
                continue
            current = found
        result = (self.tree.canonical(current), complete)
        self._cache[scope] = result
        return result


def scope_of(node_name: str) -> str | None:
    """Scope part of a TorchScript node name; None when the exporter recorded none."""
    if not node_name.startswith("/"):
        return None
    return node_name[1:].rpartition("/")[0]


class TaggingPass:
    """Writes ``module_path`` and ``hierarchy_tag`` on every node of a model, subgraphs too."""

    def __init__(self, tree: ModuleTree, root_path: str = ""):
        if root_path not in tree:
            raise ValueError(f"root module {root_path!r} is not in the module tree")
        self.tree = tree
        self.root_path = root_path
        self.resolver = ScopeResolver(tree, root_path)

    def __call__(self, model: onnx.ModelProto | onnx.GraphProto) -> TaggingResult:
        """Tag a model, or a graph (only its nodes are read, e.g. a ``NodeSplice.graph``)."""
        graph = model.graph if isinstance(model, onnx.ModelProto) else model
        coverage = Coverage()
        paths: list[tuple[onnx.NodeProto, str]] = []
        # The pass allocates a few small objects per node and frees none until the end; with the
        # cyclic GC on, its collections rescan them all and the pass turns superlinear
        # (measured: 18 vs 7 µs/node at 10k nodes, benchmarks/tagging_scale.py).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._assign(graph, self.root_path, coverage, paths)
            counts: dict[str, int] = {}
            root_class = self.tree.modules[""].class_name
            namespaces: dict[str, str] = {}
            for node, path in paths:
                namespace = namespaces.get(path)
                if namespace is None:
                    namespace = namespaces[path] = namespace_for(root_class, path)
                write_tag(node, path, self.tree.tag(path), namespace)
                counts[path] = counts.get(path, 0) + 1
        finally:
            if gc_was_enabled:
                gc.enable()
        coverage.nodes = len(paths)
        coverage.at_root = counts.get(self.root_path, 0)
        return TaggingResult(coverage, counts)

    def _direct(self, node: onnx.NodeProto, coverage: Coverage) -> str | None:
        scope = scope_of(node.name)
        if scope is None:
            return None
        path, complete = self.resolver.resolve(scope)
        coverage.direct += 1
        if not complete:
            coverage.partial_scope += 1
        return path

    def _assign(self, graph: onnx.GraphProto, fallback: str, coverage: Coverage,
                out: list[tuple[onnx.NodeProto, str]]) -> None:
        """Assign every node of ``graph``, then recurse into subgraphs (If/Loop/Scan bodies).

        ``fallback`` is the root for the main graph and the holding node's module for a
        subgraph (e.g. the decoders inside the If node of Optimum's merged decoder).
        """
        nodes = graph.node
        assigned: list[str | None] = [self._direct(n, coverage) for n in nodes]
        coverage.inferred += infer_from_neighbours(nodes, assigned, self.tree.common_ancestor)
        for i, path in enumerate(assigned):
            if path is None:
                assigned[i] = fallback
                if fallback == self.root_path:
                    coverage.root_fallback += 1
                else:
                    coverage.inferred += 1

        for node, path in zip(nodes, assigned):
            out.append((node, path))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    self._assign(attr.g, path, coverage, out)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        self._assign(sub, path, coverage, out)


def tag_file(path, tree: ModuleTree, root_path: str = "") -> tuple[TaggingResult, int | None]:
    """Tag an ONNX file in place; returns the result and the file's default-domain opset.

    Only the nodes are parsed and rewritten (``NodeSplice``); weights are copied as bytes.
    """
    from modelexport.hierarchy.node_splice import NodeSplice

    from modelexport.hierarchy.fingerprint import graph_fingerprint

    splice = NodeSplice(path)
    try:
        result = TaggingPass(tree, root_path)(splice.graph)
        result.graph_sha256 = graph_fingerprint(splice.graph)
    except BaseException:
        splice.close()
        raise
    opset = next((o.version for o in splice.opset_imports if o.domain in ("", "ai.onnx")), None)
    splice.write()
    return result, opset
