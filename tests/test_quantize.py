"""``quantize``: settings for the CPU, static QDQ with tags on every Q/DQ node, ONNX Runtime's
quantizers without Optimum, and the metadata each step records."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

from modelexport.cli.main import main as cli
from modelexport.hierarchy.tags import iter_nodes, node_tag

TEXTS = ["hello world, the cat runs fast!", "a tiny test sentence", "red blue green", "the dog sleeps",
         "good morning to you", "cats and dogs run"]


# -- the preset for the CPU --------------------------------------------------------------------
@pytest.mark.parametrize("machine, flags, preset, reduce_range", [
    ("x86_64", {"sse4_2", "avx2", "avx512f", "avx512bw", "avx512_vnni"}, "avx512_vnni", False),  # Ice Lake, Zen 4
    ("x86_64", {"avx2", "avx512bw", "amx_int8", "amx_tile"}, "avx512_vnni", False),  # Sapphire Rapids (AMX)
    ("x86_64", {"avx2", "avx_vnni"}, "avx512_vnni", False),  # Alder Lake: AVX-VNNI without AVX-512
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, "avx512", True),  # Skylake-X: AVX-512 without VNNI
    ("x86_64", {"sse4_2", "avx", "avx2", "fma"}, "avx2", True),  # Haswell .. Zen 3
    ("x86_64", {"sse4_2"}, "avx2", True),
    ("aarch64", {"fp", "asimd", "asimddp", "i8mm"}, "arm64", False),
    ("arm64", set(), "arm64", False),  # macOS: no /proc/cpuinfo
])
def test_preset_from_cpu_flags(machine, flags, preset, reduce_range):
    from modelexport.runtime.cpu_presets import choose_preset

    choice = choose_preset(machine, flags)
    assert choice.preset.name == preset and choice.preset.reduce_range is reduce_range
    assert choice.as_dict()["preset"] == preset and choice.reason


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    from modelexport.runtime.cpu_presets import choose_preset, cpu_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse4_2 avx2 avx512bw avx512_vnni\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert {"avx2", "avx512_vnni"} <= cpu_flags(cpuinfo)
    assert choose_preset("x86_64", cpu_flags(cpuinfo)).preset.name == "avx512_vnni"
    assert cpu_flags(tmp_path / "absent") == set()


def test_preset_printed_recorded_and_overridden(tiny_bert_export, tmp_path, capsys):
    from modelexport.runtime.cpu_presets import this_machine

    out, _ = tiny_bert_export
    assert cli(["quantize", str(out), "-o", str(tmp_path / "auto")]) == 0
    captured = capsys.readouterr()
    machine = this_machine()
    assert f"preset {machine.preset.name}: {machine.reason}" in captured.out
    step = json.loads((tmp_path / "auto" / "modelexport_metadata.json").read_text())["transforms"][-1]
    assert step["settings"]["cpu"]["preset"] == machine.preset.name and step["settings"]["per_channel"] is True

    assert cli(["quantize", str(out), "-o", str(tmp_path / "avx2"), "--preset", "avx2", "--per-tensor",
                "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "modelexport.quantize"
    assert doc["settings"]["cpu"]["preset"] == "avx2" and doc["settings"]["cpu"]["reason"] == "asked for (--preset)"
    assert doc["settings"]["weight_type"] == "QUInt8" and doc["settings"]["reduce_range"] is True
    assert doc["settings"]["per_channel"] is False
    step = json.loads((tmp_path / "avx2" / "modelexport_metadata.json").read_text())["transforms"][-1]
    assert step["settings"] == doc["settings"]
    # per-channel scales: one per output column of each weight MatMul
    scales = {t.name: t for t in onnx.load(tmp_path / "auto" / "model.onnx").graph.initializer}
    per_channel = [t for name, t in scales.items() if name.endswith("_scale") and len(t.dims) == 1 and t.dims[0] > 1]
    assert per_channel


def test_small_lookup_tables_stay_float(minilm_export, tmp_path, capsys):
    """Position and token-type embeddings (under 1% of the weights) stay float; the word
    embeddings and every weight MatMul are quantized."""
    src, _ = minilm_export
    assert cli(["quantize", str(src), "-o", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    graph = onnx.load(tmp_path / "q" / "model.onnx").graph
    float_tables = {t.name for t in graph.initializer
                    if t.data_type == onnx.TensorProto.FLOAT and "embeddings" in t.name}
    assert any(name.endswith("embeddings.position_embeddings.weight") for name in float_tables)
    assert not any(name.endswith("embeddings.word_embeddings.weight") for name in float_tables)
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulInteger") == 36 and "MatMul" in ops  # attention's activation products stay float


# -- static QDQ ----------------------------------------------------------------------------------
def test_static_qdq_tags_loads_in_ort_and_optimum(tiny_bert_dir, tiny_bert_export, tmp_path, capsys):
    pytest.importorskip("optimum.onnxruntime")
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    out, _ = tiny_bert_export
    qdq = tmp_path / "qdq"
    texts = [a for t in TEXTS for a in ("--text", t)]
    assert cli(["quantize", str(out), "-o", str(qdq), "--static", *texts, "--exclude-modules",
                "bert.encoder.layer.1.intermediate"]) == 0
    printed = capsys.readouterr().out
    assert "static QDQ" in printed and "held-out accuracy" in printed
    model = onnx.load(qdq / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    original = onnx.load(out / "model.onnx")
    weight_module = {}  # original weight -> module of the node reading it
    for node in original.graph.node:
        for name in node.input:
            weight_module.setdefault(name, node_tag(node).module_path)
    consumers = {}
    for node, _ in iter_nodes(model.graph):
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inits = {t.name for t in model.graph.initializer}
    weight_dq = activation_q = 0
    for node, _ in iter_nodes(model.graph):
        path = node_tag(node).module_path
        assert path is not None, node.name
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # a weight: its module's
            base = node.input[0].removesuffix("_quantized")
            assert path == weight_module[base], (node.name, path, weight_module[base])
            weight_dq += 1
        elif node.op_type == "QuantizeLinear":  # an activation: the module of the op it is quantized for
            dq = consumers[node.output[0]][0]
            readers = {node_tag(c).module_path for c in consumers[dq.output[0]]}
            from modelexport.hierarchy.module_tree import common_path_prefix

            assert node_tag(dq).module_path == path
            assert path == common_path_prefix(sorted(readers)) or path in readers, (node.name, path, readers)
            activation_q += 1
    assert weight_dq >= 10 and activation_q >= 5
    # the excluded module's MatMul reads its float weight, no DequantizeLinear in front of it
    intermediate = [n for n in model.graph.node if n.op_type == "MatMul"
                    and node_tag(n).module_path == "bert.encoder.layer.1.intermediate.dense"]
    assert intermediate and all(i in inits for n in intermediate for i in n.input[1:2])
    step = json.loads((qdq / "modelexport_metadata.json").read_text())["transforms"][-1]
    assert step["settings"]["format"] == "QDQ" and step["measured"]["held_out"] is True
    assert "calibration: 3 text(s)" in step["measured"]["inputs"]
    # loads in Optimum and gives close logits
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    batch = tok(TEXTS[:2], padding=True, return_tensors="pt")
    a = ORTModelForSequenceClassification.from_pretrained(out)(**batch).logits.numpy()
    b = ORTModelForSequenceClassification.from_pretrained(qdq)(**batch).logits.numpy()
    assert np.abs(a - b).max() < 0.1
    assert subprocess.run([sys.executable, "-m", "modelexport", "validate", str(qdq)],
                          capture_output=True).returncode == 0


def test_static_needs_inputs_and_no_merged_decoders(t5_export, tmp_path, capsys):
    if not (t5_export / "decoder_model_merged.onnx").is_file():
        pytest.skip("this environment's T5 export has no merged decoder (Optimum merges them)")
    assert cli(["quantize", str(t5_export), "-o", str(tmp_path / "q"), "--static", "--text", "a b c",
                "--text", "d e f"]) == 1
    assert "has If/Loop subgraphs (a merged decoder)" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


# -- no Optimum ------------------------------------------------------------------------------------
_WITHOUT_OPTIMUM = textwrap.dedent("""
    import sys

    # As if Optimum were not installed: find_spec answers None, any import fails.
    sys.modules["optimum"] = None
    from modelexport.cli.main import main
    code = main(sys.argv[1:])
    assert sys.modules.get("optimum") is None and not any(m.startswith("optimum.") for m in sys.modules)
    sys.exit(code)
""")


@pytest.mark.parametrize("argv", [
    ["optimize", "--level", "O2"],
    ["quantize"],
    ["quantize", "--static", "--target-cosine", "0.99", "--target-statistic", "mean", "--latency-rounds", "1"],
    ["quantize", "--target-cosine", "0.999", "--latency-rounds", "1"],
])
def test_optimize_and_quantize_without_optimum(tiny_bert_export, tmp_path, argv):
    out, _ = tiny_bert_export
    verb, *options = argv
    texts = [a for t in TEXTS for a in ("--text", t)]
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_OPTIMUM, verb, str(out), "-o", str(tmp_path / "out"),
                           *options, *(texts if verb == "quantize" else [])],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "model.onnx").is_file() and "wrote" in proc.stdout


def test_no_module_of_ours_imports_optimum():
    """The modules behind optimize, quantize and sensitivity name no Optimum import at all."""
    import ast
    from pathlib import Path

    import modelexport

    root = Path(modelexport.__file__).parent
    for relative in ("runtime/transform.py", "runtime/sensitivity.py", "runtime/quantize_ort.py",
                     "runtime/quantize_measure.py", "runtime/cpu_presets.py", "cli/transform.py", "cli/sensitivity.py",
                     "folder/metadata.py"):
        tree = ast.parse((root / relative).read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "optimum" or n.startswith("optimum.") for n in names), (relative, names)


# -- the metadata writer ---------------------------------------------------------------------------
def test_metadata_writer_derives_and_updates(tiny_bert_export, tmp_path):
    from modelexport.folder.metadata import (
        METADATA_FILE, derive_metadata, read_metadata, update_last_transform, write_metadata)

    out, _ = tiny_bert_export
    derived = tmp_path / "derived"
    derived.mkdir()
    derive_metadata(out, derived, {"step": "test"}, {"model.onnx": {"nodes": 3}}, {"model.onnx": {"": 1, "bert": 2}})
    meta, problem = read_metadata(derived)
    assert problem is None and meta.raw["transforms"][-1] == {"step": "test"}
    assert meta.files["model.onnx"]["nodes"] == 3
    rows = meta.modules_by_path()
    assert rows[""]["nodes_total"] == {"model.onnx": 3} and rows["bert"]["nodes"] == {"model.onnx": 2}
    assert read_metadata(out)[0].raw.get("transforms") is None  # the source is untouched
    update_last_transform(derived, decided={"kept_float": ["x"]})
    assert read_metadata(derived)[0].raw["transforms"][-1] == {"step": "test", "decided": {"kept_float": ["x"]}}
    write_metadata(tmp_path, {"task": "t"})
    doc = json.loads((tmp_path / METADATA_FILE).read_text())
    assert list(doc)[:3] == ["schema", "schema_version", "task"]
    assert not list(tmp_path.glob(".*tmp"))


def test_latency_on_chosen_shapes_alternating(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    assert cli(["quantize", str(out), "-o", str(tmp_path / "q"), "--shape", "2x16", "--shape", "4",
                "--latency-rounds", "3", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["latency"]) == {"2x16", "4x64"}  # a bare batch takes the typical length (the position limit here)
    for by_folder in doc["latency"].values():
        assert set(by_folder) == {"float", "quantized"}
        assert all(t["runs"] == 3 and t["min_ms"] <= t["median_ms"] <= t["max_ms"] for t in by_folder.values())
    step = json.loads((tmp_path / "q" / "modelexport_metadata.json").read_text())["transforms"][-1]
    assert step["measured"]["latency"] == doc["latency"]
    assert cli(["quantize", str(out), "-o", str(tmp_path / "x"), "--shape", "8xabc"]) == 1
    assert "--shape '8xabc'" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("static", [False, True])
def test_quantize_a_folder_with_external_weights(tiny_bert_dir, tmp_path, monkeypatch, capsys, static):
    """Weights outside model.onnx (every export above 2 GiB): the quantizers get the data copied
    into their work folder (onnx refuses it through a symlink or a hard link: this was an internal
    error, with smoothing and without); the result loads and runs, the source folder is as it was."""
    import modelexport

    monkeypatch.setenv("FORCE_ONNX_EXTERNAL_DATA", "1")
    src = tmp_path / "src"
    modelexport.export(str(tiny_bert_dir), src)
    monkeypatch.delenv("FORCE_ONNX_EXTERNAL_DATA")
    assert any(t.data_location == onnx.TensorProto.EXTERNAL
               for t in onnx.load(src / "model.onnx", load_external_data=False).graph.initializer)
    before = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    out = tmp_path / "q"
    code = cli(["quantize", str(src), "-o", str(out), *[a for t in TEXTS for a in ("--text", t)],
                *(["--static"] if static else [])])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "held-out accuracy" in printed.out
    settings = json.loads((out / "modelexport_metadata.json").read_text())["transforms"][-1]["settings"]
    assert settings["smoothing_alpha"] == 0.6 and settings["mode"] == ("static" if static else "dynamic")
    from modelexport.runtime.sessions import new_session

    session = new_session(out / "model.onnx")
    ids = np.array([[2, 7, 9, 3]], np.int64)
    feed = {i.name: (ids if i.name == "input_ids" else np.ones_like(ids) if i.name == "attention_mask"
                     else np.zeros_like(ids)) for i in session.get_inputs()}
    assert all(np.isfinite(o).all() for o in session.run(None, feed))
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work folder left
