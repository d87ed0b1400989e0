"""``modelexport optimize`` and ``modelexport quantize``: Optimum's optimizer / dynamic quantizer on
an exported folder, with every node of the result tagged again."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("optimize", help="ONNX Runtime transformer optimizations, tags restored",
                       description="Optimize an exported folder with Optimum's ORTOptimizer, then restore "
                       "module tags on every node (fused nodes get the deepest module of what they replaced).")
    p.add_argument("path", metavar="PATH", help="an exported folder")
    p.add_argument("-o", "--output", required=True, help="folder to create")
    p.add_argument("--level", choices=("O1", "O2", "O3", "O4"), default="O2",
                   help="Optimum's optimization level (default O2; O4 adds fp16 and needs a GPU)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(run=run_optimize)

    q = sub.add_parser("quantize", help="dynamic int8 quantization, tags restored",
                       description="Quantize an exported folder (dynamic int8, Optimum's ORTQuantizer), then "
                       "restore module tags on every node (new quantize nodes take their consumer's module).")
    q.add_argument("path", metavar="PATH", help="an exported folder")
    q.add_argument("-o", "--output", required=True, help="folder to create")
    q.add_argument("--exclude-modules", nargs="+", default=[], metavar="GLOB",
                   help="keep the nodes of these modules (and their descendants) in float, e.g. "
                   "'0.model.encoder.layer.5' or '*.attention.*'")
    q.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    q.add_argument("--target-cosine", type=float, default=None, metavar="C",
                   help="keep the fewest modules in float (most sensitive first) until the end outputs' cosine "
                   "with the float folder is at least C on the given inputs")
    q.add_argument("--max-abs-error", type=float, default=None, metavar="X",
                   help="as --target-cosine, for max |float - quantized| of the end outputs")
    from modelexport.cli import args as shared
    from modelexport.cli.sensitivity import add_candidates

    add_candidates(q)
    shared.add_model_inputs(q)
    q.set_defaults(run=run_quantize)


def _summary(result, verb: str) -> None:
    for name, counts in result.files.items():
        print(f"{verb} {name}: {counts['nodes']} nodes, all tagged — kept {counts['kept']}, by name "
              f"{counts['by_name']}, by lineage {counts['by_lineage']}, inferred {counts['inferred']}, "
              f"root {counts['root']}" + (f", {counts['renamed']} unnamed nodes named" if counts["renamed"] else ""))
    for pattern, n in getattr(result, "kept_float", {}).items():
        print(f"kept in float: {n} nodes of modules matching {pattern!r}")
    if verb == "optimized":
        for name, ops in result.added_ops.items():
            fused = ", ".join(f"{op.split(':')[-1]} x{n}" for op, n in ops.items())
            print(f"fused in {name}: " + (fused or "nothing: ONNX Runtime's optimizer matched none of its patterns "
                                                   "(the graph is only cleaned up)"))
    print(f"wrote {result.output}")


def _note(text: str) -> None:
    import sys

    print(f"note: {text}", file=sys.stderr)


def run_optimize(args) -> int:
    from modelexport.runtime.transform import optimize_folder

    _summary(optimize_folder(args.path, args.output, args.level, args.force, on_untagged=_note), "optimized")
    return 0


def run_quantize(args) -> int:
    from modelexport.errors import ModelExportError
    from modelexport.runtime.transform import quantize_folder

    if args.target_cosine is None and args.max_abs_error is None:
        if args.depth is not None or args.modules:
            raise ModelExportError("--depth and --modules choose the candidates of an accuracy target; give "
                                   "--target-cosine or --max-abs-error with them (or --exclude-modules to keep "
                                   "modules in float yourself)")
        _summary(quantize_folder(args.path, args.output, args.exclude_modules, args.force, on_untagged=_note),
                 "quantized")
        return 0
    return _quantize_to_target(args)


def _quantize_to_target(args) -> int:
    import sys
    from pathlib import Path

    from modelexport.cli.sensitivity import feeds_by_file
    from modelexport.errors import ModelExportError
    from modelexport.runtime.sensitivity import candidate_modules, modules_with_nodes, quantize_to_target

    if args.exclude_modules:
        raise ModelExportError("--exclude-modules and an accuracy target do not go together: the target decides")
    if args.target_cosine is not None and not -1.0 <= args.target_cosine <= 1.0:
        raise ModelExportError("--target-cosine must be between -1 and 1")
    target, feeds, what = feeds_by_file(args.path, args)
    candidates = candidate_modules(target.metadata.modules, args.depth, args.modules)

    def progress(i, n, module):
        print(f"[{i + 1}/{n}] sensitivity of {module}", file=sys.stderr, flush=True)

    result = quantize_to_target(Path(args.path), Path(args.output), candidates, feeds, args.target_cosine,
                                args.max_abs_error, args.force, progress, modules_with_nodes(target.metadata.modules))
    acc, full = result.accuracy, result.fully_quantized
    print(f"measured on {what}")
    print(f"kept in float: {', '.join(result.kept_float) if result.kept_float else 'nothing (full int8 meets it)'}")
    print(f"cosine min/mean {acc.cosine_min:.5f}/{acc.cosine_mean:.5f}, max abs {acc.max_abs:.3g} "
          f"(fully quantized: {full.cosine_min:.5f}/{full.cosine_mean:.5f}, {full.max_abs:.3g})")
    sizes, lat = result.sizes, result.latency_ms
    print(f"size {sizes['result'] / 2**20:.1f} MiB (float {sizes['float'] / 2**20:.1f}, fully quantized "
          f"{sizes['fully_quantized'] / 2**20:.1f}); ORT latency {lat['result']:.2f} ms (float {lat['float']:.2f}, "
          f"fully quantized {lat['fully_quantized']:.2f})")
    print(f"wrote {args.output}")
    return 0
