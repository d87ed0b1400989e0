"""A fingerprint of a graph's structure, to tell later whether a file is still the one exported.

Hashes each node's name, op type, domain, inputs and outputs (subgraphs included), not the
tags (they are checked on their own) and not the weights (hashing hundreds of MB would cost
more than the whole tagging pass).

The bytes hashed are, per node in ``tags.iter_nodes`` order: its graph path, name, op type,
domain, inputs, ``->``, outputs, each followed by a NUL, then a newline. They are joined per node
and hashed in large pieces (one ``update`` per part cost more than the tagging pass); only the
nodes that can hold a graph (control flow, or an op outside the default domain) have their
attributes read.
"""
from __future__ import annotations

import hashlib

import onnx

from modelexport.hierarchy.tags import text

# Default-domain ops with graph attributes; any other default-domain op holds none.
_CONTROL_FLOW = frozenset(("If", "Loop", "Scan", "SequenceMap"))
_DEFAULT_DOMAINS = frozenset(("", "ai.onnx"))


def graph_fingerprint(graph) -> str:
    digest = hashlib.sha256()
    pieces: list[str] = []
    _collect(graph, "", pieces, digest)
    digest.update("".join(pieces).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _collect(graph, graph_path: str, pieces: list[str], digest) -> None:
    join = "\0".join
    for node in graph.node:
        op, domain = node.op_type, node.domain
        pieces.append(join((graph_path, node.name, op, domain, *node.input, "->", *node.output, "\n")))
        if op in _CONTROL_FLOW or domain not in _DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    _collect(attr.g, f"{graph_path}{text(node.name)}/{text(attr.name)}/", pieces, digest)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for i, sub in enumerate(attr.graphs):
                        _collect(sub, f"{graph_path}{text(node.name)}/{text(attr.name)}.{i}/", pieces, digest)
        if len(pieces) >= 4096:
            digest.update("".join(pieces).encode("utf-8", "surrogatepass"))
            pieces.clear()
