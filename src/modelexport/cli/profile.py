"""``modelexport profile PATH``: ONNX Runtime time per module (self and total), not per operator."""
from __future__ import annotations

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("profile", help="ONNX Runtime time per module",
                       description="Run ONNX Runtime with profiling and aggregate each node's kernel time into "
                       "its module: self and total time, share of the run, calls per run.")
    shared.add_path(p)
    p.add_argument("--runs", type=int, default=10, help="profiled runs (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="runs before profiling counts (default 3)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the dummy inputs (default 1)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="sequence length of the dummy inputs (default 128, or the model's maximum if smaller)")
    p.add_argument("--inputs", default=None, help="an .npz file of inputs by name, instead of dummy inputs")
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

    import numpy as np

    from modelexport.errors import ModelExportError
    from modelexport.folder.loading import load_target
    from modelexport.runtime.dummy_inputs import make_inputs
    from modelexport.runtime.profile import profile_model, speedscope

    if args.runs < 1 or args.warmup < 0 or args.batch < 1 or (args.seq_len is not None and args.seq_len < 1):
        raise ModelExportError("--runs, --batch and --seq-len must be positive and --warmup not negative")
    target = load_target(args.path)
    _check_outputs(args, target)
    try:
        config = json.loads((Path(target.folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    modules = target.metadata.modules if target.metadata else None
    seq_len = args.seq_len
    if seq_len is None:
        limit = config.get("max_position_embeddings") if isinstance(config, dict) else None
        seq_len = min(128, limit) if isinstance(limit, int) and limit > 0 else 128
    profiles = []
    for f in target.files:
        import onnxruntime as ort

        if args.inputs:
            try:
                with np.load(args.inputs) as data:
                    feed = {k: data[k] for k in data.files}
            except (OSError, ValueError) as e:
                raise ModelExportError(f"cannot read inputs from {args.inputs}: {e}") from e
        else:
            options = ort.SessionOptions()
            options.log_severity_level = 4
            probe = ort.InferenceSession(str(f.path), options, providers=["CPUExecutionProvider"])
            feed = make_inputs(probe, config if isinstance(config, dict) else None, args.batch, seq_len)
        try:
            profiles.append(profile_model(f.path, f.model, feed, args.runs, args.warmup, args.optimization,
                                          args.depth, modules))
        except Exception as e:  # ORT's own exception types: the user gets its message
            raise ModelExportError(f"ONNX Runtime could not run {f.name}: {str(e).strip()[:300]}") from e
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
                          "files": {p.file: p.as_dict() for p in profiles}}, indent=2))
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
        _print(profiles)
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


def _print(profiles) -> None:
    from rich.markup import escape

    from modelexport.cli.console import stdout_console
    from rich.tree import Tree

    from modelexport.inspect.render import safe_text

    console = stdout_console()
    for p in profiles:
        d = p.as_dict()
        total = d["total_ms"] or 1e-9
        tree = Tree(f"[bold]{escape(p.file)}[/]  {d['total_ms']:.3f} ms of kernel time per run "
                    f"({p.runs} runs, optimization {p.optimization}); unmapped {d['unmapped_ms']:.3f} ms")
        rows = {m["module_path"]: m for m in d["modules"]}
        branches = {}
        for path in sorted((k for k in rows if k is not None), key=lambda k: (k.count(".") if k else -1, k)):
            m = rows[path]
            parent = path.rpartition(".")[0] if path else None
            while parent is not None and parent not in branches and parent != "":
                parent = parent.rpartition(".")[0]
            holder = tree if path == "" else branches.get(parent, tree)
            name = "(root)" if path == "" else path
            branches[path] = holder.add(
                f"{escape(safe_text(name))}  [bold]{m['total_ms']:.3f}[/] ms total ({100 * m['total_ms'] / total:.1f}%), "
                f"self {m['self_ms']:.3f} ms, {m['calls']} calls")
        if None in rows:
            tree.add(f"[yellow](unmapped)[/] {rows[None]['self_ms']:.3f} ms")
        console.print(tree)
