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
  weights as one tensor and is replaced as one module. transformers 4.57's DeepSeek-V2/V3, dots1,
  GLM-4-MoE and LongCat route first and loop in a ``moe`` method: that method is replaced.
  transformers 4.57's Ernie 4.5 MoE, MiniMax, Qwen3-Next, HunYuan-MoE, Qwen3-Omni-MoE, Jamba,
  PhiMoE and FlexOlmo write Mixtral's loop (or a loop over every expert that indexes the tokens
  routed to it) into a forward of their own: that loop alone is rewritten (``_HIT_LOOPS``).
- ``mask-by-shape``: transformers 4.57's hybrid state-space decoders drop an all-ones mask after
  ``torch.all(attention_mask == 1)`` (data-dependent); the mask is kept instead. Zamba's and
  Zamba2's mixers multiply by the mask only ``if not torch.all(attention_mask == 1)``: always.
- ``placeholder-checks-removed``: transformers 4.57's vision-language models check, in Python,
  that the prompt has as many image tokens as the image has features
  (``if inputs_embeds[mask].numel() != image_features.numel(): raise``): a data-dependent branch
  torch.export refuses. The class's ``get_placeholder_mask`` is recompiled from its own source with
  each ``if`` whose only statement is a ``raise`` removed (the mask it returns is unchanged).
- ``module-to-without-changes``: SwitchTransformers' and NLLB-MoE's routers cast their classifier
  on every call (``self.classifier = self.classifier.to(self.dtype)``); traced, the parameters
  are fake tensors that ``Module._apply`` cannot swap ("Couldn't swap Linear.weight"). During
  the export a ``.to()`` that would change no parameter or buffer returns the module unchanged,
  which is what it returns after converting nothing; listed only when a call was answered so.
- ``parameter-buffers-as-tensors``: a buffer registered as an ``nn.Parameter`` object
  (transformers 4.57's FalconMamba) is lifted twice by torch.export ("attribute ... already
  exists"); during the export it is the same values as a plain tensor.
- ``position-buckets``: Idefics2's, Idefics3's and SmolVLM's vision embeddings (and Phi-4-multimodal's
  in transformers 5) bucket patch coordinates with ``torch.bucketize(coords, torch.arange(1 / side,
  1.0, 1 / side), right=True)``. torchlib writes that float ``arange`` as a float32 ``Range``: for
  side 7, 6 values where PyTorch has 7 (PyTorch computes the length in double) and 3/7 one ulp off;
  bucketize's decomposition keeps PyTorch's length and gathers past the end (ONNX Runtime: "GatherND
  ... invalid index found, index = 6"). transformers 4.57's ``* (1 - 1e-6)`` is also dropped by
  onnxscript's ``mul_by_1`` rule (1 within rel_tol 1e-5), which moves coordinates onto boundaries.
  The replacement takes the boundaries PyTorch computes, measured before the trace (a constant),
  counts those <= each coordinate (bucketize, right=True), multiplies by a tensor of 1 - 1e-6 (kept)
  and, in 4.57, computes every image at once (the loop over the batch fixed it): equal to the
  original for masks that are top-left rectangles (what the image processors make, as transformers
  5's own vectorised forward assumes).
- ``real-rotary``: Llama 4's text rotary embedding returns complex frequencies (``torch.polar``)
  that ``apply_rotary_emb`` multiplies with the query and key viewed as complex; ONNX has no complex
  type ("No ONNX function found for aten.unsqueeze", on a complex tensor). During the export the
  embedding returns the real view ([..., dim / 2, (cos, sin)]) and the module's
  ``apply_rotary_emb`` writes the complex product out in real arithmetic (a ``functions`` entry:
  a function of the class's Python module replaced with the method).
- ``traced-branch-kept``: transformers 4.57's RecurrentGemma RG-LRU skips its input normalisation
  (``multiplier = sqrt(1 - a**2)``) under ``if not torch.jit.is_tracing() and not tracing:``: traced,
  the multiplier is 1 (logits 0.14 off). The ``if`` is recompiled as ``if True:`` (transformers 5
  always normalises). transformers 4.57's BART-family decoders make their padding mask of ones only
  ``if attention_mask is None and not is_torchdynamo_compiling()``; traced, ``_update_causal_mask``
  then builds a causal mask of past + new + 1 columns, which eager attention (PEGASUS-X's only one;
  the others' with ``attn_implementation="eager"``) adds to scores of past + new columns ("The size
  of tensor a (s91) must match the size of tensor b (s91 + 1)"). For eager attention, the test is
  recompiled as ``if attention_mask is None:`` (the mask PyTorch makes; SDPA cuts the mask first).
- ``causal-mask-skip-reproduced``: in PyTorch transformers' SDPA mask is None when the padding mask
  is all ones (``_ignore_causal_mask_sdpa``: data-dependent, never under a trace), relying on SDPA's
  ``is_causal``. Aimv2's text model (its attention passes ``is_causal=False``) and 4.57's Doge (its
  attention always passes a dynamic mask of its own) then attend to every position; traced, they
  attend causally (Aimv2's logits 1.3 off, Doge's 0.5). Their module's ``create_causal_mask`` (and
  sliding-window one: a ``functions`` entry; forward unchanged) return ``mask | all(attention_mask)``
  where PyTorch would drop it (its tests on lengths decided at trace time or in the graph):
  PyTorch's values for every padding mask. transformers 5's Doge passes
  ``allow_is_causal_skip=False`` (not matched).
- ``kernel-per-length``: transformers 4.57's MEGA EMA (``MegaMultiDimensionDampedEma``) keeps, in eval
  mode, the kernel of the longest length it has run (``self._kernel``) and slices it
  (``self._kernel[..., :kernel_size]``); traced, the cache of the length PyTorch last ran is a
  constant of that length, and other lengths multiply FFTs of other sizes (ONNX Runtime: "Mul node
  ... shape mismatch"). During the export ``get_ema_kernel`` computes the kernel for the length, as
  in training mode (the same values: each position's kernel depends on the position only), and
  leaves the module's cache as it was.
- ``past-length-branches-in-graph``: transformers 4.57's GIT builds its mask in Python on the past
  length (``if past_key_values_length > 0:``, in ``create_attention_mask`` and ``forward``): with a
  past, no causal mask and no padding mask; without, both. Traced with a past, the first step (past
  0) got the later steps' mask (its new tokens attend to later ones: logits 0.01 off). Both
  branches are in the graph, chosen by ``torch.where`` on the past length (as a tensor): PyTorch's
  values for every past length. transformers 5's GIT uses ``create_causal_mask`` (not matched).
- ``ngram-bias-out-of-place``: transformers 4.57's ProphetNet and XLM-ProphetNet decoders build
  their predict-stream bias with ``right_block[stream].fill_diagonal_(0)``: a mutation of an
  ``as_strided`` view, which torch.export's functionalization refuses ("encountered a mutation on a
  view chain of length 2, where view 1 was an as_strided() call"). The module's
  ``ngram_attention_bias`` is replaced during the export by the same values computed from
  comparisons of positions (transformers 5's own rewrite; its function is not matched).
- ``mlstm-parallel-form``: xLSTM's mLSTM backend (transformers' native kernels, ``xLSTMBackend`` in
  inference mode) runs a sequence shorter than 16 tokens (the tail after whole chunks of
  ``chunk_size``) one token at a time in a Python loop (``mlstm_recurrent_sequence_native``), chunks
  in another loop, and chooses between them in Python on the length: traced, the graph unrolls the
  trace's length (one step kernel per token per layer) and fixes it (other lengths fail at run
  time). During the export the backend computes the same recurrence in its parallel (quadratic)
  form over the whole sequence: with cumulative log forget gates ``F``, the stabiliser
  ``m_t = max(F_t + m_0, max_{s<=t} F_t - F_s + i_s)`` is the recurrence's own, and the outputs and
  last states are the exp(... - m_t)-weighted sums the loop accumulates (the initial state decayed
  by ``exp(F_t + m_0 - m_t)``): one set of nodes for every length, 1 included. Train modes are
  left as they are.
- ``uncovered-patches-gathered``: UDOP (transformers 4.57 and 5) appends to the text the image patches
  that no token's box centre falls on: ``patch_inds[rows, cols] = False`` with ``rows, cols =
  zip(*ind)`` (a tensor built from traced 0-d tensors: "The tensor has a non-zero number of elements,
  but its data is not allocated yet"), then ``x[patch_inds[i]]`` per image (a length that depends on
  the boxes) padded with zeros to ``max_len``. During the export the module's
  ``combine_image_text_embeddings`` scatters the mask and gathers the j-th kept patch into slot j
  (zeros after the last): the same tensors bit for bit, with static shapes.
- ``no-traced-input-checks``: transformers 5 checks inputs with ``torch._check_tensor_all`` (e.g.
  that a vision-language model got as many image tokens as image features); traced, the check
  becomes ``aten._is_all_true``, which has no ONNX translation. transformers' own switch
  ``TRANSFORMERS_DISABLE_TORCH_CHECK=1`` is set during the export: the check is not in the graph
  (it computes nothing the outputs use).
"""
from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import itertools
import os
import sys
import textwrap
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
    # added, not written: an expert picked twice for a token (DeepSeek-V4's hash routing from a table)
    # counts twice in the eager loop
    dense_weights = torch.zeros(num_tokens, num_experts + 1, dtype=top_k_weights.dtype,
                                device=hidden_states.device).scatter_add(1, top_k_index, top_k_weights)[:, :num_experts]
    return (projected * dense_weights.transpose(0, 1).unsqueeze(-1)).sum(dim=0).to(hidden_states.dtype)


def dense_moe_method(self, hidden_states, topk_indices, topk_weights):
    """transformers 4.57's ``moe(hidden_states, topk_indices, topk_weights)`` (DeepSeek-V2/V3,
    dots1, GLM-4-MoE, GLM-4V-MoE, LongCat-Flash), every expert computed: the loop over
    ``torch.where(mask)`` per expert is data-dependent, the router's choice is already made."""
    dense_weights = torch.zeros(hidden_states.shape[0], len(self.experts), dtype=topk_weights.dtype,
                                device=hidden_states.device).scatter(1, topk_indices, topk_weights)
    final = torch.zeros_like(hidden_states, dtype=topk_weights.dtype)
    for index, expert in enumerate(self.experts):
        final = final + expert(hidden_states) * dense_weights[:, index, None]
    return final.type(hidden_states.dtype)


def dense_one_hot_experts_forward(self, hidden_states, selected_experts, routing_weights):
    """transformers 5's ``SwitchTransformersExperts`` (a ModuleDict of ``expert_N``; the router's
    choice one-hot, tokens x 1 x experts, its weight tokens x 1), every expert computed."""
    dense_weights = selected_experts[:, 0, :].to(routing_weights.dtype) * routing_weights
    final = torch.zeros_like(hidden_states)
    for index in range(self.num_experts):  # a static loop, unrolled by the trace
        final = final + (self[f"expert_{index}"](hidden_states) * dense_weights[:, index, None]).to(hidden_states.dtype)
    return final


def dense_top_k_experts_forward(self, hidden_states, router_mask, router_probs):
    """transformers 5's ``NllbMoeExperts`` (a ModuleDict of ``expert_N``; the router's choice as
    expert ids, tokens x k, their weights tokens x k), every expert computed, in eval mode."""
    chosen = F.one_hot(router_mask, num_classes=self.num_experts).to(router_probs.dtype)
    dense_weights = (chosen * router_probs[..., None]).sum(dim=1)
    final = torch.zeros_like(hidden_states)
    for index in range(self.num_experts):
        out = self[f"expert_{index}"](hidden_states) * dense_weights[:, index, None]
        if self.moe_token_dropout > 0:  # eval: the dropout's expectation, as the eager loop applies it
            out = out * (1 - self.moe_token_dropout)
        final = final + out.to(hidden_states.dtype)
    return final


_EXPERT_DICTS = {
    ("transformers.models.switch_transformers.modeling_switch_transformers", "SwitchTransformersExperts"):
        dense_one_hot_experts_forward,
    ("transformers.models.nllb_moe.modeling_nllb_moe", "NllbMoeExperts"): dense_top_k_experts_forward,
}


def _is_expert_dict(module) -> bool:
    """transformers 5's expert dicts whose forward loops over the experts the router hit (the
    signature is checked: 4.57's classes of the same models route differently)."""
    cls = type(module)
    if (cls.__module__, cls.__name__) not in _EXPERT_DICTS or module.training:
        return False
    params = list(inspect.signature(cls.forward).parameters)
    return len(params) == 4 and hasattr(module, "num_experts")


def _has_moe_method(module) -> bool:
    method = type(module).__dict__.get("moe")
    if method is None or not isinstance(getattr(module, "experts", None), torch.nn.ModuleList):
        return False
    params = list(inspect.signature(method).parameters)
    return len(params) == 4 and params[0] == "self" and params[1] == "hidden_states"


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


def _own_source(cls: type, name: str) -> str:
    """The source of ``cls``'s own method ``name`` ("" when the class does not define it or its
    source cannot be read)."""
    try:
        return inspect.getsource(cls.__dict__[name])
    except (KeyError, OSError, TypeError):
        return ""


def _is_switch_sparse_mlp_457(module) -> bool:
    """transformers 4.57's Switch Transformers sparse MLP: top-1 router, an ``experts`` ModuleDict
    of ``expert_N``, a loop over the experts hit (``torch.nonzero(...).tolist()``)."""
    cls = type(module)
    if not (cls.__name__ == "SwitchTransformersSparseMLP" and isinstance(getattr(module, "experts", None),
                                                                           torch.nn.ModuleDict)):
        return False
    return "torch.nonzero(idx_mask" in _own_source(cls, "forward")


def dense_switch_sparse_mlp_forward(self, hidden_states):
    """Every expert on every token, kept where the router sent the token (its one-hot mask; a
    token dropped by the capacity is zero, as in the loop), scaled by the router's probability."""
    router_mask, router_probs, router_logits = self.router(hidden_states)
    expert_index = torch.argmax(router_mask, dim=-1)
    mask = router_mask.to(hidden_states.dtype)
    next_states = torch.zeros_like(hidden_states)
    for idx in range(mask.shape[-1]):
        next_states = next_states + getattr(self.experts, f"expert_{idx}")(hidden_states) * mask[:, :, idx, None]
    return router_probs * next_states, (router_logits, expert_index)


def _recompiled(function, transformer: ast.NodeTransformer):
    """``function`` compiled again from its own source after ``transformer`` rewrote it (in the
    module globals it was defined in; decorators dropped)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    tree = ast.fix_missing_locations(transformer.visit(tree))
    definition = tree.body[0]
    definition.decorator_list = []
    namespace: dict = {}
    exec(compile(tree, inspect.getsourcefile(function) or "<patched>", "exec"), function.__globals__, namespace)
    return namespace[definition.name]


def without_raising_branches(function):
    """``function`` recompiled from its source with every ``if`` whose body is only a ``raise``
    (and has no ``else``) replaced by ``pass``: input checks, not computation."""

    class Strip(ast.NodeTransformer):
        def visit_If(self, node):  # noqa: N802 (ast's visitor naming)
            self.generic_visit(node)
            if not node.orelse and len(node.body) == 1 and isinstance(node.body[0], ast.Raise):
                return ast.copy_location(ast.Pass(), node)
            return node

    return _recompiled(function, Strip())


# transformers 4.57's sparse MoE loops, word for word as Mixtral wrote the first (Ernie 4.5 MoE,
# MiniMax, Qwen3-Next, HunYuan-MoE and Qwen3-Omni-MoE copied it) and as Jamba, PhiMoE and FlexOlmo
# wrote the others (a loop over every expert that indexes the tokens routed to it); the rest of
# their forward (routing, shared experts, gates) differs and is kept. Only these exact loops (and
# `expert_hit`) are rewritten.
_HIT_EXPERTS = "expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()"
_HIT_LOOPS = ("""
for expert_idx in expert_hit:
    expert_layer = self.experts[expert_idx]
    idx, top_x = torch.where(expert_mask[expert_idx].squeeze(0))
    current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
    current_hidden_states = expert_layer(current_state) * routing_weights[top_x, idx, None]
    final_hidden_states.index_add_(0, top_x, current_hidden_states.to(hidden_states.dtype))
""", """
for expert_idx in range(self.num_experts):
    expert_layer = self.experts[expert_idx]
    idx, top_x = torch.where(expert_mask[expert_idx])
    current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
    current_hidden_states = expert_layer(current_state) * routing_weights[top_x, idx, None]
    final_hidden_states.index_add_(0, top_x, current_hidden_states.to(hidden_states.dtype))
""", """
for expert_idx in range(self.num_experts):
    expert_layer = self.experts[expert_idx]
    idx, top_x = torch.where(expert_mask[expert_idx])
    if top_x.shape[0] == 0:
        continue
    current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
    current_hidden_states = expert_layer(current_state) * routing_weights[top_x, idx, None]
    final_hidden_states.index_add_(0, top_x, current_hidden_states.to(hidden_states.dtype))
""")
# every expert on every token, weighted by the router's weight for that expert (0 where the token
# did not choose it): expert_mask is one-hot experts x top_k x tokens, routing_weights tokens x top_k
_DENSE_LOOP = """
for expert_idx, expert_layer in enumerate(self.experts):
    expert_weight = (expert_mask[expert_idx].transpose(0, 1).to(routing_weights.dtype) * routing_weights).sum(
        dim=-1, keepdim=True)
    current_hidden_states = expert_layer(hidden_states) * expert_weight
    final_hidden_states = final_hidden_states + current_hidden_states.to(hidden_states.dtype)
"""


def _dump(code: str) -> str:
    return ast.dump(ast.parse(textwrap.dedent(code)).body[0])


class _DenseHitLoop(ast.NodeTransformer):
    def __init__(self):
        self.hit, self.loops = _dump(_HIT_EXPERTS), {_dump(loop) for loop in _HIT_LOOPS}
        self.replaced = 0

    def visit_Assign(self, node):  # noqa: N802
        return ast.copy_location(ast.Pass(), node) if ast.dump(node) == self.hit else node

    def visit_For(self, node):  # noqa: N802
        if ast.dump(node) not in self.loops:
            return self.generic_visit(node)
        self.replaced += 1
        return ast.copy_location(ast.parse(textwrap.dedent(_DENSE_LOOP)).body[0], node)


def dense_hit_expert_loop(function):
    """``forward`` recompiled with transformers 4.57's loop over the experts the router hit
    replaced by a loop over every expert (``_DENSE_LOOP``)."""
    return _recompiled(function, _DenseHitLoop())


_REWRITES: dict[tuple[type, str, type], int] = {}


def _rewrites(cls: type, method_name: str, transformer: type) -> int:
    """How many places of ``cls``'s own ``method_name`` the AST ``transformer`` would rewrite
    (0 without such a method or its source); measured once per class."""
    key = (cls, method_name, transformer)
    if key not in _REWRITES:
        method, count = cls.__dict__.get(method_name), 0
        if method is not None:
            try:
                visitor = transformer()
                visitor.visit(ast.parse(textwrap.dedent(inspect.getsource(method))))
                count = visitor.replaced
            except (OSError, TypeError, SyntaxError):
                count = 0
        _REWRITES[key] = count
    return _REWRITES[key]


def _loops_over_hit_experts(module) -> bool:
    return isinstance(getattr(module, "experts", None), torch.nn.ModuleList) and not module.training and \
        _rewrites(type(module), "forward", _DenseHitLoop) == 1


def mask_when_prefilling(self, attention_mask, cache_position):
    """transformers 4.57's ``_update_mamba_mask`` / ``_update_linear_attn_mask`` (Jamba, Bamba,
    Qwen3-Next, GraniteMoeHybrid, Falcon-H1) return None for a mask of all ones, tested with
    ``torch.all(attention_mask == 1)``: data-dependent. The state layers only multiply by the
    mask, so a mask of ones changes nothing: it is returned whenever the step covers the whole
    mask (no cache), and None on cached steps, as the original does, decided by shapes."""
    if attention_mask is not None and attention_mask.shape[-1] == cache_position.shape[0]:
        return attention_mask
    return None


_MASK_METHODS = ("_update_mamba_mask", "_update_linear_attn_mask")
_MIXER_METHODS = ("slow_forward", "torch_forward")  # the state-space mixers' paths without CUDA kernels


class _MaskTestToTrue(ast.NodeTransformer):
    """``not torch.all(attention_mask == 1)`` -> ``True``: the mask is then always multiplied in,
    which changes nothing where it is all ones (Zamba's and Zamba2's mixers)."""

    def __init__(self):
        self.test = ast.dump(ast.parse("torch.all(attention_mask == 1)").body[0].value)
        self.replaced = 0

    def visit_UnaryOp(self, node):  # noqa: N802
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and ast.dump(node.operand) == self.test:
            self.replaced += 1
            return ast.copy_location(ast.Constant(True), node)
        return node


def _mixer_tests_mask_by_data(method_name: str):
    return lambda module: _rewrites(type(module), method_name, _MaskTestToTrue) > 0


def _masks_by_data(method_name: str):
    def matches(module) -> bool:
        method = type(module).__dict__.get(method_name)
        if method is None:
            return False
        try:
            source = inspect.getsource(method)
        except (OSError, TypeError):
            return False
        return "torch.all(attention_mask == 1)" in source and "cache_position[0] > 0" in source
    return matches


def _checks_placeholders_in_python(module) -> bool:
    method = type(module).__dict__.get("get_placeholder_mask")
    if method is None or _traced_checks_exist():
        return False
    try:
        return "raise" in inspect.getsource(method)
    except (OSError, TypeError):
        return False


_POSITION_BUCKETS = "torch.bucketize(fractional_coords_h, boundaries, right=True)"
_COORDINATES = {"h_indices / nb_patches_h * (1 - 1e-6)": False,  # transformers 4.57, a loop over the images
                "torch.clamp(fractional_coords_h, max=(1.0 - 1e-6))": True}  # transformers 5, vectorised
_BOUNDARIES: dict[tuple[int, str], list[float]] = {}  # (side, device) -> torch.arange(1 / side, 1.0, 1 / side)
_BUCKETING_CLASSES: dict[type, bool] = {}


def _boundaries(side: int, device) -> list[float]:
    """The values of ``torch.arange(1 / side, 1.0, 1 / side)`` as PyTorch computes them (its float
    arange is not correctly rounded: float32 steps, CPU vector width); measured in eager mode, when
    the patch is matched, so that the trace takes them as a constant."""
    key = (side, str(device))
    if key not in _BOUNDARIES:
        _BOUNDARIES[key] = torch.arange(1 / side, 1.0, 1 / side, device=device).tolist()
    return _BOUNDARIES[key]


def _buckets_positions(module) -> bool:
    cls = type(module)
    if cls not in _BUCKETING_CLASSES:
        source = _own_source(cls, "forward")
        _BUCKETING_CLASSES[cls] = _POSITION_BUCKETS in source and any(line in source for line in _COORDINATES)
    if not _BUCKETING_CLASSES[cls]:
        return False
    weight = getattr(getattr(module, "position_embedding", None), "weight", None)
    _boundaries(module.num_patches_per_side, weight.device if weight is not None else "cpu")
    return True


def position_buckets_forward(original):
    """Idefics2/Idefics3/SmolVLM ``*VisionEmbeddings.forward`` with the position buckets counted
    against PyTorch's own boundaries (see ``position-buckets`` above)."""
    clamped = "torch.clamp(fractional_coords_h" in inspect.getsource(original)

    def forward(self, pixel_values, patch_attention_mask):
        batch_size = pixel_values.shape[0]
        embeddings = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        side = self.num_patches_per_side
        boundaries = torch.tensor(_boundaries(side, self.position_embedding.weight.device), device=pixel_values.device)
        buckets = []
        for size, count in ((patch_attention_mask.shape[1], patch_attention_mask[:, :, 0].sum(dim=1)),
                            (patch_attention_mask.shape[2], patch_attention_mask[:, 0, :].sum(dim=1))):
            if clamped:
                indices = torch.arange(size, device=pixel_values.device, dtype=torch.float32)
                coords = torch.clamp(indices[None, :] * (1.0 / count)[:, None], max=(1.0 - 1e-6))
            else:
                indices = torch.arange(size, device=pixel_values.device, dtype=pixel_values.dtype)
                coords = indices[None, :] / count[:, None]
                # a tensor, not the number: onnxscript's optimizer drops a Mul by a scalar within 1e-5 of 1;
                # in float32 at least, as PyTorch multiplies a half-precision tensor by a number
                scale = torch.full_like(coords, 1 - 1e-6, dtype=torch.promote_types(coords.dtype, torch.float32))
                coords = (coords * scale).to(coords.dtype)
            buckets.append((coords.unsqueeze(-1) >= boundaries).sum(dim=-1))  # bucketize(right=True)
        position_ids = (buckets[0][:, :, None] * side + buckets[1][:, None, :]).reshape(batch_size, -1)
        position_ids = torch.where(patch_attention_mask.view(batch_size, -1), position_ids, 0)
        return embeddings + self.position_embedding(position_ids)

    return forward


def _complex_rotary(module) -> bool:
    """Llama 4's text rotary embedding: ``torch.polar`` (default or llama3 frequencies; the dynamic
    kinds change ``inv_freq`` in a decorator the replacement does not repeat)."""
    cls = type(module)
    if not (cls.__name__ == "Llama4TextRotaryEmbedding" and getattr(module, "rope_type", "default") in
            ("default", "llama3")):
        return False
    return "torch.polar(" in _own_source(cls, "forward")


def real_rotary_forward(self, x, position_ids):
    """``torch.polar(1, freqs) * scaling`` as its real view: [..., dim / 2, (cos, sin)]."""
    freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
    return torch.stack([torch.cos(freqs), torch.sin(freqs)], dim=-1) * self.attention_scaling


def real_apply_rotary_emb(original):
    """Llama 4's ``apply_rotary_emb`` on the real view of the frequencies: the complex product
    (a + ib)(cos + i sin) written out; complex frequencies go to the original."""

    def apply_rotary_emb(xq, xk, freqs_cis):
        if freqs_cis.is_complex():
            return original(xq, xk, freqs_cis)
        cos, sin = freqs_cis[:, :, None, :, 0], freqs_cis[:, :, None, :, 1]

        def rotated(x):
            pairs = x.float().reshape(*x.shape[:-1], -1, 2)
            real, imag = pairs[..., 0], pairs[..., 1]
            return torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1).flatten(3).type_as(x)

        return rotated(xq), rotated(xk)

    return apply_rotary_emb


class _IfTestRewritten(ast.NodeTransformer):
    """Each ``if`` whose test is exactly ``TEST`` gets the test ``rewritten(test)`` returns."""

    TEST = ""

    def __init__(self):
        self.test = ast.dump(ast.parse(self.TEST).body[0].value)
        self.replaced = 0

    def rewritten(self, test: ast.expr) -> ast.expr:
        raise NotImplementedError

    def visit_If(self, node):  # noqa: N802
        self.generic_visit(node)
        if ast.dump(node.test) == self.test:
            self.replaced += 1
            node.test = ast.copy_location(self.rewritten(node.test), node.test)
        return node


class _TracingTestToTrue(_IfTestRewritten):
    """``if not torch.jit.is_tracing() and not tracing:`` -> ``if True:``: the branch PyTorch runs
    outside a trace runs in the trace too (transformers 4.57's RecurrentGemma RG-LRU skips its input
    normalisation ``sqrt(1 - a**2)`` when traced: multiplier 1 instead)."""

    TEST = "not torch.jit.is_tracing() and not tracing"

    def rewritten(self, test):
        return ast.Constant(True)


def _skips_code_when_traced(module) -> bool:
    return _rewrites(type(module), "forward", _TracingTestToTrue) == 1


class _CompilingMaskTestDropped(_IfTestRewritten):
    """``if attention_mask is None and not is_torchdynamo_compiling():`` -> ``if attention_mask is
    None:``: the decoder makes its padding mask of ones (past + new tokens) under the trace as it
    does in PyTorch."""

    TEST = "attention_mask is None and not is_torchdynamo_compiling()"

    def rewritten(self, test):
        return test.values[0]


def _mask_made_only_eagerly(module) -> bool:
    """transformers 4.57's BART-family decoders (PEGASUS-X's always: it has no SDPA) with eager
    attention: traced, they make no padding mask, and ``_update_causal_mask`` then builds a causal
    mask of ``past + new + 1`` columns, which the eager attention adds to its ``past + new`` scores
    as it is (SDPA's and flex's interfaces cut the mask to the keys' length first)."""
    if getattr(getattr(module, "config", None), "_attn_implementation", None) != "eager":
        return False
    if not callable(getattr(module, "_update_causal_mask", None)):
        return False  # transformers 5's create_causal_mask sizes the mask by the cache, mask or not
    if not hasattr(sys.modules.get(type(module).__module__), "eager_attention_forward"):
        return False  # T5's family: attention of its own, which cuts the mask to the keys
    return _rewrites(type(module), "forward", _CompilingMaskTestDropped) == 1


# Models whose attention, given no mask, attends to every position: transformers' SDPA mask is
# None in PyTorch when the padding mask is all ones (``_ignore_causal_mask_sdpa``, never under a
# trace), and these then attend without causality (Aimv2's text attention passes
# ``is_causal=False``; transformers 4.57's Doge always passes a dynamic mask of its own, so SDPA's
# ``is_causal`` fallback never applies). transformers 5's Doge passes ``allow_is_causal_skip=False``.
_SKIPPED_MASK_ATTENDS_ALL = {"Aimv2TextModel", "DogeModel"}
_MASK_FUNCTIONS = ("create_causal_mask", "create_sliding_window_causal_mask")


def _mask_skipped_when_all_ones(module) -> bool:
    cls = type(module)
    if cls.__name__ not in _SKIPPED_MASK_ATTENDS_ALL or "forward" not in cls.__dict__:
        return False
    if getattr(getattr(module, "config", None), "_attn_implementation", None) != "sdpa":
        return False
    source = _own_source(cls, "forward")
    return "create_causal_mask" in source and "allow_is_causal_skip=False" not in source


def skip_reproduced(mask_function):
    """``mask_function`` (``create_causal_mask`` or the sliding-window one) whose SDPA mask attends
    everywhere when the padding mask is all ones and PyTorch would have dropped it
    (``_ignore_causal_mask_sdpa``: its tests on lengths decided at trace time where the shapes say,
    in the graph otherwise; the one on values, ``padding_mask.all()``, in the graph)."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    sliding = "sliding" in mask_function.__name__

    def mask(*args, **kwargs):
        result = mask_function(*args, **kwargs)
        config, padding = kwargs.get("config"), kwargs.get("attention_mask")
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        if not (isinstance(result, torch.Tensor) and result.dtype == torch.bool and result.dim() == 4
                and isinstance(padding, torch.Tensor) and padding.dim() == 2
                and getattr(config, "_attn_implementation", None) == "sdpa"
                and not getattr(cache, "is_compileable", False)):
            return result
        q_length, kv_length = result.shape[-2], result.shape[-1]
        # the padding mask's first kv_length columns, as PyTorch takes them (kv_offset 0)
        skipped = padding[:, :kv_length].bool().all()
        if not (statically_known_true(q_length == 1) or statically_known_true(kv_length == q_length)):
            # lengths known only at run time (a cache of any length): PyTorch's test on them, in the graph
            q, kv = (torch.scalar_tensor(n, dtype=torch.int64, device=result.device) for n in (q_length, kv_length))
            skipped = skipped & ((q == 1) | (kv == q))
        window = getattr(config, "sliding_window", None) if sliding else None
        if window is not None and not statically_known_true(kv_length < window):
            skipped = skipped & (torch.scalar_tensor(kv_length, dtype=torch.int64, device=result.device) < window)
        return result | skipped

    return mask


_CACHED_KERNEL = "self._kernel[..., :kernel_size]"


_KERNEL_CACHING_CLASSES: dict[type, bool] = {}  # measured once per class (before it is patched)


def _caches_kernel_by_length(module) -> bool:
    cls = type(module)
    if cls not in _KERNEL_CACHING_CLASSES:
        source = _own_source(cls, "get_ema_kernel")
        _KERNEL_CACHING_CLASSES[cls] = _CACHED_KERNEL in source and hasattr(cls, "_compute_efficient_ema_kernel")
    return _KERNEL_CACHING_CLASSES[cls]


def ema_kernel_per_length(self, length: int):
    """transformers 4.57's ``MegaMultiDimensionDampedEma.get_ema_kernel`` computing the kernel for
    ``length`` (its training-mode path) instead of slicing the cache of another length; the cache
    (which ``_compute_efficient_ema_kernel`` clears) is left as it was."""
    kernel_size = length if self.truncation is None else min(self.truncation, length)
    cached = self._kernel, self._coeffs
    try:
        return self._compute_efficient_ema_kernel(kernel_size)
    finally:
        self._kernel, self._coeffs = cached


# transformers 4.57's GIT (``GitModel``): its mask chosen in Python on the past length, word for
# word; each replaced by both branches in the graph, chosen by the past length as a tensor
# (``torch.arange(past, past + 1) == 0``: no guard on the past length in the trace).
_PAST_BRANCHES = {
    "create_attention_mask": ("""
if past_key_values_length > 0:
    tgt_mask = torch.zeros(
        (tgt_mask.shape[0], tgt_mask.shape[0] + past_key_values_length),
        dtype=dtype,
        device=tgt_mask.device,
    )
""", """
tgt_mask = torch.where(
    torch.arange(past_key_values_length, past_key_values_length + 1, device=tgt_mask.device) == 0,
    torch.nn.functional.pad(tgt_mask.to(dtype), (past_key_values_length, 0)),
    torch.zeros((), dtype=dtype, device=tgt_mask.device),
)
"""),
    "forward": ("""
if past_key_values_length > 0:
    expanded_attn_mask = expanded_attn_mask[:, :, -past_key_values_length:, :]
else:
    combined_attention_mask[:, :, -input_shape[1] :, -input_shape[1] :] += expanded_attn_mask
""", """
combined_attention_mask[:, :, -input_shape[1] :, -input_shape[1] :] += torch.where(
    torch.arange(past_key_values_length, past_key_values_length + 1, device=expanded_attn_mask.device) == 0,
    expanded_attn_mask[..., -input_shape[1] :],
    torch.zeros((), dtype=expanded_attn_mask.dtype, device=expanded_attn_mask.device),
)
"""),
}


def _past_branches_in_graph(method_name: str) -> type:
    original, replacement = _PAST_BRANCHES[method_name]

    class PastBranchesInGraph(ast.NodeTransformer):
        def __init__(self):
            self.branch = _dump(original)
            self.replaced = 0

        def visit_If(self, node):  # noqa: N802
            if ast.dump(node) != self.branch:
                return self.generic_visit(node)
            self.replaced += 1
            return ast.copy_location(ast.parse(textwrap.dedent(replacement)).body[0], node)

    PastBranchesInGraph.__qualname__ = PastBranchesInGraph.__name__ = f"PastBranchesInGraph_{method_name}"
    return PastBranchesInGraph


_PAST_BRANCH_REWRITERS = {name: _past_branches_in_graph(name) for name in _PAST_BRANCHES}


def _branches_on_past_length(module) -> bool:
    """Both of GIT's methods have their branch (one without the other is not patched)."""
    return all(_rewrites(type(module), name, rewriter) == 1 for name, rewriter in _PAST_BRANCH_REWRITERS.items())
def ngram_attention_bias(sequence_length, ngram, device, dtype):
    """transformers 4.57's ProphetNet ``ngram_attention_bias`` without writing into views
    (``right_block[stream].fill_diagonal_``, ``left_block[stream].triu_``): the same values from
    comparisons of positions, as transformers 5 computes them."""
    rows = torch.arange(sequence_length, device=device).view(1, sequence_length, 1)
    cols = torch.arange(sequence_length, device=device).view(1, 1, sequence_length)
    offsets = (1 - torch.arange(ngram, device=device)).view(ngram, 1, 1)
    lowest = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    left = torch.where((cols - rows >= offsets) & (cols != 0), lowest, zero)  # triu_(1 - stream), column 0 open
    right = torch.where((rows != cols).expand(ngram, sequence_length, sequence_length), lowest, zero)  # diagonal
    return torch.cat([left, right], dim=2)


def _writes_ngram_bias_into_views(module) -> bool:
    """ProphetNet's (and XLM-ProphetNet's) decoder in transformers 4.57, whose module's
    ``ngram_attention_bias`` calls ``fill_diagonal_`` on a view."""
    if "prepare_predict_attention_mask" not in type(module).__dict__:
        return False
    function = getattr(sys.modules.get(type(module).__module__), "ngram_attention_bias", None)
    try:
        return function is not None and "fill_diagonal_" in inspect.getsource(function)
    except (OSError, TypeError):
        return False


def _kernel_name(function) -> str:
    while isinstance(function, functools.partial):
        function = function.func
    return getattr(function, "__name__", "")


_NATIVE_MLSTM = ("wrap_chunkwise_arbitrary_sequence_length", "mlstm_chunkwise_native_autograd",
                 "mlstm_recurrent_sequence_native", "mlstm_recurrent_step_native")


def _runs_native_mlstm_loops(module) -> bool:
    """transformers' own xLSTM backend (not the ``xlstm`` package's) with its native kernels."""
    function = getattr(module, "_inference_fn", None)
    if type(module).__name__ != "xLSTMBackend" or not isinstance(function, functools.partial):
        return False
    kernels = tuple(function.keywords.get(k) for k in ("mlstm_chunkwise_kernel", "mlstm_sequence_kernel",
                                                        "mlstm_step_kernel"))
    return tuple(_kernel_name(f) for f in (function, *kernels)) == _NATIVE_MLSTM


def mlstm_parallel(query, key, value, igate, fgate, c_initial=None, n_initial=None, m_initial=None,
                   eps: float = 1e-6, dtype_state: torch.dtype = torch.float32):
    """The mLSTM recurrence of ``mlstm_recurrent_step_native`` over a whole sequence at once:
    (h [B, NH, S, DV], (C [B, NH, DQK, DV], n [B, NH, DQK], m [B, NH, 1])) as the step loop returns them."""
    batch, heads, length, qk_dim = key.shape
    v_dim = value.shape[-1]
    q, k, v = (t.to(dtype_state) for t in (query, key, value))
    if c_initial is None:
        c_initial = torch.zeros((batch, heads, qk_dim, v_dim), dtype=dtype_state, device=key.device)
        n_initial = torch.zeros((batch, heads, qk_dim), dtype=dtype_state, device=key.device)
        m_initial = torch.zeros((batch, heads, 1), dtype=dtype_state, device=key.device)
    c0, n0, m0 = (t.to(dtype_state) for t in (c_initial, n_initial, m_initial))
    log_f = torch.cumsum(F.logsigmoid(fgate.to(dtype_state)), dim=-1)  # F_t, [B, NH, S]
    # log weight of token s in the state after token t: F_t - F_s + i_s (s <= t); of the initial state: F_t + m_0
    weights = log_f[..., :, None] - log_f[..., None, :] + igate.to(dtype_state)[..., None, :]
    positions = torch.arange(length, device=key.device)
    weights = weights.masked_fill(positions[:, None] < positions[None, :], float("-inf"))
    initial = log_f + m0
    m = torch.maximum(initial, weights.amax(dim=-1))  # the recurrence's max(f + m_{t-1}, i_t), unrolled
    weights = torch.exp(weights - m[..., None])
    initial = torch.exp(initial - m)
    q = q * qk_dim ** -0.5
    scores = (q @ k.transpose(-2, -1)) * weights
    numerator = scores @ v + initial[..., None] * (q @ c0)
    qn = scores.sum(dim=-1) + initial * (q @ n0[..., None]).squeeze(-1)
    h = numerator / (torch.maximum(qn.abs(), torch.exp(-m)) + eps)[..., None]
    last, last_initial = weights[..., -1, :, None], initial[..., -1, None]  # the state after the last token
    c = last_initial[..., None] * c0 + (k * last).transpose(-2, -1) @ v
    n = last_initial * n0 + (k * last).sum(dim=-2)
    return h.to(query.dtype), (c, n, m[..., -1:])


def mlstm_parallel_forward(original):
    """``xLSTMBackend.forward`` with the inference mode's kernels (the chunk loop, the token loop,
    the step) replaced by ``mlstm_parallel``; train modes run the original."""

    def forward(self, query, key, value, igate, fgate, c_initial=None, n_initial=None, m_initial=None,
                return_last_states=False, mode=None):
        chosen = self.config.mode if mode is None else mode
        if "train" in chosen or "inference" not in chosen:
            return original(self, query, key, value, igate, fgate, c_initial=c_initial, n_initial=n_initial,
                            m_initial=m_initial, return_last_states=return_last_states, mode=mode)
        settings = self._inference_fn.keywords
        step = settings["mlstm_step_kernel"]
        dtype_state = step.keywords.get("dtype_state", torch.float32) if isinstance(step, functools.partial) \
            else torch.float32
        return mlstm_parallel(query, key, value, igate, fgate, c_initial, n_initial, m_initial,
                              eps=settings.get("eps", 1e-6), dtype_state=dtype_state)

    return forward


def uncovered_patches_gathered(original):
    """UDOP's ``combine_image_text_embeddings`` with the image patches that no token's box centre
    falls on kept at fixed positions: the same rows, in the same order, padded with zeros to the same
    length (``max_len``), gathered instead of boolean-indexed (see ``uncovered-patches-gathered``)."""
    get_visual_bbox = original.__globals__["get_visual_bbox"]

    def combine_image_text_embeddings(image_embeddings, inputs_embeds, bbox, visual_bbox, attention_mask=None,
                                      num_patches=14, max_len=0, image_size=224, patch_size=16):
        sequence_length = num_patches
        ocr_points_x = torch.clip(
            torch.floor((bbox[:, :, 0] + bbox[:, :, 2]) / 2.0 * sequence_length).long(), 0, sequence_length - 1)
        ocr_points_y = torch.clip(
            torch.floor((bbox[:, :, 1] + bbox[:, :, 3]) / 2.0 * sequence_length).long(), 0, sequence_length - 1
        ) * sequence_length
        ocr_points = ocr_points_x + ocr_points_y
        bbox = bbox.to(torch.float32 if bbox.device.type == "mps" else torch.float64)
        target_seg = (bbox.mean(-1) == 0.0) | (bbox.mean(-1) == 1.0)
        repeated_vision_embeds = torch.gather(
            image_embeddings, 1, ocr_points.unsqueeze(-1).repeat(1, 1, image_embeddings.size(-1)))
        inputs_embeds += torch.where(target_seg[..., None], torch.zeros_like(repeated_vision_embeds),
                                     repeated_vision_embeds)
        # patches no token points at (``patch_inds[rows, cols] = False``)
        kept = torch.ones_like(image_embeddings[:, :, 0], dtype=torch.bool).scatter(
            1, ocr_points, torch.zeros_like(ocr_points, dtype=torch.bool))
        if visual_bbox is None:
            visual_bbox = get_visual_bbox(image_size=image_size, patch_size=patch_size)
            visual_bbox = visual_bbox.unsqueeze(0).repeat(image_embeddings.size(0), 1, 1)
            visual_bbox = visual_bbox.to(image_embeddings.device)
        max_len = image_embeddings.size(1) if max_len == 0 else max_len - inputs_embeds.size(1)
        # slot j takes the j-th kept patch (``pad_sequence`` of ``x[kept]``: kept rows first, zeros after)
        rank = torch.cumsum(kept.long(), dim=1) - 1
        slots = torch.arange(max_len, device=kept.device)
        source = ((rank[:, None, :] == slots[None, :, None]) & kept[:, None, :]).long().argmax(dim=-1)
        filled = slots[None, :] < kept.long().sum(dim=1, keepdim=True)

        def gathered(values):
            rows = torch.gather(values, 1, source[..., None].expand(-1, -1, values.size(-1)))
            return torch.where(filled[..., None], rows, torch.zeros_like(rows))

        inputs_embeds = torch.cat([inputs_embeds, gathered(image_embeddings)], 1)
        bbox = torch.cat([bbox, gathered(visual_bbox)], 1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, filled.to(attention_mask.dtype)], 1)
        return inputs_embeds, bbox, attention_mask

    return combine_image_text_embeddings


def _indexes_uncovered_patches(module) -> bool:
    """UDOP's encoder stack (transformers 4.57 and 5), whose module's ``combine_image_text_embeddings``
    keeps the uncovered patches by boolean indexing (``rows, cols = zip(*ind)``)."""
    function = getattr(sys.modules.get(type(module).__module__), "combine_image_text_embeddings", None)
    if function is None or "combine_image_text_embeddings" not in _own_source(type(module), "forward"):
        return False
    try:
        return "zip(*ind)" in inspect.getsource(function)
    except (OSError, TypeError):
        return False


@dataclass(frozen=True)
class Patch:
    name: str
    why: str
    matches: Callable[[torch.nn.Module], bool]
    replacement: Callable  # the new method, or a function of the class's original method giving it
    method: str = "forward"
    derived: bool = False  # replacement(original) builds the new method
    # functions of the class's Python module replaced with it: name -> (original function -> new one);
    # names the module does not have are left out
    functions: tuple[tuple[str, Callable], ...] = ()


PATCHES = (
    Patch("dense-moe-experts", "sparse MoE expert loop (data-dependent): every expert computed, weighted by the router",
          _is_sparse_block, dense_sparse_moe_block_forward),
    Patch("dense-moe-experts", "sparse MoE experts (data-dependent): every expert computed, weighted by the router",
          _is_experts_module, dense_experts_forward),
    Patch("dense-moe-experts", "MoE expert loop over torch.where (data-dependent): every expert computed, weighted "
          "by the router", _has_moe_method, dense_moe_method, method="moe"),
    Patch("dense-moe-experts", "MoE experts dict looping over the experts the router hit (data-dependent): every "
          "expert computed, weighted by the router", _is_expert_dict,
          lambda original: _EXPERT_DICTS[(original.__module__, original.__qualname__.partition(".")[0])], derived=True),
    Patch("dense-moe-experts", "sparse MoE loop over the experts the router hit (data-dependent): every expert "
          "computed, weighted by the router", _loops_over_hit_experts, dense_hit_expert_loop, derived=True),
    Patch("dense-moe-experts", "top-1 MoE loop over the experts the router hit (data-dependent): every expert "
          "computed, kept where the router sent the token", _is_switch_sparse_mlp_457, dense_switch_sparse_mlp_forward),
    *(Patch("mask-by-shape", "mask of all ones dropped after a data-dependent test (torch.all(mask == 1)): the "
            "mask is kept (multiplying by ones changes nothing), dropped on cached steps by shape",
            _masks_by_data(name), mask_when_prefilling, method=name) for name in _MASK_METHODS),
    *(Patch("mask-by-shape", "padding mask applied only after a data-dependent test (not torch.all(mask == 1)): "
            "always applied (multiplying by ones changes nothing)", _mixer_tests_mask_by_data(name),
            lambda original: _recompiled(original, _MaskTestToTrue()), method=name, derived=True)
      for name in _MIXER_METHODS),
    Patch("placeholder-checks-removed", "image-token count checked in Python (data-dependent): the check's raise "
          "branches removed from get_placeholder_mask", _checks_placeholders_in_python, without_raising_branches,
          method="get_placeholder_mask", derived=True),
    Patch("traced-branch-kept", "code skipped when traced (if not torch.jit.is_tracing() and not tracing): run "
          "as PyTorch runs it", _skips_code_when_traced,
          lambda original: _recompiled(original, _TracingTestToTrue()), derived=True),
    Patch("traced-branch-kept", "decoder padding mask made only outside torch.compile (if attention_mask is None "
          "and not is_torchdynamo_compiling()): traced, the causal mask has one column more than the eager attention's "
          "keys; made as PyTorch makes it", _mask_made_only_eagerly,
          lambda original: _recompiled(original, _CompilingMaskTestDropped()), derived=True),
    Patch("causal-mask-skip-reproduced", "SDPA mask dropped by PyTorch for a padding mask of all ones (data-dependent, "
          "kept under a trace), after which this attention attends everywhere: the traced mask attends everywhere "
          "when all(attention_mask)", _mask_skipped_when_all_ones, lambda original: original, derived=True,
          functions=tuple((name, skip_reproduced) for name in _MASK_FUNCTIONS)),
    Patch("kernel-per-length", "EMA kernel cached for the longest length run and sliced (a constant of the trace's "
          "length when traced): computed for the length, as in training", _caches_kernel_by_length,
          ema_kernel_per_length, method="get_ema_kernel"),
    *(Patch("past-length-branches-in-graph", "mask chosen in Python on the past length (traced with a past, the "
            "first step got the later steps' mask): both branches in the graph, chosen by the past length",
            _branches_on_past_length, lambda original, rewriter=rewriter: _recompiled(original, rewriter()),
            method=name, derived=True) for name, rewriter in _PAST_BRANCH_REWRITERS.items()),
    Patch("ngram-bias-out-of-place", "ProphetNet's predict-stream bias written into views (fill_diagonal_ on "
          "an as_strided view: torch.compile cannot functionalize it): the same values from position comparisons",
          _writes_ngram_bias_into_views, lambda original: original, derived=True,
          functions=(("ngram_attention_bias", lambda original: ngram_attention_bias),)),
    Patch("uncovered-patches-gathered", "image patches kept by boolean indexing (rows, cols = zip(*ind): a tensor "
          "made of traced tensors; lengths that depend on the boxes) and padded to a fixed length: the same rows "
          "gathered to fixed positions", _indexes_uncovered_patches, lambda original: original, derived=True,
          functions=(("combine_image_text_embeddings", uncovered_patches_gathered),)),
    Patch("position-buckets", "vision position buckets from a float arange (a float32 Range of another length in "
          "ONNX) and bucketize: PyTorch's boundaries as a constant, counted per coordinate, all images at once",
          _buckets_positions, position_buckets_forward, derived=True),
    Patch("mlstm-parallel-form", "mLSTM run token by token in a Python loop (the graph unrolls the trace's length "
          "and fixes it): the same recurrence in its parallel form over the whole sequence",
          _runs_native_mlstm_loops, mlstm_parallel_forward, derived=True),
    Patch("real-rotary", "rotary frequencies as complex numbers (torch.polar; ONNX has no complex type): the same "
          "products in real arithmetic", _complex_rotary, real_rotary_forward,
          functions=(("apply_rotary_emb", real_apply_rotary_emb),)),
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
def export_patches(model: torch.nn.Module, only: tuple[str, ...] | None = None) -> Iterator[list[AppliedPatch]]:
    """Patch the classes of ``model``'s modules that need it; yields what was patched. ``only``:
    these patches of ``PATCHES`` and nothing else (the Optimum path's TorchScript trace)."""
    saved: dict[tuple[type, str], object] = {}
    applied: dict[tuple[str, str], AppliedPatch] = {}
    checks_env = only is None and _traced_checks_exist() and os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK") != "1"
    chosen = [p for p in PATCHES if only is None or p.name in only]
    for module in model.modules():
        cls = type(module)
        methods: set[str] = set()  # one patch per method of a module (a patch may need two methods)
        counted: set[tuple[str, str]] = set()
        for patch in chosen:
            if patch.method in methods or not patch.matches(module):
                continue
            entry = applied.setdefault((patch.name, patch.why), AppliedPatch(patch.name, patch.why, [], 0))
            entry.modules += (patch.name, patch.why) not in counted  # a module once per entry
            counted.add((patch.name, patch.why))
            key = (cls, patch.method)
            if key not in saved:
                original = cls.__dict__.get(patch.method)
                saved[key] = original
                setattr(cls, patch.method, patch.replacement(original) if patch.derived else patch.replacement)
                if cls.__name__ not in entry.classes:
                    entry.classes.append(cls.__name__)
                namespace = sys.modules[cls.__module__]
                for name, make in patch.functions:
                    if (namespace, name) not in saved and hasattr(namespace, name):  # the module may not import it
                        saved[(namespace, name)] = getattr(namespace, name)
                        setattr(namespace, name, make(saved[(namespace, name)]))
            methods.add(patch.method)
    previous_env = os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
    if checks_env:
        os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
        applied[("no-traced-input-checks", "")] = AppliedPatch(
            "no-traced-input-checks", "transformers' input checks (torch._check_tensor_all) left out of the graph: "
            "TRANSFORMERS_DISABLE_TORCH_CHECK=1 during the export", [], 0)
    patches = list(applied.values())
    try:
        if only is not None:
            yield patches
        else:
            with _module_to_without_changes(patches), _parameter_buffers_as_tensors(model, patches):
                yield patches
    finally:
        if checks_env:
            if previous_env is None:
                os.environ.pop("TRANSFORMERS_DISABLE_TORCH_CHECK", None)
            else:
                os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = previous_env
        for (cls, method), original in saved.items():
            if original is None:
                delattr(cls, method)
            else:
                setattr(cls, method, original)


def _changes_nothing(module: torch.nn.Module, args, kwargs) -> bool:
    """Whether ``module.to(*args, **kwargs)`` would leave every parameter and buffer as it is
    (``Module.to`` converts the dtype of floating-point and complex tensors only)."""
    device, dtype, _, memory_format = torch._C._nn._parse_to(*args, **kwargs)
    if memory_format is not None:
        return False
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if device is not None and tensor.device != device:
            return False
        if dtype is not None and (tensor.is_floating_point() or tensor.is_complex()) and tensor.dtype != dtype:
            return False
    return True


@contextlib.contextmanager
def _module_to_without_changes(patches: list[AppliedPatch]) -> Iterator[None]:
    original = torch.nn.Module.to
    entry = AppliedPatch("module-to-without-changes", "module.to() inside forward (a router casting its classifier on "
                         "every call): the parameters are traced fake tensors that cannot be swapped; a .to() that "
                         "changes nothing returns the module as it is", [], 0)

    def to(self, *args, **kwargs):
        if not _changes_nothing(self, args, kwargs):
            return original(self, *args, **kwargs)
        if entry.modules == 0:
            patches.append(entry)
        entry.modules += 1
        if type(self).__name__ not in entry.classes:
            entry.classes.append(type(self).__name__)
        return self

    torch.nn.Module.to = to
    try:
        yield
    finally:
        torch.nn.Module.to = original


@contextlib.contextmanager
def _parameter_buffers_as_tensors(model: torch.nn.Module, patches: list[AppliedPatch]) -> Iterator[None]:
    """A buffer registered as an ``nn.Parameter`` object (transformers 4.57's FalconMamba:
    ``register_buffer("b_c_rms", nn.Parameter(...))``, weights for its CUDA kernels) is lifted by
    torch.export both as a parameter and as a buffer ("attribute 'b_c_rms' already exists").
    During the export the buffer holds the same values as a plain tensor."""
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
    entry = AppliedPatch("parameter-buffers-as-tensors", "a buffer registered as an nn.Parameter (torch.export lifts "
                         "it twice): the same values as a plain tensor during the export", [], 0)
    for module in model.modules():
        for name, buffer in list(module._buffers.items()):
            if isinstance(buffer, torch.nn.Parameter):
                module._buffers[name] = buffer.detach()
                swapped.append((module, name, buffer))
                entry.modules += 1
                if type(module).__name__ not in entry.classes:
                    entry.classes.append(type(module).__name__)
    if swapped:
        patches.append(entry)
    try:
        yield
    finally:
        for module, name, buffer in swapped:
            module._buffers[name] = buffer


def _traced_checks_exist() -> bool:
    """transformers 5's ``torch_compilable_check`` (4.57 has none)."""
    try:
        from transformers.utils import import_utils
    except ImportError:
        return False
    return hasattr(import_utils, "torch_compilable_check")
