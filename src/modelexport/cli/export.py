"""``modelexport export MODEL OUTPUT_DIR``."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to an Optimum-ready folder with tagged ONNX",
        description="Export a Hub id or local model folder to OUTPUT_DIR: ONNX file(s) with every node "
        "tagged by its PyTorch module, config.json, preprocessors, modelexport_metadata.json.",
    )
    p.add_argument("model", metavar="MODEL", help="Hugging Face Hub id or local model folder")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder to create (must be empty or absent)")
    p.add_argument("--task", default="auto", help="export task, e.g. text-classification (default: inferred)")
    p.add_argument("--library", default="auto",
                   help="transformers, sentence_transformers, timm or diffusers (default: inferred)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: Optimum's for the model)")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUTPUT_DIR once the new one is complete")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the repository")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="skip comparing ONNX Runtime outputs with PyTorch")
    p.add_argument("--format", choices=("text", "json"), default="text", help="summary format on stdout")
    p.add_argument("--report", action="store_true", help="also write OUTPUT_DIR/modelexport_report.md")
    p.add_argument("--static-shapes", default=None, metavar="NAME=SIZE,...",
                   help="fixed input shapes instead of dynamic axes, e.g. batch_size=1,sequence_length=128 "
                   "(names of Optimum's dummy shapes); preprocessors are saved to pad to them")
    p.add_argument("--exporter", choices=("auto", "torchscript", "dynamo", "generic"), default="auto",
                   help="auto (default): Optimum's TorchScript export where Optimum is installed and has an ONNX "
                   "config for the model type, else generic; torchscript / dynamo: Optimum's config traced by "
                   "TorchScript / torch.export (need Optimum); generic: no Optimum config, inputs and files from "
                   "the model itself, traced by torch.export (every model type transformers builds)")
    p.add_argument("--keep-source-info", action="store_true",
                   help="torch.export paths (dynamo, generic): keep the exporter's stack traces and FX node text "
                   "on each node (they hold this machine's file paths and source lines; dropped by default)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from modelexport.cli.progress import ConsolePhaseReporter
    from modelexport.exporter.pipeline import export

    reporter = ConsolePhaseReporter() if args.format == "text" else None
    result = export(
        args.model,
        args.output_dir,
        task=args.task,
        library=args.library,
        opset=args.opset,
        force=args.force,
        trust_remote_code=args.trust_remote_code,
        validate=args.validate,
        static_shapes=args.static_shapes,
        reporter=reporter,
        exporter=args.exporter,
        keep_source_info=args.keep_source_info,
    )
    if args.report:
        from modelexport.cli.report import write_report

        write_report(result.output)
    if args.format == "json":
        print(json.dumps(summary_dict(result), indent=2))
    else:
        print_summary(result)
    return 0


def summary_dict(result) -> dict:
    return {
        "schema": "modelexport.export",
        "schema_version": 1,
        "output": str(result.output),
        "task": result.task,
        "library": result.library,
        "exporter": result.exporter,
        "exporter_reason": result.exporter_reason,
        "opset": result.opset,
        "files": [
            {"name": f.name, "nodes": f.nodes, "coverage": f.coverage, "validation": f.validation,
             "warnings": f.warnings}
            for f in result.files
        ],
        "artifacts": result.artifacts,
        "max_abs_diff": result.max_abs_diff,
        "timings_seconds": result.timings,
    }


def print_summary(result) -> None:
    from rich.markup import escape

    from modelexport.cli.console import stdout_console, table as new_table

    console = stdout_console()
    table = new_table("file", "nodes", "direct", "inferred", "partial", "root fallback", "max |ONNX−PyTorch|",
                      title=f"Exported to {escape(str(result.output))}  (task {result.task}, opset {result.opset}, "
                      f"{result.exporter})",
                      right=("nodes", "direct", "inferred", "partial", "root fallback", "max |ONNX−PyTorch|"))
    for f in result.files:
        c = f.coverage
        if f.validation is None:
            diff = "not validated"
        else:
            v = f.validation
            mark = ("[green]ok[/]" if v["passed"] else "[red]NaN/Inf[/]" if v.get("nonfinite")
                    else "[red]shape mismatch[/]" if v.get("shape_mismatches") else f"[red]above atol {v['atol']:g}" + (f" + rtol {v['rtol']:g}" if v.get("rtol") else "") + "[/]")
            diff = f"{f.validation['max_abs_diff']:.2e} {mark}" + (" (top-k tie)" if v.get("topk_ties") else "")
        table.add_row(escape(f.name), str(f.nodes), str(c["direct"]), str(c["inferred"]),
                      str(c.get("partial_scope", 0)), str(c["root_fallback"]),
                      diff)
    console.print(table)
    if result.exporter_reason and result.exporter_reason != "asked for":
        console.print(f"Exporter: {result.exporter} ({escape(result.exporter_reason)})")
    written = list(dict.fromkeys(name for a in result.artifacts if a["status"] == "written" for name in a["files"]))
    skipped = [a["kind"] for a in result.artifacts if a["status"] == "skipped"]
    console.print(f"Also written: {escape(', '.join(written))}, modelexport_metadata.json")
    if skipped:
        console.print(f"[dim]Not present in the model: {escape(', '.join(skipped))}[/]")
    for f in result.files:
        for warning in f.warnings:
            console.print(f"[yellow]Warning:[/] {escape(warning)}")
    for f in result.files:
        ties = (f.validation or {}).get("topk_ties")
        if ties:
            # passed, but not by plain comparison: the user should know why the outputs differed
            chosen = sum(t["elements_chosen_differently"] for t in ties)
            console.print(f"Note: {escape(f.name)}: a top-k in the model has candidates that tie at float "
                          f"precision; ONNX Runtime chose {chosen} element(s) other than PyTorch's. With its "
                          "choice replayed in PyTorch the outputs agree (topk_ties in modelexport_metadata.json)")
    above = [f.name for f in result.files if f.validation and not f.validation["passed"]]
    if above:
        # As Optimum does, a difference above its tolerance is a warning, not a failed export.
        console.print(f"[yellow]Warning:[/] {escape(', '.join(above))} differ from PyTorch (beyond the "
                      "tolerance, NaN/Inf or shapes); see modelexport_metadata.json for each output")
    console.print(f"Done in {result.timings.get('total', 0):.1f} s")
