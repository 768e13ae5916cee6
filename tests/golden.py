"""Golden loads: every strategy at three cache sizes on the small trace committed in ``tests/data``.

A changed golden is a reviewed change, never an automatic one: ``python -m tests.golden`` prints the current
numbers as JSON; paste them into ``tests/golden_loads.json`` only after reading why they moved.
"""

from __future__ import annotations

import json
from pathlib import Path

from artifact.policies.registry import STRATEGIES
from artifact.runtime.hardware import H200
from artifact.runtime.metrics import count_metrics
from artifact.runtime.requests import build_requests
from artifact.runtime.scheduler import schedule
from artifact.traces.trace import load
from artifact.traces.workload import decode_workload

HERE = Path(__file__).parent
TRACE = HERE / "data" / "golden_trace.npz"
GOLDEN = HERE / "golden_loads.json"
CACHES = (24, 48, 96)
BATCH = 4
PROFILE = H200  # the built-in profile: the oracle and intelligent_dedup read static hardware figures


def current() -> dict:
    w = decode_workload(load(TRACE), BATCH)
    req = build_requests(w)
    out = {}
    for cache in CACHES:
        for protocol in ("batched", "per_item"):
            plans = {}
            for name in STRATEGIES:
                plans[name] = schedule(w, name, cache, protocol, requests=req, hardware=PROFILE, plans=plans)
                m = count_metrics(plans[name])
                out[f"{name}|C{cache}|{protocol}"] = {k: m[k] for k in ("loads", "hits", "prefetch_issued")}
    return out


if __name__ == "__main__":
    print(json.dumps(current(), indent=1, sort_keys=True))
