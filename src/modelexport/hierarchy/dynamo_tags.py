"""Tags for files written by ``torch.onnx.export(dynamo=True)``: the exporter records the module
stack on every node itself (``pkg.torch.onnx.name_scopes``: the ``named_modules()`` path, relative
to the traced module, of each module on the call stack, then the function), so the module is
read, not reconstructed from node names.

Only that first step differs from the TorchScript pass: the deepest scope that is a module of the
tree (a tied module's other name maps to the name ``named_modules()`` keeps) is the node's
module, refined by the parameters it reads like there (a parent reading a child's weight gives
the node to the child). Everything after it is the same code: de-duplicated parameters'
Identity nodes, unscoped nodes (shape nodes scoped ``_empty_nn_module_stack_from_metadata_hook``)
inferred from neighbours, If nodes of merged decoders settled from their branches, the root
last, all counted in the coverage report.

By default the exporter's ``stack_trace`` and ``fx_node`` entries, which hold absolute file
paths and source text of the machine that exported, are dropped.
"""
from __future__ import annotations

import ast

import onnx

from modelexport.hierarchy.module_tree import ModuleTree
from modelexport.hierarchy.tagging import Coverage, TaggingPass, TaggingResult
from modelexport.hierarchy.tags import iter_nodes, text

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
SOURCE_INFO_KEYS = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


def name_scopes(node) -> list[str]:
    """The module stack the exporter recorded for ``node``: ``named_modules()`` paths, outermost first.

    The exporter's list ends with the FX node's own name (``layer_norm``, ``linear_3``), which is
    no module: a model with a child named ``layer_norm`` would otherwise claim the first
    ``F.layer_norm`` call of any module (Whisper's encoder did). It is dropped here."""
    for prop in node.metadata_props:
        if text(prop.key) == NAME_SCOPES_KEY:
            try:
                value = ast.literal_eval(text(prop.value))
            except (ValueError, SyntaxError):
                return []
            if not isinstance(value, (list, tuple)):
                return []
            return [s for s in value[:-1] if isinstance(s, str)]
    return []


class DynamoTaggingPass(TaggingPass):
    """``scope_prefix``: the name under which the traced module holds the model when a wrapper was
    traced (the Optimum-free path traces ``Wrapper.model``): scopes are stripped of it, and the
    wrapper's own scope (outside the model) counts as the model's root."""

    def __init__(self, tree: ModuleTree, root_path: str = "", keep_source_info: bool = False,
                 scope_prefix: str = ""):
        super().__init__(tree, root_path)
        self.keep_source_info = keep_source_info
        self.scope_prefix = scope_prefix

    def _relative(self, scope: str) -> str | None:
        """The scope relative to the traced module of the model; None for one outside it."""
        if not self.scope_prefix:
            return scope
        if scope == self.scope_prefix or scope == "":
            return ""  # the wrapper's own code and the model's top: the traced root
        if scope.startswith(self.scope_prefix + "."):
            return scope[len(self.scope_prefix) + 1:]
        return None

    def module_of(self, node) -> str | None:
        """The deepest module of the tree on the node's recorded call stack. A node whose deepest
        scope is the traced root itself (mask and position arithmetic of the model's own forward)
        belongs to the root: it is the root's code, not a child's."""
        stack = name_scopes(node)
        for scope in reversed(stack):
            relative = self._relative(scope)
            if relative is None:
                continue
            full = f"{self.root_path}.{relative}" if self.root_path and relative else (relative or self.root_path)
            path = self.tree.canonical(full)
            if path in self.tree and self.tree.contains(self.root_path, path):
                return path
        return None

    def _scoped(self, nodes, coverage: Coverage) -> list[str | None]:
        assigned: list[str | None] = [None] * len(nodes)
        for i, node in enumerate(nodes):
            path = self.module_of(node)
            if path is None:
                # A de-duplicated parameter's Identity (no scope) belongs to the parameter it outputs.
                owner = next((o for o in map(self.resolver.owner_of, node.output) if o), None) \
                    if node.op_type == "Identity" else None
                if owner is not None and self.tree.contains(self.root_path, owner):
                    assigned[i] = owner
                    coverage.direct += 1
                continue
            coverage.direct += 1
            assigned[i] = self._refine_by_parameters(node, path, coverage)
        return assigned

    def __call__(self, model) -> TaggingResult:
        result = super().__call__(model)
        result.source_info_removed = 0 if self.keep_source_info else \
            drop_source_info(model.graph if isinstance(model, onnx.ModelProto) else model)
        return result


def drop_source_info(graph) -> int:
    """Remove stack traces and FX node text from every node (subgraphs too); returns how many."""
    removed = 0
    for node, _ in iter_nodes(graph):
        props = node.metadata_props
        if any(text(p.key) in SOURCE_INFO_KEYS for p in props):
            kept = [(p.key, p.value) for p in props if text(p.key) not in SOURCE_INFO_KEYS]
            removed += len(props) - len(kept)
            del props[:]
            for key, value in kept:
                props.add(key=key, value=value)
    return removed
