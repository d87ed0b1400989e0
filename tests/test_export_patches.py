"""The generic path's export patches (``exporter/generic/patches.py``): each patched method returns
what the model's own method returns, on the model's real modules, and the patches are gone after
the export."""
from __future__ import annotations

import pytest
import torch

from modelexport.exporter.generic.patches import export_patches
from modelexport.testing.breadth import _tensor_leaves as _leaves  # the breadth harness's flattening


def _tiny(config_class, **sizes):
    config = config_class(**sizes)
    config._attn_implementation = "eager"
    return config


@pytest.mark.parametrize("family", ["switch_transformers", "nllb_moe"])
def test_dense_expert_dicts_return_what_the_expert_loop_returns(family):
    """transformers 5's expert dicts (SwitchTransformersExperts, NllbMoeExperts) loop over the
    experts the router hit: data-dependent. The dense replacement runs every expert, weighted by
    the router, and must equal the loop on the router's real choices (tokens routed to no expert
    included: capacity drops them in Switch)."""
    import transformers

    torch.manual_seed(0)
    if family == "switch_transformers":
        if not hasattr(transformers.models.switch_transformers.modeling_switch_transformers,
                       "SwitchTransformersExperts"):
            pytest.skip("transformers 4.57's Switch Transformers has no experts dict (transformers 5 only)")
        from transformers import SwitchTransformersConfig
        from transformers.models.switch_transformers.modeling_switch_transformers import \
            SwitchTransformersSparseMLP as Block

        config = _tiny(SwitchTransformersConfig, d_model=16, d_ff=32, num_experts=4, expert_capacity=3)
    else:
        from transformers.models.nllb_moe import modeling_nllb_moe

        if not hasattr(modeling_nllb_moe, "NllbMoeExperts"):
            pytest.skip("transformers 4.57's NLLB-MoE has no experts dict (transformers 5 only)")
        from transformers import NllbMoeConfig

        config = _tiny(NllbMoeConfig, d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32, num_experts=4,
                       expert_capacity=3, moe_token_dropout=0.2)
        block_class = modeling_nllb_moe.NllbMoeSparseMLP

        def Block(config):  # noqa: N802 (stands for the class)
            return block_class(config, ffn_dim=32)

    block = Block(config).eval()
    hidden = torch.randn(2, 7, 16)
    with torch.no_grad():
        expected = block(hidden)
        with export_patches(block) as applied:
            got = block(hidden)
            names = {p.name for p in applied}
        after = block(hidden)
    assert "dense-moe-experts" in names
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(after, expected)  # the class has its own forward back


def test_module_to_that_changes_nothing_returns_the_module_during_the_export():
    """A router casting its classifier on every call (``self.classifier = self.classifier.to(
    self.dtype)``): during the export such a ``.to()`` returns the module itself; one that changes
    a dtype still converts; the patch is listed only when it answered a call, and gone after."""
    linear = torch.nn.Linear(4, 3)
    original_to = torch.nn.Module.to
    with export_patches(torch.nn.Sequential(linear)) as applied:
        assert "module-to-without-changes" not in {p.name for p in applied}
        assert linear.to(torch.float32) is linear and linear.to("cpu") is linear
        listed = {p.name: p for p in applied}["module-to-without-changes"]
        assert listed.modules == 2 and listed.classes == ["Linear"]
        converted = torch.nn.Linear(4, 3).to(torch.float64)
        assert converted.weight.dtype == torch.float64  # a real change is still made
        ints = torch.nn.Embedding(3, 2)
        ints.register_buffer("ids", torch.arange(3))
        assert ints.to(torch.float32) is ints  # Module.to leaves integer buffers as they are
    assert torch.nn.Module.to is original_to


class _KernelWeights(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        # as transformers 4.57's FalconMamba registers weights for its CUDA kernels
        self.register_buffer("rms", torch.nn.Parameter(torch.full((4,), 2.0), requires_grad=False), persistent=False)

    def forward(self, x):
        return self.lin(x) * self.rms


def test_a_buffer_registered_as_a_parameter_is_a_tensor_during_the_export(tmp_path):
    """torch.onnx (dynamo) lifts such a buffer twice ("attribute 'rms' already exists"): during
    the export it is a plain tensor of the same values, listed; the module gets its own object
    back. The file computes what the module does."""
    import numpy as np
    import onnxruntime as ort

    model = _KernelWeights().eval()
    original = model._buffers["rms"]
    x = torch.randn(2, 4)
    expected = model(x).detach().numpy()
    with pytest.raises(Exception, match="already exists"):
        torch.onnx.export(model, (x,), str(tmp_path / "plain.onnx"), dynamo=True, verbose=False)
    with export_patches(model) as applied:
        listed = {p.name: p for p in applied}["parameter-buffers-as-tensors"]
        assert listed.modules == 1 and listed.classes == ["_KernelWeights"]
        assert type(model._buffers["rms"]) is torch.Tensor and torch.equal(model._buffers["rms"], original)
        torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=True, verbose=False)
    assert model._buffers["rms"] is original
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], expected, atol=1e-6)


@pytest.mark.parametrize("model_type, head", [("ernie4_5_moe", "Ernie4_5_MoeForCausalLM"),
                                              ("minimax", "MiniMaxForCausalLM"),
                                              ("jamba", "JambaForCausalLM"), ("phimoe", "PhimoeForCausalLM"),
                                              ("qwen3_next", "Qwen3NextForCausalLM")])
def test_mixtral_loop_copies_return_what_the_loop_returns(model_type, head):
    """transformers 4.57's MoE blocks that copy Mixtral's loop over the experts the router hit: the
    loop alone is rewritten to run every expert, and each block returns what it returned, on the
    router's real choices of a real tiny model (and the whole model its logits)."""
    from modelexport.exporter.generic.patches import _loops_over_hit_experts
    from modelexport.testing.breadth import build_tiny

    import transformers

    if not hasattr(transformers, head):
        pytest.skip(f"{head} is not in this transformers")
    model = build_tiny(model_type, head, "text-generation")
    blocks = [m for m in model.modules() if _loops_over_hit_experts(m)]
    if not blocks:
        pytest.skip(f"this transformers' {model_type} has no copy of Mixtral's loop (transformers 5: experts class)")
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    hidden = torch.randn(2, 7, blocks[0].experts[0].down_proj.out_features if hasattr(
        blocks[0].experts[0], "down_proj") else model.config.hidden_size)
    with torch.no_grad():
        expected = [_leaves(b(hidden)) for b in blocks]
        logits = model(input_ids=ids, use_cache=False).logits
        with export_patches(model) as applied:
            got = [_leaves(b(hidden)) for b in blocks]
            patched_logits = model(input_ids=ids, use_cache=False).logits
            names = {p.name for p in applied}
        after = [_leaves(b(hidden)) for b in blocks]
    assert "dense-moe-experts" in names
    for want, have, back in zip(expected, got, after):
        assert len(want) == len(have) > 0
        for w, h, b in zip(want, have, back):
            torch.testing.assert_close(h, w, rtol=1e-5, atol=1e-6)
            assert torch.equal(b, w)
    torch.testing.assert_close(patched_logits, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type, head", [("jamba", "JambaForCausalLM"), ("bamba", "BambaForCausalLM"),
                                              ("zamba", "ZambaForCausalLM"), ("zamba2", "Zamba2ForCausalLM")])
def test_state_space_mask_kept_returns_the_same_logits(model_type, head):
    """transformers 4.57's hybrid decoders drop a mask of ones, or skip multiplying by it, after a
    data-dependent test; patched, the mask is always multiplied in: the same logits, with a mask
    of ones and with padding, and the classes have their own methods back afterwards."""
    import transformers

    from modelexport.testing.breadth import build_tiny

    model = build_tiny(model_type, head, "text-generation")
    methods = {(type(m), name): type(m).__dict__[name] for m in model.modules()
               for name in ("_update_mamba_mask", "slow_forward", "torch_forward") if name in type(m).__dict__}
    with export_patches(model) as applied:
        names = {p.name for p in applied}
    if "mask-by-shape" not in names and int(transformers.__version__.split(".")[0]) >= 5:
        pytest.skip(f"transformers 5's {model_type} tests no mask by its data")
    assert "mask-by-shape" in names
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    masks = [torch.ones(2, 7, dtype=torch.long), torch.tensor([[1] * 7, [0, 0] + [1] * 5])]
    with torch.no_grad():
        expected = [model(input_ids=ids, attention_mask=m, use_cache=False).logits for m in masks]
        with export_patches(model):
            got = [model(input_ids=ids, attention_mask=m, use_cache=False).logits for m in masks]
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
    assert all(cls.__dict__[name] is original for (cls, name), original in methods.items())


@pytest.mark.parametrize("family, prefix", [("idefics3", "Idefics3"), ("smolvlm", "SmolVLM"), ("idefics2", "Idefics2")])
def test_position_buckets_return_what_bucketize_returns(family, prefix):
    """Idefics2/Idefics3/SmolVLM's vision embeddings bucket patch coordinates against a float
    ``arange`` (a float32 Range of another length in ONNX). The replacement, PyTorch's boundaries
    counted per coordinate, must equal the original exactly: sides whose float arange is not
    correctly rounded (27, 32), images other than the config's, batches of 1 to 3, all-ones masks
    and top-left rectangles (padded images)."""
    import importlib

    embeddings_class = getattr(importlib.import_module(f"transformers.models.{family}.modeling_{family}"),
                               f"{prefix}VisionEmbeddings")
    config_class = getattr(importlib.import_module(f"transformers.models.{family}.configuration_{family}"),
                           f"{prefix}VisionConfig")
    torch.manual_seed(0)
    for image, patch in [(224, 32), (378, 14), (512, 16)]:
        embeddings = embeddings_class(config_class(hidden_size=16, image_size=image, patch_size=patch)).eval()
        for batch, (height, width) in [(1, (image, image)), (2, (image // 2, image)), (3, (image, image + 2 * patch))]:
            pixels = torch.randn(batch, 3, height, width)
            rectangles = torch.zeros(batch, height // patch, width // patch, dtype=torch.bool)
            for i in range(batch):
                rectangles[i, :torch.randint(1, height // patch + 1, ()),
                           :torch.randint(1, width // patch + 1, ())] = True
            for mask in (torch.ones_like(rectangles), rectangles):
                with torch.no_grad():
                    expected = embeddings(pixels, mask)
                    with export_patches(embeddings) as applied:
                        got = embeddings(pixels, mask)
                        names = {p.name for p in applied}
                    after = embeddings(pixels, mask)
                assert "position-buckets" in names
                assert torch.equal(got, expected)
                assert torch.equal(after, expected)  # the class has its own forward back


@pytest.mark.optimum  # the Optimum path: DeepSeek-V3 has an Optimum config in transformers 4.57
def test_optimum_path_traces_every_expert_of_a_moe(tmp_path):
    """A TorchScript trace of DeepSeek-V3's loop over the experts hit keeps only the experts the
    dummy inputs hit (the tiny model has 256): without the dense-experts patch the file differed
    from PyTorch by 0.07 on the validation's inputs. With it, the file equals PyTorch on inputs
    neither the trace nor the validation saw, and the metadata lists the patch."""
    import json

    import numpy as np
    import onnxruntime as ort

    import modelexport
    from modelexport.testing.breadth import build_tiny

    model = build_tiny("deepseek_v3", "DeepseekV3ForCausalLM", "text-generation", tmp_path / "model")
    moe_class = type(model.model.layers[1].mlp)
    sparse = moe_class.__dict__["moe"]
    result = modelexport.export(tmp_path / "model", tmp_path / "out", task="text-generation")
    meta = json.loads((tmp_path / "out" / "modelexport_metadata.json").read_text())
    assert meta["exporter"] == "torchscript"
    assert [(p["name"], p["classes"]) for p in meta["optimum"]["patches"]] == [("dense-moe-experts", ["DeepseekV3MoE"])]
    assert result.files[0].validation["passed"]
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    torch.manual_seed(3)
    ids = torch.randint(0, model.config.vocab_size, (3, 23))
    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones((3, 23), dtype=np.int64),
            "position_ids": np.tile(np.arange(23), (3, 1))}
    feed = {i.name: feed[i.name] for i in session.get_inputs()}
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits.numpy()
    np.testing.assert_allclose(session.run(["logits"], feed)[0], expected, atol=1e-4, rtol=1e-4)
    assert moe_class.__dict__["moe"] is sparse  # the class has its own loop back


def test_llama4_complex_rotary_is_real_during_the_export(tmp_path):
    """Llama 4's text model multiplies by complex rotary frequencies (torch.polar), which ONNX
    cannot hold: torch.onnx alone fails. Patched, the embedding returns their real view and the
    module's apply_rotary_emb does the product in real arithmetic: the same logits, the module's
    own function back afterwards, and a real export that ONNX Runtime runs as PyTorch does."""
    import json

    import numpy as np
    import onnxruntime as ort

    import modelexport
    from modelexport.testing.breadth import build_tiny
    from transformers.models.llama4 import modeling_llama4

    model = build_tiny("llama4_text", "Llama4ForCausalLM", "text-generation", tmp_path / "model")
    function = modeling_llama4.apply_rotary_emb
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        with export_patches(model) as applied:
            assert "real-rotary" in {p.name for p in applied}
            assert modeling_llama4.apply_rotary_emb is not function
            patched = model(input_ids=ids, use_cache=False).logits
    assert modeling_llama4.apply_rotary_emb is function
    torch.testing.assert_close(patched, expected, rtol=1e-5, atol=1e-5)
    modelexport.export(tmp_path / "model", tmp_path / "out", task="text-generation", exporter="generic")
    meta = json.loads((tmp_path / "out" / "modelexport_metadata.json").read_text())
    assert "real-rotary" in {p["name"] for p in meta["generic"]["patches"]}
    assert all(f["validation"]["passed"] for f in meta["files"].values())
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy()),
            "position_ids": np.tile(np.arange(9), (2, 1))}
    feed = {i.name: feed[i.name] for i in session.get_inputs()}
    np.testing.assert_allclose(session.run(["logits"], feed)[0], expected.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model_type, head", [("aimv2", "Aimv2Model"), ("doge", "DogeForCausalLM"),
                                              ("recurrent_gemma", "RecurrentGemmaForCausalLM")])
def test_traced_with_the_patches_computes_what_pytorch_computes(model_type, head):
    """Models whose trace computes other values than PyTorch (without the patches the exported
    program differs from the model by 0.1 to 1.3): transformers 4.57's RecurrentGemma skips its RG-LRU
    input normalisation when traced (``traced-branch-kept``); Aimv2's text model and 4.57's Doge
    attend everywhere in PyTorch for a padding mask of all ones (their SDPA mask is dropped) but
    causally in a trace (``causal-mask-skip-reproduced``). Traced with dynamic shapes inside the
    patches, the program must equal the model for a mask of all ones and for a padded one."""
    from torch.export import Dim

    from modelexport.testing.breadth import build_tiny, call_kwargs, generic_example

    task = "feature-extraction" if model_type == "aimv2" else "text-generation"
    model = build_tiny(model_type, head, task)
    example, extra = generic_example(model, task), call_kwargs(model)
    padded = {**example, "attention_mask": example["attention_mask"].clone()}
    padded["attention_mask"][1, :2] = 0
    dynamic = {name: {0: Dim.AUTO, 1: Dim.AUTO} if value.dim() == 2 else {0: Dim.AUTO}
               for name, value in example.items()}
    with torch.no_grad():
        with export_patches(model):
            program = torch.export.export(model, (), kwargs={**example, **extra}, dynamic_shapes={**dynamic, **{
                name: None for name in extra}}, strict=False)
        for inputs in (example, padded):
            expected = _leaves(model(**inputs, **extra))
            got = _leaves(program.module()(**inputs, **extra))
            assert len(got) == len(expected)
            for have, want in zip(got, expected):
                torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-5)


def test_switch_top1_loop_dense_returns_what_the_loop_returns():
    """transformers 4.57's Switch Transformers sparse MLP loops over the experts the top-1 router
    hit (torch.nonzero(...).tolist(): data-dependent); dense, every expert runs and is kept where
    the router sent the token: the same hidden states and router outputs, on a real tiny model
    whose router drops no token and on one whose capacity drops some."""
    from modelexport.exporter.generic.patches import _is_switch_sparse_mlp_457
    from modelexport.testing.breadth import build_tiny

    model = build_tiny("switch_transformers", "SwitchTransformersForConditionalGeneration", "text2text-generation")
    blocks = [m for m in model.modules() if _is_switch_sparse_mlp_457(m)]
    if not blocks:
        pytest.skip("this transformers' Switch Transformers has no 4.57 sparse MLP (transformers 5: experts class)")
    for capacity in (64, 1):  # 1: most tokens are over the expert's capacity and dropped
        for block in blocks:
            block.router.expert_capacity = capacity
        hidden = torch.randn(2, 7, model.config.d_model)
        with torch.no_grad():
            expected = [_leaves(b(hidden)) for b in blocks]
            with export_patches(model) as applied:
                got = [_leaves(b(hidden)) for b in blocks]
                assert "dense-moe-experts" in {p.name for p in applied}
        for want, have in zip(expected, got):
            for w, h in zip(want, have):
                torch.testing.assert_close(h, w, rtol=1e-5, atol=1e-6)


def test_mega_ema_kernel_per_length_exports_every_length(tmp_path):
    """transformers 4.57's MEGA EMA slices the kernel it cached for the longest length it ran: traced,
    that cache was a constant of the trace's length and ONNX Runtime failed on other lengths (Mul
    of FFTs of other sizes). Patched, the kernel is computed for the length: the same logits after
    a cache of another length, the module's cache untouched, and a file that runs other lengths as
    PyTorch does."""
    import json

    import numpy as np
    import onnxruntime as ort

    import modelexport
    from modelexport.testing.breadth import build_tiny

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if "mega" not in CONFIG_MAPPING_NAMES:
        pytest.skip("no MEGA in this transformers (transformers 5 removed the deprecated models)")
    model = build_tiny("mega", "MegaForSequenceClassification", "text-classification", tmp_path / "model")
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    emas = [m for m in model.modules() if type(m).__name__ == "MegaMultiDimensionDampedEma"]
    with torch.no_grad():
        model(input_ids=ids[:, :5])  # every EMA caches the kernel of length 5
        expected = {n: model(input_ids=ids[:, :n], attention_mask=mask[:, :n]).logits for n in (3, 11, 7)}
        caches = [m._kernel for m in emas]
        with export_patches(model) as applied:
            assert "kernel-per-length" in {p.name for p in applied}
            got = {n: model(input_ids=ids[:, :n], attention_mask=mask[:, :n]).logits for n in (3, 11, 7)}
    assert all(m._kernel is c for m, c in zip(emas, caches))
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-6, atol=1e-6)
    modelexport.export(tmp_path / "model", tmp_path / "out", task="text-classification", exporter="generic")
    meta = json.loads((tmp_path / "out" / "modelexport_metadata.json").read_text())
    assert "kernel-per-length" in {p["name"] for p in meta["generic"]["patches"]}
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for n in (3, 11):  # the trace's length is 7
        feed = {"input_ids": ids[:, :n].numpy(), "attention_mask": mask[:, :n].numpy(),
                "token_type_ids": np.zeros((3, n), dtype=np.int64)}
        got = session.run(["logits"], {k: v for k, v in feed.items() if k in names})[0]
        np.testing.assert_allclose(got, expected[n].numpy(), atol=1e-4, rtol=1e-4)


def test_git_mask_branches_on_the_past_length_are_in_the_graph(tmp_path):
    """transformers 4.57's GIT chooses its mask in Python on the past length (no causal and no
    padding mask with a past): traced with a past, the file's first step (past 0) attended to later
    tokens (logits 0.01 off). Patched, both branches are in the graph: the same logits with and
    without a past, the methods back afterwards, and a with-past file that ONNX Runtime runs as
    PyTorch does on a padded first step and a later step."""
    import numpy as np
    import onnxruntime as ort

    import modelexport
    from modelexport.testing.breadth import build_tiny

    model = build_tiny("git", "GitForCausalLM", "text-generation", tmp_path / "model")
    git_class = type(model.git)
    methods = {name: git_class.__dict__.get(name) for name in ("forward", "create_attention_mask")}
    with export_patches(model) as applied:
        names = {p.name for p in applied}
    if "past-length-branches-in-graph" not in names:
        assert "create_attention_mask" not in git_class.__dict__  # transformers 5: create_causal_mask
        pytest.skip("transformers 5's GIT has no such branch (its own `cache_length > 0` branch, which widens "
                    "the mask over image tokens, is not patched: a padded first step still differs)")
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :2] = 0
    positions = torch.arange(9).expand(2, 9)  # what the file is given (as Optimum's generate gives it)

    def steps():
        with torch.no_grad():
            first = model(input_ids=ids[:, :6], attention_mask=mask[:, :6], position_ids=positions[:, :6],
                          use_cache=True)
            later = model(input_ids=ids[:, 6:], attention_mask=mask, position_ids=positions[:, 6:],
                          past_key_values=first.past_key_values, use_cache=True)
            whole = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        return first, later, whole

    expected = steps()
    with export_patches(model):
        got = steps()
    assert all(git_class.__dict__.get(name) is method for name, method in methods.items())
    for have, want in zip(got, expected):
        torch.testing.assert_close(have.logits, want.logits, rtol=1e-6, atol=1e-6)
    modelexport.export(tmp_path / "model", tmp_path / "out", task="text-generation-with-past", exporter="generic")
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    layers = [k for k in (i.name for i in session.get_inputs()) if k.startswith("past_key_values.")]
    first_feed = {"input_ids": ids[:, :6].numpy(), "attention_mask": mask[:, :6].numpy(),
                  "position_ids": positions[:, :6].numpy()}
    first_feed.update({k: np.zeros((2, model.config.num_attention_heads, 0,
                                    model.config.hidden_size // model.config.num_attention_heads), np.float32)
                       for k in layers})
    first = session.run(None, first_feed)
    np.testing.assert_allclose(first[0], expected[0].logits.numpy(), atol=1e-4, rtol=1e-4)
    later_feed = {"input_ids": ids[:, 6:].numpy(), "attention_mask": mask.numpy(),
                  "position_ids": positions[:, 6:].numpy()}
    later_feed.update(dict(zip(layers, first[1:])))
    np.testing.assert_allclose(session.run(None, later_feed)[0], expected[1].logits.numpy(), atol=1e-4, rtol=1e-4)


def test_prophetnet_ngram_bias_without_view_writes_equals_the_models():
    """4.57's ProphetNet builds its predict-stream bias with ``fill_diagonal_`` on a view, which
    torch.export cannot functionalize; the replacement must give the same values bit for bit."""
    import importlib

    from modelexport.exporter.generic.patches import ngram_attention_bias

    for name in ("transformers.models.prophetnet.modeling_prophetnet",
                 "transformers.models.deprecated.xlm_prophetnet.modeling_xlm_prophetnet"):
        try:
            original = importlib.import_module(name).ngram_attention_bias
        except ImportError:  # transformers 5 has no deprecated XLM-ProphetNet
            continue
        for length, ngram, dtype in [(1, 1, torch.float32), (5, 2, torch.float32), (17, 3, torch.float16)]:
            want, got = original(length, ngram, "cpu", dtype), ngram_attention_bias(length, ngram, "cpu", dtype)
            assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("model_type, head, patch", [
    ("pegasus_x", "PegasusXForConditionalGeneration", "traced-branch-kept"),
    ("prophetnet", "ProphetNetForConditionalGeneration", "ngram-bias-out-of-place"),
    ("xlm-prophetnet", "XLMProphetNetForConditionalGeneration", "ngram-bias-out-of-place")])
def test_seq2seq_decoders_traced_as_pytorch_runs_them(tmp_path, model_type, head, patch):
    """4.57's PEGASUS-X makes no decoder mask under a trace and its causal mask gets one column more
    than the eager attention's keys ("size of tensor a (s91) must match ... (s91 + 1)"); ProphetNet
    writes its n-gram bias into a view (torch.export refuses), chunks a dynamic length (onnxscript's
    folding failed on the SplitToSequence), and, as XLM-ProphetNet, takes one token per cached
    step (XLM-ProphetNet's decoder also takes an empty cache for a past). Exported with past, the
    three files decode greedily in ONNX Runtime as the model does in PyTorch, past lengths 1 to 4."""
    import json

    import numpy as np
    import onnxruntime as ort
    import transformers

    import modelexport
    from modelexport.testing.breadth import build_tiny

    if not hasattr(transformers, head):
        pytest.skip(f"{head} is not in this transformers")
    model = build_tiny(model_type, head, "text2text-generation", tmp_path / "model")
    modelexport.export(tmp_path / "model", tmp_path / "out", task="text2text-generation-with-past",
                       exporter="generic")
    meta = json.loads((tmp_path / "out" / "modelexport_metadata.json").read_text())
    assert all(f["validation"]["passed"] for f in meta["files"].values())
    if transformers.__version__.startswith("4."):
        assert patch in {p["name"] for p in meta["generic"]["patches"]}
    sessions = {name: ort.InferenceSession(str(tmp_path / "out" / f"{name}.onnx"), providers=["CPUExecutionProvider"])
                for name in ("encoder_model", "decoder_model", "decoder_with_past_model")}

    def run(name, feed):
        session = sessions[name]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, {i.name: feed[i.name] for i in session.get_inputs()})))

    ids = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    encoded = run("encoder_model", {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})["last_hidden_state"]
    token = torch.full((2, 1), model.config.decoder_start_token_id)
    out = run("decoder_model", {"input_ids": token.numpy(), "encoder_hidden_states": encoded,
                                "encoder_attention_mask": mask.numpy()})
    past = {k.replace("present", "past_key_values"): v for k, v in out.items() if k.startswith("present")}
    cache = None  # PyTorch's own cached steps (ProphetNet's differ from a forward without cache by 1e-3)
    for step in range(5):
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask, decoder_input_ids=token, past_key_values=cache,
                             use_cache=True)
        cache = expected.past_key_values
        if isinstance(cache, tuple):  # 4.57's XLM-ProphetNet returns a legacy cache and reads a Cache
            cache = transformers.EncoderDecoderCache.from_legacy_cache(cache)
        np.testing.assert_allclose(out["logits"][:, -1], expected.logits[:, -1].numpy(), atol=1e-4, rtol=1e-4)
        if step == 4:
            break
        token = torch.from_numpy(out["logits"][:, -1].argmax(-1))[:, None]
        out = run("decoder_with_past_model", {"input_ids": token.numpy(), "encoder_attention_mask": mask.numpy(),
                                              **past})
        past.update({k.replace("present", "past_key_values"): v for k, v in out.items() if k.startswith("present")})


def test_xlstm_mlstm_in_parallel_form_exports_every_length(tmp_path):
    """transformers' xLSTM backend runs sequences shorter than its chunk size one token at a time in
    a Python loop and picks its kernels in Python on the length: traced, the graph unrolled the
    trace's 7 tokens per block and fixed the length (other lengths failed in ONNX Runtime). Patched,
    the backend computes the same recurrence in its parallel form: PyTorch's logits at every length
    (1 included) and PyTorch's last states from given initial states, the method back afterwards,
    and a file of one set of nodes that ONNX Runtime runs at other lengths as PyTorch does, whose
    no-cache generate gives PyTorch's greedy tokens."""
    import json

    import numpy as np
    import onnxruntime as ort

    import modelexport
    from modelexport.testing.breadth import build_tiny

    model = build_tiny("xlstm", "xLSTMForCausalLM", "text-generation", tmp_path / "model")
    backend = model.backbone.blocks[0].mlstm_layer.mlstm_backend
    forward = type(backend).__dict__["forward"]
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 13))
    lengths = (1, 3, 7, 13)
    # the backend alone, from initial states, with gates large enough to move the stabiliser
    heads, qk, v = 4, 5, 6
    states = (torch.randn(2, heads, qk, v), torch.randn(2, heads, qk), 3 * torch.randn(2, heads, 1))
    backend_inputs = {n: (torch.randn(2, heads, n, qk), torch.randn(2, heads, n, qk), torch.randn(2, heads, n, v),
                          5 * torch.randn(2, heads, n), 5 * torch.randn(2, heads, n)) for n in (1, 9)}
    with torch.no_grad():
        expected = {n: model(input_ids=ids[:, :n], use_cache=False).logits for n in lengths}
        expected_backend = {n: backend(*x, *states) for n, x in backend_inputs.items()}
        with export_patches(model) as applied:
            assert "mlstm-parallel-form" in {p.name for p in applied}
            got = {n: model(input_ids=ids[:, :n], use_cache=False).logits for n in lengths}
            got_backend = {n: backend(*x, *states) for n, x in backend_inputs.items()}
    assert type(backend).__dict__["forward"] is forward
    for n in lengths:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-5, atol=1e-5)
    for n in backend_inputs:
        for have, want in zip(_leaves(got_backend[n]), _leaves(expected_backend[n])):
            torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)

    modelexport.export(tmp_path / "model", tmp_path / "out", exporter="generic")
    meta = json.loads((tmp_path / "out" / "modelexport_metadata.json").read_text())
    assert "mlstm-parallel-form" in {p["name"] for p in meta["generic"]["patches"]}
    info = meta["files"]["model.onnx"]
    assert info["validation"]["passed"] and not info["validation"]["not_checked"], info["validation"]
    assert info["coverage"]["root_fallback"] == 0
    assert info["nodes"] < 400  # two blocks of one parallel mLSTM each (unrolled: 718)
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in lengths:  # the trace's length is 7
        logits = session.run(["logits"], {"input_ids": ids[:, :n].numpy()})[0]
        np.testing.assert_allclose(logits, expected[n].numpy(), atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # without the cache: transformers' cache has other widths on a tiny model
        tokens = model.generate(input_ids=ids[:, :7], max_new_tokens=6, do_sample=False, use_cache=False)
    generated = modelexport.load(tmp_path / "out").generate(ids[:, :7].numpy(), None, max_new_tokens=6,
                                                            do_sample=False)
    np.testing.assert_array_equal(np.asarray(generated), tokens.numpy())


def _udop_inputs(config, batch=2, tokens=7):
    """Integer boxes (as the export's example: the graph takes int64) of 0 and 1, whose centres fall
    on 3 x 3 patches: the first image's tokens all on one patch, the second's on several. The images
    keep other numbers of uncovered patches than the trace's example."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (batch, tokens), generator=generator)
    bbox = torch.randint(0, 2, (batch, tokens, 4), generator=generator)
    bbox[0] = torch.tensor([0, 1, 1, 1])
    side = config.image_size
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "bbox": bbox,
            "pixel_values": torch.randn(batch, config.num_channels, side, side, generator=generator),
            "decoder_input_ids": torch.randint(5, config.vocab_size, (batch, 3), generator=generator)}


def test_udop_uncovered_patches_gathered_equal_the_models():
    """UDOP keeps the image patches no token's box centre falls on by boolean indexing (``rows, cols =
    zip(*ind)``: a tensor made of traced tensors, "data is not allocated yet" under torch.export)
    and pads them to a fixed length; the gathered replacement gives the same tensors bit for bit,
    for every ``max_len`` (padded, truncated)."""
    from transformers.models.udop import modeling_udop

    from modelexport.exporter.generic.patches import uncovered_patches_gathered

    original = modeling_udop.combine_image_text_embeddings
    replaced = uncovered_patches_gathered(original)
    generator = torch.Generator().manual_seed(0)
    for tokens in (1, 5, 40):
        images, embeds = torch.randn(3, 196, 8, generator=generator), torch.randn(3, tokens, 8, generator=generator)
        bbox = torch.rand(3, tokens, 4, generator=generator)
        bbox[0, :] = bbox[0, 0]  # every token of the first image on one patch
        bbox[1, 0] = 1.0
        mask = torch.randint(0, 2, (3, tokens), generator=generator)
        for max_len in (0, tokens + 10, tokens + 250):
            want = original(images, embeds.clone(), bbox, None, mask, 14, max_len, 224, 16)
            got = replaced(images, embeds.clone(), bbox, None, mask, 14, max_len, 224, 16)
            for w, g in zip(want, got):
                assert g.dtype == w.dtype and torch.equal(g, w)


def test_udop_exports_and_runs_as_pytorch_with_other_boxes(tmp_path):
    """UDOP's export failed in torch.export ("The tensor has a non-zero number of elements, but its
    data is not allocated yet"); patched, it exports, and ONNX Runtime gives PyTorch's logits for
    boxes that leave each image a different number of uncovered patches than the trace's."""
    import inspect
    import json

    import onnxruntime as ort
    from transformers.models.udop import modeling_udop

    import modelexport
    from modelexport.testing.breadth import build_tiny

    model = build_tiny("udop", "UdopForConditionalGeneration", "image-text-to-text", tmp_path / "model")
    modelexport.export(tmp_path / "model", tmp_path / "out", exporter="generic")
    meta = json.loads((tmp_path / "out" / "modelexport_metadata.json").read_text())
    assert "uncovered-patches-gathered" in {p["name"] for p in meta["generic"]["patches"]}
    assert all(f["validation"]["passed"] for f in meta["files"].values())
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = _udop_inputs(model.config)
    with torch.no_grad():
        expected = model(**inputs, use_cache=False).logits
    got = session.run(["logits"], {i.name: inputs[i.name].numpy() for i in session.get_inputs()})[0]
    np_expected = expected.numpy()
    assert got.shape == np_expected.shape
    assert abs(got - np_expected).max() <= 1e-4 * (1 + abs(np_expected).max())
    assert "zip(*ind)" in inspect.getsource(modeling_udop.combine_image_text_embeddings)  # put back


def test_dense_experts_add_an_expert_picked_twice():
    """DeepSeek-V4's hash router picks experts from a table (``tid2eid``; zeros on a fresh model): a
    token can get the same expert twice, and the eager loop adds both picks. The dense replacement
    scattered the weights (the second pick overwrote the first: the breadth row's logits were 0.027
    off at the traced shape); it adds them."""
    import transformers

    from modelexport.exporter.generic.patches import dense_experts_forward
    from modelexport.testing.breadth import build_tiny

    if not hasattr(transformers, "DeepseekV4ForCausalLM"):
        pytest.skip("DeepSeek-V4 (and its experts module the dense replacement serves) is in transformers 5 only")
    model = build_tiny("deepseek_v4", "DeepseekV4ForCausalLM", "text-generation").eval()
    experts = model.model.layers[0].mlp.experts
    torch.manual_seed(0)
    hidden = torch.randn(5, model.config.hidden_size)
    picks = torch.tensor([[0, 0], [1, 2], [3, 3], [4, 5], [0, 7]])
    weights = torch.rand(5, 2)
    with torch.no_grad():
        torch.testing.assert_close(dense_experts_forward(experts, hidden, picks, weights),
                                   experts(hidden, picks, weights), rtol=1e-5, atol=1e-6)
