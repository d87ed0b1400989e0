"""modelexport's two export paths side by side in one run: the TorchScript trace (default) and
``--exporter dynamo`` (torch.export), on the bundled MiniLM and a tiny GPT-2 with past.

Per case and path: export time (fresh process per export, paths alternating, timed after
imports), node count, file size, the size cost of ``--keep-source-info``, and ONNX Runtime
latency of the exported file before and after ``modelexport optimize`` (O2), with the fused
ops the optimizer produced. Writes benchmarks/results/dynamo_vs_torchscript.{json,md}.

    python benchmarks/dynamo_vs_torchscript.py [--reps 3] [--cases minilm gpt2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _ort_timing import run_latency_ms  # noqa: E402
from export_vs_optimum import build_case, byte_compile_modelexport, machine, onnx_bytes, run_once, spread  # noqa: E402

PATHS = {"torchscript": "modelexport", "dynamo": "modelexport-dynamo"}


def nodes_of(folder: Path) -> int:
    meta = json.loads((folder / "modelexport_metadata.json").read_text())
    return sum(f["nodes"] for f in meta["files"].values())


def run_case(name: str, reps: int, tmp: Path) -> dict:
    from modelexport.runtime.transform import optimize_folder

    label, model, task = build_case(name, tmp)
    seconds: dict[str, list[float]] = {p: [] for p in PATHS}
    phases: dict[str, list[dict]] = {p: [] for p in PATHS}
    kept: dict[str, Path] = {}
    order = list(PATHS)
    for rep in range(reps):
        for path in (order if rep % 2 == 0 else order[::-1]):
            out = tmp / f"{name}-{path}-{rep}"
            run = run_once(PATHS[path], model, task, out)
            seconds[path].append(run["seconds"])
            phases[path].append(run["phases"])
            kept[path] = out
        print(f"{name} rep {rep + 1}/{reps}: " + ", ".join(f"{p} {seconds[p][-1]:.2f} s" for p in PATHS), flush=True)
    source = tmp / f"{name}-dynamo-source"
    run_once("modelexport-dynamo-source", model, task, source)
    result = {"label": label, "task": task, "reps": reps, "export_seconds": seconds,
              "export_phase_seconds": {p: [ph.get("export", 0.0) for ph in phases[p]] for p in PATHS},
              "torch_stage_seconds": [ph.get("torch_stages", {}) for ph in phases["dynamo"]],
              "nodes": {p: nodes_of(kept[p]) for p in PATHS},
              "onnx_bytes": {**{p: onnx_bytes(kept[p]) for p in PATHS}, "dynamo_keep_source_info": onnx_bytes(source)},
              "optimized": {}, "ort_latency_ms": {}}
    files = {}
    for path in PATHS:
        optimized = tmp / f"{name}-{path}-O2"
        done = optimize_folder(kept[path], optimized, "O2")
        result["optimized"][path] = {"nodes": nodes_of(optimized), "fused_ops": done.added_ops.get("model.onnx", {})}
        files[path] = kept[path] / "model.onnx"
        files[f"{path}+O2"] = optimized / "model.onnx"
    latency = {k: [] for k in files}
    for _ in range(3):  # alternating, so drift in the machine's speed hits every file alike
        for key, file in files.items():
            latency[key] += run_latency_ms(file)
    result["ort_latency_ms"] = latency
    return result


def table(results: list[dict], m: dict) -> str:
    med = statistics.median
    lines = [
        "# modelexport: TorchScript trace vs `--exporter dynamo`",
        "",
        f"{m['date']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ". Fresh process per export, paths "
        "alternating, times measured after imports; medians (min–max). Latency: ONNX Runtime CPU, batch 1, "
        "sequence 32 (GPT-2: and 1 past token), 3×30 runs alternating between the files.",
        "",
        "| case | export s: TorchScript | export s: dynamo | **time ratio** | nodes: TorchScript / dynamo | "
        "ONNX bytes: TorchScript / dynamo | `--keep-source-info` cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t, n, b = r["export_seconds"], r["nodes"], r["onnx_bytes"]
        cost = b["dynamo_keep_source_info"] - b["dynamo"]
        lines.append(
            f"| {r['label']}, {r['task']} | {spread(t['torchscript'])} | {spread(t['dynamo'])} | "
            f"**{med(t['dynamo']) / med(t['torchscript']):.2f}** | {n['torchscript']} / {n['dynamo']} | "
            f"{b['torchscript']:,} / {b['dynamo']:,} | +{cost:,} B ({100 * cost / b['dynamo']:.2f} %, "
            f"{cost / n['dynamo']:.0f} B/node) |")
    stages = ["capture (torch.export)", "decompositions", "translation to ONNX", "onnxscript optimizer"]
    lines += ["", "Where the dynamo path's time goes (torch.onnx's own functions timed inside the same exports; "
              "medians, seconds, and each as a multiple of the whole TorchScript export):", "",
              "| case | " + " | ".join(stages) + " | rest of modelexport | **dynamo total / TorchScript total** |",
              "|---|" + "---|" * (len(stages) + 2)]
    for r in results:
        ts = med(r["export_seconds"]["torchscript"])
        per = {s: med([run.get(s, 0.0) for run in r["torch_stage_seconds"]]) for s in stages}
        rest = med(r["export_seconds"]["dynamo"]) - sum(per.values())
        lines.append(f"| {r['label']} | " + " | ".join(f"{per[s]:.3f} ({per[s] / ts:.2f}×)" for s in stages)
                     + f" | {rest:.3f} ({rest / ts:.2f}×) | **{med(r['export_seconds']['dynamo']) / ts:.2f}** |")
    lines += ["", "| case | path | ORT ms | after `optimize` O2: ORT ms | nodes after O2 | fused ops |",
              "|---|---|---|---|---|---|"]
    for r in results:
        lat = r["ort_latency_ms"]
        for path in PATHS:
            fused = ", ".join(f"{op.split(':')[-1]} ×{k}" for op, k in r["optimized"][path]["fused_ops"].items())
            lines.append(f"| {r['label']} | {path} | {med(lat[path]):.3f} | {med(lat[path + '+O2']):.3f} | "
                         f"{r['optimized'][path]['nodes']} | {fused or 'none'} |")
        lines.append(f"| {r['label']} | dynamo / TorchScript | **{med(lat['dynamo']) / med(lat['torchscript']):.2f}** "
                     f"| **{med(lat['dynamo+O2']) / med(lat['torchscript+O2']):.2f}** | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=["minilm", "gpt2"], choices=["minilm", "gpt2", "t5"])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    byte_compile_modelexport()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(name, args.reps, Path(tmp)) for name in args.cases]
    m = machine()
    text = table(results, m)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "dynamo_vs_torchscript.json").write_text(json.dumps({"machine": m, "cases": results}, indent=2)
                                                             + "\n")
    (args.results / "dynamo_vs_torchscript.md").write_text(text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
