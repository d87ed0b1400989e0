"""``modelexport diff A B``: per-module error between two exports of one model."""
from __future__ import annotations

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("diff", help="per-module error between two exports (float vs quantized, optimized, ...)",
                       description="Run A and B in ONNX Runtime on the same inputs and compare every module at its "
                       "boundary (the values it hands to the rest of the graph): max |A-B|, relative L2 error, "
                       "cosine, and the error the module adds itself (its error minus the largest of what enters "
                       "it and of its children's outputs). A is the reference.")
    p.add_argument("a", metavar="A", help="reference: exported folder or ONNX file")
    p.add_argument("b", metavar="B", nargs="?", default=None, help="the other export of the same model")
    p.add_argument("--pytorch", nargs="?", const="", default=None, metavar="SOURCE",
                   help="compare A with the PyTorch model instead of B (default: the local source folder the "
                   "metadata records): forward hooks on every module, paired with A's module boundaries by order "
                   "and shape; modules that cannot be paired are listed with the reason")
    shared.add_model_inputs(p)
    shared.add_tree_selection(p)
    p.add_argument("--top", type=int, default=None, metavar="N", help="only the N modules adding the most error")
    p.add_argument("--overlay", default=None, metavar="FILE.json",
                   help="also write Model Explorer node data of A (each node: the error its module adds) for "
                   "`modelexport view A --overlay FILE.json`")
    shared.add_format(p, choices=("table", "json"), default="table")
    shared.add_force(p, "an --overlay file")
    p.set_defaults(run=run)


def run(args) -> int:
    import fnmatch
    import json

    from modelexport.errors import ModelExportError
    from modelexport.folder.loading import load_target
    from modelexport.runtime.diff import diff_files
    from modelexport.runtime.feeds import feeds_for

    if args.top is not None and args.top < 1:
        raise ModelExportError("--top must be at least 1")
    if args.pytorch is not None:
        if args.b is not None:
            raise ModelExportError("give B or --pytorch, not both")
        return _against_pytorch(args)
    if args.b is None:
        raise ModelExportError("give the export B to compare A with, or --pytorch")
    target_a, target_b = load_target(args.a), load_target(args.b)
    by_name_b = {f.name: f for f in target_b.files}
    if len(target_a.files) == 1 and len(target_b.files) == 1:
        pairs = [(target_a.files[0], target_b.files[0])]
    else:
        pairs = [(f, by_name_b[f.name]) for f in target_a.files if f.name in by_name_b]
    if not pairs:
        raise ModelExportError(f"{args.a} and {args.b} have no ONNX file of the same name to compare")
    if args.overlay:
        from modelexport.folder.outputs import check_new_file
        from modelexport.runtime.overlay import overlay_paths

        for path in overlay_paths(args.overlay, [fa.name for fa, _ in pairs]).values():
            check_new_file(path, args.force, [target_a.path, target_b.path], "--overlay")
    files, sources = {}, {}
    for fa, fb in pairs:
        feeds, sources[fa.name] = feeds_for(target_a, fa, args)
        files[fa.name] = diff_files(fa.path, fb.path, feeds)
    if args.overlay:
        import sys
        from pathlib import Path

        from modelexport.runtime.overlay import write_overlays

        per_file = {fa.name: (fa.model, {m.module_path: m.added_rel_l2 for m in files[fa.name].modules
                                         if m.added_rel_l2 is not None}) for fa, _ in pairs}
        for written in write_overlays(Path(args.overlay), per_file, "relative L2 error added by the module",
                                      args.force):
            print(f"wrote {written}", file=sys.stderr)
    for result in files.values():
        rows = result.modules
        if args.depth is not None:
            rows = [m for m in rows if (m.module_path.count(".") + 1 if m.module_path else 0) <= args.depth]
        if args.pattern:
            rows = [m for m in rows if fnmatch.fnmatchcase(m.module_path, args.pattern)]
        if args.top:
            rows = sorted((m for m in rows if m.added_rel_l2 is not None), key=lambda m: -m.added_rel_l2)[: args.top]
        result.modules = rows
    if args.format == "json":
        print(json.dumps({"schema": "modelexport.diff", "schema_version": 1, "a": str(args.a), "b": str(args.b),
                          "files": {name: {**r.as_dict(), "inputs": sources[name]} for name, r in files.items()}},
                         indent=2))
        return 0
    _print(files, sources, ranked=bool(args.top))
    return 0


def _number(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _print(files, sources, ranked: bool) -> None:
    from rich.markup import escape

    from modelexport.cli.console import stdout_console, table
    from modelexport.inspect.render import safe_text

    console = stdout_console()
    for name, result in files.items():
        console.print(f"[bold]{escape(safe_text(name))}[/]: B against A on {result.inputs_run} input(s) "
                      f"({escape(sources[name])})" + (f"; [red]{result.nonfinite} NaN/Inf in B[/]" if result.nonfinite
                                                      else ""))
        t = table("module", "boundary", "max |A-B|", "rel L2", "cosine", "alone rel L2", "added rel L2",
                  right=("max |A-B|", "rel L2", "cosine", "alone rel L2", "added rel L2"))
        for m in result.modules:
            label = m.module_path or "(root)"
            if not ranked and m.module_path:
                label = "  " * (m.module_path.count(".") + 1) + label
            boundary = m.boundary if m.boundary != "fused" else f"fused (at {m.compared_at or '—'})"
            t.add_row(escape(safe_text(label)), escape(boundary), _number(m.max_abs, ".3g"), _number(m.rel_l2, ".3g"),
                      _number(m.cosine, ".6f"), _number(m.isolated_rel_l2, ".3g"), _number(m.added_rel_l2, ".3g"))
        console.print(t)
    console.print("[dim]rel L2 = ||B-A|| / ||A|| at the module's boundary; alone = B's nodes of the module run on A's "
                  "values entering it; added = alone minus the largest alone of its children (boundary errors "
                  "when the module cannot run alone)[/]")


def _against_pytorch(args) -> int:
    import json

    from modelexport.errors import ModelExportError
    from modelexport.folder.loading import load_target
    from modelexport.runtime.feeds import feeds_for
    from modelexport.runtime.torch_diff import diff_against_pytorch, load_source_model

    target = load_target(args.a)
    if target.metadata is None:
        raise ModelExportError(f"{args.a}: {target.metadata_problem}; --pytorch needs an exported folder")
    if len(target.files) != 1:
        raise ModelExportError("--pytorch compares single-file exports (encoder-decoder folders trace submodels)")
    f = target.files[0]
    feeds, what = feeds_for(target, f, args)
    model = load_source_model(target.metadata, args.pytorch or None)
    rows = diff_against_pytorch(f.path, model, target.metadata.library, feeds)
    if args.depth is not None:
        rows = [r for r in rows if (r.module_path.count(".") + 1 if r.module_path else 0) <= args.depth]
    if args.format == "json":
        print(json.dumps({"schema": "modelexport.diff", "schema_version": 1, "a": str(args.a), "b": "pytorch",
                          "files": {f.name: {"inputs": what, "inputs_run": len(feeds),
                                             "modules": [r.as_dict() for r in rows if r.paired],
                                             "unpaired": [{"module_path": r.module_path, "reason": r.reason}
                                                          for r in rows if not r.paired]}}}, indent=2))
        return 0
    from rich.markup import escape

    from modelexport.cli.console import stdout_console, table

    console = stdout_console()
    console.print(f"[bold]{escape(f.name)}[/] against PyTorch on {len(feeds)} input(s) ({escape(what)})")
    t = table("module", "max |ONNX-PyTorch|", "rel L2", "cosine", right=("max |ONNX-PyTorch|", "rel L2", "cosine"))
    for r in rows:
        if r.paired:
            t.add_row(escape(r.module_path or "(root)"), _number(r.max_abs, ".3g"), _number(r.rel_l2, ".3g"),
                      _number(r.cosine, ".6f"))
    console.print(t)
    unpaired = [r for r in rows if not r.paired]
    if unpaired:
        console.print(f"{len(unpaired)} modules not paired (not guessed):")
        for r in unpaired:
            console.print(f"  {escape(r.module_path or '(root)')}: {escape(r.reason)}")
    return 0
