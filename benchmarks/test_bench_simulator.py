"""How long planning and simulating takes, per strategy, batch size and cache size (CPU; a benchmark measures,
nothing here asserts a time).

Every case plans one switch-base-128 decode workload (the grids' synthetic pool, seed 0) with one strategy and
simulates the plan on the H200 profile; the workload and its request tables are built once by the fixtures, outside
the timed code. Each case records the plan's counts and the simulated latency in ``extra_info``, so a change in
decisions is visible beside a change in time (``--benchmark-compare`` lists count changes after the table).
"""

from __future__ import annotations

import pytest

from artifact.core.metrics import time_metrics
from artifact.experiments.grids import BATCHES, DEFAULT_CACHE, SIM_STEPS, sim_grid
from artifact.experiments.runs import simulate_one
from artifact.planner import plan as _plan
from artifact.planner import strategies
from artifact.runtime.simulator import simulate

STEPS = 64  # decode steps per case: the quick grid's; enough to reach steady state, small enough for CI
# Rounds per case: the compare takes the minimum over rounds (noise only adds time), so more rounds of the cheap
# cases buy a steadier minimum; the grid point (~15 s a round on 2 cores) keeps 3.
ROUNDS = 5
GRID_ROUNDS = 3
CACHES = (64, 128, 256, 512)  # the four cache sizes of E4 (grids.CACHES)
CACHE_STRATEGIES = ("on_demand", "mixtral_offloading", "intelligent_dedup", "belady")  # eviction differs most


def _plan_and_simulate(prepared, strategy: str, cache: int, hw):
    w, req = prepared.workload, prepared.requests
    # The oracle alone plans every candidate it chooses from (no plans given): its standalone cost.
    plan = _plan(w, strategy, cache, "batched", 0, hw, req)
    return plan, simulate(plan, w, hw)


def _bench_one(benchmark, record_counts, prepared, strategy: str, cache: int, hw) -> None:
    plan, tl = benchmark.pedantic(_plan_and_simulate, args=(prepared, strategy, cache, hw), rounds=ROUNDS,
                                  iterations=1, warmup_rounds=0)
    t = time_metrics(plan, tl, prepared.workload.num_tokens)
    record_counts(benchmark, plan, latency_ms_per_step=t["latency_ms_per_step"],
                  stall_ms_per_step=t["stall_ms_per_step"], tokens=prepared.workload.num_tokens,
                  hardware=hw.name)


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("strategy", list(strategies()))
def test_plan_simulate(benchmark, record_counts, switch_workloads, hardware, strategy, batch):
    """Every registered strategy x batch 1..64, the default cache (128 slots), 64 steps."""
    benchmark.group = f"plan+simulate, switch-base-128, B={batch:02d}, C={DEFAULT_CACHE}, {STEPS} steps"
    _bench_one(benchmark, record_counts, switch_workloads.get(batch, STEPS), strategy, DEFAULT_CACHE, hardware)


@pytest.mark.parametrize("cache", CACHES, ids=lambda c: f"C{c}")
@pytest.mark.parametrize("strategy", CACHE_STRATEGIES)
def test_plan_simulate_cache(benchmark, record_counts, switch_workloads, hardware, strategy, cache):
    """A few strategies x the four cache sizes, batch 8."""
    benchmark.group = f"plan+simulate by cache size, switch-base-128, B=8, {STEPS} steps"
    _bench_one(benchmark, record_counts, switch_workloads.get(8, STEPS), strategy, cache, hardware)


def test_simulator_throughput(benchmark, record_counts, switch_workloads, hardware):
    """The simulator alone on a plan made beforehand: layer-steps (and plan operations) per second.

    prefetch_all at batch 64 over the grid's 256 steps: the most LOADs of any strategy, so the link's walk is the
    longest the grid asks for.
    """
    p = switch_workloads.get(64, SIM_STEPS)
    plan = _plan(p.workload, "prefetch_all", DEFAULT_CACHE, "batched", 0, hardware, p.requests)
    tl = benchmark.pedantic(simulate, args=(plan, p.workload, hardware), rounds=10, iterations=1, warmup_rounds=1)
    ops = plan.num_loads + plan.num_computes + plan.layer_steps
    record_counts(benchmark, plan, simulated_ms=tl.total_ms, operations=ops)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["layer_steps_per_s"] = plan.layer_steps / stats.stats.median
        benchmark.extra_info["operations_per_s"] = ops / stats.stats.median


def test_e1_grid_point(benchmark, switch_workloads, hardware):
    """One point of the E1 grid as the grid runs it: every strategy at batch 64, cache 128, 256 steps, seed 0, in
    the grid's order (the oracle after belady, reusing its plan), each planned, simulated and turned
    into its metrics row. The workload and its request tables are built beforehand (the grid builds them once per
    task too)."""
    points = [p for p in sim_grid().points if p.batch == 64 and p.cache_experts == DEFAULT_CACHE
              and p.protocol == "batched" and p.workload.seed == 0]
    names = [p.strategy for p in points]
    assert names.index("belady") < names.index("oracle") and len(points) == len(strategies())
    prepared = switch_workloads.get(64, points[0].steps)

    def grid_point() -> dict:
        plans, rows = {}, {}
        for p in points:
            row, plan = simulate_one(prepared.workload, p.strategy, p.cache_experts, p.protocol, p.workload.seed,
                                     hardware, prepared.requests, plans)
            plans[p.strategy] = plan
            rows[p.strategy] = row
        return rows

    rows = benchmark.pedantic(grid_point, rounds=GRID_ROUNDS, iterations=1, warmup_rounds=0)
    info = benchmark.extra_info
    info.update(batch=64, cache_experts=DEFAULT_CACHE, steps=points[0].steps, strategies=len(points),
                layer_steps=int(prepared.workload.steps * prepared.workload.layers),
                oracle_source=rows["oracle"].get("oracle_source", ""))
    info["loads"] = {s: int(r["loads"]) for s, r in rows.items()}
    info["hits"] = {s: int(r["hits"]) for s, r in rows.items()}
    info["latency_ms_per_step"] = {s: float(r["latency_ms_per_step"]) for s, r in rows.items()}
