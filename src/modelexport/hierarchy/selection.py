"""Module patterns -> nodes, over every ONNX file of a folder and the If/Loop bodies inside them.

Shared by the per-module tools (quantize --exclude-modules, extract --module): a pattern that
matches in at least one file is valid; one that matches nowhere is an error naming close matches.
A node matches when its module or any ancestor matches the glob (``decoder.block.1`` selects the
block and everything below it).
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field

from modelexport.errors import ModelExportError
from modelexport.hierarchy.tags import iter_nodes, node_tag


@dataclass
class Selection:
    # pattern -> file -> names of the matching nodes (main graph and subgraphs)
    nodes: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # pattern -> file -> how many of those are inside a subgraph (e.g. a merged decoder's If)
    in_subgraphs: dict[str, dict[str, int]] = field(default_factory=dict)

    def names_in(self, file: str) -> list[str]:
        return [n for per_file in self.nodes.values() for n in per_file.get(file, ())]


def _chain(path: str) -> list[str]:
    atoms = path.split(".") if path else []
    return [".".join(atoms[: i + 1]) for i in range(len(atoms))] or [""]


def select_modules(models: dict[str, object], patterns: list[str], what: str = "--exclude-modules") -> Selection:
    """``models``: file name -> ModelProto (weights not needed)."""
    selection = Selection({p: {} for p in patterns}, {p: {} for p in patterns})
    known: set[str] = set()
    for file, model in models.items():
        for node, graph_path in iter_nodes(model.graph):
            path = node_tag(node, graph_path).module_path
            if path is None:
                continue
            chain = _chain(path)
            known.update(chain)
            for pattern in patterns:
                if any(fnmatch.fnmatchcase(p, pattern) for p in chain):
                    selection.nodes[pattern].setdefault(file, []).append(node.name)
                    if graph_path:
                        counts = selection.in_subgraphs[pattern]
                        counts[file] = counts.get(file, 0) + 1
    for pattern in patterns:
        if not selection.nodes[pattern]:
            close = difflib.get_close_matches(pattern, sorted(known), n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            files = ", ".join(models)
            raise ModelExportError(f"{what} {pattern!r} matches no module in {files}{hint}")
    return selection
