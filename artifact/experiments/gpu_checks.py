"""Checks of the engine on a real GPU, for the report: ``python -m artifact.experiments.gpu_checks --out DIR``.

Each check returns a dict of figures with ``rows`` (figure, value, target, met) for the summary table; ``main`` runs
them all, writes ``DIR/gpu_checks.json`` (strict JSON: what could not be measured is null, with the reason beside
it) and prints the table. A missed target is a result, not a failure: the exit status is nonzero only when a check
crashed. ``--quick`` (forced on a machine without CUDA) runs tiny sizes on the CPU so the harness itself is tested
in CI; its timing figures mean nothing. The engine runs as the grids run it: one CUDA graph replay per run
(``OffloadEngine.run(graph="auto")``), or the eager issue loop with ``--eager``.

1. ``copy_efficiency``: bytes moved by LOADs over copy-link busy time (sum of LOAD durations, each between CUDA
   events recorded on the copy stream after its dependency wait: an eager timeline run) against the pinned peak
   ``calibrate`` measures the engine's way at the same size. Target >= 90%.
2. ``host_overhead``: every expert resident (gpu_only plan), batch 1, 8, 64: the host's issue time per layer-step
   (graph mode: the launch of the replay over the layer-steps; target <= 20 us at batch 1 and 8), the time per
   layer-step beyond the expert compute itself (target <= 50 us), and the run's wall time against the device's
   busy time at batch 1 (target <= 1.2x). See :func:`host_overhead` for the method.
3. ``overlap``: a prefetch-heavy plan (``pregated``: each layer's experts copied during the previous layer): run
   time against max(copy busy, compute busy). Target <= 1.1x.
4. ``peer_accelerate`` (:mod:`artifact.experiments.gpu_peer`): one switch-base-128 MoE layer offloaded with HF
   ``accelerate.cpu_offload`` against our engine's on-demand plan on the same tokens: both step times.
5. ``correctness``: engine outputs against the dense reference on the GPU (float32: 1e-4; bfloat16: 5e-2), with
   plans that reuse slots hard, eager and as graph replays (graph against eager: float32 1e-6, bfloat16 1e-2). On
   the CPU the engine is synchronous; only a GPU run can show a missing event or a missing graph edge.

The plans come from the one scheduler (:func:`artifact.planner.plan`: ``on_demand``, ``gpu_only``, ``pregated``)
on a hardware profile (``--hardware``, default ``h200``), and the workloads from the calibrated synthetic generator,
so the engine is checked on exactly the plans the grids run.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from artifact.atomicfile import atomic_write_json
from artifact.core.plan import Plan
from artifact.engine import OffloadEngine, dense_reference, max_rel_error
from artifact.experiments.gpu_peer import peer_accelerate
from artifact.experiments.gpu_setup import (  # noqa: F401  (lockstep_workload, next_layer_plan: used by tests)
    QUICK_MODEL,
    check_device,
    check_model,
    free_device,
    lockstep_workload,
    next_layer_plan,
    planned,
    result_row,
    shared_weights,
)
from artifact.measure.calibrate import measure_copy
from artifact.measure.environment import environment, installed_version, utc_now
from artifact.measure.timers import Timer
from artifact.runtime.hardware import HardwareProfile, load_profile
from artifact.traces.workload import Workload

ISSUE_TARGET_US = 20.0  # host issue per layer-step at batch 1 and 8 (graph mode)
OVERHEAD_TARGET_US = 50.0
BUSY_RATIO_TARGET = 1.2  # gpu_only at batch 1: wall time over the device's busy time


def _mode(graph: bool) -> bool | str:
    return "auto" if graph else False


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


# --------------------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------------------


def copy_efficiency(hardware: HardwareProfile, device: str | None = None, quick: bool = False, layers: int = 2,
                    batch: int = 8, steps: int = 8, cache_experts: int = 16, repeats: int = 3,
                    graph: bool = True) -> dict:
    """LOAD bytes over copy-link busy time (an eager timeline run: per-LOAD events), against the pinned peak
    measured the engine's way at the expert's size; beside it the same plan's wall time in the grids' mode."""
    dev = check_device(device)
    model = check_model(quick, layers)
    w = shared_weights(model, model.dtype)
    wl = lockstep_workload(model, batch, steps, seed=1)
    plan = planned(wl, "on_demand", cache_experts, hardware)
    eng = OffloadEngine(model, cache_experts, weights=w, device=dev)
    _, tl = eng.run(plan, wl, repeats=repeats, warmup=1, timeline=True)
    _, lean = eng.run(plan, wl, repeats=repeats, warmup=1, timeline=False, graph=_mode(graph))
    nbytes = eng.bytes_per_expert
    (_, peak_ms), = measure_copy(dev, [nbytes], repeats=3 if quick else 20)
    peak_gbps = nbytes / (peak_ms * 1e6)
    dur = tl.load_end - tl.load_start  # [N] ms
    busy = float(dur.sum())
    achieved = plan.num_loads * nbytes / (busy * 1e6) if busy > 0 else None
    per_load = nbytes / (float(np.median(dur)) * 1e6) if dur.size else None
    eff = _ratio(achieved, peak_gbps)
    del eng
    free_device()
    why = None if eff is not None else "the plan made no LOAD (no copy to time)"
    return {
        "model": model.name, "layers": model.moe_layers, "batch": batch, "steps": steps,
        "cache_experts": cache_experts, "plan": plan.strategy, "loads": plan.num_loads,
        "bytes_per_expert": nbytes, "copy_busy_ms": busy, "run_ms": tl.total_ms,
        "lean_wall_ms": lean.info["wall_ms"], "lean_engine_mode": lean.info["engine_mode"],
        "achieved_gbps": achieved, "median_load_gbps": per_load, "pinned_peak_gbps": peak_gbps,
        "efficiency": eff, "efficiency_why_null": why, "link_utilisation": _ratio(busy, tl.total_ms),
        "rows": [result_row("copy efficiency (LOAD GB/s / pinned peak)", eff, ">= 0.90",
                            None if eff is None else bool(eff >= 0.9), why)],
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




def _device_busy_ms(eng: OffloadEngine, plan: Plan, wl: Workload) -> tuple[float, dict]:
    """GPU time of every operation of ``plan`` run back to back: the compute stream is held by a spin kernel while
    the host issues the whole plan eagerly (lean), CUDA events around it; no host launch gap counts. Returns
    ``(ms, how)``; ``how["held"]`` is False when the host took longer to issue than the hold (the figure then
    contains host gaps: a queue that filled up, or a slow host)."""
    prep = eng.prepare(plan, wl)
    prog = eng._program(prep, False)
    if not eng.cuda:
        eng._reset(prep)
        t0 = time.perf_counter()
        eng._issue(prep, prog)
        return (time.perf_counter() - t0) * 1e3, {"method": "cpu perf_counter", "held": True}
    cs, ks = eng.compute_stream, eng.copy_stream
    prev = torch.cuda.current_stream(eng.device)
    _, lean = eng.run(plan, wl, repeats=1, warmup=1, timeline=False, graph=False)
    hold_ms = 2.0 * lean.info["issue_ms"] + 2.0
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    eng._reset(prep)
    torch.cuda.set_stream(cs)
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            torch.cuda._sleep(int(hold_ms * 2e6))  # ~2e6 cycles per ms
            a.record(cs)
            ks.wait_stream(cs)
            eng._issue(prep, prog)
            cs.wait_stream(ks)
            b.record(cs)
            issued_ms = (time.perf_counter() - t0) * 1e3
        torch.cuda.synchronize(eng.device)
    finally:
        torch.cuda.set_stream(prev)
    return a.elapsed_time(b), {"method": "eager issue with the compute stream held (CUDA events)",
                               "held": bool(issued_ms < hold_ms), "hold_ms": hold_ms, "host_issue_ms": issued_ms}


def host_overhead(hardware: HardwareProfile, device: str | None = None, quick: bool = False,
                  batches: tuple[int, ...] = (1, 8, 64), layers: int = 4, steps: int = 16, repeats: int = 5,
                  graph: bool = True) -> dict:
    """Host issue time, and time beyond the expert compute, per layer-step, every expert resident (switch-base-128).

    Method: the gpu_only plan (no LOADs) of ``steps`` decode steps at batch B runs on the engine in lean mode
    (``timeline=False``), ``repeats`` times after warm-up, as a CUDA graph replay (``graph``; else, or where no
    graph can run, the eager issue loop) and, for comparison, eagerly. Per layer-step:

    - ``host_issue_us``: the host's time to issue the run (graph: the ``replay()`` call, i.e. the launch) over the
      layer-steps;
    - ``step_per_layer_us``: the median wall time (host clock from the issue to the final device sync) over the
      layer-steps;
    - ``ffn_per_layer_us``: the GPU time of the same plan's FFN kernels alone (both matmuls and the activation of
      every expert, per COMPUTE, on the engine's FFN path), replayed from a CUDA graph so that no launch cost counts;
      ``overhead_us`` = step - FFN: the gather, the gate, the scatter-add, the NON-MoE stand-in (reported apart: an
      attention layer would cost it anyway) and any time the GPU waited for the host;
    - ``device_busy_per_layer_us``: the GPU time of all of the plan's operations back to back
      (:func:`_device_busy_ms`); ``wall_over_busy`` = step / busy (1.0: the host adds nothing).
    """
    dev = check_device(device)
    if quick:
        batches, steps = tuple(b for b in batches if b <= 8) or (1,), min(steps, 4)
    model = check_model(quick, layers)
    w = shared_weights(model, model.dtype)
    L, E = model.moe_layers, model.experts
    eng = OffloadEngine(model, L * E, weights=w, device=dev)
    out: dict = {"model": model.name, "layers": L, "steps": steps, "ffn_path": eng.ffn, "per_batch": {}, "rows": []}
    for B in batches:
        wl = lockstep_workload(model, B, steps, seed=2)
        plan = planned(wl, "gpu_only", L * E, hardware)
        G = plan.layer_steps
        _, eager = eng.run(plan, wl, repeats=repeats, warmup=2, timeline=False, graph=False)
        _, lean = eng.run(plan, wl, repeats=repeats, warmup=2, timeline=False, graph=_mode(graph))
        _, timed = eng.run(plan, wl, repeats=1, warmup=0, timeline=True)
        ffn_ms, method = _ffn_only_ms(eng, plan, wl, repeats)
        busy_ms, busy_how = _device_busy_ms(eng, plan, wl)
        us = 1e3 / G
        wall_us, ffn_us = lean.info["wall_ms"] * us, ffn_ms * us
        issue_us = lean.info["issue_ms"] * us
        nonmoe_us = float((timed.nonmoe_end - timed.nonmoe_start).sum()) * us
        over = wall_us - ffn_us
        mode = lean.info["engine_mode"]
        out["per_batch"][str(B)] = {
            "layer_steps": G, "experts_per_layer_step": plan.use_gid.shape[0] / G, "engine_mode": mode,
            "graph_fallback": lean.info["graph_fallback"], "step_per_layer_us": wall_us, "host_issue_us": issue_us,
            "ffn_per_layer_us": ffn_us, "overhead_us": over, "nonmoe_per_layer_us": nonmoe_us,
            "overhead_excl_nonmoe_us": over - nonmoe_us, "device_busy_per_layer_us": busy_ms * us,
            "device_busy_method": busy_how, "wall_over_busy": _ratio(wall_us, busy_ms * us),
            "eager_step_per_layer_us": eager.info["wall_ms"] * us, "eager_host_issue_us": eager.info["issue_ms"] * us,
            "graph_capture_ms": lean.info["graph_capture_ms"], "gpu_busy_per_layer_us": timed.compute_busy_ms * us,
            "ffn_method": method,
        }
        if B in (1, 8):
            out["rows"].append(result_row(f"host issue per layer-step, batch {B}, {mode} (us)", issue_us,
                                          f"<= {ISSUE_TARGET_US:g}", bool(issue_us <= ISSUE_TARGET_US)))
        out["rows"].append(result_row(f"overhead per layer-step, batch {B}, {mode} (us)", over,
                                      f"<= {OVERHEAD_TARGET_US:g}", bool(over <= OVERHEAD_TARGET_US)))
        if B == 1:
            ratio = _ratio(wall_us, busy_ms * us)
            out["rows"].append(result_row(f"gpu_only wall / device busy, batch 1, {mode}", ratio,
                                          f"<= {BUSY_RATIO_TARGET:g}",
                                          None if ratio is None else bool(ratio <= BUSY_RATIO_TARGET)))
    del eng
    free_device()
    return out


def overlap(hardware: HardwareProfile, device: str | None = None, quick: bool = False,
            batches: tuple[int, ...] = (8, 64), layers: int = 4, steps: int = 4, repeats: int = 3,
            graph: bool = True) -> dict:
    """Run time of a prefetch-heavy plan (``pregated``) against max(copy busy, compute busy): 1.0 is perfect
    overlap. Busy times from an eager timeline run; the run time from a lean run in the grids' mode."""
    dev = check_device(device)
    if quick:
        batches, steps = tuple(b for b in batches if b <= 8) or (1,), min(steps, 2)
    model = check_model(quick, layers)
    w = shared_weights(model, model.dtype)
    out: dict = {"model": model.name, "layers": model.moe_layers, "steps": steps, "per_batch": {}, "rows": []}
    for B in batches:
        wl = lockstep_workload(model, B, steps, seed=3)
        plan = next_layer_plan(wl, hardware)
        eng = OffloadEngine(model, plan.cache_experts, weights=w, device=dev)
        _, tl = eng.run(plan, wl, repeats=repeats, warmup=1, timeline=True)
        _, lean = eng.run(plan, wl, repeats=repeats, warmup=1, timeline=False, graph=_mode(graph))
        busy = max(tl.copy_busy_ms, tl.compute_busy_ms)
        ratio = _ratio(lean.info["wall_ms"], busy)
        mode = lean.info["engine_mode"]
        out["per_batch"][str(B)] = {
            "loads": plan.num_loads, "cache_experts": plan.cache_experts, "wall_ms": lean.info["wall_ms"],
            "engine_mode": mode, "timeline_total_ms": tl.total_ms, "copy_busy_ms": tl.copy_busy_ms,
            "compute_busy_ms": tl.compute_busy_ms, "stall_ms": tl.info["stall_ms"],
            "ratio_wall": ratio, "ratio_timeline": _ratio(tl.total_ms, busy),
        }
        out["rows"].append(result_row(f"overlap, batch {B}, {mode} (wall / max busy)", ratio, "<= 1.1",
                                      None if ratio is None else bool(ratio <= 1.1)))
        del eng
        free_device()
    return out


def correctness(hardware: HardwareProfile, device: str | None = None, quick: bool = False, layers: int = 2,
                batch: int = 8, steps: int = 4, graph: bool = True) -> dict:
    """Engine against the dense reference on this device, with plans that reuse slots hard (races would show),
    eagerly and (``graph``) as CUDA graph replays, which must also match the eager outputs."""
    dev = check_device(device)
    if quick:
        steps = min(steps, 2)
    out: dict = {"runs": {}, "rows": []}
    for dtype, tol, tol_graph in (("float32", 1e-4, 1e-6), ("bfloat16", 5e-2, 1e-2)):
        model = check_model(quick, layers).with_dtype(dtype)
        w = shared_weights(model, dtype)
        wl = lockstep_workload(model, batch, steps, seed=5)
        ref = dense_reference(model, w, wl, device=dev)
        plans = {"lru_small_cache": planned(wl, "on_demand", max(model.top_k, 2), hardware),
                 "lru_per_item": planned(wl, "on_demand", max(2 * model.top_k, 4), hardware, "per_item"),
                 "next_layer_prefetch": next_layer_plan(wl, hardware)}
        for pname, plan in plans.items():
            eng = OffloadEngine(model, plan.cache_experts, weights=w, device=dev)
            eager, tl = eng.run(plan, wl, repeats=1, warmup=1, timeline=False)
            err = max_rel_error(eager, ref)
            key = f"{dtype}/{pname}"
            out["runs"][key] = {"rel_err": err, "tolerance": tol, "loads": plan.num_loads, "ffn_path": eng.ffn}
            out["rows"].append(result_row(f"max rel err {key}", err, f"<= {tol:g}", bool(err <= tol)))
            if graph and eng.cuda:
                got, tg = eng.run(plan, wl, repeats=2, warmup=1, timeline=False, graph="auto")
                if tg.info["engine_mode"] == "graph":
                    g_ref, g_eager = max_rel_error(got, ref), max_rel_error(got, eager)
                    same = all(tg.info[k] == tl.info[k] for k in ("copies_issued", "bytes_copied",
                                                                  "computes_issued", "uses_issued"))
                    out["runs"][f"{key}/graph"] = {"rel_err": g_ref, "rel_err_vs_eager": g_eager,
                                                   "same_counts": same}
                    out["rows"].append(result_row(f"max rel err {key}, graph", g_ref, f"<= {tol:g}",
                                                  bool(g_ref <= tol and same)))
                    out["rows"].append(result_row(f"graph vs eager {key}", g_eager, f"<= {tol_graph:g}",
                                                  bool(g_eager <= tol_graph)))
                else:
                    out["rows"].append(result_row(f"max rel err {key}, graph", None, f"<= {tol:g}", None,
                                                  tg.info["graph_fallback"]))
            del eng
            free_device()
    return out


CHECKS = {
    "copy_efficiency": copy_efficiency,
    "host_overhead": host_overhead,
    "overlap": overlap,
    "peer_accelerate": peer_accelerate,
    "correctness": correctness,
}


def _environment(dev: torch.device, quick: bool, hardware: HardwareProfile, graph: bool) -> dict:
    """The shared environment record plus what is particular to these checks (device, sizes, profile, peer)."""
    return {**environment(), "date": utc_now(), "device": str(dev), "quick": quick, "hardware": hardware.name,
            "engine_mode_asked": "graph" if graph else "eager", "accelerate": installed_version("accelerate")}


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _fmt(v) -> str:
    return f"{v:>12.4g}" if v is not None else f"{'-':>12}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m artifact.experiments.gpu_checks",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_checks.json")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (forced without CUDA)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--checks", nargs="*", default=list(CHECKS), choices=list(CHECKS))
    ap.add_argument("--hardware", default="h200",
                    help="hardware profile the plans are made on: a name in results/hardware/ or a JSON path")
    ap.add_argument("--eager", action="store_true",
                    help="run the engine's eager issue loop instead of one CUDA graph replay per run")
    args = ap.parse_args(argv)
    hardware = load_profile(args.hardware)
    dev = check_device(args.device)
    quick = args.quick or dev.type != "cuda"
    graph = not args.eager
    if quick and not args.quick:
        print("gpu_checks: no CUDA device: running --quick on the CPU (timing figures are meaningless)")
    results = {"environment": _environment(dev, quick, hardware, graph), "checks": {}}
    crashed = []
    for name in args.checks:
        t0 = time.perf_counter()
        try:
            res = CHECKS[name](hardware, device=str(dev), quick=quick, graph=graph)
        except Exception as exc:  # a crash is recorded and reported; the other checks still run
            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(), "rows": []}
            crashed.append(name)
        res["seconds"] = time.perf_counter() - t0
        results["checks"][name] = res
        note = f"  CRASHED: {res['error']}" if "error" in res else (f"  skipped: {res['skipped']}"
                                                                    if "skipped" in res else "")
        print(f"  {name}: {res['seconds']:.1f} s{note}", flush=True)
    path = atomic_write_json(Path(args.out) / "gpu_checks.json", results, default=_json_default)
    print(f"\n{'check':<17} {'figure':<52} {'value':>12} {'target':>10} {'met':>5}")
    for name, res in results["checks"].items():
        for r in res.get("rows", []):
            met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
            print(f"{name:<17} {r['figure']:<52} {_fmt(r['value'])} {r['target']:>10} {met:>5}"
                  + (f"  ({r['why']})" if r.get("why") else ""))
        if "error" in res:
            print(f"{name:<17} {'CRASHED: ' + res['error'][:80]}")
    print(f"\nwritten to {path}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
