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
    q.set_defaults(run=run_quantize)


def _summary(result, verb: str) -> None:
    for name, counts in result.files.items():
        print(f"{verb} {name}: {counts['nodes']} nodes, all tagged — kept {counts['kept']}, by name "
              f"{counts['by_name']}, by lineage {counts['by_lineage']}, inferred {counts['inferred']}, "
              f"root {counts['root']}" + (f", {counts['renamed']} unnamed nodes named" if counts["renamed"] else ""))
    for pattern, n in getattr(result, "kept_float", {}).items():
        print(f"kept in float: {n} nodes of modules matching {pattern!r}")
    print(f"wrote {result.output}")


def run_optimize(args) -> int:
    from modelexport.runtime.transform import optimize_folder

    _summary(optimize_folder(args.path, args.output, args.level, args.force), "optimized")
    return 0


def run_quantize(args) -> int:
    from modelexport.runtime.transform import quantize_folder

    _summary(quantize_folder(args.path, args.output, args.exclude_modules, args.force), "quantized")
    return 0
