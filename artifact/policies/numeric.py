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


EXACT_FLOAT = 2 ** 53  # every integer below this is a float64, and so is every sum of such integers below it


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix product of integer matrices, exact (the platform test perturbs its summation order).

    When no partial sum can reach 2**53 (``max|a| * max|b| * inner < 2**53``), every product and every partial sum
    in any order is an integer a float64 holds exactly, so the BLAS float64 product is exact whatever its order or
    blocking, and it is returned as int64; otherwise numpy's integer product (exact below 2**63)."""
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        raise TypeError("numeric.matmul: integer operands only (a float product's bits depend on summation order)")
    if a.size and b.size:
        bound = int(np.abs(a).max()) * int(np.abs(b).max()) * a.shape[-1]
        if bound < EXACT_FLOAT:
            return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return a @ b


def fixed(p: np.ndarray, bits: int = FIXED_BITS) -> np.ndarray:
    """``p`` rounded to fixed point, as int64 (compare these, not the floats)."""
    return np.rint(np.asarray(p, np.float64) * float(1 << bits)).astype(np.int64)
