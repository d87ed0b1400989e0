"""The generic path's export patches (``exporter/generic/patches.py``): each patched method returns
what the model's own method returns, on the model's real modules, and the patches are gone after
the export."""
from __future__ import annotations

import pytest
import torch

from modelexport.exporter.generic.patches import export_patches


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
