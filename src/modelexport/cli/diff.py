"""``modelexport diff A B``: per-module error between two exports of one model."""
from __future__ import annotations

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("diff", help="per-module error between two exports (float vs quantized, optimized, ...)",
                       description="Run A and B in ONNX Runtime on the same inputs and compare every module at its "
                       "boundary (the values it hands to the rest of the graph): max |A-B|, relative L2 error, "
                       "cosine, and the error the module adds itself (its error minus the largest of what enters "
                       "it and of its children's outputs). A is the reference. A module whose values are NaN/Inf "
                       "on one side, or where nothing could be compared, says so and ranks first.")
    p.add_argument("a", metavar="A", help="reference: exported folder or ONNX file")
    p.add_argument("b", metavar="B", nargs="?", default=None, help="the other export of the same model")
    p.add_argument("--pytorch", nargs="?", const="", default=None, metavar="SOURCE",
                   help="compare A with the PyTorch model instead of B (default: the local source folder the "
                   "metadata records): forward hooks on every module, paired with A's module boundaries by order "
                   "and shape; modules that cannot be paired are listed with the reason")
    shared.add_model_inputs(p)
    shared.add_tree_selection(p)
    p.add_argument("--top", type=int, default=None, metavar="N",
                   help="only the N modules adding the most error (NaN/Inf and uncompared modules first)")
    p.add_argument("--overlay", default=None, metavar="FILE.json",
                   help="also write Model Explorer node data of A (each node: the error its module adds) for "
                   "`modelexport view A --overlay FILE.json`")
    shared.add_format(p, choices=("table", "json"), default="table")
    shared.add_force(p, "an --overlay file")
    p.set_defaults(run=run)


def _progress(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)


def run(args) -> int:
    import json

    from modelexport.errors import ModelExportError
    from modelexport.folder.loading import load_target
    from modelexport.runtime.diff import diff_files
    from modelexport.runtime.feeds import check_input_options

    if args.top is not None and args.top < 1:
        raise ModelExportError("--top must be at least 1")
    check_input_options(args)
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
    for fa, fb in pairs:
        _check_same_interface(fa, fb)
    _check_selection(args, [fa for fa, _ in pairs])
    if args.overlay:
        from modelexport.folder.outputs import check_new_file
        from modelexport.runtime.overlay import overlay_paths

        for path in overlay_paths(args.overlay, [fa.name for fa, _ in pairs]).values():
            check_new_file(path, args.force, [target_a.path, target_b.path], "--overlay")
    # Every file's inputs are built and checked before anything runs: a refused input costs no wait.
    feeds_by_file, sources = _feeds(target_a, pairs, args)
    files = {}
    for i, (fa, fb) in enumerate(pairs):
        prefix = f"[{i + 1}/{len(pairs)}] {fa.name}: "
        files[fa.name] = diff_files(fa.path, fb.path, feeds_by_file[fa.name],
                                    progress=lambda text, prefix=prefix: _progress(prefix + text))
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
        result.modules = _select(result.modules, args)
    if args.format == "json":
        print(json.dumps({"schema": "modelexport.diff", "schema_version": 2, "a": str(args.a), "b": str(args.b),
                          "files": {name: {**r.as_dict(), "inputs": sources[name]} for name, r in files.items()}},
                         indent=2, allow_nan=False))
        return 0
    _print(files, sources, ranked=bool(args.top))
    return 0


def _feeds(target_a, pairs, args):
    from modelexport.runtime.feeds import check_feed, feeds_for, input_specs

    feeds_by_file, sources = {}, {}
    for fa, fb in pairs:
        feeds, sources[fa.name] = feeds_for(target_a, fa, args)
        specs_b = input_specs(fb.model)
        for feed in feeds:
            check_feed(feed, specs_b, f"the inputs built for {fa.name} of A", f"B's {fb.name}")
        feeds_by_file[fa.name] = feeds
    return feeds_by_file, sources


def _check_same_interface(fa, fb) -> None:
    """A and B take the same inputs and give the same outputs (names and types), or B is not
    another export of A's model and the run would fail or compare nothing."""
    from modelexport.errors import ModelExportError
    from modelexport.runtime.feeds import input_specs

    specs_a = {s.name: s for s in input_specs(fa.model)}
    specs_b = {s.name: s for s in input_specs(fb.model)}
    if set(specs_a) != set(specs_b):
        only_a, only_b = sorted(set(specs_a) - set(specs_b)), sorted(set(specs_b) - set(specs_a))
        words = "; ".join(x for x in (f"only A's {fa.name} takes {', '.join(only_a)}" if only_a else "",
                                      f"only B's {fb.name} takes {', '.join(only_b)}" if only_b else "") if x)
        raise ModelExportError(f"A and B take different inputs ({words}): B is not an export of A's model")
    for name, a in specs_a.items():
        b = specs_b[name]
        if a.dtype != b.dtype or len(a.dims) != len(b.dims):
            raise ModelExportError(f"input {name}: A's {fa.name} takes {a.describe()}, B's {fb.name} takes "
                                   f"{b.describe()}: B is not an export of A's model")
    outs_a = [o.name for o in fa.model.graph.output]
    outs_b = [o.name for o in fb.model.graph.output]
    if set(outs_a) != set(outs_b):
        raise ModelExportError(f"A's {fa.name} gives outputs {', '.join(outs_a)}; B's {fb.name} gives "
                               f"{', '.join(outs_b)}: B is not an export of A's model")


def _check_selection(args, files) -> None:
    """--filter must match a module of A (said before the runs, not after)."""
    if not args.pattern:
        return
    from modelexport.cli.args import check_pattern_matches
    from modelexport.hierarchy import paths
    from modelexport.hierarchy.tags import read_tags

    known = paths.with_ancestors(t.module_path for f in files for t in read_tags(f.model)
                                 if t.module_path is not None)
    check_pattern_matches(args.pattern, known, "--filter")


def _within_depth_and_pattern(rows, args):
    """The rows --depth and --filter keep (module diffs and PyTorch diffs alike)."""
    import fnmatch

    from modelexport.hierarchy import paths

    if args.depth is not None:
        rows = [r for r in rows if paths.depth(r.module_path) <= args.depth]
    if args.pattern:
        rows = [r for r in rows if fnmatch.fnmatchcase(r.module_path, args.pattern)]
    return rows


def _select(rows, args):
    from modelexport.runtime.diff import rank_key

    rows = _within_depth_and_pattern(rows, args)
    if args.top:
        rows = sorted((m for m in rows if m.added_rel_l2 is not None or m.state in ("nonfinite", "uncompared",
                                                                                     "zero_reference")),
                      key=rank_key)[: args.top]
    return rows


def _number(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


STATE_WORDS = {"ok": "ok", "nonfinite": "NaN/Inf", "uncompared": "nothing compared",
               "zero_reference": "A all zeros", "unexposed": "inside If"}


def _state(m) -> str:
    words = STATE_WORDS.get(m.state, m.state)
    return f"{words} ({m.nonfinite} values)" if m.state == "nonfinite" and m.nonfinite else words


def _print(files, sources, ranked: bool) -> None:
    from rich.markup import escape

    from modelexport.cli.console import stdout_console, table
    from modelexport.hierarchy import paths
    from modelexport.inspect.render import safe_text

    console = stdout_console()
    for name, result in files.items():
        console.print(f"[bold]{escape(safe_text(name))}[/]: B against A on {result.inputs_run} input(s) "
                      f"({escape(sources[name])})" + (f"; [red]{result.nonfinite} values NaN/Inf on one side only[/]"
                                                      if result.nonfinite else ""))
        t = table("module", "boundary", "state", "max |A-B|", "rel L2", "cosine", "alone rel L2", "added rel L2",
                  right=("max |A-B|", "rel L2", "cosine", "alone rel L2", "added rel L2"))
        for m in result.modules:
            label = m.module_path or "(root)"
            if not ranked and m.module_path:
                label = "  " * paths.depth(m.module_path) + label
            boundary = m.boundary if m.boundary != "fused" else f"fused (at {m.compared_at or '—'})"
            state = _state(m)
            t.add_row(escape(safe_text(label)), escape(boundary), state if m.state == "ok" else f"[red]{state}[/]",
                      _number(m.max_abs, ".3g"), _number(m.rel_l2, ".3g"), _number(m.cosine, ".6f"),
                      _number(m.isolated_rel_l2, ".3g"), _number(m.added_rel_l2, ".3g"))
        console.print(t)
    console.print("[dim]rel L2 = ||B-A|| / ||A|| at the module's boundary; alone = B's nodes of the module run on A's "
                  "values entering it; added = alone minus the largest alone of its children (boundary errors "
                  "when the module cannot run alone); — = not measured (the state says why)[/]")


def _against_pytorch(args) -> int:
    import json

    from modelexport.errors import ModelExportError
    from modelexport.folder.loading import load_target
    from modelexport.runtime.feeds import feeds_for
    from modelexport.runtime.torch_diff import (ModelRefusedInputs, diff_against_pytorch, export_inputs,
                                                load_source_model, source_folder)

    if args.overlay:
        raise ModelExportError("--overlay writes the error B adds per module; with --pytorch there is no B")
    target = load_target(args.a)
    if target.metadata is None:
        raise ModelExportError(f"{args.a}: {target.metadata_problem}; --pytorch needs an exported folder")
    if len(target.files) != 1:
        raise ModelExportError("--pytorch compares single-file exports (encoder-decoder folders trace submodels): "
                               f"{args.a} holds {', '.join(f.name for f in target.files)}")
    f = target.files[0]
    _check_selection(args, [f])
    source_folder(target.metadata, args.pytorch or None)  # said before anything is built or run
    feeds, what = feeds_for(target, f, args)
    _progress(f"{f.name}: loading the PyTorch model and running both on {len(feeds)} input(s)")
    model = load_source_model(target.metadata, args.pytorch or None)
    try:
        rows = diff_against_pytorch(f.path, model, target.metadata.library, feeds)
    except ModelRefusedInputs:
        # dummy ids the model refuses (a vision-language model needs its image tokens): a generic
        # single-file export is compared on the inputs it was traced on, made again
        generic = target.metadata.exporter == "generic" and \
            (target.metadata.raw.get("generic") or {}).get("layout") == "single"
        if "dummy" not in what or not generic:
            raise
        feeds, what = export_inputs(model, target.metadata, source_folder(target.metadata, args.pytorch or None),
                                    {i.name for i in f.model.graph.input})
        _progress(f"{f.name}: the model refused dummy inputs; running both on {what}")
        rows = diff_against_pytorch(f.path, model, target.metadata.library, feeds)
    rows = _select_torch(rows, args)
    if args.format == "json":
        print(json.dumps({"schema": "modelexport.diff", "schema_version": 2, "a": str(args.a), "b": "pytorch",
                          "files": {f.name: {"inputs": what, "inputs_run": len(feeds),
                                             "modules": [r.as_dict() for r in rows if r.paired],
                                             "unpaired": [{"module_path": r.module_path, "reason": r.reason}
                                                          for r in rows if not r.paired]}}},
                         indent=2, allow_nan=False))
        return 0
    from rich.markup import escape

    from modelexport.cli.console import stdout_console, table
    from modelexport.inspect.render import safe_text

    console = stdout_console()
    console.print(f"[bold]{escape(safe_text(f.name))}[/] against PyTorch on {len(feeds)} input(s) ({escape(what)})")
    t = table("module", "state", "max |ONNX-PyTorch|", "rel L2", "cosine",
              right=("max |ONNX-PyTorch|", "rel L2", "cosine"))
    for r in rows:
        if r.paired:
            state = STATE_WORDS.get(r.state, r.state)
            t.add_row(escape(safe_text(r.module_path or "(root)")), state if r.state == "ok" else f"[red]{state}[/]",
                      _number(r.max_abs, ".3g"), _number(r.rel_l2, ".3g"), _number(r.cosine, ".6f"))
    console.print(t)
    unpaired = [r for r in rows if not r.paired]
    if unpaired:
        console.print(f"{len(unpaired)} modules not paired (not guessed):")
        for r in unpaired:
            console.print(f"  {escape(safe_text(r.module_path or '(root)'))}: {escape(r.reason)}")
    return 0


def _select_torch(rows, args):
    from modelexport.runtime.diff import STATE_RANK

    rows = _within_depth_and_pattern(rows, args)
    if args.top:
        paired = sorted((r for r in rows if r.paired),
                        key=lambda r: (STATE_RANK.get(r.state, 9), -(r.rel_l2 or 0.0)))[: args.top]
        rows = paired + [r for r in rows if not r.paired]
    return rows
