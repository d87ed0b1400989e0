"""Scale of the tagging pass: synthetic models of about 1k, 10k and 100k nodes.

Each model is a stack of N small blocks (a torch module tree of the same shape gives the module
paths); its ONNX graph is written directly with TorchScript-style scoped node names, plus one
unscoped Constant per block so gap inference runs too. Timed: the tagging pass in memory and
`tag_file` (splice, tag, write) on disk. Target: 100x the nodes costs at most 150x the time.

    python benchmarks/tagging_scale.py [--reps 5]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    import onnx

    from modelexport.hierarchy.module_tree import ModuleTree
    from modelexport.hierarchy.tagging import TaggingPass, tag_file

    rows = []
    for blocks in (200, 2000, 20000):
        module, model = synthetic(blocks)
        tree = ModuleTree.from_module(module)
        in_memory, on_disk = [], []
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            for _ in range(args.reps):
                copy = onnx.ModelProto()
                copy.CopyFrom(model)
                start = time.perf_counter()
                result = TaggingPass(tree)(copy)
                in_memory.append(time.perf_counter() - start)
                onnx.save(model, path)
                start = time.perf_counter()
                tag_file(path, tree)
                on_disk.append(time.perf_counter() - start)
        assert result.coverage.root_fallback == 0 and result.coverage.inferred == blocks
        rows.append((len(model.graph.node), statistics.median(in_memory), statistics.median(on_disk)))
        print(f"{rows[-1][0]} nodes: pass {rows[-1][1] * 1000:.1f} ms, file {rows[-1][2] * 1000:.1f} ms", flush=True)
    base = rows[0]
    lines = [f"# Tagging pass scale ({datetime.date.today().isoformat()}, {os.cpu_count()} cores, median of "
             f"{args.reps})", "",
             "| nodes | tagging pass (ms) | µs / node | × time vs 1k | tag_file on disk (ms) | × time vs 1k |",
             "|---|---|---|---|---|---|"]
    for n, mem, disk in rows:
        lines.append(f"| {n:,} | {mem * 1000:.1f} | {mem / n * 1e6:.2f} | {mem / base[1]:.1f} | {disk * 1000:.1f} | "
                     f"{disk / base[2]:.1f} |")
    lines.append("")
    lines.append(f"100× the nodes cost {rows[-1][1] / base[1]:.0f}× the time in memory and {rows[-1][2] / base[2]:.0f}× "
                 "on disk (target ≤ 150×).")
    table = "\n".join(lines) + "\n"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "tagging_scale.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
