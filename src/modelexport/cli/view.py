"""``modelexport view PATH``: open the model in Model Explorer, its layers following the modules.

Tested with ai-edge-model-explorer 0.1.34 and model-explorer-onnx 0.4 (the versions the ``view``
extra pins). The server listens on 127.0.0.1 only.
"""
from __future__ import annotations

from modelexport.cli import args as shared

INSTALL_HINT = ("Model Explorer is not installed; install it with: pip install 'modelexport[view]' "
                "(ai-edge-model-explorer and model-explorer-onnx)")
HOST = "127.0.0.1"


def register(sub) -> None:
    p = sub.add_parser("view", help="open the model in Model Explorer (optional extra)",
                       description="Start Model Explorer with its ONNX adapter on the model. The export writes a "
                       "'namespace' tag on every node, which the adapter uses to group nodes into one layer "
                       "per module. The server listens on 127.0.0.1; Ctrl-C stops it.")
    shared.add_path(p, "an ONNX file, or a folder with exactly one (use --file for multi-file folders)")
    p.add_argument("--file", default=None, help="which ONNX file of a multi-file folder")
    p.add_argument("--port", type=int, default=None,
                   help="local port for Model Explorer (default: a free port); it listens on 127.0.0.1 only")
    p.add_argument("--no-browser", action="store_true", help="start the server without opening a browser")
    p.add_argument("--overlay", action="append", default=[], metavar="FILE.json",
                   help="node data to colour the graph with (from `profile --overlay` or `diff --overlay`); "
                   "repeatable")
    p.set_defaults(run=run)


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _check_port_free(port: int) -> None:
    """Model Explorer prints "port in use" on stdout and returns; we say it first, as an error."""
    import errno
    import socket

    from modelexport.errors import ModelExportError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ModelExportError(f"port {port} on {HOST} is in use; give another --port, or none for a free "
                                       "one") from e
            raise ModelExportError(f"cannot listen on {HOST}:{port}: {e.strerror or e}") from e


def run(args) -> int:
    from pathlib import Path

    from modelexport.errors import ModelExportError

    try:
        import model_explorer
        import model_explorer_onnx  # noqa: F401  (only: is the adapter installed?)
    except ImportError as e:
        raise ModelExportError(INSTALL_HINT) from e
    path = Path(args.path)
    if path.is_dir():
        files = sorted(path.glob("*.onnx")) if not args.file else [path / args.file]
        if len(files) != 1 or not files[0].is_file():
            raise ModelExportError(f"{path} holds {len(files)} ONNX files; pick one with --file "
                                   f"({', '.join(p.name for p in sorted(path.glob('*.onnx')))})")
        path = files[0]
    elif not path.is_file():
        raise ModelExportError(f"no such file or folder: {path}")
    if args.port is not None and not 0 < args.port < 65536:
        raise ModelExportError(f"--port {args.port} is not a port number")
    if args.port is not None:
        _check_port_free(args.port)
    port = args.port or free_port()
    from modelexport.compat import disable_model_explorer_update_check

    disable_model_explorer_update_check()
    config = model_explorer.config().add_model_from_path(str(path.resolve()))
    for overlay in args.overlay:
        if not Path(overlay).is_file():
            raise ModelExportError(f"no such overlay file: {overlay}")
        config.add_node_data_from_path(str(Path(overlay).resolve()))
    model_explorer.visualize_from_config(config=config, host=HOST, port=port, extensions=["model_explorer_onnx"],
                                         no_open_in_browser=args.no_browser)
    return 0
