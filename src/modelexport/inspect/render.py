"""Text for people: module trees and tables (rich), with every name escaped."""
from __future__ import annotations

import csv
import io

from modelexport.inspect.analysis import UNTAGGED, FileAnalysis, select


def human_count(n: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def safe_text(text: str) -> str:
    """One printable line: control characters shown as escapes. Never shortened: a cut name
    cannot be searched for or passed back to ``--module``."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def module_label(stats, analysis: FileAnalysis) -> str:
    from rich.markup import escape

    name = "(root)" if stats.path == "" else stats.path.rsplit(".", 1)[-1] if stats.path != UNTAGGED else UNTAGGED
    if stats.parent and stats.path.rsplit(".", 2)[-1].isnumeric():
        name = ".".join(stats.path.rsplit(".", 2)[-2:])  # "layer.1" reads better than "1"
    cls = f" [cyan]{escape(safe_text(stats.class_name))}[/]" if stats.class_name else ""
    share = 100.0 * stats.nodes_total / analysis.nodes if analysis.nodes else 0.0
    ops = ", ".join(f"{escape(safe_text(op))}×{n}" for op, n in stats.ops_total.most_common(3))
    params = f"  params {human_count(stats.params_total)} ({human_bytes(stats.bytes_total)})" if stats.params_total else ""
    return (f"[bold]{escape(safe_text(name))}[/]{cls}  nodes {stats.nodes_own}/{stats.nodes_total} "
            f"[dim]({share:.1f}%)[/]{params}  [dim]{ops}[/]")


def print_tree(analyses: list[FileAnalysis], depth: int | None, pattern: str | None, console) -> None:
    from rich.markup import escape
    from rich.tree import Tree

    for analysis in analyses:
        shown = {s.path for s in select(analysis, depth, pattern)}
        header = (f"[bold]{escape(safe_text(analysis.name))}[/]  {analysis.nodes} nodes, "
                  f"{human_count(analysis.parameters)} parameters ({human_bytes(analysis.parameter_bytes)})")
        if not analysis.tagged:
            header += "  [yellow]no modelexport tags: every node is untagged[/]"
        elif analysis.untagged_nodes:
            header += f"  [yellow]{analysis.untagged_nodes} untagged nodes[/]"
        tree = Tree(header)
        branches = {}
        for path, stats in analysis.modules.items():
            if path not in shown:
                continue
            parent_branch = branches.get(stats.parent, tree)
            branches[path] = parent_branch.add(module_label(stats, analysis))
        console.print(tree)
        console.print("[dim]nodes own/total (share of the file); params: initializers read by the module's nodes; "
                      "top op types in the subtree[/]")


def csv_text(analyses: list[FileAnalysis], depth: int | None, pattern: str | None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "module_path", "class", "depth", "nodes_own", "nodes_total", "parameters_total",
                     "parameter_bytes_total", "top_ops"])
    for analysis in analyses:
        for s in select(analysis, depth, pattern):
            ops = " ".join(f"{op}:{n}" for op, n in s.ops_total.most_common(5))
            writer.writerow([analysis.name, s.path, s.class_name or "", s.depth, s.nodes_own, s.nodes_total,
                             s.params_total, s.bytes_total, ops])
    return buffer.getvalue()
