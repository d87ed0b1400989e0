"""``modelexport report PATH``: write a Markdown report of an exported model."""
from __future__ import annotations

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("report", help="write a Markdown report of an exported model",
                       description="Markdown report: model summary, coverage, module tree, largest modules, files.")
    shared.add_path(p)
    p.add_argument("-o", "--output", default=None,
                   help="file to write (default: PATH/modelexport_report.md for a folder, stdout for a file)")
    p.add_argument("--depth", type=int, default=3, help="module tree depth in the report (default 3)")
    p.set_defaults(run=run)


def write_report(path, output=None, depth: int = 3):
    """Write the report; returns where it went (None for stdout)."""
    from pathlib import Path

    from modelexport.inspect.analysis import analyze_target
    from modelexport.inspect.loading import load_target
    from modelexport.inspect.report import markdown_report

    target = load_target(path)
    text = markdown_report(target, analyze_target(target), depth=depth)
    if output is None and target.is_folder:
        output = Path(target.folder) / "modelexport_report.md"
    if output is None:
        print(text)
        return None
    Path(output).write_text(text, encoding="utf-8")
    return Path(output)


def run(args) -> int:
    written = write_report(args.path, args.output, args.depth)
    if written is not None:
        print(f"wrote {written}")
    return 0
