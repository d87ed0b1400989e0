"""Give untagged nodes the module of the nodes around them.

Shared by the tagging pass (nodes the exporter left without a scope) and tag restoration
(nodes an optimizer or quantizer created): first from the nodes that consume a node's outputs
(walking backwards, so chains resolve), then from those that produce its inputs.
"""
from __future__ import annotations

from typing import Callable, Sequence


def tensor_index(nodes: Sequence, produced: set[str], consumed: set[str]
                 ) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Which node produces each tensor of ``produced``, which nodes read each of ``consumed``.
    Only the tensors asked for are indexed: whole-graph maps cost more than the inference."""
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.output:
            if name in produced:
                producer[name] = i
        for name in node.input:
            if name in consumed:
                consumers.setdefault(name, []).append(i)
    return producer, consumers


def infer_from_neighbours(nodes: Sequence, assigned: list[str | None],
                          common: Callable[[list[str]], str]) -> int:
    """Fill ``assigned[i] is None`` entries in place; returns how many were filled."""
    unknown = [i for i, p in enumerate(assigned) if p is None]
    if not unknown:
        return 0
    # Index only the tensors the unknown nodes touch: whole-graph maps of every tensor cost
    # more (and grow worse than linearly, from cache misses) than the inference itself.
    producer, consumers = tensor_index(nodes, {name for i in unknown for name in nodes[i].input if name},
                                       {name for i in unknown for name in nodes[i].output if name})
    filled = 0
    for i in reversed(unknown):
        found = [assigned[c] for name in nodes[i].output for c in consumers.get(name, ()) if assigned[c] is not None]
        if found:
            assigned[i] = common(found)
            filled += 1
    for i in unknown:
        if assigned[i] is not None:
            continue
        found = [assigned[producer[x]] for x in nodes[i].input if x in producer and assigned[producer[x]] is not None]
        if found:
            assigned[i] = common(found)
            filled += 1
    return filled
