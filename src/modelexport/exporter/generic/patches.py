"""Export patches: code of the model that torch.export cannot trace, replaced during the export
only, and listed in the folder's metadata.

As Optimum's ModelPatcher and onnx-diagnostic's ``torch_export_patches`` do it: a context
manager sets a replacement ``forward`` on the class of each matching module and restores the
original when the export is done (also on failure), so the user's model behaves as before.

Patches (each has a test that the patched forward returns what the original returns):
- ``dense-moe-experts``: sparse mixture-of-experts blocks pick experts per token with
  ``nonzero()`` and loop over the experts that were hit: a data-dependent loop torch.export
  refuses ("Could not guard on data-dependent expression"). The replacement runs every expert on
  every token and weights its output by the router's top-k weight (zero for experts the token did
  not select): the same sum, with static shapes. It costs num_experts / top_k times the expert
  compute of the sparse loop. transformers 4.57's per-family blocks (Mixtral, Qwen2-MoE,
  Qwen3-MoE, OLMoE) keep calling each expert module, so ``experts.N`` stay in the tags;
  transformers 5's shared experts class (``@use_experts_implementation``) holds the experts'
  weights as one tensor and is replaced as one module.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F


def dense_sparse_moe_block_forward(self, hidden_states: torch.Tensor):
    """transformers 4.57's ``*SparseMoeBlock.forward``, every expert computed."""
    batch_size, sequence_length, hidden_dim = hidden_states.shape
    hidden_states = hidden_states.view(-1, hidden_dim)
    router_logits = self.gate(hidden_states)
    routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
    routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
    if getattr(self, "norm_topk_prob", True):  # Mixtral always normalises (it has no such attribute)
        routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
    routing_weights = routing_weights.to(hidden_states.dtype)
    dense_weights = torch.zeros(hidden_states.shape[0], len(self.experts), dtype=routing_weights.dtype,
                                device=hidden_states.device).scatter(1, selected_experts, routing_weights)
    final = torch.zeros_like(hidden_states)
    for index, expert in enumerate(self.experts):  # a static loop, unrolled by the trace
        final = final + (expert(hidden_states) * dense_weights[:, index, None]).to(hidden_states.dtype)
    if hasattr(self, "shared_expert"):  # Qwen2-MoE
        shared = self.shared_expert(hidden_states)
        final = final + F.sigmoid(self.shared_expert_gate(hidden_states)) * shared
    return final.reshape(batch_size, sequence_length, hidden_dim), router_logits


def dense_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers 5's experts module (``@use_experts_implementation``), every expert computed."""
    num_tokens, hidden_dim = hidden_states.shape
    num_experts = self.num_experts

    def batched_linear(x, weight, bias):
        out = torch.bmm(x, weight if self.is_transposed else weight.transpose(1, 2))
        return out if bias is None else out + bias[:, None, :]

    x = hidden_states.unsqueeze(0).expand(num_experts, num_tokens, hidden_dim)
    if self.has_gate:
        projected = self._apply_gate(batched_linear(x, self.gate_up_proj,
                                                    self.gate_up_proj_bias if self.has_bias else None))
    else:
        projected = self.act_fn(batched_linear(x, self.up_proj, self.up_proj_bias if self.has_bias else None))
    projected = batched_linear(projected, self.down_proj, self.down_proj_bias if self.has_bias else None)
    if getattr(self, "has_post_expert_norm", False):
        projected = self.post_expert_norm(projected)
    # one column more for expert-parallel sentinel ids (== num_experts), as the eager path's one_hot
    dense_weights = torch.zeros(num_tokens, num_experts + 1, dtype=top_k_weights.dtype,
                                device=hidden_states.device).scatter(1, top_k_index, top_k_weights)[:, :num_experts]
    return (projected * dense_weights.transpose(0, 1).unsqueeze(-1)).sum(dim=0).to(hidden_states.dtype)


_SPARSE_BLOCKS_457 = {
    "transformers.models.mixtral.modeling_mixtral": "MixtralSparseMoeBlock",
    "transformers.models.qwen2_moe.modeling_qwen2_moe": "Qwen2MoeSparseMoeBlock",
    "transformers.models.qwen3_moe.modeling_qwen3_moe": "Qwen3MoeSparseMoeBlock",
    "transformers.models.olmoe.modeling_olmoe": "OlmoeSparseMoeBlock",
}


def _is_experts_module(module) -> bool:
    """transformers 5's shared experts class (attributes its decorator sets)."""
    return hasattr(module, "has_gate") and hasattr(module, "is_transposed") and \
        hasattr(module, "gate_up_proj" if module.has_gate else "up_proj") and hasattr(module, "num_experts")


def _is_sparse_block(module) -> bool:
    cls = type(module)
    return _SPARSE_BLOCKS_457.get(cls.__module__) == cls.__name__ and \
        isinstance(getattr(module, "experts", None), torch.nn.ModuleList)


@dataclass(frozen=True)
class Patch:
    name: str
    why: str
    matches: Callable[[torch.nn.Module], bool]
    forward: Callable


PATCHES = (
    Patch("dense-moe-experts", "sparse MoE expert loop (data-dependent): every expert computed, weighted by the router",
          _is_sparse_block, dense_sparse_moe_block_forward),
    Patch("dense-moe-experts", "sparse MoE experts (data-dependent): every expert computed, weighted by the router",
          _is_experts_module, dense_experts_forward),
)


@dataclass
class AppliedPatch:
    name: str
    why: str
    classes: list[str]
    modules: int

    def as_dict(self) -> dict:
        return {"name": self.name, "why": self.why, "classes": self.classes, "modules": self.modules}


@contextlib.contextmanager
def export_patches(model: torch.nn.Module) -> Iterator[list[AppliedPatch]]:
    """Patch the classes of ``model``'s modules that need it; yields what was patched."""
    saved: dict[type, object] = {}
    applied: dict[tuple[str, str], AppliedPatch] = {}
    for module in model.modules():
        cls = type(module)
        for patch in PATCHES:
            if not patch.matches(module):
                continue
            entry = applied.setdefault((patch.name, patch.why), AppliedPatch(patch.name, patch.why, [], 0))
            entry.modules += 1
            if cls not in saved:
                saved[cls] = cls.__dict__.get("forward")
                cls.forward = patch.forward
                entry.classes.append(cls.__name__)
            break
    try:
        yield list(applied.values())
    finally:
        for cls, forward in saved.items():
            if forward is None:
                del cls.forward
            else:
                cls.forward = forward
