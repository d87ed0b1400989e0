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
from dataclasses import asdict, dataclass, field

import onnx

from modelexport.hierarchy.module_tree import ModuleTree
from modelexport.hierarchy.neighbours import infer_from_neighbours, tensor_index
from modelexport.hierarchy.passes import PassResult
from modelexport.hierarchy.tags import namespace_for, write_tag

_CALL_SUFFIX = re.compile(r"^(.+)_(\d+)$")


@dataclass
class Coverage:
    """How each node of one ONNX file got its tag. ``direct + inferred + root_fallback == nodes``."""

    nodes: int = 0
    direct: int = 0  # the exporter's scope named the module (with parameters settling ties)
    inferred: int = 0  # from the nodes around it
    root_fallback: int = 0  # nothing fitted: tagged with the file's root module
    partial_scope: int = 0  # direct, but the scope did not pin one module: tagged with the
    #                         deepest module it does pin (a component matched nothing, or
    #                         several modules fit and no evidence chose one)
    by_parameters: int = 0  # direct, several modules fit the scope, the parameters read chose
    by_neighbours: int = 0  # inferred, several modules fit the scope, the neighbours chose
    folded_batch_norm: int = 0  # partial: Conv nodes the exporter merged with the BatchNorm after them
    at_root: int = 0  # nodes whose module is the root, for whatever reason

    def as_dict(self) -> dict:
        d = asdict(self)
        d["direct_pct"] = round(100.0 * self.direct / self.nodes, 2) if self.nodes else 0.0
        return d


@dataclass
class TaggingResult(PassResult):
    coverage: Coverage
    node_count_by_module: dict[str, int]
    graph_sha256: str = ""  # structure fingerprint (see fingerprint.py)
    warnings: list[str] = field(default_factory=list)
    source_info_removed: int = 0  # dynamo files: stack-trace and FX-node entries dropped


@dataclass(frozen=True)
class Resolution:
    candidates: tuple[str, ...]  # the modules the scope can mean (one when unambiguous)
    complete: bool  # every component matched a module

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1


_MAX_BRANCHES = 64  # candidate paths followed per scope (ties at several levels multiply)


class ScopeResolver:
    """Maps TorchScript scope names to module paths, below the file's traced root."""

    def __init__(self, tree: ModuleTree, root_path: str = ""):
        self.tree = tree
        self.root_path = root_path
        self._cache: dict[str, Resolution] = {}

    def _step(self, current: str, component: str) -> list[str]:
        tree, root = self.tree, self.root_path
        m = _CALL_SUFFIX.match(component)
        base = m.group(1) if m else None
        # "fc_1" is a module named fc_1, or the second call of fc: a real child of either name
        # is a candidate; only evidence tells them apart when both exist.
        direct = [p for p in (tree._by_prefix.get((current, component)),
                              tree._by_prefix.get((current, base)) if base else None) if p is not None]
        if direct:
            return direct
        found = tree.scope_candidates(current, component, root)
        if not found and base:
            found = tree.scope_candidates(current, base, root)
        return found

    def resolve(self, scope: str) -> Resolution:
        """The modules a scope string ``a/b.0/c`` can mean."""
        hit = self._cache.get(scope)
        if hit is not None:
            return hit
        branches, complete = [self.root_path], True
        for component in scope.split("/") if scope else ():
            following: list[str] = []
            for current in branches:
                for found in self._step(current, component) or ():
                    if found not in following:
                        following.append(found)
            if not following:
                complete = False  # e.g. a helper function's scope: stay at the module reached
                continue
            branches = following[:_MAX_BRANCHES]
        candidates = tuple(dict.fromkeys(self.tree.canonical(p) for p in branches))
        result = Resolution(candidates, complete)
        self._cache[scope] = result
        return result

    def owner_of(self, tensor_name: str) -> str | None:
        """The module owning a parameter or buffer, by the initializer's name. A file traced from
        a submodule names its weights relative to it."""
        owners = self.tree.parameter_owners
        if self.root_path:
            found = owners.get(f"{self.root_path}.{tensor_name}")
            if found is not None:
                return found
        return owners.get(tensor_name)


# The standard ops that hold graphs; reading every node's attributes to find out costs more
# than the rest of the pass (protobuf builds a wrapper per attribute).
_CONTROL_FLOW = frozenset(("If", "Loop", "Scan", "SequenceMap"))


def _subgraphs(node) -> list:
    if node.op_type not in _CONTROL_FLOW:
        return []
    subs = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            subs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            subs.extend(attr.graphs)
    return subs


def _all_paths(graph, key: str, found: dict[str, list[str | None]]):
    yield from found[key]
    for i, node in enumerate(graph.node):
        for k, sub in enumerate(_subgraphs(node)):
            yield from _all_paths(sub, f"{key}{i}/{k}/", found)


def _branches(candidates: tuple[str, ...]) -> list[tuple[str, str]]:
    """Each candidate with the subtree that sets it apart from the others: its ancestor one level
    below their common prefix (``layers.0`` for ``layers.0.attention.matmul_qk`` against
    ``layers.1.attention.matmul_qk``). Evidence anywhere in that subtree, such as the parent
    module's node feeding the child, points to that candidate."""
    split = [c.split(".") if c else [] for c in candidates]
    common = 0
    for column in zip(*split):
        if any(a != column[0] for a in column):
            break
        common += 1
    return [(c, ".".join(atoms[: common + 1])) for c, atoms in zip(candidates, split)]


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
            warnings = self._folded_batch_norms(paths, coverage)
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
        return TaggingResult(coverage, counts, warnings=warnings, model=model, modified=bool(paths))

    def _folded_batch_norms(self, paths: list[tuple[onnx.NodeProto, str]], coverage: Coverage) -> list[str]:
        """Both exporters fold an eval-mode BatchNorm into the Conv before it: one Conv node then
        computes both, and one of the two modules has no node (TorchScript keeps the Conv's scope,
        torch.export's optimizer the BatchNorm's). Tagging that node with either alone would hide
        the other from every per-module tool, so it gets the modules' common parent, counted as
        partial, and the user is told."""
        modules = self.tree.modules
        used = {path for _, path in paths}
        moved = 0
        for path, info in modules.items():
            if "BatchNorm" not in info.class_name or info.parent is None \
                    or not self.tree.contains(self.root_path, path):
                continue
            siblings = modules[info.parent].children
            position = siblings.index(path)
            if position == 0:
                continue
            conv = siblings[position - 1]
            if path in used and conv in used:
                continue
            holder = conv if path not in used else path  # the module whose scope the Conv kept
            parent = self.tree.common_ancestor([conv, path])
            for k, (node, tagged) in enumerate(paths):
                if tagged == holder and node.op_type == "Conv":
                    paths[k] = (node, parent)
                    moved += 1
        if not moved:
            return []
        coverage.partial_scope += moved
        coverage.folded_batch_norm += moved
        return [f"{moved} Conv nodes also compute the BatchNorm the exporter folded into them: tagged with the "
                "module holding both"]

    def _scope_evidence(self, nodes) -> dict[str, set[str]]:
        """Per scope: the modules owning the parameters its nodes read. A parameter read from
        several scopes is no evidence: tied weights, or the exporter's de-duplication of equal
        tensors (every LayerNorm of a freshly initialised model shares one `ones` weight)."""
        read_in: dict[str, tuple[str, set[str]]] = {}  # parameter -> (owner, scopes reading it)
        for node in nodes:
            scope = scope_of(node.name)
            for name in node.input:
                owner = self.resolver.owner_of(name) if name else None
                if owner is not None:
                    read_in.setdefault(name, (owner, set()))[1].add(scope or "")
        evidence: dict[str, set[str]] = {}
        for owner, scopes in read_in.values():
            if len(scopes) == 1 and next(iter(scopes)):
                evidence.setdefault(next(iter(scopes)), set()).add(owner)
        return evidence

    def _assign(self, graph: onnx.GraphProto, fallback: str, coverage: Coverage,
                out: list[tuple[onnx.NodeProto, str]]) -> None:
        """Assign every node of ``graph`` and of its subgraphs (If/Loop/Scan bodies).

        ``fallback`` is the root for the main graph and the holding node's module for a
        subgraph (e.g. the decoders inside the If node of Optimum's merged decoder).
        """
        found = self._evidence_pass(graph, "", coverage)
        self._settle_subgraph_holders(graph, "", found, coverage)
        self._fill_and_emit(graph, "", found, fallback, coverage, out)

    def _evidence_pass(self, graph, key: str, coverage: Coverage) -> dict[str, list[str | None]]:
        """Scopes, parameters and neighbours, graph by graph; what none of them decides stays None.
        Keyed by the graph's position ("" for this one, "3/1/" for node 3's second subgraph...):
        protobuf hands out a new wrapper object on each access, so ``id()`` is no key."""
        nodes = graph.node
        assigned = self._scoped(nodes, coverage)
        coverage.inferred += infer_from_neighbours(nodes, assigned, self.tree.common_ancestor)
        found = {key: assigned}
        for i, node in enumerate(nodes):
            for k, sub in enumerate(_subgraphs(node)):
                found.update(self._evidence_pass(sub, f"{key}{i}/{k}/", coverage))
        return found

    def _settle_subgraph_holders(self, graph, key: str, found: dict[str, list[str | None]],
                                 coverage: Coverage) -> None:
        """Optimum's merged decoder: an If node with no scope of its own holds both decoders.

        A branch's placeholder node (e.g. the `present.N.encoder.key` constants of the with-past
        branch) takes the module of the node producing the same output in the other branch; the
        holding node takes the deepest module holding everything inside it."""
        assigned = found[key]
        for i, node in enumerate(graph.node):
            subs = _subgraphs(node)
            if not subs:
                continue
            keys = [f"{key}{i}/{k}/" for k in range(len(subs))]
            for sub, sub_key in zip(subs, keys):
                self._settle_subgraph_holders(sub, sub_key, found, coverage)
            if node.op_type == "If" and len(subs) == 2:
                for (this, this_key), (other, other_key) in (zip(subs, keys), zip(subs[::-1], keys[::-1])):
                    producer = {o: found[other_key][k] for k, n in enumerate(other.node) for o in n.output}
                    mine = found[this_key]
                    for k, n in enumerate(this.node):
                        if mine[k] is not None:
                            continue
                        positions = [j for j, o in enumerate(this.output) if o.name in n.output]
                        twins = [producer.get(other.output[j].name) for j in positions if j < len(other.output)]
                        twins = [t for t in twins if t is not None]
                        if twins:
                            mine[k] = self.tree.common_ancestor(twins)
                            coverage.inferred += 1
            if assigned[i] is None:
                inside = [p for sub, sub_key in zip(subs, keys) for p in _all_paths(sub, sub_key, found)
                          if p is not None]
                if inside:
                    assigned[i] = self.tree.common_ancestor(inside)
                    coverage.inferred += 1

    def _fill_and_emit(self, graph, key: str, found: dict[str, list[str | None]], fallback: str,
                       coverage: Coverage, out: list[tuple[onnx.NodeProto, str]]) -> None:
        assigned = found[key]
        for i, path in enumerate(assigned):
            if path is None:
                assigned[i] = fallback
                if fallback == self.root_path:
                    coverage.root_fallback += 1
                else:
                    coverage.inferred += 1
        for i, (node, path) in enumerate(zip(graph.node, assigned)):
            out.append((node, path))
            for k, sub in enumerate(_subgraphs(node)):
                self._fill_and_emit(sub, f"{key}{i}/{k}/", found, path, coverage, out)

    def _scoped(self, nodes, coverage: Coverage) -> list[str | None]:
        """What the exporter's scopes (settled by parameters and neighbours) say of each node."""
        contains = self.tree.contains
        assigned: list[str | None] = [None] * len(nodes)
        open_choices: dict[int, tuple[str, ...]] = {}  # node -> modules its scope can mean
        evidence = None
        for i, node in enumerate(nodes):
            scope = scope_of(node.name)
            if scope is None:
                # A de-duplicated parameter's Identity (no scope) belongs to the parameter it outputs.
                owner = next((o for o in map(self.resolver.owner_of, node.output) if o), None) \
                    if node.op_type == "Identity" else None
                if owner is not None and contains(self.root_path, owner):
                    assigned[i] = owner
                    coverage.direct += 1
                continue
            resolution = self.resolver.resolve(scope)
            coverage.direct += 1
            if not resolution.complete:
                coverage.partial_scope += 1
            if not resolution.ambiguous:
                assigned[i] = self._refine_by_parameters(node, resolution.candidates[0], coverage)
                continue
            if evidence is None:
                evidence = self._scope_evidence(nodes)
            owners = evidence.get(scope, ())
            branches = _branches(resolution.candidates)
            fitting = [c for c, b in branches if owners and all(contains(b, o) for o in owners)]
            if len(fitting) == 1:
                assigned[i] = fitting[0]
                coverage.by_parameters += 1
            else:
                open_choices[i] = resolution.candidates
                coverage.direct -= 1  # counted again below, as inferred or partial
        if open_choices:
            self._choose_by_neighbours(nodes, assigned, open_choices, coverage)
        return assigned

    def _refine_by_parameters(self, node, path: str, coverage: Coverage) -> str:
        """A module that reads a child's parameters itself (``F.linear(x, self.q_proj.weight)``,
        ``x + self.embed_positions.weight``) runs nodes whose scope is the parent, though they do
        the child's computation; the child, never called, would have no node at all. When every
        parameter a node reads belongs to one module below the scope's, the node gets that module."""
        if not self.tree.parameter_owners:
            return path
        owners = set()
        for name in node.input:
            owner = self.resolver.owner_of(name) if name else None
            if owner is not None:
                owners.add(owner)
        if not owners:
            return path
        deepest = self.tree.common_ancestor(owners)
        if deepest != path and self.tree.contains(path, deepest):
            coverage.by_parameters += 1
            return deepest
        return path

    def _choose_by_neighbours(self, nodes, assigned: list[str | None], open_choices: dict[int, tuple[str, ...]],
                              coverage: Coverage) -> None:
        """Settle scopes that fit several modules from the modules of the nodes around them: the
        candidate holding the neighbours' modules, when exactly one does. Repeated so that chains
        of such nodes settle one from the next; what stays open gets the candidates' common
        ancestor and is counted as partial."""
        contains = self.tree.contains
        wanted = {name for i in open_choices for name in (*nodes[i].input, *nodes[i].output) if name}
        producer, consumers = tensor_index(nodes, wanted, wanted)
        pending = {i: _branches(candidates) for i, candidates in open_choices.items()}
        while pending:
            settled = []
            for i, candidates in pending.items():
                around = [assigned[producer[x]] for x in nodes[i].input if x in producer] + \
                         [assigned[c] for x in nodes[i].output for c in consumers.get(x, ())]
                around = [p for p in around if p is not None]
                fitting = [c for c, b in candidates if any(contains(b, p) for p in around)]
                if len(fitting) == 1:
                    assigned[i] = fitting[0]
                    coverage.inferred += 1
                    coverage.by_neighbours += 1
                    settled.append(i)
            if not settled:
                break
            for i in settled:
                del pending[i]
        for i, candidates in pending.items():
            assigned[i] = self.tree.common_ancestor([c for c, _ in candidates])
            coverage.direct += 1
            coverage.partial_scope += 1


def tag_file(path, tree: ModuleTree, root_path: str = "", before=None,
             tagger=None) -> tuple[TaggingResult, int | None]:
    """Tag an ONNX file in place; returns the result and the file's default-domain opset.

    Only the nodes are parsed and rewritten (``NodeSplice``); weights are copied as bytes.
    ``before(splice)`` may add nodes and outputs first, in the same single rewrite of the file.
    ``tagger`` replaces the TorchScript-scope pass (e.g. ``DynamoTaggingPass`` for dynamo files).
    """
    from modelexport.hierarchy.node_splice import NodeSplice

    from modelexport.hierarchy.fingerprint import graph_fingerprint

    splice = NodeSplice(path)
    try:
        if before is not None:
            before(splice)
        result = (tagger or TaggingPass(tree, root_path))(splice.graph)
        result.graph_sha256 = graph_fingerprint(splice.graph)
    except BaseException:
        splice.close()
        raise
    opset = next((o.version for o in splice.opset_imports if o.domain in ("", "ai.onnx")), None)
    splice.write()
    return result, opset
