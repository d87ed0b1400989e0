"""Validation through near ties of a top-k choice.

ONNX Runtime and PyTorch compute the same scores to float precision, yet where several candidates'
scores are equal within that precision (RT-DETR's anchors outside the image all score the same:
their features are zeros), each runtime picks a different, equally valid top-k subset and every
output downstream of the choice differs. Comparing outputs alone cannot tell that apart from a
wrong export.

The check here replays ONNX Runtime's choice in PyTorch: the i-th ``torch.topk`` call of the
forward takes the indices the i-th ``TopK`` node of the file produced, but only where those indices
are an equally valid top-k of PyTorch's own input (same shape, no index twice, and the values they
select, sorted, within the validation's tolerance of PyTorch's own top-k values rank by rank).
Everything else PyTorch computes itself. If the outputs then agree, the file computes the model's
function and the difference was the tie; validation says so (``topk_ties`` in the report) instead
of passing silently or failing.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np


def topk_index_outputs(onnx_path: Path) -> list[str]:
    """The indices output of each ``TopK`` node of the main graph, in graph order (the order the
    trace met the ``torch.topk`` calls)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.output[1] for n in model.graph.node
            if n.op_type == "TopK" and n.domain in ("", "ai.onnx") and len(n.output) > 1 and n.output[1]]


@dataclass
class TopkReplay:
    """What the replay did, per ``torch.topk`` call of one forward."""
    choices: int  # TopK nodes in the file
    calls: int = 0
    same: int = 0  # ONNX Runtime chose as PyTorch did
    replayed: int = 0  # a different, equally valid choice, used
    refused: list[str] = field(default_factory=list)  # a different choice that is not a near tie
    differing: int = 0  # selected elements not in PyTorch's own choice, over the replayed calls

    @property
    def complete(self) -> bool:
        """Every call matched a TopK node and every different choice was a near tie."""
        return self.calls == self.choices and not self.refused

    def as_dict(self) -> dict:
        return {"topk_nodes": self.choices, "topk_calls": self.calls, "same_choice": self.same,
                "near_tie_choices": self.replayed, "elements_chosen_differently": self.differing}


@contextlib.contextmanager
def topk_choices_replayed(choices: list[np.ndarray], atol: float, rtol: float) -> Iterator[TopkReplay]:
    """Inside the block, PyTorch's ``topk`` calls take ONNX Runtime's ``choices`` (one index array
    per TopK node, in graph order) where they are a near tie of PyTorch's own (see the module)."""
    import torch
    from torch.overrides import TorchFunctionMode

    record = TopkReplay(len(choices))

    class Replay(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            result = func(*args, **kwargs)
            if func not in (torch.topk, torch.Tensor.topk):
                return result
            index = record.calls
            record.calls += 1
            if index >= len(choices):
                return result
            x = args[0]
            dim = _argument(args, kwargs, 2, "dim", -1)
            largest = _argument(args, kwargs, 3, "largest", True)
            own_values, own = result
            chosen = torch.from_numpy(np.asarray(choices[index])).to(torch.int64)
            if tuple(chosen.shape) != tuple(own.shape):
                record.refused.append(f"call {index}: shape {list(chosen.shape)} vs PyTorch {list(own.shape)}")
                return result
            if torch.equal(chosen, own):
                record.same += 1
                return result
            picked = x.gather(dim, chosen)
            ordered = chosen.sort(dim).values
            k = ordered.shape[dim]
            twice = k > 1 and bool((ordered.narrow(dim, 1, k - 1) == ordered.narrow(dim, 0, k - 1)).any())
            gap = float((picked.sort(dim, descending=largest).values
                         - own_values.sort(dim, descending=largest).values).abs().max()) if k else 0.0
            scale = float(x.abs().max()) if x.numel() else 0.0
            if twice or not gap <= atol + rtol * scale:
                record.refused.append(f"call {index}: ONNX Runtime's choice is not a near tie "
                                      f"(values differ by {gap:.3g})")
                return result
            record.replayed += 1
            # per slice, the elements ONNX Runtime chose that PyTorch did not
            mine = torch.zeros(x.shape, dtype=torch.bool).scatter(dim, own, True)
            record.differing += int((~mine.gather(dim, chosen)).sum())
            return torch.return_types.topk((picked, chosen))

    with Replay():
        yield record


def _argument(args: tuple, kwargs: dict, position: int, name: str, default):
    """``torch.topk(input, k, dim=-1, largest=True, sorted=True)``'s argument, however it was passed."""
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def replayed_run(onnx_path: Path, output_names: list[str], feed: dict, forward, atol: float, rtol: float,
                 optimization: str = "basic"):
    """``(onnx_runtime_outputs, pytorch_outputs, record)`` on ``feed``: the file's ``output_names``
    with its TopK choices, and ``forward()`` (PyTorch, no grad) run with those choices replayed;
    ``None`` when the file has no TopK node, so there is no tie to explain."""
    import torch

    from modelexport.runtime.intermediates import session_exposing

    index = topk_index_outputs(onnx_path)
    if not index:
        return None
    with session_exposing(onnx_path, index, optimization) as session:
        values = session.run(list(output_names) + index, feed)
    got, choices = values[:len(output_names)], values[len(output_names):]
    with torch.no_grad(), topk_choices_replayed(choices, atol, rtol) as record:
        reference = forward()
    return got, reference, record
