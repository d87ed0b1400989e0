"""``modelexport report PATH``: write a Markdown report of an exported model."""
from __future__ import annotations

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("report", help="write a Markdown (or --html) report of an exported model",
                       description="Markdown report: model summary, coverage, module tree, largest modules, files.")
    shared.add_path(p)
    p.add_argument("-o", "--output", default=None,
                   help="file to write (default: PATH/modelexport_report.md for a folder, stdout for a file)")
    p.add_argument("--depth", type=int, default=None, help="module tree depth in the Markdown report (default 3; the "
                   "HTML page has the whole tree, folded)")
    p.add_argument("--html", action="store_true",
                   help="write one self-contained HTML page instead: collapsible searchable tree, icicle chart "
                   "(default file: PATH/modelexport_report.html for a folder, MODEL.html beside a file)")
    p.add_argument("--profile", default=None, metavar="PROFILE.json",
                   help="with --html: time per module from `profile --format json`")
    p.add_argument("--diff", default=None, metavar="DIFF.json", help="with --html: error per module from "
                   "`diff --format json`")
    shared.add_force(p, "a report file")
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


def _default_output(target, suffix: str):
    from pathlib import Path

    if target.is_folder:
        return Path(target.folder) / f"modelexport_report{suffix}"
    return Path(target.path).with_suffix(suffix) if suffix == ".html" else None


def _check_matches(target, doc: dict, option: str) -> None:
    """A profile or diff of another model is refused: its numbers would be shown against modules
    they were not measured on."""
    from modelexport.errors import ModelExportError
    from modelexport.hierarchy.paths import with_ancestors
    from modelexport.hierarchy.tags import read_tags

    files = doc.get("files") if isinstance(doc.get("files"), dict) else {}
    ours = {f.name: f for f in target.files}
    shared = [name for name in files if name in ours]
    if not shared:
        raise ModelExportError(f"{option}: it describes {', '.join(files) or 'no file'}, not a file of "
                               f"{target.path} ({', '.join(ours)})")
    for name in shared:
        tagged = {t.module_path for t in read_tags(ours[name].model) if t.module_path is not None}
        if target.metadata is not None:
            tagged |= set(target.metadata.modules_by_path())
        known = with_ancestors(tagged)  # profiles add time up into every ancestor
        paths = {m.get("module_path") for m in files[name].get("modules", []) if isinstance(m, dict)}
        paths.discard(None)
        foreign = sorted(p for p in paths if p not in known)
        if foreign:
            raise ModelExportError(f"{option}: modules {', '.join(repr(p) for p in foreign[:3])} of its {name} are not "
                                   f"modules of {target.path}: it was measured on another model")


def write_html(path, output=None, profile=None, diff=None, force: bool = False):
    from modelexport.folder.loading import load_target
    from modelexport.folder.outputs import check_new_file, write_text
    from modelexport.inspect.analysis import analyze_target
    from modelexport.inspect.html_report import html_report

    target = load_target(path)
    output = output if output is not None else _default_output(target, ".html")
    check_new_file(output, force, [target.path], "--output")
    profile_doc = _read_json(profile, "modelexport.profile") if profile else None
    diff_doc = _read_json(diff, "modelexport.diff") if diff else None
    if profile_doc is not None:
        _check_matches(target, profile_doc, f"--profile {profile}")
    if diff_doc is not None:
        _check_matches(target, diff_doc, f"--diff {diff}")
    meta = target.metadata
    title = f"modelexport report: {target.path.name}"
    subtitle = ", ".join(x for x in (
        meta.source.get("model") if meta else None, f"task {meta.task}" if meta and meta.task else None,
        f"opset {meta.opset}" if meta and meta.opset else None) if x) or str(target.path)
    text = html_report(title, subtitle, analyze_target(target), profile_doc, diff_doc)
    return write_text(output, text, force, [target.path], "--output")


def write_report(path, output=None, depth: int = 3, force: bool = False):
    """Write the report; returns where it went (None for stdout)."""
    from modelexport.folder.loading import load_target
    from modelexport.folder.outputs import check_new_file, write_text
    from modelexport.inspect.analysis import analyze_target
    from modelexport.inspect.report import markdown_report

    target = load_target(path)
    output = output if output is not None else _default_output(target, ".md")
    if output is not None:
        check_new_file(output, force, [target.path], "--output")
    text = markdown_report(target, analyze_target(target), depth=depth)
    if output is None:
        print(text)
        return None
    return write_text(output, text, force, [target.path], "--output")


def run(args) -> int:
    if args.html and args.depth is not None:
        from modelexport.errors import ModelExportError

        raise ModelExportError("--depth sets the Markdown report's tree; the HTML page holds the whole tree, "
                               "folded: drop --depth")
    if args.depth is None:
        args.depth = 3
    if args.depth < 0:
        from modelexport.errors import ModelExportError

        raise ModelExportError("--depth must not be negative")
    if args.html:
        print(f"wrote {write_html(args.path, args.output, args.profile, args.diff, args.force)}")
        return 0
    if args.profile or args.diff:
        from modelexport.errors import ModelExportError

        raise ModelExportError("--profile and --diff go with --html")
    written = write_report(args.path, args.output, args.depth, args.force)
    if written is not None:
        print(f"wrote {written}")
    return 0
