"""``optimize`` calls ONNX Runtime's transformer optimizer itself, with Optimum's levels: the graph
it writes is the graph Optimum's ORTOptimizer writes (run here, where Optimum is installed)."""
from __future__ import annotations

import pytest

import modelexport

pytest.importorskip("optimum.onnxruntime")


@pytest.fixture(scope="module")
def exports(tiny_bert_export, minilm_export, tmp_path_factory):
    from modelexport.testing.tiny_models import BY_NAME

    folder = tmp_path_factory.mktemp("gpt2-src")
    BY_NAME["gpt2"].build(folder)
    gpt2 = tmp_path_factory.mktemp("exports") / "gpt2-onnx"
    modelexport.export(str(folder), gpt2)  # one model.onnx with past inputs
    return {"bert": tiny_bert_export[0], "gpt2": gpt2, "minilm": minilm_export[0]}


@pytest.mark.parametrize("model, level", [(m, level) for m in ("bert", "gpt2") for level in ("O1", "O2", "O3")]
                         + [("minilm", "O2")])
def test_same_graph_as_optimum(exports, tmp_path, model, level):
    import onnx
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    from modelexport.quiet import stdout_swallowed
    from modelexport.runtime.transform import op_counts, optimize_folder

    source = exports[model]
    ours = tmp_path / "ours"
    optimize_folder(source, ours, level)
    theirs = tmp_path / "optimum"
    with stdout_swallowed():
        ORTOptimizer.from_pretrained(source, file_names=["model.onnx"]).optimize(
            save_dir=theirs, optimization_config=AutoOptimizationConfig.with_optimization_level(level), file_suffix="")
    a = onnx.load(ours / "model.onnx", load_external_data=False).graph
    b = onnx.load(theirs / "model.onnx", load_external_data=False).graph
    assert op_counts(a) == op_counts(b)
    assert [n.op_type for n in a.node] == [n.op_type for n in b.node]
    if level != "O1":
        assert any(n.domain == "com.microsoft" for n in a.node)  # fusions happened, the same ones


def test_levels_are_optimums(exports):
    """The table in transform.py against Optimum's own definition of O1-O4."""
    from optimum.onnxruntime import AutoOptimizationConfig

    from modelexport.runtime.transform import OPTIMIZATION_LEVELS, ORT_MODEL_TYPES, attention_shape, fusion_options

    for level, ours in OPTIMIZATION_LEVELS.items():
        theirs = AutoOptimizationConfig.with_optimization_level(level)
        assert ours["opt_level"] == theirs.optimization_level
        assert ours["fusions"] == theirs.enable_transformers_specific_optimizations
        assert ours["fp16"] == theirs.fp16
        for model_type in ("bert", "gpt2", "vit", "clip", "bart"):
            assert vars(fusion_options(model_type, level)) == vars(theirs.create_fusion_options(model_type))
    from optimum.onnxruntime.utils import ORTConfigManager

    assert ORT_MODEL_TYPES == ORTConfigManager._conf
    assert attention_shape({"model_type": "gpt2", "n_head": 12, "n_embd": 768}) == (12, 768)
    assert attention_shape({"model_type": "t5", "num_heads": 8, "d_model": 512}) == (8, 512)
    assert attention_shape({"model_type": "bart", "encoder_attention_heads": 16, "d_model": 1024}) == (16, 1024)
    assert attention_shape({"model_type": "distilbert", "n_heads": 12, "dim": 768, "hidden_dim": 3072}) == (12, 768)
    assert attention_shape({"model_type": "segformer", "num_attention_heads": [1, 2], "hidden_sizes": [32]}) == (0, 0)


def test_unsupported_model_type_is_one_line(exports, tmp_path):
    import json
    import shutil

    from cli_run import one_error_line, run_cli

    copy = tmp_path / "resnet-like"
    shutil.copytree(exports["bert"], copy)
    config = json.loads((copy / "config.json").read_text())
    config["model_type"] = "resnet"
    (copy / "config.json").write_text(json.dumps(config))
    line = one_error_line(run_cli("optimize", copy, "-o", tmp_path / "o2", "--level", "O2"))
    assert "no fusions for model type 'resnet'" in line and "--level O1" in line
    assert run_cli("optimize", copy, "-o", tmp_path / "o1", "--level", "O1").returncode == 0

