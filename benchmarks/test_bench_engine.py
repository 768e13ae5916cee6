"""How long the offloading engine takes to run a plan for real (a benchmark measures; nothing here asserts a time).

GPU cases (skipped without CUDA): every registered strategy x batch 1..64 on switch-base-128 (bf16, the default
cache of 128 slots), the engine grid's 32 decode steps per round. The engine is built once per module, sized for
every expert (``gpu_only`` keeps all 1,536 resident): 14.5 GB of pinned host weights and as much device memory.
Plans and workloads are made outside the timed code; each round is one ``OffloadEngine.run`` (issue every
operation, then synchronise the device inside the call), after one untimed warm-up round that also prepares the
plan's index tensors. ``extra_info`` carries the plan's counts, the bytes moved, the per-step time on the engine's
own clock (issue to device sync), the achieved H2D bandwidth and the simulator's figure for the same plan. The
engine runs as the grid runs it (``graph="auto"``: one CUDA graph per plan, captured in the warm-up round and replayed
each round; ``extra_info["engine_mode"]``). GPU cases are timed on the wall clock (they wait on the device), not on
the suite's CPU-time timer.

One CPU case runs the same timing path in CI: the switch routing planned as usual, executed with experts of the
scaled-down ``SWITCH_MINI`` shape (as the ``cpu_engine`` grid does).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import pytest
import torch

from artifact.engine import OffloadEngine
from artifact.experiments.grids import BATCHES, DEFAULT_CACHE, DEFAULT_MODEL, ENGINE_STEPS, SWITCH_MINI
from artifact.models import get_model
from artifact.planner import plan as _plan
from artifact.planner import strategies
from artifact.runtime.simulator import simulate

ROUNDS = 3
CPU_ROUNDS = 20  # the CPU case takes ~20 ms: enough rounds for a steady minimum
CPU_STEPS = 8
CPU_BATCH = 8
CPU_STRATEGY = "intelligent_dedup"

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU engine cases need CUDA")


@pytest.fixture(scope="module")
def cuda_engine():
    if not torch.cuda.is_available():
        pytest.skip("GPU engine cases need CUDA")
    model = get_model(DEFAULT_MODEL)
    eng = OffloadEngine(model, model.total_experts, device="cuda")  # every slot gpu_only needs
    yield eng
    del eng
    torch.cuda.empty_cache()


def _bench_engine(benchmark, record_counts, engine, plan, workload, hw) -> None:
    walls, issues = [], []
    rounds = ROUNDS if engine.cuda else CPU_ROUNDS

    def run_plan():
        # run() issues the plan's operations and synchronises the device before it returns (timeline=False: only
        # the events dependencies need, as a production run would record).
        _, tl = engine.run(plan, workload, repeats=1, warmup=0, timeline=False, graph="auto")
        walls.append(tl.info["wall_ms"])
        issues.append(tl.info["issue_ms"])
        return tl

    if engine.cuda:
        benchmark._timer = time.perf_counter  # the device's time is not this process's CPU time
    tl = benchmark.pedantic(run_plan, rounds=rounds, iterations=1, warmup_rounds=1)
    timed = walls[-rounds:] if len(walls) > rounds else walls  # drop the warm-up round
    wall = statistics.median(timed)
    steps = plan.steps
    bytes_h2d = int(tl.info["bytes_copied"])  # counted by the engine's issue loop
    sim_note = None
    try:
        sim_ms = simulate(plan, workload, hw).total_ms / steps
    except KeyError as exc:  # the profile has no timings for this expert shape (the scaled-down CPU case)
        sim_ms, sim_note = None, str(exc.args[0]) if exc.args else str(exc)
    # Strict JSON in the stored run: what was not measured is None, with the reason beside it.
    more = {
        "engine_wall_ms_per_step": wall / steps,
        "engine_issue_ms_per_step": statistics.median(issues[-len(timed):]) / steps,
        "bytes_h2d": bytes_h2d,
        "bytes_per_expert": int(tl.info["bytes_per_expert"]),
        "h2d_GB_per_s": bytes_h2d / (wall / 1e3) / 1e9 if wall > 0 else None,
        "tokens_per_s": workload.step_offsets[steps] / (wall / 1e3) if wall > 0 else None,
        "sim_latency_ms_per_step": sim_ms,
        "sim_note": sim_note,
        "peak_device_bytes": int(tl.info["peak_device_bytes"]),
        "ffn_path": tl.info["ffn_path"],
        "engine_mode": tl.info["engine_mode"],
        "device": tl.info["device"],
        "dtype": tl.info["dtype"],
    }
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        more["ms_per_step"] = stats.stats.median * 1e3 / steps
    record_counts(benchmark, plan, **more)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("strategy", list(strategies()))
def test_engine_gpu(benchmark, record_counts, cuda_engine, switch_workloads, hardware, strategy, batch):
    benchmark.group = f"engine (GPU), switch-base-128, B={batch:02d}, C={DEFAULT_CACHE}, {ENGINE_STEPS} steps"
    p = switch_workloads.get(batch, ENGINE_STEPS)
    plan = _plan(p.workload, strategy, DEFAULT_CACHE, "batched", 0, hardware, p.requests)
    _bench_engine(benchmark, record_counts, cuda_engine, plan, p.workload, hardware)


@pytest.fixture(scope="module")
def cpu_engine():
    return OffloadEngine(SWITCH_MINI, SWITCH_MINI.total_experts, device="cpu")


def test_engine_cpu_mini(benchmark, record_counts, cpu_engine, switch_workloads, hardware):
    """The engine's timing path on the CPU: switch routing, scaled-down experts (d_model 64, d_ff 256, fp32)."""
    benchmark.group = f"engine (CPU, {SWITCH_MINI.name} experts), B={CPU_BATCH}, {CPU_STEPS} steps"
    switch = switch_workloads.get(CPU_BATCH, CPU_STEPS)
    planned = _plan(switch.workload, CPU_STRATEGY, DEFAULT_CACHE, "batched", 0, hardware, switch.requests)
    mini = switch_workloads.get(CPU_BATCH, CPU_STEPS, model=SWITCH_MINI).workload
    plan = replace(planned, model=SWITCH_MINI)
    _bench_engine(benchmark, record_counts, cpu_engine, plan, mini, hardware)
