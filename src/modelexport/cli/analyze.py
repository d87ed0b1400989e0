"""``modelexport analyze PATH``: the module tree with nodes, op types and parameters per module."""
from __future__ import annotations

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("analyze", help="module tree with node, op-type and parameter counts",
                       description="Show where the nodes, op types and parameters of an exported model sit in "
                       "its module tree (one tree per ONNX file of a folder).")
    shared.add_path(p)
    shared.add_tree_selection(p)
    shared.add_format(p)
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    import sys

    from modelexport.inspect.analysis import analyze_target, select
    from modelexport.folder.loading import load_target

    target = load_target(args.path)
    analyses = analyze_target(target)
    if args.pattern:
        from modelexport.cli.args import check_pattern_matches

        check_pattern_matches(args.pattern, {p for a in analyses for p in a.modules}, "--filter")
    if args.format == "json":
        doc = {"schema": "modelexport.analysis", "schema_version": 1, "path": str(target.path),
               "files": {}}
        for a in analyses:
            entry = a.as_dict()
            entry["modules"] = [s.as_dict() for s in select(a, args.depth, args.pattern)]
            doc["files"][a.name] = entry
        print(json.dumps(doc, indent=2))
    elif args.format == "csv":
        from modelexport.inspect.render import csv_text

        sys.stdout.write(csv_text(analyses, args.depth, args.pattern))
    else:

        from modelexport.cli.console import stdout_console
        from modelexport.inspect.render import print_tree

        print_tree(analyses, args.depth, args.pattern, stdout_console())
    return 0
