"""``modelexport compare A B``: per-module differences of nodes, op types and parameters."""
from __future__ import annotations

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("compare", help="per-module differences between two exported models",
                       description="Compare two ONNX files or exported folders module by module: node counts, "
                       "op types and parameters (e.g. two opsets, before/after optimization).")
    p.add_argument("a", metavar="A", help="first ONNX file or folder")
    p.add_argument("b", metavar="B", help="second ONNX file or folder")
    p.add_argument("--all", action="store_true", help="list unchanged modules too")
    shared.add_tree_selection(p)
    shared.add_format(p, choices=("table", "json"), default="table")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from modelexport.inspect.analysis import analyze_target, select
    from modelexport.inspect.compare import compare_files, pair_files
    from modelexport.folder.loading import load_target

    if args.all and args.format == "json":
        from modelexport.errors import ModelExportError

        raise ModelExportError("--all changes the table only: the JSON lists every module already (each with its "
                               "counts; 'modules_changed' counts those that differ)")
    files_a = analyze_target(load_target(args.a))
    files_b = analyze_target(load_target(args.b))
    if args.pattern:
        from modelexport.cli.args import check_pattern_matches

        check_pattern_matches(args.pattern, {p for a in files_a + files_b for p in a.modules}, "--filter")
    comparisons, unmatched = [], []
    for fa, fb in pair_files(files_a, files_b):
        if fa is None or fb is None:
            unmatched.append((fa or fb).name + (" (only in A)" if fb is None else " (only in B)"))
            continue
        comparison = compare_files(fa, fb)
        keep = {s.path for s in select(fa, args.depth, args.pattern)} | {
            s.path for s in select(fb, args.depth, args.pattern)}
        comparison.modules = [m for m in comparison.modules if m.module_path in keep]
        comparisons.append(comparison)
    if args.format == "json":
        print(json.dumps({"schema": "modelexport.comparison", "schema_version": 1, "a": args.a, "b": args.b,
                          "files": [c.as_dict() for c in comparisons], "unmatched_files": unmatched}, indent=2))
        return 0
    _print(comparisons, unmatched, args.all)
    return 0


def _print(comparisons, unmatched, show_all: bool) -> None:
    from rich.markup import escape

    from modelexport.cli.console import stdout_console, table as new_table

    from modelexport.inspect.render import human_count, safe_text

    console = stdout_console()
    for c in comparisons:
        changed = c.changed
        console.print(f"[bold]{escape(safe_text(c.name_a))}[/] vs [bold]{escape(safe_text(c.name_b))}[/]: "
                      f"nodes {c.nodes[0]} → {c.nodes[1]} ({c.nodes[1] - c.nodes[0]:+d}), parameters "
                      f"{human_count(c.parameters[0])} → {human_count(c.parameters[1])}; "
                      f"{len(changed)} of {len(c.modules)} modules differ")
        rows = c.modules if show_all else changed
        if not rows:
            continue
        table = new_table("module", "nodes A", "nodes B", "Δ", "params Δ", "ops added (B)", "ops removed (B)",
                          right=("nodes A", "nodes B", "Δ", "params Δ"))
        for m in rows:
            name = escape(safe_text(m.module_path or "(root)"))
            if m.only_in:
                name += f" [dim](only in {m.only_in.upper()})[/]"
            table.add_row(name, str(m.nodes[0]), str(m.nodes[1]), f"{m.nodes[1] - m.nodes[0]:+d}",
                          f"{m.parameters[1] - m.parameters[0]:+d}",
                          escape(", ".join(f"{op}+{n}" for op, n in m.ops_added.items())),
                          escape(", ".join(f"{op}−{n}" for op, n in m.ops_removed.items())))
        console.print(table)
    for name in unmatched:
        console.print(f"[yellow]not compared:[/] {escape(safe_text(name))}")
