"""A Markdown report of an export: summary, coverage, module tree, largest modules, files."""
from __future__ import annotations

from pathlib import Path

from modelexport.inspect.analysis import FileAnalysis, select
from modelexport.inspect.render import human_bytes, human_count, safe_text

_MD_SPECIAL = "\\`*_[]<>|"  # what changes meaning inside a table cell


def md(text) -> str:
    """Escape text for a Markdown table cell or line (names come from models we did not write)."""
    text = safe_text(str(text))
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text).replace("&", "&amp;")


def markdown_report(target, analyses: list[FileAnalysis], depth: int = 3, top: int = 10) -> str:
    meta = target.metadata
    lines = [f"# modelexport report: {md(target.path.name)}", ""]
    if meta is not None:
        source = meta.source
        versions = meta.tool_versions
        lines += [
            "| | |", "|---|---|",
            f"| model | {md(source.get('model'))} ({md(source.get('model_class'))}, {md(source.get('model_type'))}) |",
            f"| task / library | {md(meta.task)} / {md(meta.library)} |",
            f"| Optimum class | {md(meta.ort_model_class)} |",
            f"| opset | {md(meta.opset)} |",
            "| versions | " + md(", ".join(f"{k} {v}" for k, v in versions.items() if v)) + " |",
            "",
        ]
    else:
        lines += [f"No modelexport metadata: {md(target.metadata_problem or 'none found')}.", ""]

    lines += ["## Coverage", "", "| file | nodes | direct | inferred | root fallback | untagged | max abs diff vs PyTorch |",
              "|---|---|---|---|---|---|---|"]
    for a in analyses:
        info = (meta.file(a.name) if meta is not None else None) or {}
        cov = info.get("coverage", {})
        val = info.get("validation") or {}
        diff = f"{val['max_abs_diff']:.2e}" if "max_abs_diff" in val else "not validated"
        lines.append(f"| {md(a.name)} | {a.nodes} | {cov.get('direct', '—')} | {cov.get('inferred', '—')} | "
                     f"{cov.get('root_fallback', '—')} | {a.untagged_nodes} | {diff} |")
    lines.append("")

    for a in analyses:
        lines += [f"## Module tree: {md(a.name)} (to depth {depth})", "",
                  "| module | class | nodes own | nodes total | parameters | top op types |", "|---|---|---|---|---|---|"]
        for s in select(a, depth=depth):
            indent = "&nbsp;&nbsp;" * s.depth
            ops = ", ".join(f"{md(op)}×{n}" for op, n in s.ops_total.most_common(3))
            lines.append(f"| {indent}{md(s.path or '(root)')} | {md(s.class_name or '')} | {s.nodes_own} | "
                         f"{s.nodes_total} | {human_count(s.params_total)} | {ops} |")
        lines.append("")
        leaves = [s for s in a.modules.values() if s.path and not s.children]
        lines += [f"### Largest modules of {md(a.name)}", "", "| module | parameters | bytes | nodes |",
                  "|---|---|---|---|"]
        for s in sorted(leaves, key=lambda s: (s.params_total, s.nodes_total), reverse=True)[:top]:
            lines.append(f"| {md(s.path)} | {human_count(s.params_total)} | {human_bytes(s.bytes_total)} | "
                         f"{s.nodes_total} |")
        lines.append("")

    if target.is_folder:
        lines += ["## Files", "", "| file | size |", "|---|---|"]
        for p in sorted(Path(target.folder).iterdir()):
            if p.is_file():
                lines.append(f"| {md(p.name)} | {human_bytes(p.stat().st_size)} |")
        lines.append("")
    return "\n".join(lines)
