"""The CSV schema of ``results/raw/*.csv``: one row per run. The report reads only these files, and beside them
``raw/timelines.json`` (one decode step of a few runs: see ``runner.step_timeline``) and ``raw/gpu_checks.json``."""

from __future__ import annotations

# Configuration of the run.
CONFIG_FIELDS = [
    "experiment",  # E1-E4 share "sim"; E5 "engine"; E7 "models"; "cpu_engine" = the small engine check without CUDA
    "point_id",  # unique key of the run within its file (resume skips existing ids)
    "model",  # model preset
    "workload",  # e.g. synthetic:switch-base-128:256x128:seed0, or trace:PATH
    "trace_seed",  # seed of the synthetic pool (the "seed" of the grid)
    "batch",
    "cache_experts",  # GPU expert slots (gpu_only: every expert)
    "cache_fraction",  # cache_experts / all routed experts
    "protocol",  # batched | per_item
    "strategy",
    "variant",  # ablation rows: the component switched off (e.g. "no_adaptive"); empty for the strategy as registered
    "steps",  # decode steps
    "layers",  # MoE layers per step
    "executor",  # simulator | engine
    "hardware",  # hardware profile the simulator used (engine rows: the profile of the sim_* columns)
    "repeats",  # timed repeats (simulator: 1, deterministic)
]
# Decisions: identical for the simulator and the engine on the same plan.
COUNT_FIELDS = [
    "requests", "unique_requests", "hits", "demand_loads", "loads", "bytes_h2d", "prefetch_issued", "prefetch_used",
    "prefetch_wasted", "hit_rate",
]
# Engine rows: the simulator's decisions for the same configuration (planned again by the runner), beside the
# engine's above: the report checks they are the same. Empty in simulator rows.
SIM_COUNT_FIELDS = [
    "sim_requests", "sim_unique_requests", "sim_hits", "sim_demand_loads", "sim_loads", "sim_prefetch_issued",
]
# Times (ms). Engine rows: median over repeats, with min and max beside it.
TIME_FIELDS = [
    "latency_ms_per_step", "latency_ms_per_step_min", "latency_ms_per_step_max", "stall_ms_per_step",
    "copy_busy_ms", "compute_busy_ms", "tokens_per_s",
    "sim_latency_ms_per_step",  # engine rows: the simulator's figure for the same plan
    "peak_device_bytes",  # engine rows
    "engine_mode",  # engine rows: graph (the plan captured once as a CUDA graph, replayed per repeat) | eager
    "oracle_source",  # oracle rows: which construction was fastest
    "note",  # why a run has no numbers (a configuration that cannot run), else empty
]
# Environment id.
ENV_FIELDS = ["gpu", "driver", "torch", "cuda", "package_version", "git_commit"]

FIELDS = CONFIG_FIELDS + COUNT_FIELDS + SIM_COUNT_FIELDS + TIME_FIELDS + ENV_FIELDS
