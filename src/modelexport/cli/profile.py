"""``modelexport profile PATH``: ONNX Runtime time per module (self and total), not per operator."""
from __future__ import annotations

from modelexport.cli import args as shared


# ONNX Runtime 1.32's profiler costs about 4-6 µs per node event on the machines measured
# (benchmarks/profile_overhead.py); a node that takes about that long is measured mostly as that.
PROFILER_COST_US = 5.0


def register(sub) -> None:
    p = sub.add_parser("profile", help="ONNX Runtime time per module",
                       description="Run ONNX Runtime with profiling and aggregate each node's kernel time into "
                       "its module: self and total time, share of the run, calls per run.")
    shared.add_path(p)
    p.add_argument("--runs", type=int, default=10, help="profiled runs (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="runs before profiling counts (default 3)")
    shared.add_model_inputs(p, seq_len_default="128, or the model's maximum if smaller")
    p.add_argument("--optimization", choices=("disabled", "basic", "extended", "all"), default="all",
                   help="ONNX Runtime graph optimization level (default all); fused nodes are mapped back")
    p.add_argument("--depth", type=int, default=None, help="fold modules deeper than this into their ancestors")
    p.add_argument("--trace", default=None, help="also write a speedscope flame graph (JSON) here")
    p.add_argument("--overlay", default=None, metavar="FILE.json",
                   help="also write Model Explorer node data (each node: its module's self time, ms) for "
                   "`modelexport view PATH --overlay FILE.json`")
    shared.add_format(p)
    shared.add_force(p, "--trace/--overlay files")
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from modelexport.errors import ModelExportError
    from modelexport.folder.loading import load_target
    from modelexport.runtime.feeds import check_input_options, feeds_for
    from modelexport.runtime.profile import profile_model, speedscope

    if args.runs < 1 or args.warmup < 0:
        raise ModelExportError("--runs must be positive and --warmup not negative")
    check_input_options(args)
    target = load_target(args.path)
    _check_outputs(args, target)
    try:
        config = json.loads((Path(target.folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    modules = target.metadata.modules if target.metadata else None
    from modelexport.runtime.dummy_inputs import position_limit

    from modelexport.runtime.dummy_inputs import PAST_LENGTH

    limit = position_limit(config if isinstance(config, dict) else None)
    # a decoder's dummy past takes positions too: the new tokens come after it
    default_seq_len = min(128, limit - PAST_LENGTH) if limit and limit > PAST_LENGTH else 128
    # Every file's inputs first: a refused input costs no profiling run.
    feeds = {f.name: feeds_for(target, f, args, default_seq_len=default_seq_len) for f in target.files}
    profiles = []
    for f in target.files:
        try:
            profiles.append(profile_model(f.path, f.model, feeds[f.name][0], args.runs, args.warmup,
                                          args.optimization, args.depth, modules))
        except (ModelExportError, KeyboardInterrupt):
            raise
        except Exception as e:  # ORT's own exception types: the user gets its message
            raise ModelExportError(f"ONNX Runtime could not run {f.name}: {str(e).strip()[:300]}") from e
    for p in profiles:
        if p.median_node_us <= PROFILER_COST_US:
            import sys

            print(f"note: {p.file}: half of the node executions took {p.median_node_us:.0f} µs or less, close to "
                  "what recording one event costs ONNX Runtime's profiler (shapes, sizes and memory go with every "
                  "event): much of this profile's time is the profiler's own", file=sys.stderr)
    if args.trace:
        from modelexport.folder.outputs import write_text

        write_text(args.trace, json.dumps(speedscope(profiles)), args.force, [target.path], "--trace")
    if args.overlay:
        from modelexport.runtime.overlay import write_overlays

        models = {f.name: f.model for f in target.files}
        per_file = {p.file: (models[p.file], {m["module_path"]: m["self_ms"] for m in p.as_dict()["modules"]
                                              if m["module_path"] is not None}) for p in profiles}
        for written in write_overlays(Path(args.overlay), per_file, "self time per module (ms)", args.force):
            import sys

            print(f"wrote {written}", file=sys.stderr)
    if args.format == "json":
        # One shape whatever the number of files: {"files": {FILE: profile}}.
        print(json.dumps({"schema": "modelexport.profile", "schema_version": 2, "path": str(target.path),
                          "files": {p.file: {**p.as_dict(), "inputs": feeds[p.file][1]} for p in profiles}},
                         indent=2, allow_nan=False))
    elif args.format == "csv":
        import csv
        import sys

        writer = csv.writer(sys.stdout)
        writer.writerow(["file", "module_path", "hierarchy_tag", "self_ms", "total_ms", "share_pct", "calls"])
        for p in profiles:
            d = p.as_dict()
            for m in d["modules"]:
                share = 100 * m["total_ms"] / d["total_ms"] if d["total_ms"] else 0
                writer.writerow([p.file, "" if m["module_path"] is None else m["module_path"], m["hierarchy_tag"],
                                 f"{m['self_ms']:.4f}", f"{m['total_ms']:.4f}", f"{share:.2f}", m["calls"]])
    else:
        _print(profiles, {name: what for name, (_, what) in feeds.items()})
    if args.trace:
        import sys

        print(f"wrote {args.trace} (open it at https://www.speedscope.app)", file=sys.stderr)
    return 0


def _check_outputs(args, target) -> None:
    """--trace and --overlay files are checked before the model runs, not after."""
    from modelexport.folder.outputs import check_new_file
    from modelexport.runtime.overlay import overlay_paths

    if args.trace:
        check_new_file(args.trace, args.force, [target.path], "--trace")
    if args.overlay:
        for path in overlay_paths(args.overlay, [f.name for f in target.files]).values():
            check_new_file(path, args.force, [target.path], "--overlay")


def _print(profiles, inputs: dict[str, str]) -> None:
    from rich.markup import escape

    from rich.tree import Tree

    from modelexport.cli.console import stdout_console
    from modelexport.hierarchy import paths
    from modelexport.inspect.render import safe_text
    from modelexport.inspect.analysis import tree_order

    console = stdout_console()
    for p in profiles:
        d = p.as_dict()
        total = d["total_ms"] or 1e-9
        tree = Tree(f"[bold]{escape(p.file)}[/]  {d['total_ms']:.3f} ms of kernel time per run "
                    f"({p.runs} runs, optimization {p.optimization}, {escape(inputs.get(p.file, ''))}); "
                    f"unmapped {d['unmapped_ms']:.3f} ms")
        rows = {m["module_path"]: m for m in d["modules"]}
        branches = {}
        for path in sorted((k for k in rows if k is not None), key=tree_order):
            m = rows[path]
            holder = next((branches[a] for a in reversed(paths.chain(path)[:-1]) if a in branches), tree)
            name = "(root)" if path == "" else path
            branches[path] = holder.add(
                f"{escape(safe_text(name))}  [bold]{m['total_ms']:.3f}[/] ms total ({100 * m['total_ms'] / total:.1f}%), "
                f"self {m['self_ms']:.3f} ms, {m['calls']} calls")
        if None in rows:
            tree.add(f"[yellow](unmapped)[/] {rows[None]['self_ms']:.3f} ms")
        console.print(tree)
