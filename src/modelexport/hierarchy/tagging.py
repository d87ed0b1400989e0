"""The tagging pass: give every ONNX node the module that produced it.

Raw material is what the TorchScript exporter records in node names: the scope of the
module call stack, e.g. ``/bert/encoder/layer.0/attention/self/query/MatMul``. Each scope
component is the module's TorchScript scope name (see ``torchscript_scope_name``).
Traps handled here:
- a second call of a module is written ``name_1`` (shared modules, tied weights);
- a module that calls a grandchild's ``forward`` directly leaves a level out;
- nodes without a scope (constants, folded shape arithmetic, post-processing) are tagged
  from the nodes that consume, then produce, their values; only then the root.

Cost: one walk over each graph's nodes reads each node's name, op type and inputs once (outputs
only of the nodes that need neighbours) into plain lists; every later step (parameters,
neighbours, merged-decoder branches, folded BatchNorm) reads those lists, and runs only where
something is left to decide. Scopes are resolved once per distinct scope, each from its parent
scope's resolution; the tags of each module are serialised once and merged into its nodes.
"""
from __future__ import annotations

import gc
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import onnx

from modelexport.hierarchy.module_tree import ModuleTree
from modelexport.hierarchy.neighbours import fill_from_neighbours
from modelexport.hierarchy.passes import PassResult
from modelexport.hierarchy.tags import HIERARCHY_TAG_KEY, MODULE_PATH_KEY, NAMESPACE_KEY, TAG_KEYS, text

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


class Resolution(NamedTuple):
    candidates: tuple[str, ...]  # the modules the scope can mean (one when unambiguous)
    complete: bool  # every component matched a module

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1


_MAX_BRANCHES = 64  # candidate paths followed per scope (ties at several levels multiply)
_new_resolution = tuple.__new__  # Resolution(...) without the Python-level __new__, once per scope


class ScopeResolver:
    """Maps TorchScript scope names to module paths, below the file's traced root.

    Each scope is resolved from its parent scope's state (``a/b/c`` from ``a/b``), so a scope
    costs one component's lookup however deep it is."""

    def __init__(self, tree: ModuleTree, root_path: str = ""):
        self.tree = tree
        self.root_path = root_path
        # scope -> its Resolution, which is also the state the scopes below it start from...
        self._cache: dict[str, Resolution] = {"": Resolution((root_path,), True)}
        # ...except where a path reached is another name of a module (an alias): the paths reached
        self._raw: dict[str, tuple[tuple[str, ...], bool]] = {}

    def _step(self, current: str, component: str) -> list[str]:
        tree, root = self.tree, self.root_path
        hit = tree._by_prefix.get((current, component))
        if "_" not in component:  # no call suffix: a child of that name, else a search below
            return [hit] if hit is not None else tree.scope_candidates(current, component, root)
        m = _CALL_SUFFIX.match(component)
        base = m.group(1) if m else None
        # "fc_1" is a module named fc_1, or the second call of fc: a real child of either name
        # is a candidate; only evidence tells them apart when both exist.
        direct = [p for p in (hit, tree._by_prefix.get((current, base)) if base else None) if p is not None]
        if direct:
            return direct
        found = tree.scope_candidates(current, component, root)
        if not found and base:
            found = tree.scope_candidates(current, base, root)
        return found

    def _advance(self, state: tuple[tuple[str, ...], bool], component: str) -> tuple[tuple[str, ...], bool]:
        branches, complete = state
        if len(branches) == 1:
            if "_" not in component:  # the usual case: a child of that name
                hit = self.tree._by_prefix.get((branches[0], component))
                if hit is not None:
                    return (hit,), complete
            following = list(dict.fromkeys(self._step(branches[0], component)))
        else:
            following = []
            for current in branches:
                for found in self._step(current, component) or ():
                    if found not in following:
                        following.append(found)
        if not following:
            return branches, False  # e.g. a helper function's scope: stay at the module reached
        return tuple(following[:_MAX_BRANCHES]), complete

    def _state(self, scope: str) -> tuple[tuple[str, ...], bool]:
        """(paths reached, every component matched) after the components of ``scope``."""
        state = (self._raw and self._raw.get(scope)) or self._cache.get(scope)
        if state is None:
            state = self._raw_state(scope)
            self._store(scope, state)
        return state

    def _raw_state(self, scope: str) -> tuple[tuple[str, ...], bool]:
        cut = scope.rfind("/")
        if cut < 0:
            return self._advance(self._cache[""], scope)
        if cut == 0:  # "/x": an empty first component
            return self._advance(self._advance(self._cache[""], ""), scope[1:])
        return self._advance(self._state(scope[:cut]), scope[cut + 1:])

    def _store(self, scope: str, state: tuple[tuple[str, ...], bool]) -> Resolution:
        branches, complete = state
        if not self.tree.aliases:
            candidates = branches
        elif len(branches) == 1:
            path = self.tree.canonical(branches[0])
            candidates = branches if path == branches[0] else (path,)
        else:
            candidates = tuple(dict.fromkeys(self.tree.canonical(p) for p in branches))
        if candidates != branches:
            self._raw[scope] = state
        result = self._cache[scope] = _new_resolution(Resolution, (candidates, complete))
        return result

    def resolve(self, scope: str) -> Resolution:
        """The modules a scope string ``a/b.0/c`` can mean."""
        hit = self._cache.get(scope)
        if hit is None:
            hit = self._store(scope, self._raw_state(scope))
        return hit

    def resolve_new(self, scope: str) -> Resolution:
        """``resolve`` for a scope not resolved yet."""
        return self._store(scope, self._raw_state(scope))

    def owner_of(self, tensor_name: str) -> str | None:
        """The module owning a parameter or buffer, by the initializer's name. A file traced from
        a submodule names its weights relative to it."""
        owners = self.tree.parameter_owners
        if self.root_path:
            found = owners.get(f"{self.root_path}.{tensor_name}")
            if found is not None:
                return found
        return owners.get(tensor_name)

    def owner_map(self) -> dict[str, str]:
        """``owner_of`` as one dict: every name a node of this file can read a parameter by."""
        owners = self.tree.parameter_owners
        if not self.root_path:
            return owners
        merged = dict(owners)
        prefix = self.root_path + "."
        for name, owner in owners.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                merged[name[len(prefix):]] = owner
        return merged


# The standard ops that hold graphs; reading every node's attributes to find out costs more
# than the rest of the pass (protobuf builds a wrapper per attribute).
_CONTROL_FLOW = frozenset(("If", "Loop", "Scan", "SequenceMap"))
# Op types the walk notes for a later step: subgraph holders and folded-BatchNorm candidates.
_NOTED = _CONTROL_FLOW | {"Conv"}
# What torch.export's optimizer (onnxscript's rewriter) records on a node it fused.
_REWRITE_RULE_KEY = "pkg.onnxscript.rewriter.rule_name"


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_BYTE = [bytes((i,)) for i in range(0x80)]


def _entry_head(key: str) -> bytes:
    key_bytes = key.encode()
    return b"\x0a" + _varint(len(key_bytes)) + key_bytes + b"\x12"


_TAG_HEADS = tuple(_entry_head(key) for key in (MODULE_PATH_KEY, HIERARCHY_TAG_KEY, NAMESPACE_KEY))


def _entry(head: bytes, value: str) -> bytes:
    """One ``metadata_props`` entry (field 9) of a serialised ``NodeProto``."""
    data = value.encode()
    size = len(data)
    if size < 0x80 and len(head) + 1 + size < 0x80:  # the usual case: one-byte lengths
        return b"\x4a" + _BYTE[len(head) + 1 + size] + head + _BYTE[size] + data
    size_bytes = _varint(size)
    return b"\x4a" + _varint(len(head) + len(size_bytes) + size) + head + size_bytes + data


def _tags_blob(module_path: str, hierarchy_tag: str, namespace: str) -> bytes:
    """A serialised ``NodeProto`` holding only the three tags in ``metadata_props``: merged into
    a node, it appends them, as three ``metadata_props.add`` calls would."""
    head_path, head_tag, head_namespace = _TAG_HEADS
    return _entry(head_path, module_path) + _entry(head_tag, hierarchy_tag) + _entry(head_namespace, namespace)


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


class _Walk:
    """What one walk over a graph's nodes learned: every later step reads these lists, not the
    protobuf (each field access there builds new Python objects)."""

    __slots__ = ("graph", "count", "inputs", "outputs", "assigned", "reads", "ambiguous", "noted", "flow",
                 "all_outputs")

    def __init__(self, graph):
        self.graph = graph
        self.count = 0  # nodes (the NodeProto objects are not kept: graph.node[i] gives one)
        self.inputs: list[list[str]] = []
        self.outputs: dict[int, list[str]] = {}  # read where needed (unscoped nodes), else on demand
        self.assigned: list[str | None] = []
        self.reads: list[tuple[str, str, str]] = []  # (tensor, owning module, scope) of parameter reads
        self.ambiguous: list[tuple[int, str, Resolution]] = []  # settled after the walk, from evidence
        self.noted: list[tuple[int, str]] = []  # (index, op type) of the ops in _NOTED
        self.flow: list[tuple[int, list[_Walk]]] = []  # control-flow nodes and their subgraphs' walks
        self.all_outputs = False

    def outputs_of(self, i: int) -> list[str]:
        found = self.outputs.get(i)
        if found is None:
            found = self.outputs[i] = list(self.graph.node[i].output)
        return found

    def producers(self, wanted: set[str]) -> dict[str, int]:
        """The node producing each tensor of ``wanted`` (the outputs of every node, read once)."""
        if not self.all_outputs:
            outputs = self.outputs
            for i, node in enumerate(self.graph.node):
                if i not in outputs:
                    outputs[i] = list(node.output)
            self.all_outputs = True
        producer: dict[str, int] = {}
        if wanted:
            outputs = self.outputs
            for i in range(self.count):  # in node order: a tensor written twice keeps the last
                names = outputs[i]
                if not wanted.isdisjoint(names):
                    for name in names:
                        if name in wanted:
                            producer[name] = i
        return producer

    def consumers(self, wanted: set[str]) -> dict[str, list[int]]:
        consumers: dict[str, list[int]] = {}
        if wanted:
            for i, names in enumerate(self.inputs):
                if not wanted.isdisjoint(names):
                    for name in names:
                        if name in wanted:
                            consumers.setdefault(name, []).append(i)
        return consumers

    def tree(self):
        """This walk and its subgraphs' walks, depth first."""
        yield self
        for _, subs in self.flow:
            for sub in subs:
                yield from sub.tree()


class TaggingPass:
    """Writes ``module_path`` and ``hierarchy_tag`` on every node of a model, subgraphs too."""

    # Metadata keys removed from every node while the tags are written (besides older tags).
    _drop_keys: frozenset[str] = frozenset()

    def __init__(self, tree: ModuleTree, root_path: str = "", parameters: dict | None = None):
        """``parameters``: the model's parameters by name (``named_parameters(remove_duplicate=
        False)``); with them, and the file's initializers (``tag_file`` gives those), a node reading
        a folded copy of a child's weight gets the child (``_children_read_by_value``)."""
        if root_path not in tree:
            raise ValueError(f"root module {root_path!r} is not in the module tree")
        self.tree = tree
        self.root_path = root_path
        self.resolver = ScopeResolver(tree, root_path)
        self._owners: dict[str, str] | None = None
        self._common1: dict[str, str] = {}
        self._removed = 0
        self.parameters = parameters
        self.initializers = None  # NodeSplice: initializer_headers(), initializer_array(name)
        self._by_size: dict[int, list[tuple[str, str]]] | None = None  # numel -> [(parameter, owner)]

    # -- the two hooks a subclass with another source of scopes overrides ----------------------
    def _scope_of_node(self, node) -> str | None:
        """The node's scope key; None when the exporter recorded none."""
        name = node.name
        return name[1:].rpartition("/")[0] if name[:1] == "/" else None

    def _resolve_scope(self, scope: str) -> Resolution | None:
        """The modules a scope key can mean; None when it names no module (treated as unscoped)."""
        return self.resolver.resolve(scope)

    # -- the pass ----------------------------------------------------------------------------
    def __call__(self, model: onnx.ModelProto | onnx.GraphProto) -> TaggingResult:
        """Tag a model, or a graph (only its nodes are read, e.g. a ``NodeSplice.graph``)."""
        graph = model.graph if isinstance(model, onnx.ModelProto) else model
        coverage = Coverage()
        # The pass allocates a few small objects per node and frees none until the end; with the
        # cyclic GC on, its collections rescan them all and the pass turns superlinear
        # (measured: 18 vs 7 µs/node at 10k nodes, benchmarks/tagging_scale.py).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if self._owners is None:
                self._owners = self.resolver.owner_map()
            main = self._walk_graph(graph, coverage)
            self._settle_subgraph_holders(main, coverage)
            self._fill(main, self.root_path, coverage)
            warnings = self._folded_batch_norms(main, coverage)
            paths: list[str] = []
            self._emit(main, paths)
            counts = dict(Counter(paths))
            self._write_tags(graph, main, len(paths), counts)
        finally:
            if gc_was_enabled:
                gc.enable()
        coverage.nodes = len(paths)
        coverage.at_root = counts.get(self.root_path, 0)
        return TaggingResult(coverage, counts, warnings=warnings, model=model, modified=bool(paths))

    def _walk_graph(self, graph, coverage: Coverage) -> _Walk:
        """Scopes, parameters and neighbours for one graph, then for each of its subgraphs (If/Loop/
        Scan bodies); what none of them decides stays None."""
        walk = self._walk(graph, coverage)
        if self.parameters is not None and self.initializers is not None:
            self._children_read_by_value(walk, coverage)
        if walk.ambiguous:
            self._settle_ambiguous(walk, coverage)
        self._infer_from_neighbours(walk, coverage)
        for i, op in walk.noted:
            if op in _CONTROL_FLOW:
                subs = _subgraphs(walk.graph.node[i])
                if subs:
                    walk.flow.append((i, [self._walk_graph(sub, coverage) for sub in subs]))
        return walk

    def _walk(self, graph, coverage: Coverage) -> _Walk:
        """The one walk over a graph's nodes: each node's scope resolved (once per distinct scope),
        its parameter reads looked up in one precomputed map; what needs the whole graph
        (ambiguous scopes, neighbours) is noted for the steps after it."""
        walk = _Walk(graph)
        inputs, assigned, outputs = walk.inputs, walk.assigned, walk.outputs
        reads, ambiguous, noted = walk.reads, walk.ambiguous, walk.noted
        owners = self._owners
        owner_get = owners.get
        reads_no_parameter = owners.keys().isdisjoint
        contains, common, root = self.tree.contains, self.tree.common_ancestor, self.root_path
        scope_of_node = None if type(self)._scope_of_node is TaggingPass._scope_of_node else self._scope_of_node
        resolve = self._resolve_scope
        resolved, resolve_new = self.resolver._cache.get, self.resolver.resolve_new  # TorchScript scopes
        direct = partial = by_parameters = 0
        i = -1
        for node in graph.node:
            i += 1
            op = node.op_type
            ins = list(node.input)
            inputs.append(ins)
            if op in _NOTED:
                noted.append((i, op))
            if scope_of_node is None:
                name = node.name
                if name[:1] == "/":
                    scope = name[1:name.rfind("/")]
                    resolution = resolved(scope) or resolve_new(scope)
                else:
                    scope = resolution = None
            else:
                scope = scope_of_node(node)
                resolution = None if scope is None else resolve(scope)
            parameters = None
            if owners and not reads_no_parameter(ins):
                parameters = [(x, owner_get(x)) for x in ins]
                parameters = [(x, o) for x, o in parameters if o is not None]
                for x, o in parameters:
                    reads.append((x, o, scope or ""))
            if resolution is None:
                # Unscoped: its neighbours decide, after the walk. A de-duplicated parameter's
                # Identity (no scope) belongs to the parameter it outputs; a node torch.export's
                # optimizer made without a scope that reads parameters of one module only (a Split
                # of Deformable DETR's query embedding weight) belongs to that module.
                outs = outputs[i] = list(node.output)
                owner = next((o for o in map(owner_get, outs) if o), None) if op == "Identity" else None
                read = owner is None and parameters and len({o for _, o in parameters}) == 1
                if read:
                    owner = parameters[0][1]
                if owner is not None and contains(root, owner):
                    assigned.append(owner)
                    if read:
                        by_parameters += 1
                    else:
                        direct += 1
                else:
                    assigned.append(None)
                continue
            direct += 1
            if not resolution.complete:
                partial += 1
            if len(resolution.candidates) > 1:
                ambiguous.append((i, scope, resolution))
                assigned.append(None)
                continue
            path = resolution.candidates[0]
            if parameters:
                # A module that reads a child's parameters itself (``F.linear(x, self.q_proj.weight)``,
                # ``x + self.embed_positions.weight``) runs nodes whose scope is the parent, though
                # they do the child's computation; the child, never called, would have no node at
                # all. When every parameter a node reads belongs to one module below the scope's,
                # the node gets that module.
                deepest = common({o for _, o in parameters})
                if deepest != path and contains(path, deepest):
                    by_parameters += 1
                    path = deepest
            assigned.append(path)
        walk.count = i + 1
        coverage.direct += direct
        coverage.partial_scope += partial
        coverage.by_parameters += by_parameters
        return walk

    def _children_read_by_value(self, walk: _Walk, coverage: Coverage) -> None:
        """The rule of the walk for a parent reading a child's parameter (``F.linear(x,
        self.q_proj.weight)``: the node is the child's), where the exporter folded the parameter
        into a constant of another name (TorchScript's ``onnx::MatMul_800``: WavLM's transposed
        ``q_proj.weight``), so that no name tells whose it is. Only a node whose module owns no
        parameter of that size but a module below it does is looked at: the constant's values are
        compared with those parameters' (as they are, or transposed); when exactly one module's
        match, the node gets it."""
        import numpy as np

        headers = self.initializers.initializer_headers()
        owners, contains = self._owners, self.tree.contains
        if self._by_size is None:  # once per pass: subgraphs are walked with the same parameters
            self._by_size = {}
            for name, tensor in self.parameters.items():
                owner = self.tree.parameter_owners.get(name)
                if owner is not None:
                    self._by_size.setdefault(int(tensor.numel()), []).append((name, owner))
        by_size = self._by_size
        arrays: dict[str, object] = {}
        for i, module in enumerate(walk.assigned):
            if module is None:
                continue
            found: set[str] = set()
            for x in walk.inputs[i]:
                header = headers.get(x)
                if header is None or x in owners or len(header.dims) == 0:
                    continue
                size = int(np.prod(header.dims))
                near = by_size.get(size, ())
                if size < 16 or any(o == module for _, o in near):
                    continue  # small constants say nothing; the node's own module has such a weight
                below = [(n, o) for n, o in near if contains(module, o)]
                if not below:
                    continue
                if x not in arrays:
                    arrays[x] = self.initializers.initializer_array(x)
                value = arrays[x]
                if value is None or value.min() == value.max():
                    continue
                flat = value.reshape(-1)
                for name, owner in below:
                    p = self.parameters[name].detach().cpu().numpy()
                    if p.dtype == value.dtype and (np.array_equal(p.reshape(-1), flat) or
                                                   (p.ndim == 2 and np.array_equal(p.T.reshape(-1), flat))):
                        found.add(owner)
            if len(found) == 1:
                walk.assigned[i] = found.pop()
                coverage.by_parameters += 1

    def _settle_ambiguous(self, walk: _Walk, coverage: Coverage) -> None:
        """Scopes that fit several modules: the parameters their nodes read decide (a parameter
        read from several scopes is no evidence: tied weights, or the exporter's de-duplication of
        equal tensors, as every LayerNorm of a freshly initialised model shares one `ones`
        weight); what they leave open, the neighbours."""
        read_in: dict[str, tuple[str, set[str]]] = {}  # parameter -> (owner, scopes reading it)
        for name, owner, scope in walk.reads:
            read_in.setdefault(name, (owner, set()))[1].add(scope)
        evidence: dict[str, set[str]] = {}
        for owner, scopes in read_in.values():
            if len(scopes) == 1 and next(iter(scopes)):
                evidence.setdefault(next(iter(scopes)), set()).add(owner)
        contains = self.tree.contains
        open_choices: dict[int, tuple[str, ...]] = {}
        for i, scope, resolution in walk.ambiguous:
            owners = evidence.get(scope, ())
            branches = _branches(resolution.candidates)
            fitting = [c for c, b in branches if owners and all(contains(b, o) for o in owners)]
            if len(fitting) == 1:
                walk.assigned[i] = fitting[0]
                coverage.by_parameters += 1
            else:
                open_choices[i] = resolution.candidates
                coverage.direct -= 1  # counted again below, as inferred or partial
        if open_choices:
            self._choose_by_neighbours(walk, open_choices, coverage)

    def _choose_by_neighbours(self, walk: _Walk, open_choices: dict[int, tuple[str, ...]],
                              coverage: Coverage) -> None:
        """Settle scopes that fit several modules from the modules of the nodes around them: the
        candidate holding the neighbours' modules, when exactly one does. Repeated so that chains
        of such nodes settle one from the next; what stays open gets the candidates' common
        ancestor and is counted as partial."""
        contains, assigned, inputs = self.tree.contains, walk.assigned, walk.inputs
        wanted = {name for i in open_choices for name in (*inputs[i], *walk.outputs_of(i)) if name}
        producer, consumers = walk.producers(wanted), walk.consumers(wanted)
        pending = {i: _branches(candidates) for i, candidates in open_choices.items()}
        while pending:
            settled = []
            for i, candidates in pending.items():
                around = [assigned[producer[x]] for x in inputs[i] if x in producer] + \
                         [assigned[c] for x in walk.outputs_of(i) for c in consumers.get(x, ())]
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

    def _common(self, paths: list[str]) -> str:
        first = paths[0]
        if len(paths) == 1 or paths.count(first) == len(paths):
            hit = self._common1.get(first)
            if hit is None:
                hit = self._common1[first] = self.tree.common_ancestor([first])
            return hit
        return self.tree.common_ancestor(paths)

    def _infer_from_neighbours(self, walk: _Walk, coverage: Coverage) -> None:
        """Nodes without a scope get the deepest common module of the nodes consuming their outputs
        (walking backwards, so chains resolve), else of those producing their inputs: the rule of
        ``neighbours``, on the walk's lists."""
        assigned = walk.assigned
        if None not in assigned:
            return
        unknown = [i for i, p in enumerate(assigned) if p is None]
        consumers = walk.consumers({name for i in unknown for name in walk.outputs_of(i) if name})
        coverage.inferred += fill_from_neighbours(unknown, assigned, walk.outputs_of, walk.inputs.__getitem__,
                                                  consumers, walk.producers, self._common)

    def _settle_subgraph_holders(self, walk: _Walk, coverage: Coverage) -> None:
        """Optimum's merged decoder: an If node with no scope of its own holds both decoders.

        A branch's placeholder node (e.g. the `present.N.encoder.key` constants of the with-past
        branch) takes the module of the node producing the same output in the other branch; the
        holding node takes the deepest module holding everything inside it."""
        assigned = walk.assigned
        for i, subs in walk.flow:
            for sub in subs:
                self._settle_subgraph_holders(sub, coverage)
            if walk.graph.node[i].op_type == "If" and len(subs) == 2:
                for this, other in (subs, subs[::-1]):
                    if None not in this.assigned:
                        continue
                    other.producers(set())  # every output read
                    producer = {o: other.assigned[k] for k in range(other.count) for o in other.outputs[k]}
                    this_outputs = [o.name for o in this.graph.output]
                    other_outputs = [o.name for o in other.graph.output]
                    mine = this.assigned
                    for k, path in enumerate(mine):
                        if path is not None:
                            continue
                        outs = this.outputs_of(k)
                        positions = [j for j, o in enumerate(this_outputs) if o in outs]
                        twins = [producer.get(other_outputs[j]) for j in positions if j < len(other_outputs)]
                        twins = [t for t in twins if t is not None]
                        if twins:
                            mine[k] = self.tree.common_ancestor(twins)
                            coverage.inferred += 1
            if assigned[i] is None:
                inside = [p for sub in subs for w in sub.tree() for p in w.assigned if p is not None]
                if inside:
                    assigned[i] = self.tree.common_ancestor(inside)
                    coverage.inferred += 1

    def _fill(self, walk: _Walk, fallback: str, coverage: Coverage) -> None:
        """What nothing decided: the root for the main graph, the holding node's module for a
        subgraph (e.g. the decoders inside the If node of Optimum's merged decoder)."""
        assigned = walk.assigned
        if None in assigned:
            for i, path in enumerate(assigned):
                if path is None:
                    assigned[i] = fallback
                    if fallback == self.root_path:
                        coverage.root_fallback += 1
                    else:
                        coverage.inferred += 1
        for i, subs in walk.flow:
            for sub in subs:
                self._fill(sub, assigned[i], coverage)

    def _emit(self, walk: _Walk, paths: list[str]) -> None:
        """The modules of all nodes in file order, each subgraph's after the node holding it."""
        start = 0
        for i, subs in walk.flow:
            paths.extend(walk.assigned[start:i + 1])
            start = i + 1
            for sub in subs:
                self._emit(sub, paths)
        paths.extend(walk.assigned[start:])

    def _write_tags(self, graph, main: _Walk, node_count: int, counts: dict[str, int]) -> None:
        """Each module's three tags serialised once and merged into its nodes (appending to their
        metadata); a node's earlier tags (and ``_drop_keys``) are removed first where the graph's
        bytes say some node may hold one."""
        modules = self.tree.modules
        namespaces = {"": modules[""].class_name}

        def namespace(path: str) -> str:  # namespace_for(root class, path), from the parent's
            found = namespaces.get(path)
            if found is None:
                parent, _, atom = path.rpartition(".")
                found = namespace(parent) + ("." if parent and atom.isnumeric() else "/") + atom
                namespaces[path] = found
            return found

        blobs = {path: _tags_blob(path, modules[path].tag, namespace(path)) for path in counts}
        drop = frozenset(TAG_KEYS) | self._drop_keys
        self._removed = 0
        if not self._drop_keys and not self._may_hold(graph, node_count, TAG_KEYS):
            for walk in main.tree():
                for node, path in zip(walk.graph.node, walk.assigned):
                    node.MergeFromString(blobs[path])
            return
        removed = 0
        source_keys = self._drop_keys
        for walk in main.tree():
            for node, path in zip(walk.graph.node, walk.assigned):
                props = node.metadata_props
                if props:
                    keys = [p.key for p in props]
                    if not drop.isdisjoint(keys):
                        for j in range(len(keys) - 1, -1, -1):
                            if keys[j] in drop:
                                removed += keys[j] in source_keys
                                del props[j]
                node.MergeFromString(blobs[path])
        self._removed = removed

    @staticmethod
    def _may_hold(graph, node_count: int, keys) -> bool:
        """Whether some node may carry one of ``keys`` in its metadata. A graph of nodes only (as
        ``tag_file`` reads it) is serialised and searched at C speed (a false positive only costs
        the node-by-node path); one holding weights is read node by node."""
        if graph.ByteSize() > 4096 * (node_count + 1):
            return True
        data = graph.SerializeToString()
        return any(key.encode() in data for key in keys)

    # -- a BatchNorm folded into the Conv before it --------------------------------------------
    def _folded_batch_norms(self, main: _Walk, coverage: Coverage) -> list[str]:
        """Both exporters fold an eval-mode BatchNorm into the Conv before it: one Conv node then
        computes both, and one of the two modules has no node (TorchScript keeps the Conv's scope,
        torch.export's optimizer the BatchNorm's). Tagging that node with either alone would hide
        the other from every per-module tool, so it gets the modules' common parent, counted as
        partial, and the user is told.

        Only on evidence that the exporter folded it (``_folded``): a BatchNorm that simply never
        ran leaves the Conv reading its own weight, and the Conv keeps its module."""
        contains, root = self.tree.contains, self.root_path
        pairs = [(conv, bn) for conv, bn in self.tree.conv_batch_norm_pairs() if contains(root, bn)]
        if not pairs:
            return []
        walks = list(main.tree())
        convs = [(w, i) for w in walks for i, op in w.noted if op == "Conv"]
        if not convs:
            return []
        used: set[str] = set()
        read: set[str] = set()  # modules whose parameters or buffers some node reads by name
        for w in walks:
            used.update(w.assigned)
            read.update(owner for _, owner, _ in w.reads)
        made: set[str] | None = None
        moved = 0
        for conv, bn in pairs:
            if bn in used and conv in used:
                continue
            holder = conv if bn not in used else bn  # the module whose scope the Conv kept
            targets = [(w, i) for w, i in convs if w.assigned[i] == holder]
            if not targets:
                continue
            if made is None:
                made = self._exporter_made(walks, {name for w, i in convs for name in w.inputs[i][1:3]})
            parent = self.tree.common_ancestor([conv, bn])
            for w, i in targets:
                if self._folded(w.graph.node[i], w.inputs[i], holder == bn, bn in read, made):
                    w.assigned[i] = parent
                    moved += 1
        if not moved:
            return []
        coverage.partial_scope += moved
        coverage.folded_batch_norm += moved
        return [f"{moved} Conv nodes also compute the BatchNorm the exporter folded into them: tagged with the "
                "module holding both"]

    def _exporter_made(self, walks: list[_Walk], names: set[str]) -> set[str]:
        """Of ``names``, the tensors the exporter made: no module's parameter by name, computed by
        no node, seen through the Identity nodes by which it de-duplicates equal tensors (a fresh
        model's folded biases are all zeros: one initializer, the others Identity of it)."""
        producer: dict[str, tuple[_Walk, int]] = {}
        for w in walks:
            w.producers(set())  # every node's outputs read
            for i in range(w.count):
                for name in w.outputs[i]:
                    producer[name] = (w, i)
        made = set()
        for start in names:
            name, seen = start, set()
            while name and name not in self._owners and name not in seen:
                seen.add(name)
                found = producer.get(name)
                if found is None:  # an initializer (or a graph input) that no module owns
                    made.add(start)
                    break
                w, i = found
                if w.graph.node[i].op_type != "Identity" or not w.inputs[i]:
                    break  # computed in the graph
                name = w.inputs[i][0]
        return made

    def _folded(self, node, inputs: list[str], in_batch_norm_scope: bool, batch_norm_read: bool,
                made: set[str]) -> bool:
        """Evidence that a Conv node also computes the BatchNorm after it:
        - the exporter's optimizer says it fused them (torch.export: onnxscript's rewriter rule);
        - the Conv sits in the BatchNorm's scope (a BatchNorm runs no Conv of its own);
        - its weight and its bias are both tensors the exporter made (``_exporter_made``:
          TorchScript writes the folded weight and bias, which it adds even to a Conv without one,
          as new initializers ``onnx::Conv_N``), while no node reads the BatchNorm's own
          parameters or statistics.
        A Conv reading a module's weight or bias by name, without a bias, or with a weight computed
        in the graph (weight norm, standardisation), next to a BatchNorm that has no node: the
        BatchNorm never ran, and the Conv keeps its own module."""
        for prop in node.metadata_props:
            if prop.key == _REWRITE_RULE_KEY and "BatchNorm" in text(prop.value):
                return True
        if in_batch_norm_scope:
            return True
        if batch_norm_read or len(inputs) < 3:
            return False
        return inputs[1] in made and inputs[2] in made


def tag_file(path, tree: ModuleTree, root_path: str = "", before=None,
             tagger=None, private: bool = False) -> tuple[TaggingResult, int | None]:
    """Tag an ONNX file in place; returns the result and the file's default-domain opset.

    Only the nodes are parsed and rewritten (``NodeSplice``); weights are copied as bytes.
    ``private``: the file is the caller's own (an exporter's output in a staging folder), so its
    weights may be moved within it rather than copied (``NodeSplice.write(in_place=True)``).
    ``before(splice)`` may add nodes and outputs first, in the same single rewrite of the file.
    ``tagger`` replaces the TorchScript-scope pass (e.g. ``DynamoTaggingPass`` for dynamo files).
    """
    from modelexport.hierarchy.node_splice import NodeSplice

    from modelexport.hierarchy.fingerprint import graph_fingerprint

    splice = NodeSplice(path)
    try:
        if before is not None:
            before(splice)
        tagger = tagger or TaggingPass(tree, root_path)
        if tagger.parameters is not None:
            tagger.initializers = splice
        result = tagger(splice.graph)
        result.graph_sha256 = graph_fingerprint(splice.graph)
    except BaseException:
        splice.close()
        raise
    opset = next((o.version for o in splice.opset_imports if o.domain in ("", "ai.onnx")), None)
    splice.write(in_place=private)
    return result, opset
