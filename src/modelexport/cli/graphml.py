"""``modelexport graphml PATH -o FILE.graphml``: nested module graphs for yEd / Gephi."""
from __future__ import annotations

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("graphml", help="write GraphML with one nested graph per module",
                       description="Write GraphML where each module is a node holding a nested graph of its "
                       "ops and child modules (yEd and Gephi can fold them); edges are tensors.")
    shared.add_path(p, "an ONNX file, or a folder with exactly one (use --file for multi-file folders)")
    p.add_argument("-o", "--output", required=True, help="the .graphml file to write")
    p.add_argument("--file", default=None, help="which ONNX file of a multi-file folder")
    shared.add_force(p, "an output file")
    p.set_defaults(run=run)


def run(args) -> int:
    from modelexport.errors import ModelExportError
    from modelexport.folder.loading import load_target
    from modelexport.folder.outputs import check_new_file, file_written_atomically
    from modelexport.inspect.analysis import analyze_model
    from modelexport.inspect.graphml import write_graphml

    out = check_new_file(args.output, args.force, [args.path], "-o")
    target = load_target(args.path)
    files = target.files
    if args.file:
        files = [f for f in files if f.name == args.file]
        if not files:
            raise ModelExportError(f"no {args.file} in {args.path}; it has {', '.join(f.name for f in target.files)}")
    if len(files) != 1:
        raise ModelExportError(f"{args.path} holds {len(files)} ONNX files; pick one with --file "
                               f"({', '.join(f.name for f in files)})")
    f = files[0]
    info = (target.metadata.modules_by_path() or None) if target.metadata else None
    try:
        with file_written_atomically(out) as tmp, open(tmp, "w", encoding="utf-8") as stream:
            counts = write_graphml(f.model, analyze_model(f.name, f.model, info), stream)
    except OSError as e:
        raise ModelExportError(f"cannot write {out}: {e.strerror or e}") from e
    print(f"wrote {out}: {counts['nodes']} op nodes in {counts['modules']} module graphs, {counts['edges']} edges")
    return 0
