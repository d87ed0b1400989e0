"""Put tags back on a model an optimizer or quantizer rewrote.

ONNX Runtime's optimizers drop node metadata; quantizers keep it only on nodes they did not
add; fused nodes get new names. For each node of the rewritten model, in order of confidence:
- kept: it still carries our tags (duplicated keys, as some fusions leave, are reduced to one);
- by name: a node of that name exists in the original, tagged;
- by lineage: the original nodes it replaced — those that produced its output tensors, and those
  that read its inputs but whose outputs are gone — give the deepest module containing them all;
- inferred: from its neighbours in the rewritten graph (e.g. a new QuantizeLinear takes the
  module of the node that consumes its output);
- root: nothing fitted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from modelexport.hierarchy.module_tree import common_path_prefix
from modelexport.hierarchy.neighbours import infer_from_neighbours
from modelexport.hierarchy.tags import HIERARCHY_TAG_KEY, MODULE_PATH_KEY, NAMESPACE_KEY, iter_nodes, write_tag

_PASSIVE = ("ModuleList", "ModuleDict")


@dataclass
class RestoreCounts:
    nodes: int = 0
    kept: int = 0
    by_name: int = 0
    by_lineage: int = 0
    inferred: int = 0
    root: int = 0
    renamed: int = 0  # nodes without a name that were given one
    by_module: dict = field(default_factory=dict)  # module path -> nodes now tagged with it
    graph_sha256: str = ""  # fingerprint of the rewritten graph, set by whoever saves it

    def as_dict(self) -> dict:
        """How nodes got their tags (per-module counts and fingerprint are reported separately)."""
        return {k: v for k, v in vars(self).items() if k not in ("by_module", "graph_sha256")}


class ModuleIndex:
    """Module paths and their tags, from the original model (and its metadata when present)."""

    def __init__(self, original, metadata_modules: list[dict] | None = None):
        self.tag: dict[str, str] = {}
        self.namespace: dict[str, str] = {}
        self.passive: set[str] = set()
        for row in metadata_modules or ():
            self.tag[row["module_path"]] = row["hierarchy_tag"]
            if row.get("class") in _PASSIVE:
                self.passive.add(row["module_path"])
        self.node_tags: dict[str, tuple[str, str]] = {}
        self.producer_module: dict[str, str] = {}
        self.consumers: dict[str, list[tuple[str, tuple[str, ...]]]] = {}  # tensor -> (module, outputs)
        for node, _ in iter_nodes(original.graph):
            props = {p.key: p.value for p in node.metadata_props}
            path = props.get(MODULE_PATH_KEY)
            if path is None:
                continue
            self.tag.setdefault(path, props.get(HIERARCHY_TAG_KEY, ""))
            if NAMESPACE_KEY in props:
                self.namespace.setdefault(path, props[NAMESPACE_KEY])
            if node.name:
                self.node_tags[node.name] = (path, props.get(HIERARCHY_TAG_KEY, ""))
            for name in node.output:
                if name:
                    self.producer_module[name] = path
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append((path, tuple(node.output)))
        self.root_class = (self.tag.get("") or "/Model").lstrip("/").split("/")[0]

    def known(self, path: str) -> str:
        """The path itself if its tag is known and it runs code, else its nearest such ancestor."""
        while path and (path not in self.tag or path in self.passive):
            path = path.rpartition(".")[0]
        return path

    def common(self, paths: list[str]) -> str:
        return self.known(common_path_prefix(paths))


def restore_tags(original, rewritten, metadata_modules: list[dict] | None = None,
                 index: ModuleIndex | None = None) -> RestoreCounts:
    """Tag every node of ``rewritten`` (a ModelProto, edited in place) from ``original``.

    ``index`` may be given when the caller already built it from ``original``.
    """
    from modelexport.hierarchy.tags import namespace_for

    index = index or ModuleIndex(original, metadata_modules)
    counts = RestoreCounts()
    used_names = {n.name for n, _ in iter_nodes(rewritten.graph) if n.name}
    surviving = {o for n, _ in iter_nodes(rewritten.graph) for o in n.output}
    surviving |= {i.name for i in rewritten.graph.input} | {t.name for t in rewritten.graph.initializer}

    def fused_sources(node) -> list[str]:
        """Modules of the original nodes this node replaced: those that produced its outputs, and
        those that read its inputs but whose own outputs no longer exist (eliminated into it)."""
        sources = [index.producer_module[o] for o in node.output if o in index.producer_module]
        for name in node.input:
            for module, outputs in index.consumers.get(name, ()):
                if outputs and not any(o in surviving for o in outputs):
                    sources.append(module)
        return sources

    def assign_graph(graph, fallback: str) -> None:
        nodes = graph.node
        assigned: list[str | None] = []
        for node in nodes:
            if not node.name:  # viewers (Model Explorer) need names; make a unique one
                base = f"{node.op_type}_restored"
                name, k = base, 0
                while name in used_names:
                    k += 1
                    name = f"{base}_{k}"
                node.name = name
                used_names.add(name)
                counts.renamed += 1
            props = [(p.key, p.value) for p in node.metadata_props]
            existing = next((v for k, v in props if k == MODULE_PATH_KEY), None)
            if existing is not None:
                assigned.append(index.known(existing) if existing not in index.tag else existing)
                counts.kept += 1
            elif node.name in index.node_tags:
                assigned.append(index.node_tags[node.name][0])
                counts.by_name += 1
            else:
                sources = fused_sources(node)
                if sources:
                    assigned.append(index.common(sources))
                    counts.by_lineage += 1
                else:
                    assigned.append(None)
        counts.inferred += infer_from_neighbours(nodes, assigned, index.common)
        for i, path in enumerate(assigned):
            if path is None:
                assigned[i] = fallback
                counts.root += 1
        for node, path in zip(nodes, assigned):
            write_tag(node, path, index.tag.get(path, ""), namespace_for(index.root_class, path))
            counts.nodes += 1
            counts.by_module[path] = counts.by_module.get(path, 0) + 1
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    assign_graph(sub, path)

    assign_graph(rewritten.graph, "")
    return counts
