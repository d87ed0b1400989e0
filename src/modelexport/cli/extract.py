"""``modelexport extract PATH --module MODULE_PATH -o OUT.onnx``."""
from __future__ import annotations

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("extract", help="cut one module into a standalone ONNX model",
                       description="Write the nodes of one module (by module_path prefix) as a standalone model: "
                       "its inputs are the tensors entering the module, its outputs those leaving it.")
    shared.add_path(p, "an ONNX file, or a folder with exactly one (use --file for multi-file folders)")
    p.add_argument("--module", required=True, help="module path, e.g. bert.encoder.layer.0")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--file", default=None, help="which ONNX file of a multi-file folder")
    shared.add_force(p, "an output file")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    import onnx

    from modelexport.errors import ModelExportError
    from modelexport.folder.loading import load_target
    from modelexport.folder.outputs import check_new_file, file_written_atomically
    from modelexport.inspect.extract import extract_module

    check_new_file(args.output, args.force, [args.path], "-o")
    target = load_target(args.path)
    if args.file:
        files = [f for f in target.files if f.name == args.file]
        if not files:
            raise ModelExportError(f"{args.path} has no ONNX file {args.file!r} "
                                   f"({', '.join(f.name for f in target.files)})")
    else:
        files = _files_holding(target.files, args.module)
    f = files[0]
    model = f.model
    onnx.load_external_data_for_model(model, str(Path(f.path).parent))
    result = extract_module(model, args.module)
    out = check_new_file(args.output, args.force, [f.path], "-o")
    with file_written_atomically(out) as tmp:
        onnx.save(result.model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    print(f"wrote {out}: {len(result.model.graph.node)} nodes of {args.module!r}; inputs "
          f"{', '.join(result.inputs)}; outputs {', '.join(result.outputs)}")
    return 0


def _files_holding(files, module: str):
    """The one file whose main graph holds the module's nodes, or an error that says where they are."""
    from modelexport.errors import ModelExportError
    from modelexport.hierarchy.selection import select_modules

    if len(files) == 1:
        return files
    pattern = module.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]")  # a path, not a glob
    selection = select_modules({f.name: f.model for f in files}, [pattern], what="--module")
    per_file = selection.nodes[pattern]
    nested = selection.in_subgraphs[pattern]
    main = [f for f in files if len(per_file.get(f.name, ())) > nested.get(f.name, 0)]
    if len(main) == 1:
        return main
    if not main:
        raise ModelExportError(f"the nodes of {module!r} are inside If branches of "
                               f"{', '.join(per_file)}; extraction works on a main graph: pick a file with --file")
    raise ModelExportError(f"{module!r} has nodes in {', '.join(f.name for f in main)}; pick one with --file")
