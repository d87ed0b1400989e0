"""Work the export no longer does twice must still be done once, exactly as Optimum does it.

- Optimum's output-axes check (``OnnxConfig.fix_dynamic_axes``) runs after tagging, in the
  session validation then uses: the files' declared outputs must equal Optimum's own export's,
  and where the check does fix an axis (T5's decoder keys), it must fix it as Optimum does.
- Tagging moves the weights within the exporter's file instead of writing a copy.
"""
from __future__ import annotations

import shutil

import onnx
import pytest

pytestmark = pytest.mark.optimum


def _declared_outputs(path) -> list[tuple[str, list]]:
    graph = onnx.load(path, load_external_data=False).graph
    return [(o.name, [d.dim_value if d.HasField("dim_value") else d.dim_param
                      for d in o.type.tensor_type.shape.dim]) for o in graph.output]


@pytest.fixture(scope="module")
def optimum_exports(tmp_path_factory, gpt2_dir, tiny_bert_dir):
    """Optimum's own main_export of the tiny GPT-2 (with past), BERT and T5, beside ours."""
    import modelexport
    from optimum.exporters.onnx import main_export

    from modelexport.testing.tiny_models import BY_NAME

    t5_dir = tmp_path_factory.mktemp("t5-model")
    BY_NAME["t5"].build(t5_dir)
    cases = {"gpt2": (gpt2_dir, "text-generation-with-past"), "bert": (tiny_bert_dir, "text-classification"),
             "t5": (t5_dir, "text2text-generation-with-past")}
    out = {}
    for name, (folder, task) in cases.items():
        theirs = tmp_path_factory.mktemp(f"{name}-optimum")
        main_export(str(folder), theirs, task=task)
        ours = tmp_path_factory.mktemp("exports") / f"{name}-ours"
        result = modelexport.export(str(folder), ours, task=task)
        out[name] = (theirs, ours, result)
    return out


@pytest.mark.parametrize("name", ["gpt2", "bert", "t5"])
def test_declared_outputs_equal_optimums_after_the_deferred_axes_check(optimum_exports, name):
    theirs, ours, result = optimum_exports[name]
    files = sorted(p.name for p in theirs.glob("*.onnx"))
    assert sorted(p.name for p in ours.glob("*.onnx")) == files
    for file in files:
        assert _declared_outputs(ours / file) == _declared_outputs(theirs / file), file
    # validated, in the session its axes were checked in (or a fresh one): Optimum's tolerance
    # (1e-5) is missed now and then on GPT-2's random dummy inputs, before this change as after
    validated = [r for r in result.files if r.validation is not None]
    assert validated and all(r.validation["max_abs_diff"] < 1e-3 and not r.validation["shape_mismatches"]
                             for r in validated)
    assert result.timings.get("sessions", 0) > 0 or name == "t5"


def test_a_deferred_check_that_fixes_an_axis_fixes_it_as_optimum_does(tmp_path):
    """T5's decoder (exported alone, before merging) has present-key axes the trace named and
    the config does not: Optimum's check fixes them to their sizes. Run through settle_axes in a
    given session, the file is fixed the same way and the stale session is not handed back."""
    import onnxruntime as ort
    from optimum.exporters.onnx import onnx_export_from_model
    from optimum.exporters.onnx.base import OnnxConfig
    from transformers import AutoModelForSeq2SeqLM

    from modelexport.exporter.optimum.bridge import deferred_axis_checks, settle_axes
    from modelexport.testing.tiny_models import BY_NAME

    folder = tmp_path / "t5"
    BY_NAME["t5"].build(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    pending: dict = {}
    with deferred_axis_checks(pending, {"decoder_model.onnx"}):
        onnx_export_from_model(model, tmp_path / "out", task="text2text-generation-with-past",
                               do_validation=False, no_post_process=True)
    assert set(pending) == {"decoder_model.onnx"}
    ours = tmp_path / "out" / "decoder_model.onnx"
    theirs = tmp_path / "theirs.onnx"
    shutil.copy(ours, theirs)
    named_before = [o for o in _declared_outputs(ours) if any(isinstance(d, str) and d.startswith("Transpose")
                                                             for d in o[1])]
    assert named_before  # the check has something to fix
    config, args, kwargs = pending["decoder_model.onnx"]
    OnnxConfig.fix_dynamic_axes(config, theirs, *args, **kwargs)  # Optimum's own, on a copy
    session = ort.InferenceSession(str(ours), providers=["CPUExecutionProvider"])
    assert settle_axes(ours, pending["decoder_model.onnx"], session) is None
    assert _declared_outputs(ours) == _declared_outputs(theirs)
    assert _declared_outputs(ours) != named_before
    # the check was put back: a later export checks at once
    assert OnnxConfig.fix_dynamic_axes.__qualname__ == "OnnxConfig.fix_dynamic_axes"


def test_tagging_rewrites_the_exporters_file_itself(tiny_bert_dir, tmp_path, monkeypatch):
    """The tag pass moves the weights within the file the exporter wrote (no second copy of
    them), and the folder is what a copying rewrite gives: every node tagged, ORT runs it."""
    import numpy as np

    import modelexport
    from modelexport.hierarchy import node_splice

    rewrites = []
    original = node_splice._rewrite_in_place
    monkeypatch.setattr(node_splice, "_rewrite_in_place", lambda p, pieces: rewrites.append(p) or original(p, pieces))
    out = tmp_path / "bert"
    result = modelexport.export(str(tiny_bert_dir), out, task="text-classification")
    assert [p.name for p in rewrites] == ["model.onnx"]
    assert result.files[0].coverage["root_fallback"] == 0
    assert result.files[0].coverage["direct"] + result.files[0].coverage["inferred"] == result.files[0].nodes
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.ones((1, 5), dtype=np.int64)
    feed = {i.name: ids if i.name != "token_type_ids" else np.zeros_like(ids) for i in session.get_inputs()}
    logits = session.run(None, feed)[0]
    assert logits.shape == (1, tiny_bert_config_labels(tiny_bert_dir)) and np.isfinite(logits).all()


def tiny_bert_config_labels(folder) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder).num_labels
