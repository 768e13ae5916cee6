"""One run: a workload, a strategy, a cache size and a protocol, planned once and executed by the simulator (or the
engine). The CLI's ``simulate`` and ``run`` and the grid runner all go through here."""

from __future__ import annotations

from dataclasses import dataclass

from artifact.models import ModelSpec, get_model
from artifact.runtime.hardware import HardwareProfile, load_profile
from artifact.runtime.metrics import run_metrics
from artifact.runtime.requests import Requests, build_requests
from artifact.runtime.scheduler import schedule
from artifact.runtime.simulator import simulate
from artifact.traces import trace as tracefile
from artifact.traces.workload import Workload, decode_workload

# The default synthetic pool: enough tokens for batch 64 x 256 decode steps, and the same pool for every batch size.
DEFAULT_SEQUENCES = 256
DEFAULT_TOKENS = 128


@dataclass(frozen=True)
class WorkloadSpec:
    model: str
    trace: str | None = None  # a trace file; None = the synthetic generator
    sequences: int = DEFAULT_SEQUENCES
    tokens: int = DEFAULT_TOKENS
    seed: int = 0

    @property
    def label(self) -> str:
        if self.trace:
            return f"trace:{self.trace}"
        return f"synthetic:{self.model}:{self.sequences}x{self.tokens}:seed{self.seed}"


def load_trace(ws: WorkloadSpec) -> tracefile.Trace:
    if ws.trace:
        return tracefile.load(ws.trace)
    from artifact.traces.synthetic import generate

    return generate(ws.model, sequences=ws.sequences, tokens=ws.tokens, seed=ws.seed)


def make_workload(ws: WorkloadSpec, batch: int, steps: int | None, trace: tracefile.Trace | None = None) -> Workload:
    tr = trace if trace is not None else load_trace(ws)
    return decode_workload(tr, batch, steps, model=ws.model)


def simulate_one(w: Workload, strategy: str, cache_experts: int, protocol: str = "batched", seed: int = 0,
                 hardware: HardwareProfile | str = "h200", requests: Requests | None = None,
                 plans: dict | None = None) -> tuple[dict, object]:
    """Plan and simulate; returns (metrics row, plan)."""
    hw = load_profile(hardware) if isinstance(hardware, str) else hardware
    req = requests if requests is not None else build_requests(w)
    plan = schedule(w, strategy, cache_experts, protocol, seed=seed, requests=req, hardware=hw, plans=plans)
    tl = simulate(plan, w, hw)
    row = run_metrics(plan, tl, w.num_tokens)
    row["hardware"] = hw.name
    if "oracle_source" in plan.params:
        row["oracle_source"] = plan.params["oracle_source"]
    return row, plan


def model_spec(name: str) -> ModelSpec:
    return get_model(name)
