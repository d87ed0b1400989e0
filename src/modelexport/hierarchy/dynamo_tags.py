"""Tags for files written by ``torch.onnx.export(dynamo=True)``: the exporter records the module
stack on every node itself (``pkg.torch.onnx.name_scopes``: the ``named_modules()`` path of each
module on the call stack, then the function), so the module is read, not reconstructed.

The deepest scope that is a module of the tree (a tied module's other name maps to the name
``named_modules()`` keeps) is the node's module; nodes without one (shape nodes scoped
``_empty_nn_module_stack_from_metadata_hook``) are inferred from their neighbours, then the root,
and counted as such. By default the exporter's ``stack_trace`` and ``fx_node`` entries, which hold
absolute file paths and source text of the machine that exported, are dropped.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

import onnx

from modelexport.hierarchy.module_tree import ModuleTree
from modelexport.hierarchy.neighbours import infer_from_neighbours
from modelexport.hierarchy.passes import PassResult
from modelexport.hierarchy.tagging import Coverage, _subgraphs
from modelexport.hierarchy.tags import namespace_for, text, write_tag

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
SOURCE_INFO_KEYS = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


@dataclass
class DynamoTaggingResult(PassResult):
    coverage: Coverage
    node_count_by_module: dict[str, int]
    source_info_removed: int = 0  # metadata entries dropped (stack traces, FX node text)


def _scopes(node) -> list[str]:
    for prop in node.metadata_props:
        if text(prop.key) == NAME_SCOPES_KEY:
            try:
                value = ast.literal_eval(text(prop.value))
            except (ValueError, SyntaxError):
                return []
            return [s for s in value if isinstance(s, str)] if isinstance(value, (list, tuple)) else []
    return []


class DynamoTaggingPass:
    def __init__(self, tree: ModuleTree, keep_source_info: bool = False):
        self.tree = tree
        self.keep_source_info = keep_source_info

    def module_of(self, node) -> str | None:
        for scope in reversed(_scopes(node)):
            path = self.tree.canonical(scope)
            if path in self.tree and path:
                return path
        return None

    def __call__(self, model) -> DynamoTaggingResult:
        graph = model.graph if isinstance(model, onnx.ModelProto) else model
        coverage, counts = Coverage(), {}
        result = DynamoTaggingResult(coverage=coverage, node_count_by_module=counts, model=model, modified=True)
        root_class = self.tree.modules[""].class_name
        self._graph(graph, "", coverage, counts, root_class, result)
        coverage.at_root = counts.get("", 0)
        return result

    def _graph(self, graph, fallback: str, coverage: Coverage, counts: dict, root_class: str, result) -> None:
        nodes = graph.node
        assigned = [self.module_of(n) for n in nodes]
        direct = sum(p is not None for p in assigned)
        coverage.direct += direct
        coverage.inferred += infer_from_neighbours(nodes, assigned, self.tree.common_ancestor)
        for i, path in enumerate(assigned):
            if path is None:
                assigned[i] = fallback
                if fallback == "":
                    coverage.root_fallback += 1
                else:
                    coverage.inferred += 1
        for node, path in zip(nodes, assigned):
            if not self.keep_source_info:
                kept = [(p.key, p.value) for p in node.metadata_props if text(p.key) not in SOURCE_INFO_KEYS]
                result.source_info_removed += len(node.metadata_props) - len(kept)
                del node.metadata_props[:]
                for key, value in kept:
                    node.metadata_props.add(key=key, value=value)
            write_tag(node, path, self.tree.tag(path), namespace_for(root_class, path))
            counts[path] = counts.get(path, 0) + 1
            coverage.nodes += 1
            for sub in _subgraphs(node):
                self._graph(sub, path, coverage, counts, root_class, result)
