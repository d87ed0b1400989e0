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
    return fill_from_neighbours(unknown, assigned, lambda i: nodes[i].output, lambda i: nodes[i].input,
                                consumers, lambda wanted: producer, common)


def fill_from_neighbours(unknown: list[int], assigned: list[str | None], outputs_of: Callable[[int], Sequence[str]],
                         inputs_of: Callable[[int], Sequence[str]], consumers: dict[str, list[int]],
                         producers: Callable[[set[str]], dict[str, int]], common: Callable[[list[str]], str]) -> int:
    """The rule itself, on maps the caller already has: each node of ``unknown`` (in order) gets
    the common module of the nodes consuming its outputs, walking backwards so that chains
    resolve; those still unknown, of the nodes producing their inputs (``producers(names)``, asked
    only when some are left). Returns how many were filled."""
    filled = 0
    for i in reversed(unknown):
        found = [assigned[c] for name in outputs_of(i) for c in consumers.get(name, ()) if assigned[c] is not None]
        if found:
            assigned[i] = common(found)
            filled += 1
    left = [i for i in unknown if assigned[i] is None]
    if left:
        producer = producers({name for i in left for name in inputs_of(i) if name})
        for i in left:
            found = [assigned[producer[x]] for x in inputs_of(i) if x in producer and assigned[producer[x]] is not None]
            if found:
                assigned[i] = common(found)
                filled += 1
    return filled
