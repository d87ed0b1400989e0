"""``modelexport report PATH``: write a Markdown report of an exported model."""
from __future__ import annotations

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("report", help="write a Markdown (or --html) report of an exported model",
                       description="Markdown report: model summary, coverage, module tree, largest modules, files.")
    shared.add_path(p)
    p.add_argument("-o", "--output", default=None,
                   help="file to write (default: PATH/modelexport_report.md for a folder, stdout for a file)")
    p.add_argument("--depth", type=int, default=3, help="module tree depth in the Markdown report (default 3)")
    p.add_argument("--html", action="store_true",
                   help="write one self-contained HTML page instead: collapsible searchable tree, icicle chart "
                   "(default file: PATH/modelexport_report.html for a folder, MODEL.html beside a file)")
    p.add_argument("--profile", default=None, metavar="PROFILE.json",
                   help="with --html: time per module from `profile --format json`")
    p.add_argument("--diff", default=None, metavar="DIFF.json", help="with --html: error per module from "
                   "`diff --format json`")
    p.set_defaults(run=run)


def _read_json(path, schema: str) -> dict:
    import json
    from pathlib import Path

    from modelexport.errors import ModelExportError

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelExportError(f"cannot read {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        raise ModelExportError(f"{path} is not `{schema}` JSON (write it with --format json)")
    return doc


def write_html(path, output=None, profile=None, diff=None):
    from pathlib import Path

    from modelexport.inspect.analysis import analyze_target
    from modelexport.inspect.html_report import html_report
    from modelexport.inspect.loading import load_target

    target = load_target(path)
    meta = target.metadata
    title = f"modelexport report: {target.path.name}"
    subtitle = ", ".join(x for x in (
        meta.source.get("model") if meta else None, f"task {meta.task}" if meta and meta.task else None,
        f"opset {meta.opset}" if meta and meta.opset else None) if x) or str(target.path)
    text = html_report(title, subtitle, analyze_target(target),
                       _read_json(profile, "modelexport.profile") if profile else None,
                       _read_json(diff, "modelexport.diff") if diff else None)
    if output is None:
        output = Path(target.folder) / "modelexport_report.html" if target.is_folder else \
            Path(target.path).with_suffix(".html")
    Path(output).write_text(text, encoding="utf-8")
    return Path(output)


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
    if args.html:
        print(f"wrote {write_html(args.path, args.output, args.profile, args.diff)}")
        return 0
    if args.profile or args.diff:
        from modelexport.errors import ModelExportError

        raise ModelExportError("--profile and --diff go with --html")
    written = write_report(args.path, args.output, args.depth)
    if written is not None:
        print(f"wrote {written}")
    return 0
