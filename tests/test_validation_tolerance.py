"""The Optimum path's validation uses Optimum's own criterion, ``np.allclose(ref, ort, atol=atol)``
(numpy's rtol 1e-5, per element), not a bare max |diff| <= atol: a tiny mT5's merged decoder
differed by 1.14e-05 on logits of size ~1 against atol 1e-05, which Optimum's check accepts and
ours refused."""
from __future__ import annotations

import numpy as np

from modelexport.exporter.optimum.validation import OPTIMUM_RTOL, FileValidation
from modelexport.runtime.numeric import past_allclose


def test_past_allclose_counts_what_numpy_allclose_refuses():
    rng = np.random.default_rng(0)
    ref = rng.normal(scale=3.0, size=(4, 50)).astype(np.float32)
    for noise in (1e-7, 1e-5, 3e-5, 1e-4):
        got = ref + rng.normal(scale=noise, size=ref.shape).astype(np.float32)
        n = past_allclose(ref, got, 1e-5, OPTIMUM_RTOL)
        assert (n == 0) == np.allclose(ref, got, atol=1e-5), noise
        assert n == int(np.count_nonzero(~np.isclose(ref, got, atol=1e-5)))


def test_a_difference_past_atol_on_large_values_passes_as_in_optimum():
    ref = np.array([2.0, -3.0, 0.5], dtype=np.float32)
    got = ref + np.array([1.4e-5, -1.2e-5, 0.0], dtype=np.float32)  # 1.4e-5 > atol, < atol + 1e-5 * 2
    assert np.allclose(ref, got, atol=1e-5)
    assert past_allclose(ref, got, 1e-5, OPTIMUM_RTOL) == 0
    got[2] += 2e-5  # past 1e-5 + 1e-5 * 0.5 on the small value
    assert not np.allclose(ref, got, atol=1e-5)
    assert past_allclose(ref, got, 1e-5, OPTIMUM_RTOL) == 1


def test_non_finite_values_are_left_to_output_difference():
    ref = np.array([1.0, np.nan, 2.0], dtype=np.float32)
    got = np.array([1.0, 5.0, np.inf], dtype=np.float32)
    assert past_allclose(ref, got, 1e-5, OPTIMUM_RTOL) == 0  # said apart, as NaN/Inf, by the caller


def test_passed_follows_the_outputs_past_tolerance():
    within = FileValidation("decoder_model_merged.onnx", 1e-5, 1.14e-5, {"logits": 1.14e-5})
    assert within.passed and within.as_dict()["rtol"] == OPTIMUM_RTOL
    past = FileValidation("decoder_model_merged.onnx", 1e-5, 1.14e-5, {"logits": 1.14e-5},
                          above_tolerance=["logits: 1.14e-05"])
    assert not past.passed
