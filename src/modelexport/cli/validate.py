"""``modelexport validate PATH``: checks that say pass/fail with the reason; exit 0 only if all pass."""
from __future__ import annotations

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("validate", help="check an exported model: checker, tags, metadata, Optimum, ORT",
                       description="Run real checks on an ONNX file or exported folder: the full onnx checker, "
                       "every node tagged, tags consistent with modelexport_metadata.json, module paths in the "
                       "module tree, Optimum loads the folder, ONNX Runtime runs on dummy inputs. "
                       "Exit 0 only when every check passes.")
    shared.add_path(p)
    p.add_argument("--no-run", dest="run_ort", action="store_false", help="skip running ONNX Runtime")
    shared.add_format(p, choices=("table", "json"), default="table")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from modelexport.folder.loading import load_target
    from modelexport.inspect.validate import FAIL, validate_target

    target = load_target(args.path)
    checks = validate_target(target, run_onnxruntime=args.run_ort)
    failed = [c for c in checks if c.status == FAIL]
    if args.format == "json":
        print(json.dumps({"schema": "modelexport.validation", "schema_version": 1, "path": str(target.path),
                          "passed": not failed, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        from rich.markup import escape

        from modelexport.cli.console import stdout_console, table as new_table

        from modelexport.inspect.render import safe_text

        table = new_table("check", "file", "result", "detail", title=f"validate {escape(safe_text(str(target.path)))}")
        style = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "skip": "[dim]skip[/]"}
        for c in checks:
            table.add_row(escape(c.name), escape(safe_text(c.file or "")), style[c.status],
                          escape(safe_text(c.detail)))
        stdout_console().print(table)
        print(f"{len(checks) - len(failed)} passed, {len(failed)} failed" if failed else
              f"all {len(checks)} checks passed" if not any(c.status == "skip" for c in checks) else
              f"{sum(c.status == 'pass' for c in checks)} passed, 0 failed, "
              f"{sum(c.status == 'skip' for c in checks)} skipped")
    return 1 if failed else 0
