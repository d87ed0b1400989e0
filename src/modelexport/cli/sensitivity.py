"""``modelexport sensitivity FOLDER``: which modules lose accuracy when quantized."""
from __future__ import annotations

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("sensitivity", help="rank modules by the accuracy int8 quantization costs in each",
                       description="For each candidate module, quantize only that module, then everything but "
                       "that module (dynamic int8, as `quantize`), run both and the float folder in ONNX Runtime on "
                       "the same inputs, and compare the end outputs. Most sensitive first.")
    p.add_argument("path", metavar="FOLDER", help="an exported folder (float)")
    add_candidates(p)
    shared.add_model_inputs(p)
    shared.add_format(p, choices=("table", "json"), default="table")
    p.set_defaults(run=run)


def add_candidates(p) -> None:
    p.add_argument("--depth", type=int, default=None,
                   help="rank the modules at this depth (default: the items of the largest ModuleList, the layers)")
    p.add_argument("--modules", nargs="+", default=[], metavar="GLOB", help="rank the modules matching these globs")


def feeds_by_file(folder, args):
    """Feeds for every ONNX file of an exported folder, and what they are."""
    from modelexport.folder.loading import load_target
    from modelexport.runtime.feeds import feeds_for

    target = load_target(folder)
    if target.metadata is None:
        from modelexport.errors import ModelExportError

        raise ModelExportError(f"{folder}: {target.metadata_problem}")
    feeds, what = {}, set()
    for f in target.files:
        feeds[f.name], description = feeds_for(target, f, args)
        what.add(description)
    return target, feeds, "; ".join(sorted(what))


def run(args) -> int:
    import json
    import sys

    from modelexport.runtime.sensitivity import candidate_modules, modules_with_nodes, sensitivity

    target, feeds, what = feeds_by_file(args.path, args)
    candidates = candidate_modules(target.metadata.modules, args.depth, args.modules)

    def progress(i, n, module):
        print(f"[{i + 1}/{n}] quantizing around {module}", file=sys.stderr, flush=True)

    rows = sensitivity(target.folder, candidates, feeds, progress, modules_with_nodes(target.metadata.modules))
    if args.format == "json":
        print(json.dumps({"schema": "modelexport.sensitivity", "schema_version": 1, "path": str(args.path),
                          "inputs": what, "modules": [r.as_dict() for r in rows]}, indent=2))
        return 0
    from rich.markup import escape

    from modelexport.cli.console import stdout_console, table

    console = stdout_console()
    console.print(f"End outputs against the float folder, on {escape(what)}; most sensitive first")
    t = table("module", "cosine (only this int8)", "max abs (only this)", "cosine (all but this)",
              "max abs (all but this)", right=("cosine (only this int8)", "max abs (only this)",
                                               "cosine (all but this)", "max abs (all but this)"))
    for r in rows:
        t.add_row(escape(r.module_path), f"{r.cosine_only_this:.6f}", f"{r.max_abs_only_this:.3g}",
                  f"{r.cosine_all_but_this:.6f}", f"{r.max_abs_all_but_this:.3g}")
    console.print(t)
    return 0
