"""A representative subset of docs/breadth.md, run for real: tiny models of types outside the
family table, exported by plain Optimum and by modelexport, judged by the value-based parameter
oracle (scripts/breadth_table.py runs all 151 types)."""
from __future__ import annotations

import pytest

from modelexport.testing.breadth import check_model_type, supported_model_types

SUBSET = {
    # scopes that skip the layers.N level: settled by parameters and neighbours, not layer 0
    "squeezebert": {"partial_max": 2},
    # object detection: validation needs every dummy shape (KeyError 'height' before)
    "rt_detr": {"partial_max": None},
    # merged decoder: the If node and its placeholder constants were the 5 root-fallback nodes
    "t5": {"partial_max": 0},
    # BatchNorm folded into Conv: tagged with the module holding both, counted as partial
    "resnet": {"partial_max": None},
}


@pytest.fixture(scope="module")
def tasks():
    return supported_model_types()


@pytest.mark.parametrize("model_type", sorted(SUBSET))
def test_breadth_subset(model_type, tasks, tmp_path):
    row = check_model_type(model_type, tasks[model_type], tmp_path)
    assert row.optimum.startswith("ok"), row.optimum
    assert row.modelexport == "ok", row.modelexport
    assert row.untagged == 0 and row.root_fallback == 0, row
    assert row.oracle_checked > 0 and row.oracle_violations == [], row.oracle_violations
    assert row.ort_load in ("ok", "no ORTModel class for the task"), row.ort_load
    limit = SUBSET[model_type]["partial_max"]
    if limit is not None:
        assert row.partial <= limit, row.partial
    if row.validation_passed is False:  # allowed only where Optimum's own validation warns too
        assert row.optimum.startswith("ok, validation:"), row.optimum


def test_squeezebert_layers_are_told_apart(tasks, tmp_path):
    import json

    row = check_model_type("squeezebert", tasks["squeezebert"], tmp_path)
    assert row.modelexport == "ok"
    meta = json.loads((tmp_path / "modelexport" / "modelexport_metadata.json").read_text())
    nodes = {m["module_path"]: sum(m["nodes"].values()) for m in meta["modules"]}
    for layer in (0, 1):  # before: every encoder node carried layers.0
        assert nodes[f"transformer.encoder.layers.{layer}.attention"] > 10
        assert nodes[f"transformer.encoder.layers.{layer}.output.layernorm"] > 0
