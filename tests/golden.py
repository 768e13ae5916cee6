"""Golden loads: every strategy at three cache sizes on the small trace committed in ``tests/data``, planned on the
calibrated H200 profile (``results/hardware/h200.json``: the oracle and the flagship read its static figures).

A changed golden is a reviewed change, never an automatic one: ``python -m tests.golden > tests/golden_loads.json``
regenerates them; commit the new file only after reading why they moved.
"""

from __future__ import annotations

import json
from pathlib import Path

from artifact.core.errors import Unrunnable
from artifact.core.metrics import count_metrics
from artifact.core.requests import build_requests
from artifact.planner import plan, strategies
from artifact.runtime.hardware import load_profile
from artifact.traces.trace import load
from artifact.traces.workload import decode_workload

HERE = Path(__file__).parent
TRACE = HERE / "data" / "golden_trace.npz"
GOLDEN = HERE / "golden_loads.json"
CACHES = (24, 48, 96)
BATCH = 4
PROFILE = load_profile("h200")


def current() -> dict:
    w = decode_workload(load(TRACE), BATCH)
    req = build_requests(w)
    out = {}
    for cache in CACHES:
        for protocol in ("batched", "per_item"):
            plans = {}
            for name in strategies():
                try:
                    plans[name] = plan(w, name, cache, protocol, 0, PROFILE, req, belady=plans.get("belady"))
                except Unrunnable as exc:
                    out[f"{name}|C{cache}|{protocol}"] = {"refused": str(exc)}
                    continue
                m = count_metrics(plans[name])
                out[f"{name}|C{cache}|{protocol}"] = {k: m[k] for k in ("loads", "hits", "prefetch_issued")}
    return out


if __name__ == "__main__":
    print(json.dumps(current(), indent=1, sort_keys=True))
