"""Workloads: continuous batching over one pool, prefill steps."""

from __future__ import annotations

import numpy as np

from artifact.traces.workload import decode_workload, prefill_workload
from tests.helpers import random_trace, tiny_model


def test_decode_continuous_batching():
    m = tiny_model()
    tr = random_trace(m, [3, 5, 2, 4])
    w = decode_workload(tr, 2, model=m)
    # slot 0: seq 0 (steps 0-2), seq 2 (steps 3-4), seq 3 (steps 5-8); slot 1: seq 1 (steps 0-4)
    np.testing.assert_array_equal(w.step_offsets, [0, 2, 4, 6, 8, 10, 11, 12, 13, 14])
    np.testing.assert_array_equal(w.seq, [0, 1, 0, 1, 0, 1, 2, 1, 2, 1, 3, 3, 3, 3])
    np.testing.assert_array_equal(w.pos, [0, 0, 1, 1, 2, 2, 0, 3, 1, 4, 0, 1, 2, 3])
    np.testing.assert_array_equal(w.item, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0])
    # every token decoded exactly once, with its own routing
    idx = tr.seq_offsets[w.seq] + w.pos
    np.testing.assert_array_equal(w.experts, tr.experts[idx])
    np.testing.assert_array_equal(w.lookahead, tr.lookahead[idx])


def test_same_pool_every_batch_size():
    m = tiny_model()
    tr = random_trace(m, [4, 3, 6, 2, 5, 3, 4])
    seen = []
    for b in (1, 2, 4, 8):
        w = decode_workload(tr, b, model=m)
        assert w.num_tokens == tr.num_tokens  # drained: the same tokens at every batch size
        assert w.tokens_per_step.max() <= b
        seen.append(sorted(zip(w.seq.tolist(), w.pos.tolist())))
    assert all(s == seen[0] for s in seen)


def test_steps_limit_is_prefix():
    m = tiny_model()
    tr = random_trace(m, [4, 3, 6, 2, 5])
    full = decode_workload(tr, 2, model=m)
    cut = decode_workload(tr, 2, steps=3, model=m)
    assert cut.steps == 3
    n = cut.num_tokens
    np.testing.assert_array_equal(cut.experts, full.experts[:n])
    head = full.head(3)
    np.testing.assert_array_equal(head.experts, cut.experts)


def test_prefill_steps():
    m = tiny_model()
    tr = random_trace(m, [4, 3, 6, 2, 5])
    w = prefill_workload(tr, 2, model=m)
    assert w.kind == "prefill" and w.steps == 3
    np.testing.assert_array_equal(w.tokens_per_step, [7, 8, 5])
    np.testing.assert_array_equal(w.experts, tr.experts)
