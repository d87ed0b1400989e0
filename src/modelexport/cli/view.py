"""``modelexport view PATH``: open the model in Model Explorer, its layers following the modules."""
from __future__ import annotations

from modelexport.cli import args as shared

INSTALL_HINT = ("Model Explorer is not installed; install it with: pip install 'modelexport[view]' "
                "(ai-edge-model-explorer and model-explorer-onnx)")


def register(sub) -> None:
    p = sub.add_parser("view", help="open the model in Model Explorer (optional extra)",
                       description="Start Model Explorer with its ONNX adapter on the model. The export writes a "
                       "'namespace' tag on every node, which the adapter uses to group nodes into one layer "
                       "per module.")
    shared.add_path(p, "an ONNX file, or a folder with exactly one (use --file for multi-file folders)")
    p.add_argument("--file", default=None, help="which ONNX file of a multi-file folder")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--no-browser", action="store_true", help="start the server without opening a browser")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from modelexport.errors import ModelExportError

    try:
        import model_explorer  # noqa: F401
        import model_explorer_onnx  # noqa: F401
    except ImportError as e:
        raise ModelExportError(INSTALL_HINT) from e
    path = Path(args.path)
    if path.is_dir():
        files = sorted(path.glob("*.onnx")) if not args.file else [path / args.file]
        if len(files) != 1 or not files[0].is_file():
            raise ModelExportError(f"{path} holds {len(files)} ONNX files; pick one with --file")
        path = files[0]
    elif not path.is_file():
        raise ModelExportError(f"no such file or folder: {path}")
    import model_explorer

    model_explorer.visualize(str(path), extensions=["model_explorer_onnx"], port=args.port,
                             no_open_in_browser=args.no_browser)
    return 0
