"""Plan a workload with any named strategy or bound: the one entry point the CLI, the grids, the engine checks,
the tests and the benchmarks use.

``STRATEGIES`` here is every name a user can ask for, in table order: the online strategies of
:mod:`artifact.policies` (one module each, registered by themselves) and the bounds of :mod:`artifact.bounds`.
"""

from __future__ import annotations

import artifact.policies  # noqa: F401  (registers every online strategy)
from artifact.bounds import BOUNDS
from artifact.core.plan import Plan
from artifact.core.requests import Requests, build_requests
from artifact.core.workload import Workload
from artifact.policies.registry import STRATEGIES as ONLINE
from artifact.policies.registry import StrategyInfo
from artifact.runtime.scheduler import schedule


def strategies() -> dict[str, StrategyInfo]:
    """Every plannable name -> its registry entry, in table order (read at call time: a strategy registered after
    import is included)."""
    merged = {**ONLINE, **BOUNDS}
    return dict(sorted(merged.items(), key=lambda kv: (kv[1].order, kv[0])))


def get_strategy(name: str) -> StrategyInfo:
    table = strategies()
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; strategies: {', '.join(table)}") from None


def plan(workload: Workload, strategy: str, cache_experts: int, protocol: str = "batched", seed: int = 0,
         hardware=None, requests: Requests | None = None, belady: Plan | None = None, **params) -> Plan:
    """Plan ``workload`` under ``strategy`` with ``cache_experts`` device slots on ``hardware`` (a profile:
    planning needs one). ``belady``: an already computed MIN plan of the same task, which the oracle reuses."""
    info = get_strategy(strategy)
    if hardware is None:
        raise TypeError("planning needs a hardware profile (artifact.runtime.hardware.load_profile)")
    req = requests if requests is not None else build_requests(workload)
    if info.planner is not None:
        return info.planner(workload, cache_experts, protocol, seed, req, hardware, belady=belady, **params)
    return schedule(workload, info, cache_experts, protocol, seed, req, hardware, **params)
