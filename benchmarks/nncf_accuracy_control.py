"""NNCF's ``quantize_with_accuracy_control`` (ONNX backend) on an exported folder: the anchor
``benchmarks/quantize_vs_nncf.py`` runs this in a separate environment (NNCF pins its own
dependencies) and reads the JSON it prints.

    NNCF_PYTHON=/path/to/venv/bin/python
    $NNCF_PYTHON benchmarks/nncf_accuracy_control.py FOLDER OUT.onnx --calibration calib.json --max-drop 0.01

``calib.json``: {"calibration": [feed, ...]} with each feed {input name: nested list of int64}, the
same token ids modelexport's search calibrates on. The validation metric is the mean cosine of all
outputs against the float model (the quantity ``--target-cosine --target-statistic mean`` bounds),
on the calibration feeds, as modelexport's search measures; held-out accuracy is measured by the
caller on the written model. Prints one JSON object; on failure, the exact error.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("output")
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--max-drop", type=float, default=0.01)
    args = parser.parse_args()
    import numpy as np
    import onnx
    import onnxruntime as ort

    result: dict = {"nncf": None, "status": "error"}
    try:
        import nncf
        from nncf.parameters import DropType, ModelType

        result["nncf"] = nncf.__version__
        model = onnx.load(f"{args.folder}/model.onnx")
        wanted = {i.name for i in model.graph.input}  # NNCF feeds the items to ONNX Runtime as they are
        feeds = [{k: np.asarray(v, np.int64) for k, v in f.items() if k in wanted}
                 for f in json.loads(open(args.calibration, encoding="utf-8").read())["calibration"]]
        options = ort.SessionOptions()
        options.log_severity_level = 4

        def outputs(m, data):
            session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
            names = {i.name for i in session.get_inputs()}
            return [np.concatenate([np.asarray(x, np.float64).ravel() for x in
                                    session.run(None, {k: v for k, v in f.items() if k in names})]) for f in data]

        def key(feed) -> bytes:
            return b"|".join(np.ascontiguousarray(feed[k]).tobytes() for k in sorted(feed))

        # NNCF calls validate on the whole set and on single items (its per-item ranking)
        reference = {key(f): out for f, out in zip(feeds, outputs(model, feeds))}

        def validate(candidate, data) -> float:
            data = list(data)
            got = outputs(candidate, data)
            return float(np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b)
                                  for a, b in ((reference[key(f)], g) for f, g in zip(data, got))]))

        dataset = nncf.Dataset(feeds)
        start = time.perf_counter()
        quantized = nncf.quantize_with_accuracy_control(
            model, calibration_dataset=dataset, validation_dataset=dataset, validation_fn=validate,
            max_drop=args.max_drop, drop_type=DropType.ABSOLUTE, model_type=ModelType.TRANSFORMER,
            subset_size=len(feeds))
        result["search_seconds"] = time.perf_counter() - start
        onnx.save(quantized, args.output)
        ops: dict[str, int] = {}
        for node in quantized.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        result["ops"] = ops
        result["status"] = "ok"
    except Exception as e:  # the anchor's answer, whatever it is, is the result to report
        result["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:600]
        result["traceback_tail"] = traceback.format_exc().strip().splitlines()[-6:]
    print(json.dumps(result))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
