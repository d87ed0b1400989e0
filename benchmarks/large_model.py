"""A model whose weights exceed 2 GB: exported with external data, tags intact, ORT loads it.

Builds a GPT-2 with random weights from a config (1024 hidden, 48 layers: ~655M parameters,
~2.6 GB in fp32), exports it with `modelexport export` in a fresh process (peak RSS measured),
then checks: `model.onnx_data` written, every node tagged, ONNX Runtime loads and runs it.
Slow (minutes) and memory-hungry, so it is a benchmark, not a test.

    python benchmarks/large_model.py [--layers 48] [--hidden 1024] [--exporter torchscript|dynamo]

Results go to results/large_model.md (TorchScript) or results/large_model_dynamo.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    args = parser.parse_args()
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    with tempfile.TemporaryDirectory(dir=os.environ.get("LARGE_MODEL_TMP")) as tmp:
        folder = Path(tmp) / "gpt2-large-random"
        start = time.perf_counter()
        torch.manual_seed(0)
        config = GPT2Config(n_embd=args.hidden, n_layer=args.layers, n_head=16, n_positions=256)
        model = GPT2LMHeadModel(config).eval()
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(folder)
        del model
        build_s = time.perf_counter() - start
        print(f"built {params / 1e6:.0f}M parameters ({params * 4 / 2**30:.2f} GiB fp32) in {build_s:.0f} s", flush=True)

        out = Path(tmp) / "onnx"
        start = time.perf_counter()
        script = ("import resource, sys, json; from modelexport.cli.main import main; code = main(sys.argv[1:]); "
                  "print(json.dumps({'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), "
                  "file=sys.stderr); sys.exit(code)")
        proc = subprocess.run([sys.executable, "-c", script, "export", str(folder), str(out), "--format", "json",
                               "--task", "text-generation-with-past", "--exporter", args.exporter],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        export_s = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return 1
        peak = json.loads(proc.stderr.strip().splitlines()[-1])["peak_rss_mib"]
        summary = json.loads(proc.stdout)
        data_files = sorted(p.name for p in out.iterdir() if p.name.endswith(".onnx_data"))
        sizes = {p.name: p.stat().st_size for p in out.iterdir()}

        from modelexport.hierarchy.tags import read_tags

        tags = read_tags(out / "model.onnx")
        untagged = sum(t.module_path is None for t in tags)
        import onnxruntime as ort

        from modelexport.runtime.dummy_inputs import make_inputs

        start = time.perf_counter()
        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        session.run(None, make_inputs(session, None, 1, 8))
        ort_s = time.perf_counter() - start
    checker_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [f"# Large model ({datetime.date.today().isoformat()}, {os.cpu_count()} cores, "
             f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM)", "",
             "| measure | value |", "|---|---|",
             f"| model | GPT-2 {args.layers} layers × {args.hidden} hidden, random weights, "
             f"{params / 1e6:.0f}M parameters ({params * 4 / 2**30:.2f} GiB fp32) |",
             f"| export (`modelexport export --exporter {args.exporter}`, with validation) | {export_s:.0f} s |",
             f"| peak RSS of the export process | {peak / 1024:.1f} GiB |",
             f"| files | {', '.join(f'{k} ({v / 2**30:.2f} GiB)' if v > 2**28 else k for k, v in sorted(sizes.items()))} |",
             f"| external data | {', '.join(data_files) or 'none'} |",
             f"| nodes / untagged | {len(tags)} / {untagged} |",
             f"| coverage | {summary['files'][0]['coverage']} |",
             f"| max abs diff vs PyTorch | {summary['max_abs_diff']} |",
             f"| ONNX Runtime load + one run | {ort_s:.0f} s (peak RSS of this process {checker_rss / 1024:.1f} GiB) |"]
    table = "\n".join(lines) + "\n"
    (HERE / "results").mkdir(exist_ok=True)
    name = "large_model.md" if args.exporter == "torchscript" else f"large_model_{args.exporter}.md"
    (HERE / "results" / name).write_text(table)
    print(table)
    return 0 if not untagged and data_files else 1


if __name__ == "__main__":
    sys.exit(main())
