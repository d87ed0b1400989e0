"""Validation through near ties of a top-k (modelexport.runtime.topk_ties): ONNX Runtime's choice
is replayed in PyTorch only where it is an equally valid top-k, and an export whose outputs differ
only by such a choice passes with the reason in its metadata."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modelexport.runtime.topk_ties import topk_choices_replayed

SCORES = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0]])


def _first_two(scores: torch.Tensor):
    return torch.topk(scores, 2, dim=1)


def test_a_choice_among_tied_candidates_is_replayed():
    own = _first_two(SCORES).indices
    other = {1, 2, 3} - {int(own[0, 1])}
    choice = np.array([[0, min(other)]])
    with topk_choices_replayed([choice], atol=1e-4, rtol=1e-4) as record:
        got = _first_two(SCORES)
    assert got.indices.tolist() == choice.tolist()
    assert got.values.tolist() == [[3.0, 1.0]]
    assert (record.calls, record.same, record.replayed, record.differing, record.refused) == (1, 0, 1, 1, [])
    assert record.complete


def test_a_choice_that_is_not_a_tie_is_refused_and_pytorch_keeps_its_own():
    own = _first_two(SCORES)
    for choice, why in ((np.array([[0, 4]]), "not a near tie"), (np.array([[0, 0]]), "not a near tie"),
                        (np.array([[0, 1, 2]]), "shape")):
        with topk_choices_replayed([choice], atol=1e-4, rtol=1e-4) as record:
            got = _first_two(SCORES)
        assert torch.equal(got.indices, own.indices) and torch.equal(got.values, own.values)
        assert len(record.refused) == 1 and why in record.refused[0]
        assert not record.complete


def test_the_same_choice_and_a_count_that_does_not_match_the_file():
    own = _first_two(SCORES).indices.numpy()
    with topk_choices_replayed([own], atol=1e-4, rtol=1e-4) as record:
        SCORES.topk(2, dim=1)  # the method form is replayed too
    assert (record.calls, record.same, record.replayed) == (1, 1, 0) and record.complete
    with topk_choices_replayed([own], atol=1e-4, rtol=1e-4) as record:
        _first_two(SCORES)
        _first_two(SCORES)  # two calls, one TopK node: which call is which node is unknown
    assert record.calls == 2 and not record.complete


def test_rt_detr_whose_anchors_tie_exports_validated_with_the_reason(tmp_path):
    """RT-DETR's anchors outside the image all get the same score (their features are zeros): on a
    tiny random model hundreds tie at the top-k's boundary, ONNX Runtime picks others than
    PyTorch, and every box differs. The export passes validation with that choice replayed, says
    so, and the numbers in the metadata show both comparisons."""
    import modelexport
    import onnxruntime as ort
    from modelexport.testing.breadth import build_tiny

    model = build_tiny("rt_detr", "RTDetrForObjectDetection", "object-detection", tmp_path / "model")
    result = modelexport.export(tmp_path / "model", tmp_path / "out")
    validation = json.loads((tmp_path / "out" / "modelexport_metadata.json").read_text())["files"]["model.onnx"][
        "validation"]
    assert validation["passed"] is True
    ties = validation["topk_ties"]
    assert ties and all(t["near_tie_choices"] >= 1 and t["elements_chosen_differently"] >= 1 for t in ties)
    # before the replay, boxes differ far beyond the tolerance; after it, everything is within it
    assert max(max(t["before_replay"].values()) for t in ties) > 0.01
    assert validation["max_abs_diff"] <= 1e-3
    assert result.files[0].validation["topk_ties"] == ties
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = torch.rand(1, 3, 224, 224)
    logits = session.run(["logits"], {"pixel_values": pixels.numpy()})[0]
    with torch.no_grad():
        assert logits.shape == tuple(model(pixel_values=pixels).logits.shape)


@pytest.mark.parametrize("k", [1, 3])
def test_replay_follows_dim_and_largest_given_by_keyword(k):
    scores = torch.tensor([[0.0, 2.0], [5.0, 2.0], [0.0, 7.0]])  # along dim 0, column 0: 0.0 ties
    own = torch.topk(scores, k, dim=0, largest=False)
    choice = own.indices.clone()
    if k == 1:
        choice[0, 0] = 2 if int(own.indices[0, 0]) == 0 else 0  # the other tied row
    with topk_choices_replayed([choice.numpy()], atol=1e-6, rtol=0.0) as record:
        got = torch.topk(scores, k, dim=0, largest=False)
    assert torch.equal(got.indices, choice) and torch.equal(got.values, scores.gather(0, choice))
    assert record.complete and record.replayed == (1 if k == 1 else 0)
