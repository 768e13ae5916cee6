"""Workloads: continuous batching over one pool, prefill steps."""

from __future__ import annotations

import numpy as np
import pytest

from artifact.traces.trace import Trace, make_meta
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


# --- phases and top-k ------------------------------------------------------------------------------------------------


def _with_phase(tr, prefill):
    """``tr`` with the first ``prefill[i]`` tokens of sequence ``i`` marked prefill."""
    ph = np.concatenate([[0] * p + [1] * (n - p) for n, p in zip(tr.seq_lengths.tolist(), prefill)]).astype(np.int8)
    return Trace(tr.experts, tr.seq_offsets, tr.meta, tr.gates, tr.lookahead, ph).validate()


def test_decode_takes_decode_tokens_and_prefill_the_prefill_part():
    m = tiny_model()
    tr = _with_phase(random_trace(m, [4, 3, 5]), [2, 3, 1])  # sequence 1 is all prefill
    w = decode_workload(tr, 2, model=m)
    # pool: sequence 0 (decode tokens 2, 3) in slot 0, sequence 2 (decode tokens 1..4, trace tokens 8..11) in slot 1
    np.testing.assert_array_equal(w.seq, [0, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(w.experts, tr.experts[[2, 8, 3, 9, 10, 11]])
    np.testing.assert_array_equal(w.pos[w.seq == 0], [0, 1])  # positions count from the first decode token
    p = prefill_workload(tr, 2, model=m)
    assert p.kind == "prefill" and p.tokens_per_step.tolist() == [5, 1]
    np.testing.assert_array_equal(p.experts, tr.experts[[0, 1, 4, 5, 6, 7]])
    assert decode_workload(tr, 2, model=m, all_tokens=True).num_tokens == tr.num_tokens


def test_trace_without_phase_is_all_tokens():
    m = tiny_model()
    tr = random_trace(m, [3, 2])
    assert decode_workload(tr, 1, model=m).num_tokens == 5 and prefill_workload(tr, 1, model=m).num_tokens == 5


def test_no_decode_tokens_is_a_clear_error():
    m = tiny_model()
    tr = _with_phase(random_trace(m, [3, 2]), [3, 2])
    with pytest.raises(ValueError, match="no decode tokens"):
        decode_workload(tr, 1, model=m)


def test_trace_top_k_below_the_model_is_authoritative():
    m = tiny_model(top_k=4)
    tr = random_trace(tiny_model(top_k=2), [3, 2])  # the trace routes top-2 of a top-4 model
    w = decode_workload(tr, 1, model=m)
    assert w.model.top_k == 2 and w.model.native_top_k == 4 and w.model.config_top_k == 4
    assert w.model.expert_bytes == m.expert_bytes  # the model's expert shape, whatever the trace's engine moved
    with pytest.raises(ValueError, match=r"routes top-4, more than model tiny's top-2: a trace may use fewer"):
        decode_workload(random_trace(m, [2]), 1, model=tiny_model(top_k=2))


def test_preset_with_fewer_experts_per_token():
    tr = Trace(np.zeros((2, 16, 4), np.int16) + np.arange(4, dtype=np.int16), np.array([0, 2], np.int64),
               make_meta("olmoe-1b-7b", 64, "test"))
    w = decode_workload(tr, 1)  # model from the trace's meta
    assert w.model.name == "olmoe-1b-7b" and w.model.top_k == 4 and w.model.native_top_k == 8
    unknown = Trace(tr.experts, tr.seq_offsets, make_meta("someone-elses-moe", 64, "test"))
    with pytest.raises(ValueError, match=r"the trace's model 'someone-elses-moe' \(test\) is no preset"):
        decode_workload(unknown, 1)
