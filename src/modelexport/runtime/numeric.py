"""Comparing two arrays of outputs the way every check of this project does: finite values by max
absolute difference, NaN/Inf said apart (``max(0.0, nan)`` is ``0.0``: they must never pass as
agreement)."""
from __future__ import annotations

import numpy as np


def output_difference(ref: np.ndarray, got: np.ndarray) -> tuple[float, str]:
    """Max |got - ref| over the values both have finite, and what is wrong with the rest.

    A NaN or Inf in ``got`` where ``ref`` is finite is reported (the second item); one where
    ``ref`` has the same non-finite value is agreement.
    """
    if not ref.size:
        return 0.0, ""
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    finite_ref, finite_got = np.isfinite(ref64), np.isfinite(got64)
    both = finite_ref & finite_got
    diff = float(np.max(np.abs(ref64[both] - got64[both]))) if both.any() else 0.0
    broken = int(np.count_nonzero(finite_ref & ~finite_got))
    mismatched = int(np.count_nonzero(~finite_ref & ~(np.isnan(ref64) & np.isnan(got64)) & (ref64 != got64)))
    problems = []
    if broken:
        problems.append(f"{broken} NaN/Inf values where PyTorch is finite")
    if mismatched:
        problems.append(f"{mismatched} non-finite PyTorch values not matched")
    return diff, "; ".join(problems)


def past_allclose(ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> int:
    """How many finite elements are past ``atol + rtol * |ref|``: what ``np.allclose`` checks
    (Optimum's validation criterion), NaN/Inf left to ``output_difference``."""
    if not ref.size:
        return 0
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    both = np.isfinite(ref64) & np.isfinite(got64)
    return int(np.count_nonzero(np.abs(got64[both] - ref64[both]) > atol + rtol * np.abs(ref64[both])))
