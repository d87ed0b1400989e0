"""Where a module meets the rest of its graph, and the module cut out as a model of its own.

The one place this is worked out, for ``extract`` (one module, typed by shape inference) and for
``diff`` (every module's boundary values; each module's nodes run alone on the reference's
values). A node reads what its inputs name and also what the bodies of its If/Loop/Scan
attributes read from the enclosing graph (outer-scope reads): a merged decoder's ``If`` reads
``encoder_hidden_states`` only inside its branches, and that tensor enters whatever module holds
the ``If``. Constants (initializers, Constant nodes) are never boundary values: a cut carries
along those it reads. Untagged nodes belong to the root ("").
"""
from __future__ import annotations

from dataclasses import dataclass

from modelexport.hierarchy import paths
from modelexport.hierarchy.tags import node_tag


def _subgraphs(node):
    import onnx

    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def outer_reads(graph) -> list[str]:
    """Names a (sub)graph reads that it does not define itself (its inputs, initializers and the
    outputs of its nodes), nested bodies included, in first-read order."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {o for n in graph.node for o in n.output if o}
    found: dict[str, None] = {}
    for node in graph.node:
        for name in node_reads(node):
            if name not in defined:
                found.setdefault(name)
    return list(found)


def node_reads(node) -> list[str]:
    """What a node reads: its inputs, then what its bodies read from outside them."""
    reads = [x for x in node.input if x]
    for sub in _subgraphs(node):
        reads += outer_reads(sub)
    return list(dict.fromkeys(reads))


@dataclass
class Boundary:
    inputs: list[str]  # tensors entering the module: graph inputs or values computed outside it
    outputs: list[str]  # tensors it computes that are read outside it or are graph outputs


class GraphCut:
    """The main graph of ``model`` indexed once: who produces and who reads each tensor."""

    def __init__(self, model):
        graph = model.graph
        self.model = model
        self.nodes = list(graph.node)
        self.paths = [node_tag(n).module_path or "" for n in self.nodes]
        self.tags: dict[str, str] = {}
        for n, p in zip(self.nodes, self.paths):
            tag = node_tag(n).hierarchy_tag
            if tag:
                self.tags.setdefault(p, tag)
        self.initializers = {t.name: t for t in graph.initializer}
        self.constant_nodes = {o: i for i, n in enumerate(self.nodes) if n.op_type == "Constant" for o in n.output}
        self.constants = set(self.initializers) | set(self.constant_nodes)
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in graph.output]
        self.producer: dict[str, int] = {}
        self.readers: dict[str, list[int]] = {}
        self.reads: list[list[str]] = []
        for i, node in enumerate(self.nodes):
            for name in node.output:
                if name:
                    self.producer[name] = i
            reads = node_reads(node)
            self.reads.append(reads)
            for name in reads:
                self.readers.setdefault(name, []).append(i)

    def modules(self) -> set[str]:
        """Every module with a node, and each of its ancestors (the root included)."""
        return paths.with_ancestors(self.paths)

    def inside(self, module: str) -> list[int]:
        return [i for i, p in enumerate(self.paths) if paths.contains(module, p)]

    def boundary(self, module: str) -> Boundary:
        inside = self.inside(module)
        members = set(inside)
        outputs_of_graph = set(self.graph_outputs)
        inputs: dict[str, None] = {}
        outputs: dict[str, None] = {}
        for i in inside:
            for name in self.reads[i]:
                if name not in self.constants and self.producer.get(name) not in members:
                    inputs.setdefault(name)
            for name in self.nodes[i].output:
                if not name or name in self.constants:
                    continue
                if name in outputs_of_graph or any(r not in members for r in self.readers.get(name, ())):
                    outputs.setdefault(name)
        return Boundary(list(inputs), list(outputs))

    def all_boundaries(self) -> dict[str, Boundary]:
        """``boundary`` of every module at once, in one pass over the tensors: a tensor leaves
        its producer's module and each ancestor up to the first one that holds all its readers;
        it enters each reader's module and ancestors up to the first that holds its producer."""
        found: dict[str, Boundary] = {m: Boundary([], []) for m in self.modules()}
        outputs_of_graph = set(self.graph_outputs)
        for name, i in self.producer.items():
            if name in self.constants:
                continue
            readers = [self.paths[r] for r in self.readers.get(name, ())]
            for module in reversed(paths.chain(self.paths[i])):  # the producer's module first
                if name not in outputs_of_graph and all(paths.contains(module, r) for r in readers):
                    break  # read only inside this module, and so inside its ancestors
                found[module].outputs.append(name)
        entered: dict[str, set] = {m: set() for m in found}
        for name, readers in self.readers.items():
            if name in self.constants:
                continue
            source = self.producer.get(name)
            source_path = self.paths[source] if source is not None else None
            for reader in dict.fromkeys(self.paths[r] for r in readers):
                for module in reversed(paths.chain(reader)):
                    if source_path is not None and paths.contains(module, source_path):
                        break
                    if name not in entered[module]:
                        entered[module].add(name)
                        found[module].inputs.append(name)
        return found

    def piece(self, module: str, input_types: list, output_types: list, name: str | None = None):
        """The module's nodes as a model: ``input_types``/``output_types`` are ValueInfoProtos of
        its boundary (typed by the caller: shape inference for ``extract``, the values at hand for
        ``diff``); the Constant nodes and initializers it reads are carried along."""
        from onnx import helper

        inside = self.inside(module)
        members = set(inside)
        reads = {x for i in inside for x in self.reads[i]}
        carried = {self.constant_nodes[x] for x in reads if x in self.constant_nodes} - members
        nodes = [self.nodes[i] for i in sorted(members | carried)]
        initializers = [self.initializers[x] for x in sorted(reads) if x in self.initializers]
        graph = helper.make_graph(nodes, name or f"{self.model.graph.name or 'graph'}:{module or 'root'}",
                                  input_types, output_types, initializers)
        return helper.make_model(graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version,
                                 producer_name="modelexport")
