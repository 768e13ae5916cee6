"""The peer check of :mod:`artifact.experiments.gpu_checks`: one switch-base-128 MoE layer offloaded with HF
``accelerate.cpu_offload`` against the engine's on-demand plan on the same tokens."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from artifact.engine import ExpertWeights, OffloadEngine, dense_reference, make_inputs, max_rel_error, token_gates
from artifact.engine.kernels import RMS_EPS
from artifact.experiments.gpu_setup import (
    check_device,
    check_model,
    free_device,
    lockstep_workload,
    planned,
    result_row,
    shared_weights,
)
from artifact.runtime.hardware import HardwareProfile


class _PeerExpert(nn.Module):
    def __init__(self, mats: dict[str, torch.Tensor], relu: bool) -> None:
        super().__init__()
        self.relu = relu
        for name, t in mats.items():
            lin = nn.Linear(t.shape[1], t.shape[0], bias=False, dtype=t.dtype)
            with torch.no_grad():
                lin.weight.copy_(t)
            setattr(self, name, lin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu:
            return self.wo(torch.relu(self.wi(x)))
        return self.down(F.silu(self.gate(x)) * self.up(x))


class _PeerMoE(nn.Module):
    """One MoE layer as a plain eager module (the peer's view): NON-MoE stand-in, then each routed expert's
    submodule called on its tokens. Routing is given (as in the engine), per step, as device index tensors."""

    def __init__(self, weights: ExpertWeights, layer: int = 0) -> None:
        super().__init__()
        m = weights.model
        self.d_model = m.d_model
        self.nonmoe = nn.Linear(m.d_model, m.d_model, bias=False, dtype=weights.dtype)
        with torch.no_grad():
            self.nonmoe.weight.copy_(weights.nonmoe[layer])
        self.experts = nn.ModuleList(
            _PeerExpert({k: v.clone() for k, v in weights.matrices(layer * m.experts + e).items()},
                        m.activation == "relu") for e in range(m.experts))

    def forward(self, h: torch.Tensor, routes: list) -> torch.Tensor:
        x = self.nonmoe(F.rms_norm(h, (self.d_model,), eps=RMS_EPS))  # [n, D]
        h = h + x
        for e, rows, gate in routes:
            h = h.index_add(0, rows, self.experts[e](x[rows]) * gate)
        return h


def peer_accelerate(hardware: HardwareProfile, device: str | None = None, quick: bool = False, batch: int = 8,
                    steps: int = 8, cache_experts: int = 32, repeats: int = 3, graph: bool = True) -> dict:
    """One switch-base-128 MoE layer: HF ``accelerate.cpu_offload`` vs the engine's LRU on-demand plan, same tokens.

    The peer keeps the layer's weights in a CPU state dict and, through hooks on each expert submodule, copies a
    submodule's weights to the GPU when it is called and drops them after: every routed expert every step, from
    pageable memory, on the compute stream, no cache, no prefetch. Both step times are medians over the same steps;
    both outputs are checked against the dense reference.
    """
    try:
        from accelerate import cpu_offload
    except ImportError:  # CI's CPU environment lacks it; the H200 image has accelerate 1.15
        return {"skipped": "accelerate is not installed (pip install accelerate)", "rows": []}
    dev = check_device(device)
    if quick:
        steps = min(steps, 4)
    model = replace(check_model(quick, 1), moe_layers=1)
    w = shared_weights(model, model.dtype)
    wl = lockstep_workload(model, batch, steps, seed=4)
    ref = dense_reference(model, w, wl, device=dev)
    plan = planned(wl, "on_demand", min(cache_experts, model.experts), hardware)
    eng = OffloadEngine(model, plan.cache_experts, weights=w, device=dev)
    ours_out, ours = eng.run(plan, wl, repeats=repeats, warmup=1, timeline=False, graph="auto" if graph else False)
    ours_step = ours.info["wall_ms"] / wl.steps
    del eng
    free_device()

    peer = _PeerMoE(w)
    cpu_offload(peer, execution_device=dev)
    inputs = make_inputs(wl.num_tokens, model.d_model).to(dev, w.dtype)  # [T, D]
    gates = torch.from_numpy(token_gates(wl)).to(dev, w.dtype)  # [T, L, K]
    step_routes = []
    for s in range(wl.steps):
        a, b = int(wl.step_offsets[s]), int(wl.step_offsets[s + 1])
        ex = wl.experts[a:b, 0, :]
        routes = []
        for e in np.unique(ex).tolist():
            t_idx, k_idx = np.nonzero(ex == e)
            rows = torch.from_numpy(t_idx).to(dev)
            routes.append((e, rows, gates[a + rows, 0, torch.from_numpy(k_idx).to(dev)].unsqueeze(1)))
        step_routes.append((a, b, routes))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda *a: None)
    peer_out = torch.empty(wl.num_tokens, model.d_model, dtype=torch.float32)
    times = []
    with torch.inference_mode():
        for r in range(repeats + 1):
            for a, b, routes in step_routes:
                sync()
                t0 = time.perf_counter()
                y = peer(inputs[a:b], routes)
                sync()
                if r > 0:  # the first pass warms up
                    times.append((time.perf_counter() - t0) * 1e3)
                peer_out[a:b] = y.float().cpu()
    peer_step = statistics.median(times)
    del peer
    free_device()
    loads_per_step = plan.num_loads / wl.steps
    unique_per_step = float(np.mean([len(r) for _, _, r in step_routes]))
    return {
        "model": model.name, "layers": 1, "batch": batch, "steps": steps, "cache_experts": plan.cache_experts,
        "ours_step_ms": ours_step, "ours_engine_mode": ours.info["engine_mode"], "peer_step_ms": peer_step,
        "speedup": peer_step / ours_step,
        "ours_loads_per_step": loads_per_step, "peer_loads_per_step": unique_per_step,
        "ours_rel_err": max_rel_error(ours_out, ref), "peer_rel_err": max_rel_error(peer_out, ref),
        "peer": "accelerate.cpu_offload (hooks per expert submodule, pageable CPU state dict)",
        "rows": [result_row("engine on-demand step (ms)", ours_step, "report", None),
                 result_row("accelerate.cpu_offload step (ms)", peer_step, "report", None)],
    }
