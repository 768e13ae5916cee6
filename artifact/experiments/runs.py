"""One run: a workload, a strategy, a cache size and a protocol, planned once and executed by the simulator (or the
engine). The CLI's ``simulate`` and ``run`` and the grid runner all go through here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artifact.core.metrics import run_metrics
from artifact.core.requests import Requests, build_requests
from artifact.models import ModelSpec
from artifact.planner import plan as make_plan
from artifact.runtime.hardware import HardwareProfile, load_profile
from artifact.runtime.simulator import simulate
from artifact.traces import trace as tracefile
from artifact.traces.workload import Workload, decode_workload

# The default synthetic pool: enough tokens for batch 64 x 256 decode steps, and the same pool for every batch size.
DEFAULT_SEQUENCES = 256
DEFAULT_TOKENS = 128


@dataclass(frozen=True)
class WorkloadSpec:
    model: str | None  # a preset; None with a trace = the trace's own model
    trace: str | None = None  # a trace file or vendored:NAME; None = the synthetic generator
    sequences: int = DEFAULT_SEQUENCES
    tokens: int = DEFAULT_TOKENS
    seed: int = 0
    # Generator parameters replaced for this workload (synthetic only), e.g. (("locality", 0.2),): the E9 sweep.
    overrides: tuple[tuple[str, float], ...] = ()

    @property
    def label(self) -> str:
        if self.trace:
            return f"trace:{self.trace}"
        extra = "".join(f":{k}={v:g}" for k, v in self.overrides)
        return f"synthetic:{self.model}:{self.sequences}x{self.tokens}:seed{self.seed}{extra}"


def load_trace(ws: WorkloadSpec) -> tracefile.Trace:
    if ws.trace:
        from artifact.traces.vendored import open_trace

        return open_trace(ws.trace)
    if ws.model is None:
        raise ValueError("workload: a synthetic workload needs a model preset")
    from artifact.traces.synthetic import generate

    return generate(ws.model, sequences=ws.sequences, tokens=ws.tokens, seed=ws.seed, **dict(ws.overrides))


def make_workload(ws: WorkloadSpec, batch: int, steps: int | None, trace: tracefile.Trace | None = None) -> Workload:
    tr = trace if trace is not None else load_trace(ws)
    return decode_workload(tr, batch, steps, model=ws.model)


def simulate_one(w: Workload, strategy: str, cache_experts: int, protocol: str = "batched", seed: int = 0,
                 hardware: HardwareProfile | str = "h200", requests: Requests | None = None,
                 plans: dict | None = None, params: dict | None = None) -> tuple[dict, object]:
    """Plan and simulate; returns (metrics row, plan). ``plans``: plans of the same task by strategy name (the
    oracle reuses ``belady``'s); ``params``: the strategy's parameters (the ablation grid's variants)."""
    hw = load_profile(hardware) if isinstance(hardware, str) else hardware
    req = requests if requests is not None else build_requests(w)
    plan = make_plan(w, strategy, cache_experts, protocol, seed, hw, req, belady=(plans or {}).get("belady"),
                     **(params or {}))
    tl = simulate(plan, w, hw)
    row = run_metrics(plan, tl, w.num_tokens)
    row["hardware"] = hw.name
    if "oracle_source" in plan.params:
        row["oracle_source"] = plan.params["oracle_source"]
    return row, plan


def profile_for_mode(hw: HardwareProfile, engine_mode: str) -> HardwareProfile:
    """``hw`` with the host issue costs of the engine mode that ran: a profile's ``host_issue_us`` are those of the
    mode it was calibrated in (``extra["host_issue_mode"]``); the other mode's, when measured, are in
    ``extra["host_issue_us_by_mode"]``. A profile without them is returned as it is."""
    extra = hw.extra if isinstance(hw.extra, dict) else {}
    by_mode = extra.get("host_issue_us_by_mode") or {}
    if extra.get("host_issue_mode", engine_mode) == engine_mode or engine_mode not in by_mode:
        return hw
    from dataclasses import replace

    return replace(hw, host_issue_us={k: float(v) for k, v in by_mode[engine_mode].items()})


def engine_one(w: Workload, strategy: str, cache_experts: int, protocol: str = "batched", seed: int = 0,
               hardware: HardwareProfile | str = "h200", device: str = "cuda", repeats: int = 3, warmup: int = 1,
               dtype: str | None = None, engine=None, requests: Requests | None = None,
               plans: dict | None = None, engine_model: ModelSpec | None = None,
               timeline: bool = False, graph: bool | str = "auto") -> tuple[dict, object, object]:
    """Plan (exactly as ``simulate_one``) and execute on the engine; returns (metrics row, plan as scheduled,
    timeline).

    The row carries the measured times; ``sim_latency_ms_per_step`` is the simulator's figure for the same plan.
    ``engine_model`` executes the plan with experts of another shape (same layers, experts and top-k): the CPU
    check's scaled-down experts. ``graph`` is the engine's mode (:meth:`OffloadEngine.run`; ``"auto"``: a CUDA
    graph replay on CUDA, eager elsewhere); ``engine_mode`` in the row says which ran, and the simulator's figure
    uses the host issue costs the profile measured for that mode (:func:`profile_for_mode`).
    """
    from dataclasses import replace

    from artifact.engine import OffloadEngine

    hw = load_profile(hardware) if isinstance(hardware, str) else hardware
    req = requests if requests is not None else build_requests(w)
    planned = make_plan(w, strategy, cache_experts, protocol, seed, hw, req, belady=(plans or {}).get("belady"))
    plan, w_exec = planned, w
    if engine_model is not None:
        w_exec = replace(w, model=engine_model)
        plan = replace(planned, model=engine_model)
    need = plan.cache_experts
    eng = engine if engine is not None and engine.cache_experts >= need else OffloadEngine(
        w_exec.model, need, device=device, dtype=dtype, seed=seed)
    # Lean runs (only the events dependencies need): per-op timeline events would add host time to what is timed.
    _, tl = eng.run(plan, w_exec, repeats=repeats, warmup=warmup, timeline=timeline, graph=graph)
    row = run_metrics(plan, tl, w.num_tokens)
    row["engine_mode"] = tl.info.get("engine_mode", "eager")
    try:
        row["sim_latency_ms_per_step"] = simulate(plan, w_exec, profile_for_mode(hw, row["engine_mode"])).total_ms \
            / plan.steps
    except KeyError as exc:  # the profile has no timings for this expert shape (e.g. the scaled-down CPU check)
        row["sim_latency_ms_per_step"] = None
        row["sim_note"] = str(exc.args[0]) if exc.args else str(exc)
    row["hardware"] = hw.name
    for key in ("wall_ms", "peak_device_bytes", "repeats", "ffn_path", "issue_ms"):
        if key in tl.info:
            v = tl.info[key]
            row[f"engine_{key}"] = float(v) if isinstance(v, (int, float)) else v
    if "wall_ms_repeats" in tl.info:
        reps = [float(x) for x in tl.info["wall_ms_repeats"]]
        row["wall_ms_per_step_median"] = float(np.median(reps)) / plan.steps
        row["wall_ms_per_step_min"] = float(np.min(reps)) / plan.steps
        row["wall_ms_per_step_max"] = float(np.max(reps)) / plan.steps
    return row, planned, tl
