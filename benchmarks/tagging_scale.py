"""Scale of the tagging pass: synthetic models of about 1k, 10k and 100k nodes.

Each model is a stack of N small blocks (a torch module tree of the same shape gives the module
paths); its ONNX graph is written directly with TorchScript-style scoped node names, plus one
unscoped Constant per block so gap inference runs too. Every block has its own scopes and modules
(about 0.6 modules per node, more than real models have), so per-scope and per-module work is
timed too. Timed: the tagging pass in memory (``TaggingPass(tree)(model)``) and ``tag_file`` on
disk (splice the nodes out of the file, tag, fingerprint, write back).

The sizes alternate within each repetition (1k, 10k, 100k, 1k, ...) so that a change in the
machine's load falls on all of them; medians with min-max, as wall time and as this process's CPU
time (``time.process_time``: what other processes on a shared machine add to the wall time is
left out of it). A reference loop that does only what no pass can avoid (read each node's name,
op type and inputs, look its scope up in a dict, merge one serialised tag into it) is timed the
same way: the part of the per-node growth from 1k to 100k that it shows too comes from the
memory hierarchy (larger working sets), not from the pass's algorithm.

Targets (issue 24): at most 8 µs per node at every size; 100x the nodes cost at most 150x the time.

    python benchmarks/tagging_scale.py [--reps 7]
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = (200, 2000, 20000)  # blocks of 5 nodes
TARGET_US = 8.0
TARGET_RATIO = 150.0


def synthetic(blocks: int):
    import numpy as np
    import torch
    from onnx import TensorProto, helper, numpy_helper

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.act = torch.nn.ReLU()

    class Stack(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.layers = torch.nn.ModuleList(Block() for _ in range(n))

    nodes, value = [], "x"
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    for i in range(blocks):  # 5 nodes per block
        scope = f"/layers.{i}"
        nodes += [
            helper.make_node("Constant", [], [f"c{i}"], name=f"Constant_{i}",
                             value=helper.make_tensor("v", TensorProto.FLOAT, [4], [0.5] * 4)),
            helper.make_node("MatMul", [value, "w"], [f"m{i}"], name=f"{scope}/proj/MatMul"),
            helper.make_node("Add", [f"m{i}", f"c{i}"], [f"a{i}"], name=f"{scope}/proj/Add"),
            helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"{scope}/act/Relu"),
            helper.make_node("Add", [f"r{i}", value], [f"s{i}"], name=f"{scope}/Add"),
        ]
        value = f"s{i}"
    graph = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(value, TensorProto.FLOAT, [1, 4])], [weight])
    return Stack(blocks), helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def reference_loop(graph) -> None:
    """The per-node work no tagging pass avoids, and nothing else."""
    scopes: dict[str, str] = {}
    blob = b"\x4a\x05\x0a\x01a\x12\x00"  # one metadata entry
    gc.disable()
    try:
        for node in graph.node:
            node.op_type
            list(node.input)
            name = node.name
            scope = name[1:name.rfind("/")]
            if scopes.get(scope) is None:
                scopes[scope] = scope
            node.MergeFromString(blob)
    finally:
        gc.enable()


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(samples: list[float], nodes: int) -> tuple[float, float, float]:
    """Median, min and max in µs per node."""
    us = [s / nodes * 1e6 for s in samples]
    return statistics.median(us), min(us), max(us)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    import onnx

    from modelexport.hierarchy.module_tree import ModuleTree
    from modelexport.hierarchy.tagging import TaggingPass, tag_file

    cases = []
    for blocks in SIZES:
        module, model = synthetic(blocks)
        cases.append({"nodes": len(model.graph.node), "tree": ModuleTree.from_module(module), "model": model,
                      "blocks": blocks, "pass": ([], []), "file": ([], []), "reference": ([], [])})
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for case in cases:  # alternating sizes
                model, tree = case["model"], case["tree"]
                copy = onnx.ModelProto()
                copy.CopyFrom(model)
                result = None

                def run_pass():
                    nonlocal result
                    result = TaggingPass(tree)(copy)

                for store, value in zip(case["pass"], timed(run_pass)):
                    store.append(value)
                assert result.coverage.root_fallback == 0 and result.coverage.inferred == case["blocks"]
                path = Path(tmp) / f"m{case['nodes']}.onnx"
                onnx.save(model, path)
                for store, value in zip(case["file"], timed(lambda: tag_file(path, tree))):
                    store.append(value)
                copy = onnx.ModelProto()
                copy.CopyFrom(model)
                for store, value in zip(case["reference"], timed(lambda: reference_loop(copy.graph))):
                    store.append(value)
            print(f"rep {rep + 1}/{args.reps}: " + ", ".join(
                f"{c['nodes']:,} nodes pass {c['pass'][0][-1] / c['nodes'] * 1e6:.2f} µs/node" for c in cases),
                flush=True)
    load_after = os.getloadavg()[0]

    def cell(samples, nodes):
        med, lo, hi = summary(samples, nodes)
        return f"{med:.2f} ({lo:.2f}–{hi:.2f})"

    first, last = cases[0], cases[-1]

    def ratio(kind: str, clock: int) -> float:  # time at 100k / time at 1k, medians
        return statistics.median(last[kind][clock]) / statistics.median(first[kind][clock])

    lines = [f"# Tagging pass scale ({datetime.date.today().isoformat()}, {os.cpu_count()} cores, "
             f"load average {load_before:.1f} before / {load_after:.1f} after, {args.reps} repetitions, "
             "sizes alternating; medians (min–max))", "",
             "| nodes | tagging pass µs/node, wall | tagging pass µs/node, CPU | tag_file on disk µs/node, wall "
             "| tag_file on disk µs/node, CPU | reference loop µs/node, CPU |",
             "|---|---|---|---|---|---|"]
    for c in cases:
        n = c["nodes"]
        lines.append(f"| {n:,} | {cell(c['pass'][0], n)} | {cell(c['pass'][1], n)} | {cell(c['file'][0], n)} | "
                     f"{cell(c['file'][1], n)} | {cell(c['reference'][1], n)} |")
    worst_wall = max(summary(c["pass"][0], c["nodes"])[0] for c in cases)
    worst_cpu = max(summary(c["pass"][1], c["nodes"])[0] for c in cases)
    met = "met" if worst_wall <= TARGET_US else "not met on wall time" if worst_cpu <= TARGET_US else "not met"
    lines += ["",
              f"Time at {last['nodes']:,} nodes / time at {first['nodes']:,} (100× the nodes; target ≤ "
              f"{TARGET_RATIO:.0f}×): tagging pass {ratio('pass', 0):.0f}× wall, {ratio('pass', 1):.0f}× CPU; "
              f"tag_file {ratio('file', 0):.0f}× wall, {ratio('file', 1):.0f}× CPU; reference loop "
              f"{ratio('reference', 1):.0f}× CPU.",
              f"Slowest median of the tagging pass: {worst_wall:.2f} µs/node wall, {worst_cpu:.2f} µs/node CPU "
              f"(target ≤ {TARGET_US:.0f}: {met})."]
    table = "\n".join(lines) + "\n"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "tagging_scale.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
