"""How fast `report --html` renders in headless Chromium: synthetic tagged models of about 1k,
10k and 50k nodes (the stack of blocks of tagging_scale.py, tagged by the real tagging pass).

    python benchmarks/html_report_scale.py [--reps 3]

Measured: the page's own script time (performance.now() from the start of its script to the end
of the first render, read from the rendered DOM) and the wall time of `chromium --dump-dom`
(process start, parse, script, serialise), against the same Chromium opening an empty page in the
same run. Target: a 10k-node model renders in under 2 s. Writes benchmarks/results/html_report_scale.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tagging_scale import synthetic  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu"]


def dump(page: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([shutil.which("chromium"), *FLAGS, "--dump-dom", page.as_uri()], capture_output=True,
                          text=True, timeout=300, check=True)
    return time.perf_counter() - start, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    import onnx

    from modelexport.cli.report import write_html
    from modelexport.hierarchy.module_tree import ModuleTree
    from modelexport.hierarchy.tagging import TaggingPass

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.html"
        empty.write_text("<!DOCTYPE html><html><body></body></html>")
        baseline = statistics.median(dump(empty)[0] for _ in range(args.reps))
        for blocks in (200, 2000, 10000):
            module, model = synthetic(blocks)
            TaggingPass(ModuleTree.from_module(module))(model)
            path = Path(tmp) / f"stack{blocks}.onnx"
            onnx.save(model, path)
            page = write_html(path, Path(tmp) / f"stack{blocks}.html")
            walls, scripts = [], []
            for _ in range(args.reps):
                wall, dom = dump(page)
                walls.append(wall)
                scripts.append(float(re.search(r'data-render-ms="([0-9.]+)"', dom).group(1)))
            rows.append((len(model.graph.node), page.stat().st_size, statistics.median(scripts),
                         statistics.median(walls)))
            print(rows[-1], flush=True)
    version = subprocess.run([shutil.which("chromium"), "--version"], capture_output=True, text=True).stdout.strip()
    lines = ["# `report --html` render time in headless Chromium", "",
             f"`python benchmarks/html_report_scale.py --reps {args.reps}` on {datetime.date.today().isoformat()} "
             f"({os.cpu_count()} cores, {version}); medians. Script: the page's own render (tree rows and icicle), "
             "from its script's start to the end of the first render. Wall: `chromium --dump-dom` of the page, "
             f"whose empty-page baseline in the same run is {baseline:.2f} s.", "",
             "| nodes | page size | script render s | wall s | wall − empty page s |", "|---|---|---|---|---|"]
    for nodes, size, script, wall in rows:
        lines.append(f"| {nodes:,} | {size / 2**20:.1f} MiB | {script / 1000:.2f} | {wall:.2f} | {wall - baseline:.2f} |")
    out = HERE / "results" / "html_report_scale.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
