"""A fingerprint of a graph's structure, to tell later whether a file is still the one exported.

Hashes each node's name, op type, domain, inputs and outputs (subgraphs included), not the
tags (they are checked on their own) and not the weights (hashing hundreds of MB would cost
more than the whole tagging pass).
"""
from __future__ import annotations

import hashlib

from modelexport.hierarchy.tags import iter_nodes


def graph_fingerprint(graph) -> str:
    digest = hashlib.sha256()
    for node, graph_path in iter_nodes(graph):
        for part in (graph_path, node.name, node.op_type, node.domain, *node.input, "->", *node.output):
            digest.update(part.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
        digest.update(b"\n")
    return digest.hexdigest()
