"""Decisions that no platform can change: every reduction a strategy's decisions rest on goes through
artifact.policies.numeric; replacing those functions with versions that sum and multiply in another order (as another
BLAS, SIMD width or numpy version might) leaves every plan unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from artifact.core.errors import Unrunnable
from artifact.planner import plan, strategies
from artifact.policies import numeric
from tests.helpers import TEST_HW, random_workload, tiny_model

FIELDS = ("load_gid", "load_slot", "load_gate", "load_wait", "load_before", "load_prefetch", "use_gid", "use_slot",
          "use_load", "use_hit")


def _reversed_total(x, axis=None, keepdims=False):
    """Sum as float64 accumulated from the other end, one term at a time."""
    x = np.asarray(x)
    flipped = np.flip(x, axis=axis) if axis is not None else x.reshape(-1)[::-1]
    acc = np.add.accumulate(flipped.astype(np.float64), axis=axis if axis is not None else 0)
    out = np.take(acc, -1, axis=axis if axis is not None else 0)
    if keepdims and axis is not None:
        out = np.expand_dims(out, axis)
    return out.astype(x.dtype) if x.dtype.kind in "iu" else out


def _blocked_matmul(a, b):
    """The contraction split into two halves summed the other way round."""
    k = a.shape[1] // 2
    return a[:, k:] @ b[k:] + a[:, :k] @ b[:k]


def _plans(workloads, cache):
    out = {}
    for wi, w in enumerate(workloads):
        bel = None
        for name in strategies():
            try:
                p = plan(w, name, cache, hardware=TEST_HW, belady=bel)
            except Unrunnable:
                continue
            if name == "belady":
                bel = p
            out[(wi, name)] = p
    return out


@pytest.mark.parametrize("top_k, batch", [(1, 1), (2, 4)])
def test_reordered_reductions_change_no_plan(monkeypatch, top_k, batch):
    m = tiny_model(4, 8, top_k)
    workloads = [random_workload(m, batch, n_seq=10, seed=s, steps=24) for s in (3, 4)]
    cache = 4 * top_k + 3
    before = _plans(workloads, cache)
    monkeypatch.setattr(numeric, "total", _reversed_total)
    monkeypatch.setattr(numeric, "matmul", _blocked_matmul)
    after = _plans(workloads, cache)
    assert before.keys() == after.keys()
    for key, p in before.items():
        for f in FIELDS:
            assert np.array_equal(getattr(p, f), getattr(after[key], f)), (key, f)


def test_numeric_refuses_float_products_and_keys():
    from artifact.core.select import smallest_of
    from artifact.policies.base import top_k_rows

    with pytest.raises(TypeError, match="integer operands only"):
        numeric.matmul(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(TypeError, match="keys must be integers"):
        smallest_of(np.array([0.5, 0.25]), np.array([0, 1]), 1)
    with pytest.raises(TypeError, match="fixed point"):
        top_k_rows(np.array([[0.5, 0.25]]), 1)
    assert numeric.fixed(np.array([0.5])).tolist() == [1 << (numeric.FIXED_BITS - 1)]


@pytest.mark.parametrize("top", [1 << 20, 1 << 26, 1 << 27])
def test_numeric_matmul_is_the_exact_integer_product(top):
    """Below the 2**53 bound the product goes through float64 BLAS; above it, numpy's integer product. Both equal
    an independent reference: Python's unbounded integers, summed one term at a time."""
    rng = np.random.default_rng(top)
    a = rng.integers(-top, top, (5, 128), dtype=np.int64)
    b = rng.integers(-top, top, (128, 7), dtype=np.int64)
    ref = [[sum(int(a[i, k]) * int(b[k, j]) for k in range(128)) for j in range(7)] for i in range(5)]
    got = numeric.matmul(a, b)
    assert got.dtype == np.int64 and got.tolist() == ref


def test_top_k_rows_is_the_stable_sorts_first_k():
    """The partition path of top_k_rows against an independent reference: a stable descending sort's first k."""
    from artifact.policies.base import top_k_rows

    rng = np.random.default_rng(7)
    for _ in range(200):
        T, E = int(rng.integers(1, 20)), int(rng.integers(5, 200))
        k = int(rng.integers(1, min(9, E)))  # k >= E: every index (the set, not an order)
        s = rng.integers(-3 if rng.random() < 0.5 else 0, int(rng.choice([3, 1 << 20])), (T, E))
        assert np.array_equal(top_k_rows(s, k), np.argsort(-s, axis=1, kind="stable")[:, :k]), (T, E, k)


def test_smallest_lex_is_a_full_lexsorts_first_n():
    """The partitioned path of smallest_lex against an independent reference: one full lexsort."""
    from artifact.core.select import smallest_lex

    rng = np.random.default_rng(11)
    for _ in range(500):
        m = int(rng.integers(1, 300))
        n = int(rng.integers(0, m + 2))
        cand = rng.permutation(1000)[:m]
        keys = [rng.integers(0, int(rng.choice([2, 5, 1000])), m) for _ in range(int(rng.integers(1, 4)))]
        ref = cand[np.lexsort((cand,) + tuple(reversed(keys)))[:n]] if n > 0 else cand[:0]
        assert np.array_equal(smallest_lex(cand, n, *keys), ref)
