"""``modelexport optimize`` and ``modelexport quantize``: ONNX Runtime's transformer optimizer and
quantizers (no Optimum needed) on an exported folder, with every node of the result tagged again."""
from __future__ import annotations

import sys


def register(sub) -> None:
    from modelexport.cli import args as shared
    from modelexport.cli.sensitivity import add_candidates, add_evaluation_inputs, add_quantization_options

    p = sub.add_parser("optimize", help="ONNX Runtime transformer optimizations, tags restored",
                       description="Optimize an exported folder with ONNX Runtime's transformer optimizer at Optimum's "
                       "levels, then restore module tags on every node (fused nodes get the deepest module of what "
                       "they replaced).")
    p.add_argument("path", metavar="PATH", help="an exported folder")
    p.add_argument("-o", "--output", required=True, help="folder to create")
    p.add_argument("--level", choices=("O1", "O2", "O3", "O4"), default="O2",
                   help="Optimum's optimization level: O1 basic graph optimizations, O2 + transformer fusions, O3 + "
                   "Gelu approximation, O4 + fp16 for GPUs (default O2)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(run=run_optimize)

    q = sub.add_parser("quantize", help="int8 quantization (dynamic, or static QDQ), tags restored",
                       description="Quantize an exported folder with ONNX Runtime (dynamic int8 with the settings of "
                       "this machine's CPU, or static QDQ with --static), then restore module tags on every node. "
                       "With --target-cosine/--max-abs-error, keep the least in float (bytes, or latency) that meets "
                       "the target on calibration inputs, and report it on held-out ones.")
    q.add_argument("path", metavar="PATH", help="an exported folder")
    q.add_argument("-o", "--output", required=True, help="folder to create")
    add_quantization_options(q)
    q.add_argument("--exclude-modules", nargs="+", default=[], metavar="GLOB",
                   help="keep the nodes of these modules (and their descendants) in float, e.g. "
                   "'0.model.encoder.layer.5' or '*.attention.*'")
    q.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    q.add_argument("--target-cosine", type=float, default=None, metavar="C",
                   help="keep the least in float that brings the end outputs' cosine with the float folder to C "
                   "(min over the calibration inputs; --target-statistic mean for the mean)")
    q.add_argument("--max-abs-error", type=float, default=None, metavar="X",
                   help="as --target-cosine, for max |float - quantized| of the end outputs")
    q.add_argument("--target-statistic", choices=("min", "mean"), default="min",
                   help="the cosine over the inputs that must meet --target-cosine (default min)")
    q.add_argument("--margin", type=float, default=None, metavar="F",
                   help="share of the error the target allows that the search holds back on the calibration inputs, "
                   "so inputs it never saw still meet the target (default 0.15; 0: search for the target itself)")
    q.add_argument("--objective", choices=("bytes", "latency"), default="bytes",
                   help="what the search minimises among what stays float: weight bytes (default) or the latency "
                   "that quantizing would save (ONNX Runtime's profiler, per module)")
    q.add_argument("--flat", action="store_true",
                   help="search among the candidates only, without descending into the submodules of those kept float")
    add_candidates(q)
    shared.add_model_inputs(q)
    add_evaluation_inputs(q)
    q.add_argument("--shape", action="append", default=[], metavar="BxS",
                   help="measure latency at this batch x sequence (repeatable; default 1 and 8 at the model's typical "
                   "sequence length, 128 for text, when a target is given or --latency)")
    q.add_argument("--latency", action="store_true", help="measure latency (float and quantized alternating)")
    q.add_argument("--latency-rounds", type=int, default=10, metavar="N",
                   help="alternating rounds per shape (default 10); each figure is the median with min-max")
    shared.add_format(q, choices=("text", "json"), default="text")
    q.set_defaults(run=run_quantize)


def _summary(result, verb: str, out=None) -> None:
    out = out or sys.stdout
    for name, counts in result.files.items():
        print(f"{verb} {name}: {counts['nodes']} nodes, all tagged — kept {counts['kept']}, by name "
              f"{counts['by_name']}, by lineage {counts['by_lineage']}, inferred {counts['inferred']}, "
              f"root {counts['root']}" + (f", {counts['renamed']} unnamed nodes named" if counts["renamed"] else ""),
              file=out)
    for pattern, n in getattr(result, "kept_float", {}).items():
        print(f"kept in float: {n} nodes of modules matching {pattern!r}", file=out)
    if verb == "optimized":
        for name, ops in result.added_ops.items():
            fused = ", ".join(f"{op.split(':')[-1]} x{n}" for op, n in ops.items())
            print(f"fused in {name}: " + (fused or "nothing: ONNX Runtime's optimizer matched none of its patterns "
                                                   "(the graph is only cleaned up)"), file=out)


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def run_optimize(args) -> int:
    from modelexport.runtime.transform import optimize_folder

    result = optimize_folder(args.path, args.output, args.level, args.force, on_untagged=_note)
    _summary(result, "optimized")
    print(f"wrote {result.output}")
    return 0


def _shapes(args):
    from modelexport.errors import ModelExportError
    from modelexport.runtime.quantize_measure import default_shapes, parse_shape

    if args.latency_rounds < 1:
        raise ModelExportError("--latency-rounds must be at least 1")
    return [parse_shape(s) for s in args.shape] or default_shapes()


def _accuracy_line(label: str, acc) -> str:
    return f"{label}: cosine min/mean {acc.cosine_min:.5f}/{acc.cosine_mean:.5f}, max abs {acc.max_abs:.3g}"


def run_quantize(args) -> int:
    from modelexport.errors import ModelExportError

    if args.target_cosine is not None or args.max_abs_error is not None:
        return _quantize_to_target(args)
    if args.depth is not None or args.modules:
        raise ModelExportError("--depth and --modules choose the candidates of an accuracy target; give "
                               "--target-cosine or --max-abs-error with them (or --exclude-modules to keep "
                               "modules in float yourself)")
    for option, given in (("--objective", args.objective != "bytes"), ("--target-statistic",
                                                                        args.target_statistic != "min"),
                          ("--flat", args.flat), ("--margin", args.margin is not None)):
        if given:
            raise ModelExportError(f"{option} applies to an accuracy target: give --target-cosine or --max-abs-error")
    return _quantize_plain(args)


def _quantize_plain(args) -> int:
    import json

    from modelexport.cli.sensitivity import model_inputs, settings_from_args
    from modelexport.folder.metadata import update_last_transform
    from modelexport.runtime import quantize_measure
    from modelexport.runtime.sensitivity import accuracy, run_outputs
    from modelexport.runtime.transform import is_tagged, quantize_folder

    settings = settings_from_args(args)
    shapes = _shapes(args) if args.latency or args.shape else None  # refused before any work
    has_inputs = bool(args.text or args.text_file or args.image or args.inputs or args.eval_text
                      or args.eval_text_file or args.eval_image)
    inputs = None
    # the inputs calibrate static ranges and the smoothing statistics; what they do not calibrate
    # is held out
    calibrates = settings.static or bool(settings.smoothing)
    if settings.static or has_inputs:
        from pathlib import Path

        names = sorted(p.name for p in Path(args.path).glob("*.onnx"))
        if Path(args.path).is_dir() and names and not is_tagged(Path(args.path), names) and not settings.static:
            inputs = None  # an untagged folder is quantized as it is (measured below without metadata)
        else:
            inputs = model_inputs(args.path, args, split=calibrates)
            for text in inputs.notes:
                _note(text)
    _note(settings.describe())
    result = quantize_folder(args.path, args.output, args.exclude_modules, args.force, on_untagged=_note,
                             settings=settings, calibration=inputs.calibration if inputs and calibrates else None)
    measured: dict = {}
    if inputs is not None:
        held = inputs.evaluation if calibrates and inputs.evaluation is not None else inputs.all_feeds()
        acc = accuracy(run_outputs(args.path, held), run_outputs(args.output, held))
        measured["accuracy"] = acc.as_dict()
        measured["held_out"] = not calibrates or inputs.evaluation is not None
        measured["inputs"] = inputs.what
    if shapes:
        measured["latency"] = quantize_measure.latency({"float": args.path, "quantized": args.output}, shapes,
                                                       args.latency_rounds, _note)
    measured["sizes"] = {"float": quantize_measure.folder_bytes(args.path),
                         "quantized": quantize_measure.folder_bytes(args.output)}
    if result.tagged and (measured.get("accuracy") or measured.get("latency")):
        update_last_transform(args.output, measured=measured)
    if args.format == "json":
        print(json.dumps({"schema": "modelexport.quantize", "schema_version": 1, "path": str(args.path),
                          "output": str(args.output), "settings": result.settings, "files": result.files,
                          "quantized_weight_nodes": result.quantized_nodes, "kept_float_nodes": result.kept_float,
                          "target": None, **measured}, indent=2))
        return 0
    print(f"settings: {settings.describe()}")
    _summary(result, "quantized")
    if "accuracy" in measured:
        from modelexport.runtime.sensitivity import Accuracy

        a = measured["accuracy"]
        label = "held-out accuracy" if measured["held_out"] else "accuracy (on the calibration inputs)"
        print(_accuracy_line(f"{label} on {measured['inputs']}",
                             Accuracy(a["cosine_min"] if a["cosine_min"] is not None else float("nan"),
                                      a["cosine_mean"] if a["cosine_mean"] is not None else float("nan"),
                                      a["max_abs"] if a["max_abs"] is not None else float("inf"))))
    sizes = measured["sizes"]
    print(f"size {sizes['quantized'] / 2**20:.1f} MiB ({sizes['quantized'] / max(sizes['float'], 1):.2f}x of float "
          f"{sizes['float'] / 2**20:.1f} MiB)")
    for line in quantize_measure.latency_text(measured.get("latency", {})):
        print(line)
    print(f"wrote {result.output}")
    return 0


def _quantize_to_target(args) -> int:
    import json
    from pathlib import Path

    from modelexport.cli.sensitivity import model_inputs, settings_from_args
    from modelexport.errors import ModelExportError
    from modelexport.runtime import quantize_measure
    from modelexport.runtime.sensitivity import MARGIN, ModuleWeights, _names, candidate_modules, quantize_to_target

    if args.exclude_modules:
        raise ModelExportError("--exclude-modules and an accuracy target do not go together: the target decides")
    if args.target_cosine is not None and not -1.0 <= args.target_cosine <= 1.0:
        raise ModelExportError("--target-cosine must be between -1 and 1")
    if args.max_abs_error is not None and args.max_abs_error < 0:
        raise ModelExportError("--max-abs-error must be at least 0")
    settings = settings_from_args(args)
    shapes = _shapes(args)
    inputs = model_inputs(args.path, args, split=True)
    for text in inputs.notes:
        _note(text)
    _note(settings.describe())
    folder = inputs.target.folder
    weights = ModuleWeights(folder, _names(folder), settings)
    candidates = candidate_modules(inputs.target.metadata.modules, args.depth, args.modules, weights)

    def progress(i, n, module):
        print(f"[{i + 1}/{n}] sensitivity of {module}", file=sys.stderr, flush=True)

    result = quantize_to_target(Path(args.path), Path(args.output), candidates, inputs.calibration,
                                args.target_cosine, args.max_abs_error, args.force, progress, settings=settings,
                                eval_feeds=inputs.evaluation, objective=args.objective,
                                statistic=args.target_statistic, shapes=shapes, latency_rounds=args.latency_rounds,
                                note=_note, hierarchical=not args.flat,
                                margin=MARGIN if args.margin is None else args.margin)
    if result.held_out and not result.met_on_held_out:
        cal, got = result.accuracy_calibration, result.accuracy
        _note(f"the target is met on the calibration inputs (cosine min/mean {cal.cosine_min:.5f}/"
              f"{cal.cosine_mean:.5f}) but not on the held-out ones ({got.cosine_min:.5f}/{got.cosine_mean:.5f}): "
              "calibrate on more, and more varied, inputs, or ask for a stricter target")
    if args.format == "json":
        print(json.dumps({"schema": "modelexport.quantize", "schema_version": 1, "path": str(args.path),
                          "output": str(args.output), "settings": settings.as_dict(), "inputs": inputs.what,
                          "target": {"target_cosine": args.target_cosine, "max_abs_error": args.max_abs_error,
                                     "statistic": args.target_statistic, **result.as_dict()}}, indent=2))
        return 0
    acc, full = result.accuracy, result.fully_quantized
    print(f"settings: {settings.describe()}")
    print(f"measured on {inputs.what}")
    if result.margin:
        print(f"search margin: {result.margin:g} of the allowed error held back on the calibration inputs "
              f"(calibration: {_accuracy_line('', result.accuracy_calibration)[2:]})")
    kept = ", ".join(result.kept_float) if result.kept_float else "nothing (everything quantized meets it)"
    print(f"kept in float: {kept} ({result.float_bytes_kept / 2**20:.2f} MiB of "
          f"{result.float_bytes_quantizable / 2**20:.2f} MiB of quantizable weights; {result.trials} trial "
          "quantizations)")
    where = "held-out" if result.held_out else "calibration (nothing held out)"
    print(_accuracy_line(f"{where} accuracy", acc) + f" (fully quantized: {full.cosine_min:.5f}/"
          f"{full.cosine_mean:.5f}, {full.max_abs:.3g})")
    sizes = result.sizes
    print(f"size {sizes['result'] / 2**20:.1f} MiB = {sizes['result'] / max(sizes['float'], 1):.2f}x of float "
          f"{sizes['float'] / 2**20:.1f} MiB (fully quantized {sizes['fully_quantized'] / 2**20:.1f} MiB)")
    for line in quantize_measure.latency_text(result.latency):
        print(line)
    print(f"wrote {args.output}")
    return 0
