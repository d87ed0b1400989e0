"""``modelexport sensitivity FOLDER``: which modules lose accuracy when quantized; and the option
groups and input handling shared with ``quantize`` (settings, candidates, held-out inputs)."""
from __future__ import annotations

import sys
from argparse import Namespace
from dataclasses import dataclass, field

from modelexport.cli import args as shared


def register(sub) -> None:
    p = sub.add_parser("sensitivity", help="rank modules by the accuracy int8 quantization costs in each",
                       description="For each candidate module, quantize only that module, then everything but "
                       "that module (as `quantize` would: same preset and mode), run both and the float folder in ONNX "
                       "Runtime on the same inputs, and compare the end outputs. Most sensitive first.")
    p.add_argument("path", metavar="FOLDER", help="an exported folder (float)")
    add_candidates(p)
    add_quantization_options(p)
    shared.add_model_inputs(p)
    add_evaluation_inputs(p)
    shared.add_format(p, choices=("table", "json"), default="table")
    p.set_defaults(run=run)


def add_candidates(p) -> None:
    p.add_argument("--depth", type=int, default=None,
                   help="rank the modules at this depth (default: the items of every ModuleList, e.g. the encoder and "
                   "decoder layers, and the modules beside them that hold weights, e.g. the embeddings)")
    p.add_argument("--modules", nargs="+", default=[], metavar="GLOB", help="rank the modules matching these globs")


def add_quantization_options(p) -> None:
    from modelexport.runtime.cpu_presets import PRESETS
    from modelexport.runtime.smoothing import DEFAULT_ALPHA

    p.add_argument("--preset", choices=("auto", *PRESETS), default="auto",
                   help="the CPU the model will run on (default auto: this machine's instruction sets; VNNI/AMX -> "
                   "avx512_vnni, AVX2 only -> avx2 with 7-bit weights, ARM -> arm64)")
    p.add_argument("--per-tensor", action="store_true",
                   help="one scale per weight tensor instead of one per output channel (less accurate)")
    p.add_argument("--static", action="store_true",
                   help="static QDQ quantization (QuantizeLinear/DequantizeLinear, the format NPU toolchains take), "
                   "calibrated on the given inputs through the folder's preprocessors")
    p.add_argument("--smoothing", type=float, default=DEFAULT_ALPHA, metavar="ALPHA",
                   help="move activation outliers into the weights before quantizing (SmoothQuant): scale = "
                   f"max|x|^ALPHA / max|w|^(1-ALPHA) per channel, from the calibration inputs or else random token "
                   f"ids (default {DEFAULT_ALPHA}; 0: off)")
    p.add_argument("--static-ops", choices=("weights", "all"), default="weights",
                   help="with --static: quantize the inputs of the ops with weights (MatMul/Gemm/Conv, default) or "
                   "every op ONNX Runtime's QDQ quantizer handles")


def add_evaluation_inputs(p) -> None:
    p.add_argument("--eval-text", action="append", default=[], metavar="TEXT",
                   help="a held-out text to measure accuracy on (repeatable); without --eval-*, the given texts or "
                   "images are split: every other one calibrates, the rest is held out")
    p.add_argument("--eval-text-file", default=None, metavar="FILE", help="held-out texts, one per line")
    p.add_argument("--eval-image", action="append", default=[], metavar="PATH", help="a held-out image (repeatable)")


def settings_from_args(args):
    from modelexport.errors import ModelExportError
    from modelexport.runtime.cpu_presets import resolve_preset
    from modelexport.runtime.quantize_ort import QuantSettings

    if getattr(args, "static_ops", "weights") != "weights" and not args.static:
        raise ModelExportError("--static-ops applies to static quantization: add --static")
    if args.static:
        from pathlib import Path

        from modelexport.runtime.quantize_ort import refuse_static_subgraphs

        if Path(args.path).is_dir():
            refuse_static_subgraphs(Path(args.path))
    if not 0.0 <= args.smoothing <= 1.0:
        raise ModelExportError(f"--smoothing {args.smoothing:g}: give an alpha in [0, 1] (0: off)")
    return QuantSettings(resolve_preset(args.preset), per_channel=not args.per_tensor, static=args.static,
                         static_ops=getattr(args, "static_ops", "weights"), smoothing=args.smoothing)


@dataclass
class Inputs:
    target: object  # the loaded folder (folder.loading.Target)
    calibration: dict[str, list[dict]]  # file -> feeds the search (and static calibration) use
    evaluation: dict[str, list[dict]] | None  # file -> held-out feeds; None: nothing was held out
    what: str  # a few words on what they are
    notes: list[str] = field(default_factory=list)  # warnings for the user (dummy ids, nothing held out)

    def all_feeds(self) -> dict[str, list[dict]]:
        if self.evaluation is None:
            return self.calibration
        return {name: self.calibration[name] + self.evaluation.get(name, []) for name in self.calibration}


def _lines(path: str, option: str) -> list[str]:
    from pathlib import Path

    from modelexport.errors import ModelExportError

    try:
        return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise ModelExportError(f"cannot read {option} {path}: {e.strerror or e}") from e


def model_inputs(folder, args, split: bool = True) -> Inputs:
    """Calibration and held-out feeds for every ONNX file of an exported folder. With ``split``
    (a search or a static calibration), the given texts or images are split in two (every other
    one held out) unless ``--eval-*`` gives the held-out ones; without it, all of them are
    evaluation inputs."""
    from modelexport.errors import ModelExportError
    from modelexport.folder.loading import load_target
    from modelexport.runtime.feeds import feeds_for

    target = load_target(folder)
    if target.metadata is None:
        raise ModelExportError(f"{folder}: {target.metadata_problem}")
    texts = list(args.text or []) + (_lines(args.text_file, "--text-file") if args.text_file else [])
    images = list(args.image or [])
    eval_texts = list(getattr(args, "eval_text", None) or []) + (
        _lines(args.eval_text_file, "--eval-text-file") if getattr(args, "eval_text_file", None) else [])
    eval_images = list(getattr(args, "eval_image", None) or [])
    notes = []
    given_eval = bool(eval_texts or eval_images)
    if given_eval and args.inputs:
        raise ModelExportError("--inputs gives one set of arrays; held-out --eval-* inputs go with --text/--image")
    if given_eval and not (texts or images):
        raise ModelExportError("--eval-text/--eval-image need calibration inputs too (--text, --text-file, --image)")
    if given_eval:
        calib_texts, calib_images, held_texts, held_images = texts, images, eval_texts, eval_images
    elif split and (len(texts) >= 2 or len(images) >= 2):
        calib_texts, held_texts = texts[0::2], texts[1::2]
        calib_images, held_images = images[0::2], images[1::2]
    else:
        calib_texts, calib_images, held_texts, held_images = texts, images, [], []

    def feeds(txts, imgs):
        ns = Namespace(text=txts, text_file=None, image=imgs, inputs=args.inputs)
        out, what = {}, set()
        for f in target.files:
            out[f.name], description = feeds_for(target, f, ns)
            what.add(description)
        return out, "; ".join(sorted(what))

    calibration, what = feeds(calib_texts, calib_images)
    evaluation = None
    if held_texts or held_images:
        evaluation, held_what = feeds(held_texts, held_images)
        what = f"calibration: {what}; held out: {held_what}"
    elif split:
        notes.append("nothing is held out: the accuracy is measured on the inputs the search and calibration used; "
                     "give more texts/images or --eval-text-file for a held-out figure")
    if "dummy" in what and any("input_ids" in {i.name for i in f.model.graph.input} for f in target.files):
        notes.append("no --text/--text-file: dummy token ids are not representative of real text (module rankings "
                     "and accuracy measured on them differ from those on sentences)")
    return Inputs(target, calibration, evaluation, what, notes)


def feeds_by_file(folder, args):
    """Feeds for every ONNX file of an exported folder, and what they are (every input given)."""
    inputs = model_inputs(folder, args, split=False)
    return inputs.target, inputs.calibration, inputs.what


def say(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def run(args) -> int:
    import json

    from modelexport.runtime.sensitivity import ModuleWeights, _names, candidate_modules, sensitivity

    settings = settings_from_args(args)
    inputs = model_inputs(args.path, args, split=settings.static)
    for text in inputs.notes:
        say(text)
    names = _names(inputs.target.folder)
    weights = ModuleWeights(inputs.target.folder, names, settings)
    candidates = candidate_modules(inputs.target.metadata.modules, args.depth, args.modules, weights)
    say(f"{settings.describe()}")

    def progress(i, n, module):
        print(f"[{i + 1}/{n}] quantizing around {module}", file=sys.stderr, flush=True)

    # static: the calibration half sets the ranges, the held-out half is measured
    measured = inputs.evaluation if settings.static and inputs.evaluation is not None else inputs.all_feeds()
    rows = sensitivity(inputs.target.folder, candidates, measured, progress, settings=settings,
                       calibration=inputs.calibration if settings.static else None)
    if args.format == "json":
        print(json.dumps({"schema": "modelexport.sensitivity", "schema_version": 1, "path": str(args.path),
                          "inputs": inputs.what, "settings": settings.as_dict(),
                          "modules": [r.as_dict() for r in rows]}, indent=2))
        return 0
    from rich.markup import escape

    from modelexport.cli.console import stdout_console, table

    console = stdout_console()
    console.print(f"End outputs against the float folder, on {escape(inputs.what)}; most sensitive first")
    t = table("module", "float MiB", "cosine (only this int8)", "max abs (only this)", "cosine (all but this)",
              "max abs (all but this)", right=("float MiB", "cosine (only this int8)", "max abs (only this)",
                                               "cosine (all but this)", "max abs (all but this)"))
    for r in rows:
        t.add_row(escape(r.module_path), f"{r.float_bytes / 2**20:.2f}", f"{r.cosine_only_this:.6f}",
                  f"{r.max_abs_only_this:.3g}", f"{r.cosine_all_but_this:.6f}", f"{r.max_abs_all_but_this:.3g}")
    console.print(t)
    return 0
