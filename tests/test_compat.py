"""The adapters around the private names of Optimum and of torch / ONNX Runtime / Model Explorer,
and traced roots we cannot place."""
from __future__ import annotations

import pytest
import torch

from modelexport.errors import ModelExportError
from modelexport import compat
from modelexport.exporter.optimum import compat as optimum_compat
from modelexport.exporter.optimum.bridge import ExportedFile
from modelexport.exporter.pipeline import traced_root


@pytest.mark.optimum
def test_installed_versions_are_the_tested_ones():
    optimum_compat.check_versions.cache_clear()
    optimum_compat.check_versions()  # the suite runs with the declared ranges
    assert compat.torchscript_opset_range()[1] >= 18
    assert compat.dynamo_opset_range()[0] == 18
    assert "bert" in optimum_compat.supported_types("transformers")


@pytest.mark.optimum
def test_an_untested_version_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(optimum_compat.TESTED, "optimum-onnx", ((9, 0), (9, 1)))
    optimum_compat.check_versions.cache_clear()
    try:
        with pytest.raises(ModelExportError, match=r"optimum-onnx 0\.1\.\d+ is not a version modelexport was tested "
                           r"with \(9\.0 <= version < 9\.1\)"):
            optimum_compat.check_versions()
    finally:
        monkeypatch.undo()
        optimum_compat.check_versions.cache_clear()


@pytest.mark.optimum
def test_ort_class_names_are_optimums_own():
    """Our copy of Optimum's task -> ORTModel mapping (kept so an export does not import every
    transformers pipeline) answers what Optimum's get_ort_model_class answers, on every task."""
    from types import SimpleNamespace

    from optimum.onnxruntime.pipelines import ORT_TASKS_MAPPING, get_ort_model_class

    from modelexport.exporter.optimum.ort_class import ORT_TASK_CLASSES, ort_model_class_name

    assert set(ORT_TASK_CLASSES) == set(ORT_TASKS_MAPPING)
    for task in ORT_TASKS_MAPPING:
        for architectures in (["Wav2Vec2ForCTC"], ["WhisperForConditionalGeneration"]):
            config = SimpleNamespace(architectures=architectures)
            expected = get_ort_model_class(task, config=config).__name__
            assert ort_model_class_name(task, "transformers", config) == expected, task
            assert ort_model_class_name(task + "-with-past", "transformers", config) == expected, task
    assert ort_model_class_name("translation_en_to_fr", "transformers") == "ORTModelForSeq2SeqLM"
    assert ort_model_class_name("object-detection", "transformers") is None


def test_version_parsing():
    assert compat.version_tuple("2.13.0+cpu") == (2, 13, 0)
    assert compat.version_tuple("0.1.0rc1") == (0, 1, 0)


class Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)


class Outer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = Inner()


def test_traced_root_is_found_named_or_warned():
    model = Outer()
    paths = {id(m): p for p, m in model.named_modules()}
    assert traced_root(ExportedFile("encoder_model.onnx", model.enc), paths) == ("enc", [])

    class Wrapper(torch.nn.Module):  # what Optimum traces for some encoders: holds the real module
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    assert traced_root(ExportedFile("encoder_model.onnx", Wrapper(model.enc)), paths) == ("enc", [])
    root, warnings = traced_root(ExportedFile("x.onnx", torch.nn.Linear(2, 2)), paths)
    assert root == "" and warnings and "is not part of the model" in warnings[0]  # the pipeline names the file


def test_installed_versions_from_modules_are_the_distributions_versions():
    """The metadata file records versions read from the imported modules (importlib.metadata
    parses a METADATA file per call): each must be what the installed distribution declares."""
    from importlib import metadata

    import onnx  # noqa: F401 - imported, so its __version__ is what is read
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    checked = 0
    for package in compat._VERSION_MODULES:
        try:
            expected = metadata.version(package)
        except metadata.PackageNotFoundError:
            assert compat.installed_version(package) is None, package
            continue
        assert compat.installed_version(package) == expected, package
        checked += 1
    assert checked >= 6


class _NearlyOne(torch.nn.Module):
    """Arithmetic the onnxscript optimizer's no-op rules take for nothing at their default
    tolerances: a scale 1e-6 below one, an offset of 1e-9."""

    def forward(self, x):
        return x * 0.999999, (x * 1e-9) + 1e-9


def test_rewrite_constants_are_matched_exactly(tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort

    x = torch.rand(3, 5) + 0.5
    expected = [t.numpy() for t in _NearlyOne()(x)]

    def exported(name):
        torch.onnx.export(_NearlyOne().eval(), (x,), str(tmp_path / name), dynamo=True, verbose=False)
        ops = [n.op_type for n in onnx.load(str(tmp_path / name)).graph.node]
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        return ops, session.run(None, {session.get_inputs()[0].name: x.numpy()})

    ops, got = exported("plain.onnx")
    # the premise: without the block both are dropped (if this fails, onnxscript fixed it and the
    # compat function can go)
    assert ops.count("Mul") == 1 and "Add" not in ops, ops
    assert not np.array_equal(got[0], expected[0])
    with compat.safe_onnxscript_rewrites():
        ops, got = exported("exact.onnx")
    assert ops.count("Mul") == 2 and ops.count("Add") == 1, ops
    for want, have in zip(expected, got):
        np.testing.assert_array_equal(have, want)


class _CausalMaskOfInputLength(torch.nn.Module):
    """GPTSan's prefix-LM mask: a tril of uint8 ones as long as the input."""

    def forward(self, x):
        n = x.shape[1]
        lower = torch.tril(torch.ones((n, n), dtype=torch.uint8))
        upper = torch.triu(torch.ones((n, n), dtype=torch.int16), diagonal=1)
        return x @ lower.float(), upper, torch.tril(x.to(torch.bfloat16)).float()


@pytest.mark.parametrize("widened", [False, True])
def test_trilu_of_a_type_onnx_runtime_lacks_is_exported_through_one_it_has(tmp_path, widened):
    import contextlib

    import numpy as np
    import onnx
    import onnxruntime as ort

    from modelexport.exporter.dynamo_trace import export_dynamo

    x = torch.rand(2, 6, 6)
    block = contextlib.nullcontext() if widened else pytest.MonkeyPatch.context()
    with block as patch:
        if not widened:  # the premise, with the rewrite turned off: ONNX Runtime refuses the file
            patch.setattr(compat, "trilu_in_types_ort_runs", contextlib.nullcontext)
        export_dynamo(_CausalMaskOfInputLength().eval(), (x,), None, tmp_path / "m.onnx", input_names=["x"],
                      dynamic_axes={"x": {0: "batch", 1: "n", 2: "n"}}, opset=18)
    if not widened:
        with pytest.raises(Exception, match="Trilu"):
            ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
        return
    assert [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node].count("Trilu") == 3
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    other = torch.rand(3, 9, 9)  # another length than traced: the mask is computed, not a constant
    with torch.no_grad():
        expected = [t.numpy() for t in _CausalMaskOfInputLength()(other)]
    got = session.run(None, {"x": other.numpy()})
    assert got[1].dtype == np.int16
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)  # a matmul: float sums in another order
    for want, have in zip(expected[1:], got[1:]):
        np.testing.assert_array_equal(have, want)


def test_onnxscript_min_max_fusion_is_left_out_so_the_file_is_valid(tmp_path):
    """Gemma 4's audio encoder clamps in a function torch.onnx inlines: onnxscript's Min/Max ->
    Clip rule gave the Clip bounds no initializer in the file, which ONNX Runtime refused ("Node
    input 'mul_8_min_1' is not a graph input, ..."). With the rule left out the file loads and
    computes what PyTorch computes."""
    import json

    import onnx
    import transformers

    import modelexport
    from modelexport.testing.breadth import build_tiny

    if not hasattr(transformers, "Gemma4AudioModel"):
        pytest.skip("Gemma 4 is in transformers 5 only")
    build_tiny("gemma4_audio", "Gemma4AudioModel", "feature-extraction", tmp_path / "model")
    result = modelexport.export(tmp_path / "model", tmp_path / "out")
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    onnx.checker.check_model(onnx.load(str(tmp_path / "out" / "model.onnx")), full_check=True)
    assert "Min" in {n.op_type for n in graph.node}  # what the rule fused is kept as it was
    meta = json.loads((tmp_path / "out" / "modelexport_metadata.json").read_text())
    assert meta["files"]["model.onnx"]["validation"]["passed"] and result.files[0].validation["passed"]


@pytest.mark.optimum  # the Optimum path: MarkupLM has an Optimum config in transformers 4.57
def test_a_folder_whose_inputs_optimums_class_never_feeds_names_custom_tasks(tmp_path):
    """Optimum's ORTModelForTokenClassification feeds input_ids, attention_mask and token_type_ids
    only; MarkupLM's file also takes its xpath ids, so that class fails on the folder ("Input
    xpath_tags_seq is required by model but not provided"). The metadata names
    ORTModelForCustomTasks instead, which runs the folder as PyTorch runs the model."""
    import json

    import numpy as np

    import modelexport
    from modelexport.exporter.optimum.ort_class import load_ort_model
    from modelexport.testing.breadth import build_tiny

    model = build_tiny("markuplm", "MarkupLMForTokenClassification", "token-classification", tmp_path / "model")
    modelexport.export(tmp_path / "model", tmp_path / "out", task="token-classification")
    meta = json.loads((tmp_path / "out" / "modelexport_metadata.json").read_text())
    assert meta["exporter"] == "torchscript" and meta["ort_model_class"] == "ORTModelForCustomTasks"
    depth = model.config.max_depth
    inputs = {"input_ids": torch.randint(0, model.config.vocab_size, (2, 9)),
              "attention_mask": torch.ones(2, 9, dtype=torch.long), "token_type_ids": torch.zeros(2, 9, dtype=torch.long),
              "xpath_tags_seq": torch.randint(0, model.config.max_xpath_tag_unit_embeddings, (2, 9, depth)),
              "xpath_subs_seq": torch.randint(0, model.config.max_xpath_subs_unit_embeddings, (2, 9, depth))}
    ort_model = load_ort_model(tmp_path / "out", meta["ort_model_class"])
    names = set(ort_model.input_names)
    got = ort_model(**{k: v for k, v in inputs.items() if k in names})
    with torch.no_grad():
        expected = model(**inputs).logits
    np.testing.assert_allclose(np.asarray(got["logits"]), expected.numpy(), atol=1e-4, rtol=1e-4)
