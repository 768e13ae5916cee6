"""Metrics of one run, computed in one place from the plan and the timeline, for both executors."""

from __future__ import annotations

import math

import numpy as np

from artifact.core.plan import Plan
from artifact.core.timeline import Timeline


def count_metrics(plan: Plan) -> dict:
    """What the plan decided: the same for the simulator and the engine."""
    n_load = plan.num_loads
    prefetch = plan.load_prefetch
    used_loads = np.zeros(n_load, bool)
    ul = plan.use_load[plan.use_load >= 0]
    used_loads[ul] = True
    hits = int(plan.use_hit.sum())
    unique_requests = int(plan.use_gid.shape[0])
    return {
        "strategy": plan.strategy, "protocol": plan.protocol, "model": plan.model.name, "batch": plan.batch,
        "cache_experts": plan.cache_experts, "steps": plan.steps, "layers": plan.layers,
        "requests": int(plan.requests), "unique_requests": unique_requests, "hits": hits,
        "demand_loads": int((~prefetch).sum()), "loads": n_load, "bytes_h2d": int(n_load) * plan.model.expert_bytes,
        "prefetch_issued": int(prefetch.sum()), "prefetch_used": int((prefetch & used_loads).sum()),
        "prefetch_wasted": int((prefetch & ~used_loads).sum()),
        "hit_rate": hits / unique_requests if unique_requests else None,  # None: no requests (strict JSON)
    }


def finite(x) -> float | None:
    """``x`` as a float, or None where it is not a finite number (what was not measured is null, never NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def time_metrics(plan: Plan, tl: Timeline, tokens: int) -> dict:
    """Times of one run; a figure the executor did not measure (a lean engine run's busy times) is None."""
    total = finite(tl.total_ms)
    if total is None:  # a lean engine run records no per-operation events: its wall time is the total
        total = finite(tl.info.get("wall_ms"))
    ready = tl.info.get("comp_ready")
    stall = finite(tl.stall_ms(ready) if ready is not None else tl.info.get("stall_ms"))
    steps = plan.steps

    def per_step(x):
        return None if x is None else (x / steps if steps else 0.0)

    return {
        "executor": tl.executor, "total_ms": total, "latency_ms_per_step": per_step(total),
        "stall_ms": stall, "stall_ms_per_step": per_step(stall),
        "copy_busy_ms": finite(tl.copy_busy_ms), "compute_busy_ms": finite(tl.compute_busy_ms),
        "tokens_per_s": tokens / (total / 1e3) if total else None,  # None: nothing was timed
    }


def run_metrics(plan: Plan, tl: Timeline, tokens: int) -> dict:
    out = count_metrics(plan)
    out.update(time_metrics(plan, tl, tokens))
    return out
