"""What the GPU checks share (:mod:`artifact.experiments.gpu_checks`, :mod:`artifact.experiments.gpu_peer`):
lockstep workloads, plans from the one scheduler, the model and weights of a check, and a summary row."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from artifact.core.plan import Plan
from artifact.core.requests import Requests, build_requests
from artifact.engine import ExpertWeights
from artifact.models import ModelSpec, get_model
from artifact.planner import plan as make_plan
from artifact.runtime.hardware import HardwareProfile
from artifact.traces.synthetic import generate
from artifact.traces.workload import Workload, decode_workload

# The tiny model of --quick: Switch-shaped (relu, top-1), small enough for the CPU.
QUICK_MODEL = ModelSpec("tiny-switch", moe_layers=2, experts=16, top_k=1, d_model=64, d_ff=128, activation="relu",
                        dtype="float32")


def lockstep_workload(model: ModelSpec, batch: int, steps: int, seed: int = 0) -> Workload:
    """``batch`` sequences of exactly ``steps`` tokens decoded in lockstep (every step runs the whole batch), routed
    by the calibrated synthetic generator (the model's preset parameters, else the generic ones)."""
    trace = generate(model, batch, steps, seed, lengths=[steps] * batch)
    return decode_workload(trace, batch, steps, model=model)


def planned(wl: Workload, strategy: str, cache_experts: int, hardware: HardwareProfile, protocol: str = "batched",
            requests: Requests | None = None) -> Plan:
    """``strategy``'s plan of ``wl`` from the one scheduler (seed 0)."""
    return make_plan(wl, strategy, cache_experts, protocol, 0, hardware, requests)


def next_layer_plan(wl: Workload, hardware: HardwareProfile) -> Plan:
    """``pregated`` (Pre-gated MoE as built: the pre-gate is the next router, so each prefetch is exactly the next
    layer's experts) with twice the slots the busiest layer-step needs: the running layer's experts and the next
    layer's fit side by side, so every prefetch lands and nothing waits on an eviction."""
    req = build_requests(wl)
    busiest = int(np.diff(req.batched.grp_off).max()) if req.batched.grp_off.shape[0] > 1 else 1
    return planned(wl, "pregated", 2 * busiest, hardware, requests=req)


# --------------------------------------------------------------------------------------------------------------
# Shared setup
# --------------------------------------------------------------------------------------------------------------

_WEIGHTS: dict = {}


def check_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def check_model(quick: bool, layers: int) -> ModelSpec:
    return QUICK_MODEL if quick else replace(get_model("switch-base-128"), moe_layers=layers)


def shared_weights(model: ModelSpec, dtype: str, seed: int = 0) -> ExpertWeights:
    """Weights shared by the checks (drawing and pinning GBs once)."""
    key = (model, dtype, seed)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = ExpertWeights.random(model, dtype, seed)
    return _WEIGHTS[key]


def free_device() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def result_row(figure: str, value: float | None, target: str, met: bool | None, why: str | None = None) -> dict:
    """One line of the summary table; a figure that could not be measured is None with ``why``."""
    row = {"figure": figure, "value": None if value is None else float(value), "target": target,
           "met": None if value is None else met}
    if value is None:
        row["why"] = why or "not measured"
    return row
