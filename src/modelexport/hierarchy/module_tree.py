"""The module tree of a PyTorch model: one entry per ``named_modules()`` path.

Every later step keys on these paths. The tree also knows the names the TorchScript
exporter gives modules in ONNX node scopes, so scopes can be resolved back to paths.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

# Containers that hold children but never run code of their own: a child reached through
# them is written as ``ClassName.<index>`` and the container itself is left out of the tag.
_PASSIVE_CONTAINERS = ("ModuleList", "ModuleDict", "ParameterList", "ParameterDict")


def torchscript_scope_name(qualified_name: str) -> str:
    """The name torch.onnx (TorchScript) writes for a module in node scopes.

    Mirrors ``_unqualified_variable_name`` in torch's exporter: the last atom of the dotted
    path, extended backwards over purely numeric atoms (``encoder.layer.0`` -> ``layer.0``).
    """
    atoms = qualified_name.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return qualified_name


def common_path_prefix(paths) -> str:
    """Longest common dotted prefix of module paths ("" when they share nothing)."""
    split = [p.split(".") if p else [] for p in paths]
    atoms = []
    for column in zip(*split):
        if any(a != column[0] for a in column):
            break
        atoms.append(column[0])
    return ".".join(atoms)


@dataclass
class ModuleInfo:
    path: str  # named_modules() name; "" is the root
    class_name: str
    parent: str | None
    tag: str  # hierarchy tag, e.g. /BertModel/BertEncoder/BertLayer.0
    own_parameters: int  # parameters registered directly on this module
    parameters: int = 0  # own + descendants (each shared tensor counted once)
    children: list[str] = field(default_factory=list)
    depth: int = 0


class ModuleTree:
    """Paths, classes, tags and parameter counts of a model's modules."""

    def __init__(self, modules: dict[str, ModuleInfo], aliases: dict[str, str] | None = None,
                 parameter_owners: dict[str, str] | None = None):
        self.modules = modules
        # Full name of every parameter and buffer (under each name a tied one has) -> the module
        # that owns it: the oracle that does not depend on scope names.
        self.parameter_owners = parameter_owners or {}
        # Other paths of modules registered twice (tied embeddings: T5's encoder.embed_tokens
        # is `shared`). named_modules() lists each instance once; a traced submodule may use
        # the other name in its scopes.
        self.aliases = aliases or {}
        self._by_scope_name: dict[str, list[str]] = {}
        # (path the scope name extends, scope name) -> module: the O(1) case of every lookup.
        # "layers.5" extends the root even though its parent is the ModuleList "layers".
        self._by_prefix: dict[tuple[str, str], str] = {}
        for path in list(modules) + list(self.aliases):
            if path:
                name = torchscript_scope_name(path)
                self._by_scope_name.setdefault(name, []).append(path)
                self._by_prefix[(path[: -len(name)].rstrip("."), name)] = path
        self._ancestor_cache: dict[str, tuple[str, ...]] = {}
        self._batch_norm_pairs: list[tuple[str, str]] | None = None

    @classmethod
    def from_module(cls, root) -> "ModuleTree":
        modules: dict[str, ModuleInfo] = {}
        instance_of: dict[str, object] = {}
        for path, module in root.named_modules():
            instance_of[path] = module
            class_name = type(module).__name__
            own = sum(p.numel() for p in module.parameters(recurse=False))
            if not path:
                modules[path] = ModuleInfo(path, class_name, None, "/" + class_name, own)
                continue
            parent, _, leaf = path.rpartition(".")
            parent_info = modules[parent]
            parent_info.children.append(path)
            parent_class = parent_info.class_name
            indexed = leaf.isnumeric() or parent_class == "ModuleDict"
            segment = f"{class_name}.{leaf}" if indexed else class_name
            # A passive container's own segment is dropped from its children's tags.
            base_tag = parent_info.tag
            if parent_class in _PASSIVE_CONTAINERS and parent_info.parent is not None:
                base_tag = modules[parent_info.parent].tag
            modules[path] = ModuleInfo(
                path, class_name, parent, f"{base_tag}/{segment}", own, depth=parent_info.depth + 1
            )
        # Total parameters per module, counting each tensor once even when shared.
        for path, module in instance_of.items():
            modules[path].parameters = sum(p.numel() for p in module.parameters())
        canonical = {id(m): p for p, m in instance_of.items()}
        aliases = {}
        owners = {}
        for path, module in root.named_modules(remove_duplicate=False):
            first = canonical[id(module)]
            if path != first:
                aliases[path] = first
            prefix = f"{path}." if path else ""
            for name, _ in module.named_parameters(recurse=False):
                owners.setdefault(prefix + name, first)
            for name, _ in module.named_buffers(recurse=False):
                owners.setdefault(prefix + name, first)
        return cls(modules, aliases, owners)

    def canonical(self, path: str) -> str:
        """The named_modules() path of a module, given any path that reaches it."""
        return self.aliases.get(path, path)

    # -- queries -----------------------------------------------------------------------
    def __contains__(self, path: str) -> bool:
        return path in self.modules

    def __iter__(self) -> Iterator[ModuleInfo]:
        return iter(self.modules.values())

    def __len__(self) -> int:
        return len(self.modules)

    def tag(self, path: str) -> str:
        return self.modules[path].tag

    def ancestors(self, path: str) -> tuple[str, ...]:
        """The chain root..path (inclusive)."""
        cached = self._ancestor_cache.get(path)
        if cached is None:
            parent = self.modules[path].parent
            cached = (self.ancestors(parent) if parent is not None else ()) + (path,)
            self._ancestor_cache[path] = cached
        return cached

    def common_ancestor(self, paths) -> str:
        """Deepest module that runs code and contains every path given."""
        common: tuple[str, ...] | None = None
        for path in paths:
            chain = self.ancestors(path)
            if common is None:
                common = chain
                continue
            n = 0
            for a, b in zip(common, chain):
                if a != b:
                    break
                n += 1
            common = common[:n]
        if not common:
            return ""
        # A ModuleList never runs code of its own: a node shared by two of its items belongs
        # to the module that owns the list.
        for path in reversed(common):
            if self.modules[path].class_name not in _PASSIVE_CONTAINERS:
                return path
        return common[0]

    @staticmethod
    def contains(ancestor: str, path: str) -> bool:
        """``path`` is ``ancestor`` or below it ("" contains everything)."""
        return not ancestor or path == ancestor or path.startswith(ancestor + ".")

    def conv_batch_norm_pairs(self) -> list[tuple[str, str]]:
        """(the sibling registered just before it, the BatchNorm) for every module whose class name
        holds ``BatchNorm``: the pairs an exporter may fold into one Conv node (tree order)."""
        if self._batch_norm_pairs is None:
            pairs = []
            for path, info in self.modules.items():
                if "BatchNorm" not in info.class_name or info.parent is None:
                    continue
                siblings = self.modules[info.parent].children
                position = siblings.index(path)
                if position:
                    pairs.append((siblings[position - 1], path))
            self._batch_norm_pairs = pairs
        return self._batch_norm_pairs

    def scope_candidates(self, current: str, scope_name: str, root: str = "") -> list[str]:
        """The modules a scope component can name, below ``current``; more than one is an
        ambiguity for the caller to settle from evidence, never a silent pick.

        A direct child is the answer. Otherwise the shallowest descendants with that scope name
        (a module that calls a grandchild's ``forward`` directly leaves a level out of the trace;
        ties are all returned). Otherwise the modules with that name anywhere below the file's
        traced ``root``, under any of their names (T5's decoder calls the root's ``shared``
        embedding, registered below the decoder as ``decoder.embed_tokens``); none outside it.
        """
        direct = self._by_prefix.get((current, scope_name))
        if direct is not None:
            return [direct]
        candidates = self._by_scope_name.get(scope_name)
        if not candidates:
            return []
        below = [p for p in candidates if p != current and self.contains(current, p)]
        if below:
            depth = min(p.count(".") for p in below)
            return [p for p in below if p.count(".") == depth]
        return [p for p in candidates if self.contains(root, p)]
