"""Per-module differences between two exported models (two opsets, before/after optimization,
two checkpoints of one architecture)."""
from __future__ import annotations

from dataclasses import dataclass, field

from modelexport.inspect.analysis import FileAnalysis


@dataclass
class ModuleDiff:
    module_path: str
    nodes: tuple[int, int]
    parameters: tuple[int, int]
    ops_added: dict[str, int] = field(default_factory=dict)  # op type -> count more in B
    ops_removed: dict[str, int] = field(default_factory=dict)  # op type -> count fewer in B
    only_in: str | None = None  # "a" or "b" when the module exists on one side

    @property
    def changed(self) -> bool:
        return (self.only_in is not None or self.nodes[0] != self.nodes[1] or self.parameters[0] != self.parameters[1]
                or bool(self.ops_added) or bool(self.ops_removed))

    def as_dict(self) -> dict:
        return {"module_path": self.module_path, "nodes_a": self.nodes[0], "nodes_b": self.nodes[1],
                "parameters_a": self.parameters[0], "parameters_b": self.parameters[1],
                "ops_added": self.ops_added, "ops_removed": self.ops_removed, "only_in": self.only_in}


@dataclass
class FileComparison:
    name_a: str
    name_b: str
    nodes: tuple[int, int]
    parameters: tuple[int, int]
    modules: list[ModuleDiff]

    @property
    def changed(self) -> list[ModuleDiff]:
        return [m for m in self.modules if m.changed]

    def as_dict(self) -> dict:
        return {"file_a": self.name_a, "file_b": self.name_b, "nodes_a": self.nodes[0], "nodes_b": self.nodes[1],
                "parameters_a": self.parameters[0], "parameters_b": self.parameters[1],
                "modules_compared": len(self.modules), "modules_changed": len(self.changed),
                "modules": [m.as_dict() for m in self.modules]}


def compare_files(a: FileAnalysis, b: FileAnalysis) -> FileComparison:
    diffs = []
    for path in list(a.modules) + [p for p in b.modules if p not in a.modules]:
        ma, mb = a.modules.get(path), b.modules.get(path)
        ops_a = ma.ops_total if ma else {}
        ops_b = mb.ops_total if mb else {}
        added = {op: ops_b.get(op, 0) - ops_a.get(op, 0) for op in ops_b if ops_b.get(op, 0) > ops_a.get(op, 0)}
        removed = {op: ops_a.get(op, 0) - ops_b.get(op, 0) for op in ops_a if ops_a.get(op, 0) > ops_b.get(op, 0)}
        diffs.append(ModuleDiff(
            path,
            (ma.nodes_total if ma else 0, mb.nodes_total if mb else 0),
            (ma.params_total if ma else 0, mb.params_total if mb else 0),
            dict(sorted(added.items())), dict(sorted(removed.items())),
            None if ma and mb else ("a" if ma else "b")))
    return FileComparison(a.name, b.name, (a.nodes, b.nodes), (a.parameters, b.parameters), diffs)


def pair_files(a: list[FileAnalysis], b: list[FileAnalysis]) -> list[tuple[FileAnalysis | None, FileAnalysis | None]]:
    """Files matched by name; two single-file models are compared whatever their names."""
    if len(a) == 1 and len(b) == 1:
        return [(a[0], b[0])]
    names_b = {f.name: f for f in b}
    pairs = [(f, names_b.pop(f.name, None)) for f in a]
    pairs += [(None, f) for f in names_b.values()]
    return pairs
