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
from modelexport.hierarchy.neighbours import infer_from_neighbours, tensor_index
from modelexport.hierarchy.passes import PassResult
from modelexport.hierarchy.tags import iter_nodes, node_tag, write_tag

_PASSIVE = ("ModuleList", "ModuleDict")


@dataclass
class RestoreCounts(PassResult):
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
        return {k: v for k, v in vars(self).items() if k not in ("by_module", "graph_sha256", "model", "modified")}


class RestorePass:
    """``RestorePass(original)(rewritten)``: the pass form of ``restore_tags``."""

    def __init__(self, original, metadata_modules: list[dict] | None = None, index: "ModuleIndex | None" = None):
        self.original = original
        self.index = index or ModuleIndex(original, metadata_modules)

    def __call__(self, rewritten) -> RestoreCounts:
        return restore_tags(self.original, rewritten, index=self.index)


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
        initializers = {t.name for t in original.graph.initializer}
        self.parameter_readers: dict[str, list[str]] = {}  # initializer -> modules of the nodes reading it
        self.consumers: dict[str, list[tuple[str, tuple[str, ...]]]] = {}  # tensor -> (module, outputs)
        for node, _ in iter_nodes(original.graph):
            tag = node_tag(node)
            path = tag.module_path
            if path is None:
                continue
            self.tag.setdefault(path, tag.hierarchy_tag or "")
            if tag.namespace is not None:
                self.namespace.setdefault(path, tag.namespace)
            if node.name:
                self.node_tags[node.name] = (path, tag.hierarchy_tag or "")
            for name in node.output:
                if name:
                    self.producer_module[name] = path
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append((path, tuple(node.output)))
                    if name in initializers:
                        self.parameter_readers.setdefault(name, []).append(path)
        # An initializer read from several modules is no evidence of where a node belongs: tied
        # weights, and the exporter's de-duplication of equal tensors (every LayerNorm of a freshly
        # initialised model shares one `ones` weight).
        self.parameter_readers = {k: v for k, v in self.parameter_readers.items() if len(set(v)) == 1}
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
        """Modules of the original nodes this node replaced.

        The computation it performs: the nodes that produced its outputs and those that read the
        same parameters. Only when neither exists (all new tensors), the nodes that read its
        inputs and whose outputs are gone: that wider net also catches mask and shape nodes the
        optimizer folded away, which would pull a layer's fused node up to the whole model.
        """
        return [index.producer_module[o] for o in node.output if o in index.producer_module] + \
            [m for name in node.input for m in index.parameter_readers.get(name, ())]

    def eliminated_readers(node) -> list[str]:
        """Modules of the original nodes that read this node's inputs and whose outputs are gone."""
        sources = []
        for name in node.input:
            for module, outputs in index.consumers.get(name, ()):
                if outputs and not any(o in surviving for o in outputs):
                    sources.append(module)
        return sources

    def assign_graph(graph, fallback: str) -> None:
        nodes = graph.node
        assigned: list[str | None] = []
        unsourced: list[int] = []  # rewritten nodes whose own computation left no trace
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
            existing = node_tag(node).module_path
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
                    if eliminated_readers(node):
                        unsourced.append(len(assigned) - 1)
        if unsourced:
            _between_neighbours(nodes, assigned, unsourced, index.common, counts)
            for i in unsourced:
                if assigned[i] is None:  # the wide net, last: it may include folded mask/shape nodes
                    assigned[i] = index.common(eliminated_readers(nodes[i]))
                    counts.by_lineage += 1
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
    counts.model, counts.modified = rewritten, counts.nodes > counts.kept
    return counts


def _between_neighbours(nodes, assigned: list[str | None], which: list[int], common, counts: RestoreCounts) -> None:
    """A fused node whose outputs and parameters are all new (FastGelu over a de-duplicated bias)
    sits between the nodes that feed it and those it feeds: the deepest module holding both
    sides (GPT-2's ``h.0.mlp`` between ``c_fc`` and ``c_proj``), not either side alone."""
    wanted = {name for i in which for name in (*nodes[i].input, *nodes[i].output) if name}
    producer, consumers = tensor_index(nodes, wanted, wanted)
    for i in which:
        before = [assigned[producer[x]] for x in nodes[i].input if x in producer]
        after = [assigned[c] for x in nodes[i].output for c in consumers.get(x, ())]
        before, after = [p for p in before if p is not None], [p for p in after if p is not None]
        if before and after:
            assigned[i] = common(before + after)
            counts.inferred += 1
