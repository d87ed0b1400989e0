"""Every family of the issue's table: exported, fully tagged, loaded by its ORTModel (Optimum's class
where Optimum is installed, ``modelexport.load`` where it is not), equal to PyTorch."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from modelexport.hierarchy.tags import read_tags
from modelexport.testing.family_check import check_family
from modelexport.testing.tiny_models import FAMILIES

MULTI_FILE = {"t5": "encoder", "bart": "model.encoder", "whisper": "model.encoder"}


@pytest.fixture(scope="session")
def family_rows(tmp_path_factory):
    """Each family built and exported once; rows are filled lazily as tests ask for them."""
    workdir = tmp_path_factory.mktemp("families")
    cache = {}

    def get(name):
        if name not in cache:
            family = next(f for f in FAMILIES if f.name == name)
            cache[name] = check_family(family, workdir)
        return cache[name], workdir
    return get


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_family_exports_and_matches_pytorch(family, family_rows):
    row, _ = family_rows(family.name)
    assert row.error is None, row.error
    assert row.nodes > 0 and row.untagged_nodes == 0
    assert row.direct + row.inferred + row.root_fallback == row.nodes
    assert row.missing_files == [], f"preprocessor files not copied: {row.missing_files}"
    # Tiny random models are initialised large so that greedy tokens vary; their logits are
    # large too, so Optimum's absolute tolerance (1e-5 for some) is not the bar here.
    assert row.export_max_abs_diff is not None and row.export_max_abs_diff < 1e-3
    if family.check == "generate":
        assert row.same_tokens is True
        assert len(row.tokens) > 6  # it did generate, with the KV cache, several steps
    else:
        assert row.ort_max_abs_diff < 1e-4


@pytest.mark.parametrize("name, encoder_root", sorted(MULTI_FILE.items()))
def test_multi_file_layout_each_file_tagged_from_its_module(name, encoder_root, family_rows):
    row, workdir = family_rows(name)
    assert row.error is None, row.error
    merged = row.path != "generic"  # Optimum merges the two decoders; the generic path keeps them apart
    assert {"encoder_model.onnx", "decoder_model_merged.onnx" if merged else "decoder_with_past_model.onnx"} \
        <= set(row.files)
    assert row.file_roots["encoder_model.onnx"] == encoder_root
    out = Path(row.output)
    encoder_tags = read_tags(out / "encoder_model.onnx")
    # Under the encoder, or a tied module the encoder reaches by another name (T5's
    # encoder.embed_tokens is named_modules()' `shared`).
    tree = _tree(workdir / f"{name}-model", name)
    allowed = {tree.canonical(p) for p in list(tree.modules) + list(tree.aliases)
               if p == encoder_root or p.startswith(encoder_root + ".")}
    assert {t.module_path for t in encoder_tags} <= allowed
    meta = json.loads((out / "modelexport_metadata.json").read_text())
    assert set(meta["files"]) == set(row.files)
    for info in meta["files"].values():
        assert info["coverage"]["nodes"] == info["nodes"] > 0
    if not merged:
        assert all(info["validation"]["passed"] for info in meta["files"].values())
        return
    # The merged decoder holds both decoders in If-subgraphs: their nodes are tagged too.
    merged = read_tags(out / "decoder_model_merged.onnx")
    inner = [t for t in merged if t.graph_path]
    assert len(inner) > 100 and all(t.module_path is not None for t in inner)
    assert sum("decoder" in t.module_path for t in inner) > len(inner) // 2
    branches = meta["files"]["decoder_model_merged.onnx"]["validation"]["branches"]
    assert branches == ["decoder_model", "decoder_with_past_model"]


def _tree(folder, name):
    import transformers

    from modelexport.hierarchy.module_tree import ModuleTree

    family = next(f for f in FAMILIES if f.name == name)
    return ModuleTree.from_module(getattr(transformers, family.torch_class).from_pretrained(folder))


@pytest.mark.parametrize("name, layer", [("gpt2", r"transformer\.h\.(\d+)\."), ("llama", r"model\.layers\.(\d+)\.")])
def test_kv_cache_inputs_and_outputs_tagged_with_their_layer(name, layer, family_rows):
    import onnx

    row, workdir = family_rows(name)
    assert row.error is None, row.error
    model = onnx.load(Path(row.output) / "model.onnx")
    tags = {t.node_name: t.module_path for t in read_tags(model)}
    producers = {o: n for n in model.graph.node for o in n.output}
    checked = 0
    for node in model.graph.node:
        for name_in in node.input:
            m = re.fullmatch(r"past_key_values\.(\d+)\.(key|value)", name_in)
            found = re.match(layer, tags[node.name] + ".")
            if m and found:  # consumed inside a layer: it must be that cache's own layer
                assert found.group(1) == m.group(1), (node.name, tags[node.name])
                checked += 1
    for output in model.graph.output:
        m = re.fullmatch(r"present\.(\d+)\.(key|value)", output.name)
        if m:
            found = re.match(layer, tags[producers[output.name].name] + ".")
            assert found and found.group(1) == m.group(1), (output.name, tags[producers[output.name].name])
            checked += 1
    assert checked >= 8
