"""One export in a fresh process, timed after imports; prints a JSON line. Used by export_vs_optimum.py
and dynamo_vs_torchscript.py."""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")


def torch_stages() -> dict:
    """Seconds torch.onnx (dynamo) spends in each of its stages during the timed export, by timing
    its own functions: the graph capture (``torch.export.export``, every strategy attempt), the
    decompositions (``_prepare_exported_program_for_export``), the translation to ONNX
    (``_exported_program_to_onnx_program``) and the onnxscript optimizer (``ONNXProgram.optimize``).
    Wrapping costs a function call per stage."""
    import torch
    from torch.onnx._internal.exporter import _core, _onnx_program

    stages: dict = {}

    def timed(owner, name: str, stage: str):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - start

        setattr(owner, name, wrapper)

    timed(torch.export, "export", "capture (torch.export)")
    timed(_core, "_prepare_exported_program_for_export", "decompositions")
    timed(_core, "_exported_program_to_onnx_program", "translation to ONNX")
    timed(_onnx_program.ONNXProgram, "optimize", "onnxscript optimizer")
    return stages


def main() -> None:
    tool, model, out, task = sys.argv[1:5]
    import logging

    logging.disable(logging.WARNING)
    # The libraries both tools use are imported before the clock starts, for both tools alike:
    # the timed part is the export itself, not Python's import of torch/transformers/optimum.
    import onnxruntime  # noqa: F401
    import sentence_transformers  # noqa: F401
    import transformers  # noqa: F401
    try:
        from optimum.exporters.onnx import main_export  # noqa: F401
    except ImportError:  # the transformers-5 environment: no Optimum
        pass
    if tool == "optimum":
        from optimum.exporters.onnx import main_export

        start = time.perf_counter()
        main_export(model, out, task=task)
        seconds = time.perf_counter() - start
        phases = {}
    elif tool.startswith("modelexport"):  # modelexport, modelexport-dynamo[-source], modelexport-generic
        import modelexport

        exporter = "dynamo" if "dynamo" in tool else "generic" if "generic" in tool else "torchscript"
        stages = torch_stages() if exporter != "torchscript" else None
        start = time.perf_counter()
        result = modelexport.export(model, out, task=task, exporter=exporter,
                                    keep_source_info=tool.endswith("-source"))
        seconds = time.perf_counter() - start
        phases = result.timings
        if stages is not None:
            phases = {**phases, "torch_stages": stages}
    elif tool == "dynamo":
        # torch.onnx.export(dynamo=True) on the plain transformers model, for reference: no
        # Optimum config, no tags, no folder.
        import torch
        from transformers import AutoModel

        hf = AutoModel.from_pretrained(model).eval()
        ids = torch.ones((1, 16), dtype=torch.int64)
        from pathlib import Path

        Path(out).mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        torch.onnx.export(hf, (ids, torch.ones_like(ids)), f"{out}/model.onnx", dynamo=True,
                          input_names=["input_ids", "attention_mask"],
                          dynamic_shapes=({0: "batch", 1: "sequence"}, {0: "batch", 1: "sequence"}))
        seconds = time.perf_counter() - start
        phases = {}
    else:
        raise SystemExit(f"unknown tool {tool}")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"tool": tool, "seconds": seconds, "peak_rss_mib": peak_kib / 1024, "phases": phases}))


if __name__ == "__main__":
    main()
