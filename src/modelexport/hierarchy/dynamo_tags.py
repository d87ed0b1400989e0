"""Tags for files written by ``torch.onnx.export(dynamo=True)``: the exporter records the module
stack on every node itself (``pkg.torch.onnx.name_scopes``: the ``named_modules()`` path, relative
to the traced module, of each module on the call stack, then the function), so the module is
read, not reconstructed from node names.

Only that first step differs from the TorchScript pass (its two hooks, ``_scope_of_node`` and
``_resolve_scope``): the deepest scope that is a module of the tree (a tied module's other name
maps to the name ``named_modules()`` keeps) is the node's module, refined by the parameters it
reads like there (a parent reading a child's weight gives the node to the child); the recorded
text is parsed once per distinct stack, not per node. Everything after it is the same code:
de-duplicated parameters' Identity nodes, unscoped nodes (shape nodes scoped
``_empty_nn_module_stack_from_metadata_hook``) inferred from neighbours, If nodes of merged
decoders settled from their branches, the root last, all counted in the coverage report.

By default the exporter's ``stack_trace`` and ``fx_node`` entries, which hold absolute file
paths and source text of the machine that exported, are dropped (while the tags are written).
"""
from __future__ import annotations

import ast

from modelexport.hierarchy.module_tree import ModuleTree
from modelexport.hierarchy.tagging import Resolution, TaggingPass, TaggingResult
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
            return _parse_scopes(text(prop.value))
    return []


def _parse_scopes(value: str) -> list[str]:
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return []
    if not isinstance(parsed, (list, tuple)):
        return []
    return [s for s in parsed[:-1] if isinstance(s, str)]


def _split_last(value: str) -> str | None:
    """``value`` less its last element when it is a list whose last element is a plain quoted
    string (``"['', 'bert', 'linear_3']"`` -> ``"['', 'bert'"``), else None. The last element is
    the FX node's name, different on every node; what is left repeats, so it is the cache key."""
    cut = value.rfind(", ")
    if cut <= 0 or value[:1] != "[" or value[-1:] != "]":
        return None
    last = value[cut + 2:-1]
    if len(last) < 2 or last[0] not in "'\"" or last[-1] != last[0] or last[0] in last[1:-1] \
            or "\\" in last or not last[1:-1].isprintable():
        return None
    return value[:cut]


class DynamoTaggingPass(TaggingPass):
    """``scope_prefix``: the name under which the traced module holds the model when a wrapper was
    traced (the Optimum-free path traces ``Wrapper.model``): scopes are stripped of it, and the
    wrapper's own scope (outside the model) counts as the model's root."""

    def __init__(self, tree: ModuleTree, root_path: str = "", keep_source_info: bool = False,
                 scope_prefix: str = "", aliases: dict[str, str] | None = None):
        super().__init__(tree, root_path)
        self.keep_source_info = keep_source_info
        self.scope_prefix = scope_prefix
        # initializers folded out of one parameter under another name -> that parameter's name
        self.aliases = dict(aliases or {})
        # removed while the tags are written, in the same visit of each node's metadata
        self._drop_keys = frozenset() if keep_source_info else frozenset(SOURCE_INFO_KEYS)
        self._by_head: dict[str, Resolution | None] = {}  # name_scopes less its last element -> module
        self._by_path: dict[str, Resolution] = {}

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
        return self._module_of_stack(name_scopes(node))

    def _module_of_stack(self, stack: list[str]) -> str | None:
        for scope in reversed(stack):
            relative = self._relative(scope)
            if relative is None:
                continue
            full = f"{self.root_path}.{relative}" if self.root_path and relative else (relative or self.root_path)
            path = self.tree.canonical(full)
            if path in self.tree and self.tree.contains(self.root_path, path):
                return path
        return None

    def _resolution(self, stack: list[str]) -> Resolution | None:
        path = self._module_of_stack(stack)
        if path is None:
            return None
        hit = self._by_path.get(path)
        if hit is None:
            hit = self._by_path[path] = Resolution((path,), True)
        return hit

    # The two hooks of the TorchScript pass: the scope key is the recorded name_scopes text.
    def _scope_of_node(self, node) -> str | None:
        for prop in node.metadata_props:
            if prop.key == NAME_SCOPES_KEY:
                return text(prop.value)
        return None

    def _resolve_scope(self, value: str) -> Resolution | None:
        head = _split_last(value)
        if head is None:
            return self._resolution(_parse_scopes(value))
        try:
            return self._by_head[head]
        except KeyError:
            pass
        hit = self._by_head[head] = self._resolution(_parse_scopes(head + ", '']"))
        return hit

    def __call__(self, model) -> TaggingResult:
        if self._owners is None and (self.scope_prefix or self.aliases):
            # A traced wrapper holds the model as ``scope_prefix``: its initializers are named
            # ``model.embed_positions.weight``. Without these names no parameter read would be
            # found, and a parent reading a child's weight would keep the parent (or the root).
            owners = self.resolver.owner_map()
            if self.scope_prefix:
                owners = {**owners, **{f"{self.scope_prefix}.{name}": owner for name, owner in owners.items()}}
            # a parameter folded into a constant of another name is still that parameter
            owners.update({alias: owners[name] for alias, name in self.aliases.items()
                           if name in owners and alias not in owners})
            self._owners = owners
        result = super().__call__(model)
        result.source_info_removed = 0 if self.keep_source_info else self._removed
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
