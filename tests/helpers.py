"""Small workloads and plan checks shared by the tests."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from artifact.models import ModelSpec
from artifact.runtime.hardware import H200
from artifact.runtime.plan import Plan
from artifact.traces.trace import Trace, make_meta
from artifact.traces.workload import Workload, decode_workload

# The H200 profile plus FFN timings for the tests' tiny model (launch-bound like Switch's).
TEST_HW = replace(H200, name="h200-test", ffn_tables=dict(H200.ffn_tables, tiny=((1, 0.1), (4096, 0.1))))


def tiny_model(layers=3, experts=8, top_k=1, activation="relu", dtype="float32", d_model=16, d_ff=32) -> ModelSpec:
    return ModelSpec("tiny", layers, experts, top_k, d_model, d_ff, activation, dtype)


def random_trace(model: ModelSpec, lengths, seed=0, skew=1.0, la_acc=0.7) -> Trace:
    """Zipf-skewed routing per layer, a lookahead right with probability ``la_acc``, gates."""
    rng = np.random.default_rng(seed)
    T = int(sum(lengths))
    L, E, K = model.moe_layers, model.experts, model.top_k
    ex = np.empty((T, L, K), np.int16)
    for layer in range(L):
        w = 1.0 / np.arange(1, E + 1) ** skew
        w = w[rng.permutation(E)]
        gumbel = np.log(w)[None, :] - np.log(-np.log(rng.random((T, E))))
        ex[:, layer, :] = np.argsort(-gumbel, axis=1)[:, :K]
    la = ex.copy()
    wrong = rng.random(la.shape) > la_acc
    la = np.where(wrong, (la + rng.integers(1, E, la.shape)) % E, la).astype(np.int16)
    for t in range(T):  # keep each token's predicted top-k distinct
        for layer in range(L):
            if len(set(la[t, layer].tolist())) < K:
                la[t, layer] = ex[t, layer]
    la[:, 0] = -1
    gates = np.full((T, L, K), 1.0 / K, np.float16)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Trace(ex, off, make_meta(model.name, E, "test"), gates, la).validate()


def random_workload(model: ModelSpec, batch: int, n_seq=6, min_len=2, max_len=6, seed=0, steps=None) -> Workload:
    rng = np.random.default_rng(seed + 1000)
    lengths = rng.integers(min_len, max_len + 1, n_seq)
    return decode_workload(random_trace(model, lengths, seed), batch, steps, model=model)


def replay_check(plan: Plan) -> None:
    """Replay a plan's host issue order; assert every COMPUTE reads what it thinks it reads and no LOAD overwrites a
    slot before the last COMPUTE that read its previous content."""
    C = plan.cache_experts
    content = np.full(C, -1, np.int64)
    content_load = np.full(C, -1, np.int64)
    last_reader = np.full(C, -1, np.int64)
    if plan.resident_at_start.size:
        content[: plan.resident_at_start.size] = plan.resident_at_start
    li = 0
    N = plan.num_loads
    for c in range(plan.num_computes + 1):
        while li < N and plan.load_before[li] <= c:
            s = plan.load_slot[li]
            assert plan.load_wait[li] == last_reader[s], (
                f"load {li} into slot {s} waits on compute {plan.load_wait[li]}, last reader is {last_reader[s]}")
            assert plan.load_wait[li] < c or plan.load_wait[li] == -1
            content[s] = plan.load_gid[li]
            content_load[s] = li
            li += 1
        if c == plan.num_computes:
            break
        u = plan.uses(c)
        slots = plan.use_slot[u]
        assert np.unique(slots).size == slots.size, f"compute {c} reads one slot twice"
        assert np.unique(plan.use_gid[u]).size == slots.size, f"compute {c} lists an expert twice"
        np.testing.assert_array_equal(content[slots], plan.use_gid[u], err_msg=f"compute {c} reads wrong experts")
        np.testing.assert_array_equal(content_load[slots], plan.use_load[u], err_msg=f"compute {c} load ids")
        last_reader[slots] = c
    assert li == N
    # one slot per expert at a time is implied by content being one value per slot; an expert in two slots at once:
    resident = content[content >= 0]
    assert np.unique(resident).size == resident.size or plan.resident_at_start.size
