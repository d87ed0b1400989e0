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
    p.set_defaults(run=run)


def run(args) -> int:
    import os
    from pathlib import Path

    import onnx

    from modelexport.errors import ModelExportError
    from modelexport.inspect.extract import extract_module
    from modelexport.inspect.loading import load_target

    target = load_target(args.path)
    files = [f for f in target.files if not args.file or f.name == args.file]
    if len(files) != 1:
        raise ModelExportError(f"{args.path} holds {len(target.files)} ONNX files; pick one with --file "
                               f"({', '.join(f.name for f in target.files)})")
    f = files[0]
    model = f.model
    onnx.load_external_data_for_model(model, str(Path(f.path).parent))
    result = extract_module(model, args.module)
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(result.model, str(tmp))
    onnx.checker.check_model(str(tmp), full_check=True)
    os.replace(tmp, out)
    print(f"wrote {out}: {len(result.model.graph.node)} nodes of {args.module!r}; inputs "
          f"{', '.join(result.inputs)}; outputs {', '.join(result.outputs)}")
    return 0
