"""Checks of the engine on a real GPU, for the report: ``python -m artifact.experiments.gpu_checks --out DIR``.

Each check returns a dict of figures with ``rows`` (figure, value, target, met) for the summary table; ``main`` runs
them all, writes ``DIR/gpu_checks.json`` and prints the table. A missed target is a result, not a failure: the exit
status is nonzero only when a check crashed. ``--quick`` (forced on a machine without CUDA) runs tiny sizes on the
CPU so the harness itself is tested in CI; its timing figures mean nothing.

1. ``copy_efficiency``: bytes moved by LOADs over copy-link busy time (sum of LOAD durations, each between CUDA
   events recorded on the copy stream after its dependency wait) against the pinned peak ``calibrate`` measures at
   the same size. Target >= 90%.
2. ``host_overhead``: every expert resident (gpu_only plan), batch 1, 8, 64: time per layer-step beyond the expert
   compute itself. Target <= 50 us. See :func:`host_overhead` for the method.
3. ``overlap``: a prefetch-heavy plan (``pregated``: each layer's experts copied during the previous layer): run
   time against max(copy busy, compute busy). Target <= 1.1x.
4. ``peer_accelerate``: one switch-base-128 MoE layer offloaded with HF ``accelerate.cpu_offload`` against our
   engine's on-demand plan on the same tokens: both step times.
5. ``correctness``: engine outputs against the dense reference on the GPU (float32: 1e-4; bfloat16: 5e-2), with
   plans that reuse slots hard. On the CPU the engine is synchronous; only a GPU run can show a missing event.

The plans come from the one scheduler (:func:`artifact.planner.plan`: ``on_demand``, ``gpu_only``, ``pregated``)
on a hardware profile (``--hardware``, default ``h200``), and the workloads from the calibrated synthetic generator,
so the engine is checked on exactly the plans the grids run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from artifact.atomicfile import atomic_write_text
from artifact.core.plan import Plan
from artifact.core.requests import Requests, build_requests
from artifact.engine import ExpertWeights, OffloadEngine, dense_reference, make_inputs, max_rel_error, token_gates
from artifact.engine.kernels import RMS_EPS
from artifact.measure.calibrate import measure_copy
from artifact.measure.environment import environment, installed_version, utc_now
from artifact.measure.timers import Timer
from artifact.models import ModelSpec, get_model
from artifact.planner import plan as make_plan
from artifact.runtime.hardware import HardwareProfile, load_profile
from artifact.traces.synthetic import generate
from artifact.traces.workload import Workload, decode_workload

# The tiny model of --quick: Switch-shaped (relu, top-1), small enough for the CPU.
QUICK_MODEL = ModelSpec("tiny-switch", moe_layers=2, experts=16, top_k=1, d_model=64, d_ff=128, activation="relu",
                        dtype="float32")


# --------------------------------------------------------------------------------------------------------------
# Workloads and plans
# --------------------------------------------------------------------------------------------------------------


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


def _device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _model(quick: bool, layers: int) -> ModelSpec:
    return QUICK_MODEL if quick else replace(get_model("switch-base-128"), moe_layers=layers)


def _weights(model: ModelSpec, dtype: str, seed: int = 0) -> ExpertWeights:
    """Weights shared by the checks (drawing and pinning GBs once)."""
    key = (model, dtype, seed)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = ExpertWeights.random(model, dtype, seed)
    return _WEIGHTS[key]


def _free() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _row(figure: str, value: float, target: str, met: bool | None) -> dict:
    return {"figure": figure, "value": float(value), "target": target, "met": met}


# --------------------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------------------


def copy_efficiency(hardware: HardwareProfile, device: str | None = None, quick: bool = False, layers: int = 2,
                    batch: int = 8, steps: int = 8, cache_experts: int = 16, repeats: int = 3) -> dict:
    """LOAD bytes over copy-link busy time, against the pinned peak measured at the expert's size."""
    dev = _device(device)
    model = _model(quick, layers)
    dtype = model.dtype
    w = _weights(model, dtype)
    wl = lockstep_workload(model, batch, steps, seed=1)
    plan = planned(wl, "on_demand", cache_experts, hardware)
    eng = OffloadEngine(model, cache_experts, weights=w, device=dev)
    _, tl = eng.run(plan, wl, repeats=repeats, warmup=1, timeline=True)
    nbytes = eng.bytes_per_expert
    (_, peak_ms), = measure_copy(dev, [nbytes], repeats=3 if quick else 20)
    peak_gbps = nbytes / (peak_ms * 1e6)
    dur = tl.load_end - tl.load_start  # [N] ms
    busy = float(dur.sum())
    achieved = plan.num_loads * nbytes / (busy * 1e6) if busy > 0 else float("nan")
    per_load = nbytes / (float(np.median(dur)) * 1e6) if dur.size else float("nan")
    eff = achieved / peak_gbps
    del eng
    _free()
    return {
        "model": model.name, "layers": model.moe_layers, "batch": batch, "steps": steps,
        "cache_experts": cache_experts, "plan": plan.strategy, "loads": plan.num_loads,
        "bytes_per_expert": nbytes, "copy_busy_ms": busy, "run_ms": tl.total_ms,
        "achieved_gbps": achieved, "median_load_gbps": per_load, "pinned_peak_gbps": peak_gbps,
        "efficiency": eff, "link_utilisation": busy / tl.total_ms if tl.total_ms > 0 else float("nan"),
        "rows": [_row("copy efficiency (LOAD GB/s / pinned peak)", eff, ">= 0.90", bool(eff >= 0.9))],
    }


def _ffn_only_ms(eng: OffloadEngine, plan: Plan, wl: Workload, repeats: int) -> tuple[float, str]:
    """GPU time of just the expert FFN kernels of every COMPUTE of ``plan`` (no gather, gate, scatter, NON-MoE,
    events or host work): captured once in a CUDA graph and replayed, so launch gaps do not count."""
    prep = eng.prepare(plan, wl)
    kernels, x, out = eng.kernels, prep.x, prep.out

    def all_ffn() -> None:
        for work in prep.work:
            kernels.run(work, x, out, ffn_only=True)

    if eng.cuda:
        try:
            side = torch.cuda.Stream(eng.device)
            side.wait_stream(torch.cuda.current_stream(eng.device))
            with torch.cuda.stream(side), torch.inference_mode():
                all_ffn()  # warm-up outside capture (cuBLAS handles, workspaces)
            torch.cuda.current_stream(eng.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                all_ffn()
            torch.cuda.synchronize(eng.device)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            graph.replay()
            a.record()
            for _ in range(repeats):
                graph.replay()
            b.record()
            torch.cuda.synchronize(eng.device)
            ms = a.elapsed_time(b) / repeats
            del graph
            return ms, "cuda graph replay"
        except RuntimeError as exc:  # capture unsupported for an op here: time it eagerly with the stream held
            method = f"eager, stream held (graph capture failed: {str(exc).splitlines()[0][:120]})"
    else:
        method = "cpu perf_counter"
    with torch.inference_mode():
        ms, _ = Timer(eng.device)(all_ffn, repeats)
    return ms, method


def host_overhead(hardware: HardwareProfile, device: str | None = None, quick: bool = False,
                  batches: tuple[int, ...] = (1, 8, 64), layers: int = 4, steps: int = 16, repeats: int = 5) -> dict:
    """Time per layer-step beyond the expert compute itself, every expert resident (switch-base-128).

    Method: the gpu_only plan (no LOADs) of ``steps`` decode steps at batch B runs on the engine in lean mode
    (``timeline=False``: only the events dependencies need, i.e. none here), ``repeats`` times after warm-up; its
    median wall time (host clock from the first issue to the final device sync) divided by the number of layer-steps
    is the step cost per layer. The expert compute itself is the GPU time of the same plan's FFN kernels alone (both
    matmuls and the activation of every expert, per COMPUTE, on the engine's FFN path), replayed from a CUDA graph so
    that no host launch cost is counted. Overhead = step cost - FFN time, per layer-step: it contains the gather, the
    gate, the scatter-add, the NON-MoE stand-in (reported apart: an attention layer would cost it anyway) and any
    time the GPU waited for the host. ``host_issue_us`` is the host's own time to issue one layer-step.
    """
    dev = _device(device)
    if quick:
        batches, steps = tuple(b for b in batches if b <= 8) or (1,), min(steps, 4)
    model = _model(quick, layers)
    w = _weights(model, model.dtype)
    L, E = model.moe_layers, model.experts
    eng = OffloadEngine(model, L * E, weights=w, device=dev)
    out: dict = {"model": model.name, "layers": L, "steps": steps, "ffn_path": eng.ffn, "per_batch": {}, "rows": []}
    for B in batches:
        wl = lockstep_workload(model, B, steps, seed=2)
        plan = planned(wl, "gpu_only", L * E, hardware)
        G = plan.layer_steps
        _, lean = eng.run(plan, wl, repeats=repeats, warmup=2, timeline=False)
        _, timed = eng.run(plan, wl, repeats=1, warmup=0, timeline=True)
        ffn_ms, method = _ffn_only_ms(eng, plan, wl, repeats)
        wall_us = lean.info["wall_ms"] / G * 1e3
        ffn_us = ffn_ms / G * 1e3
        nonmoe_us = float((timed.nonmoe_end - timed.nonmoe_start).sum()) / G * 1e3
        over = wall_us - ffn_us
        out["per_batch"][str(B)] = {
            "layer_steps": G, "experts_per_layer_step": plan.use_gid.shape[0] / G,
            "step_per_layer_us": wall_us, "ffn_per_layer_us": ffn_us, "overhead_us": over,
            "nonmoe_per_layer_us": nonmoe_us, "overhead_excl_nonmoe_us": over - nonmoe_us,
            "host_issue_us": lean.info["issue_ms"] / G * 1e3,
            "gpu_busy_per_layer_us": timed.compute_busy_ms / G * 1e3, "ffn_method": method,
        }
        out["rows"].append(_row(f"overhead per layer-step, batch {B} (us)", over, "<= 50", bool(over <= 50.0)))
    del eng
    _free()
    return out


def overlap(hardware: HardwareProfile, device: str | None = None, quick: bool = False,
            batches: tuple[int, ...] = (8, 64), layers: int = 4, steps: int = 4, repeats: int = 3) -> dict:
    """Run time of a prefetch-heavy plan (``pregated``) against max(copy busy, compute busy): 1.0 is perfect
    overlap."""
    dev = _device(device)
    if quick:
        batches, steps = tuple(b for b in batches if b <= 8) or (1,), min(steps, 2)
    model = _model(quick, layers)
    w = _weights(model, model.dtype)
    out: dict = {"model": model.name, "layers": model.moe_layers, "steps": steps, "per_batch": {}, "rows": []}
    for B in batches:
        wl = lockstep_workload(model, B, steps, seed=3)
        plan = next_layer_plan(wl, hardware)
        eng = OffloadEngine(model, plan.cache_experts, weights=w, device=dev)
        _, tl = eng.run(plan, wl, repeats=repeats, warmup=1, timeline=True)
        _, lean = eng.run(plan, wl, repeats=repeats, warmup=1, timeline=False)
        busy = max(tl.copy_busy_ms, tl.compute_busy_ms)
        ratio = lean.info["wall_ms"] / busy if busy > 0 else float("nan")
        out["per_batch"][str(B)] = {
            "loads": plan.num_loads, "cache_experts": plan.cache_experts, "wall_ms": lean.info["wall_ms"],
            "timeline_total_ms": tl.total_ms, "copy_busy_ms": tl.copy_busy_ms,
            "compute_busy_ms": tl.compute_busy_ms, "stall_ms": tl.info["stall_ms"],
            "ratio_wall": ratio, "ratio_timeline": tl.total_ms / busy if busy > 0 else float("nan"),
        }
        out["rows"].append(_row(f"overlap, batch {B} (wall / max busy)", ratio, "<= 1.1", bool(ratio <= 1.1)))
        del eng
        _free()
    return out


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
                    steps: int = 8, cache_experts: int = 32, repeats: int = 3) -> dict:
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
    dev = _device(device)
    if quick:
        steps = min(steps, 4)
    model = replace(_model(quick, 1), moe_layers=1)
    w = _weights(model, model.dtype)
    wl = lockstep_workload(model, batch, steps, seed=4)
    ref = dense_reference(model, w, wl, device=dev)
    plan = planned(wl, "on_demand", min(cache_experts, model.experts), hardware)
    eng = OffloadEngine(model, plan.cache_experts, weights=w, device=dev)
    ours_out, ours = eng.run(plan, wl, repeats=repeats, warmup=1, timeline=False)
    ours_step = ours.info["wall_ms"] / wl.steps
    del eng
    _free()

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
    _free()
    loads_per_step = plan.num_loads / wl.steps
    unique_per_step = float(np.mean([len(r) for _, _, r in step_routes]))
    return {
        "model": model.name, "layers": 1, "batch": batch, "steps": steps, "cache_experts": plan.cache_experts,
        "ours_step_ms": ours_step, "peer_step_ms": peer_step, "speedup": peer_step / ours_step,
        "ours_loads_per_step": loads_per_step, "peer_loads_per_step": unique_per_step,
        "ours_rel_err": max_rel_error(ours_out, ref), "peer_rel_err": max_rel_error(peer_out, ref),
        "peer": "accelerate.cpu_offload (hooks per expert submodule, pageable CPU state dict)",
        "rows": [_row("engine on-demand step (ms)", ours_step, "report", None),
                 _row("accelerate.cpu_offload step (ms)", peer_step, "report", None)],
    }


def correctness(hardware: HardwareProfile, device: str | None = None, quick: bool = False, layers: int = 2,
                batch: int = 8, steps: int = 4) -> dict:
    """Engine against the dense reference on this device, with plans that reuse slots hard (races would show)."""
    dev = _device(device)
    if quick:
        steps = min(steps, 2)
    out: dict = {"runs": {}, "rows": []}
    for dtype, tol in (("float32", 1e-4), ("bfloat16", 5e-2)):
        model = _model(quick, layers).with_dtype(dtype)
        w = _weights(model, dtype)
        wl = lockstep_workload(model, batch, steps, seed=5)
        ref = dense_reference(model, w, wl, device=dev)
        plans = {"lru_small_cache": planned(wl, "on_demand", max(model.top_k, 2), hardware),
                 "lru_per_item": planned(wl, "on_demand", max(2 * model.top_k, 4), hardware, "per_item"),
                 "next_layer_prefetch": next_layer_plan(wl, hardware)}
        for pname, plan in plans.items():
            eng = OffloadEngine(model, plan.cache_experts, weights=w, device=dev)
            got, tl = eng.run(plan, wl, repeats=1, warmup=1, timeline=False)
            err = max_rel_error(got, ref)
            key = f"{dtype}/{pname}"
            out["runs"][key] = {"rel_err": err, "tolerance": tol, "loads": plan.num_loads, "ffn_path": eng.ffn}
            out["rows"].append(_row(f"max rel err {key}", err, f"<= {tol:g}", bool(err <= tol)))
            del eng
            _free()
    return out


CHECKS = {
    "copy_efficiency": copy_efficiency,
    "host_overhead": host_overhead,
    "overlap": overlap,
    "peer_accelerate": peer_accelerate,
    "correctness": correctness,
}


def _environment(dev: torch.device, quick: bool, hardware: HardwareProfile) -> dict:
    """The shared environment record plus what is particular to these checks (device, sizes, profile, peer)."""
    return {**environment(), "date": utc_now(), "device": str(dev), "quick": quick, "hardware": hardware.name,
            "accelerate": installed_version("accelerate")}


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m artifact.experiments.gpu_checks",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_checks.json")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (forced without CUDA)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--checks", nargs="*", default=list(CHECKS), choices=list(CHECKS))
    ap.add_argument("--hardware", default="h200",
                    help="hardware profile the plans are made on: a name in results/hardware/ or a JSON path")
    args = ap.parse_args(argv)
    hardware = load_profile(args.hardware)
    dev = _device(args.device)
    quick = args.quick or dev.type != "cuda"
    if quick and not args.quick:
        print("gpu_checks: no CUDA device: running --quick on the CPU (timing figures are meaningless)")
    results = {"environment": _environment(dev, quick, hardware), "checks": {}}
    crashed = []
    for name in args.checks:
        t0 = time.perf_counter()
        try:
            res = CHECKS[name](hardware, device=str(dev), quick=quick)
        except Exception as exc:  # a crash is recorded and reported; the other checks still run
            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(), "rows": []}
            crashed.append(name)
        res["seconds"] = time.perf_counter() - t0
        results["checks"][name] = res
        note = f"  CRASHED: {res['error']}" if "error" in res else (f"  skipped: {res['skipped']}"
                                                                    if "skipped" in res else "")
        print(f"  {name}: {res['seconds']:.1f} s{note}", flush=True)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / "gpu_checks.json"
    atomic_write_text(path, json.dumps(results, indent=1, default=_json_default) + "\n")
    print(f"\n{'check':<17} {'figure':<48} {'value':>12} {'target':>10} {'met':>5}")
    for name, res in results["checks"].items():
        for r in res.get("rows", []):
            met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
            print(f"{name:<17} {r['figure']:<48} {r['value']:>12.4g} {r['target']:>10} {met:>5}")
        if "error" in res:
            print(f"{name:<17} {'CRASHED: ' + res['error'][:80]}")
    print(f"\nwritten to {path}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
