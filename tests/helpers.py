"""Small workloads and plan checks shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from artifact.core.plan import Plan
from artifact.core.workload import Workload
from artifact.models import ModelSpec
from artifact.runtime.hardware import load_profile
from artifact.traces.synthetic import generate
from artifact.traces.trace import Trace
from artifact.traces.workload import decode_workload

DATA = Path(__file__).parent / "data"
# The H200 figures of FACTS.md plus FFN timings for the tests' tiny model (a JSON fixture with its provenance).
TEST_HW = load_profile(str(DATA / "h200-test.json"))


def tiny_model(layers=3, experts=8, top_k=1, activation="relu", dtype="float32", d_model=16, d_ff=32) -> ModelSpec:
    return ModelSpec("tiny", layers, experts, top_k, d_model, d_ff, activation, dtype)


def random_trace(model: ModelSpec, lengths, seed=0, skew=1.0, la_acc=0.7) -> Trace:
    """The synthetic generator with given sequence lengths: Zipf(``skew``) routing per layer, its default temporal
    and cross-layer coupling, a lookahead holding each true expert with probability ``la_acc``, gates."""
    lengths = [int(n) for n in lengths]
    return generate(model, len(lengths), max(1, round(sum(lengths) / len(lengths))), seed, lengths=lengths,
                    popularity_exponent=(skew,), lookahead_accuracy=la_acc, permutation_seed=None)


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
