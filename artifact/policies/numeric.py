"""The reductions strategies may use, and the rule that keeps their decisions platform-exact.

Every comparison a strategy makes is on keys no platform can change: integers (counts, layer-steps), or values
built from correctly rounded IEEE operations on integers (one division, one square root) and then rounded to fixed
point. A sum or a product of many non-integer floats depends on summation order (BLAS, SIMD width, numpy's pairwise
sum), so strategies do not compare those: they sum integers (exact in any order, below 2**53) and go through the two
functions below, which the platform test (tests/test_platform.py) replaces with order-perturbed versions to check
that no plan changes.
"""

from __future__ import annotations

import numpy as np

FIXED_BITS = 20  # fixed-point resolution of quantised probabilities: 2**-20


def total(x: np.ndarray, axis=None, keepdims: bool = False) -> np.ndarray:
    """Sum along ``axis`` (integers: exact in any order; the platform test perturbs the order)."""
    return np.sum(x, axis=axis, keepdims=keepdims)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix product of integer matrices (exact in any order below 2**63; the platform test perturbs it)."""
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        raise TypeError("numeric.matmul: integer operands only (a float product's bits depend on summation order)")
    return a @ b


def fixed(p: np.ndarray, bits: int = FIXED_BITS) -> np.ndarray:
    """``p`` rounded to fixed point, as int64 (compare these, not the floats)."""
    return np.rint(np.asarray(p, np.float64) * float(1 << bits)).astype(np.int64)
