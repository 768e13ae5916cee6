"""Calibration: measure this machine's copy, expert FFN and NON-MoE times into a :class:`HardwareProfile`.

What is measured, and how (the simulator times plans from exactly these tables):

- **Pinned H2D copies** against size: one pinned host buffer (allocated like the engine's slab, in one piece) and one
  device buffer; each size is copied ``repeats`` times back to back on a dedicated copy stream, every copy between
  its own pair of CUDA events; the table holds the median ms. ``extra["copy_gbps"]`` keeps the GB/s per size.
- **Expert FFN** against tokens (1, 2, 4, ..., 4096) for every model preset, through the engine's own COMPUTE code
  (:class:`~artifact.engine.kernels.ExpertKernels`: gather + FFN + gate + scatter-add, on the FFN path the engine
  picks for this device and dtype) with one expert per COMPUTE. ``extra["ffn_group_tables"]`` adds the time per
  expert when one COMPUTE runs ``group`` experts of ``t`` tokens each: on the grouped path a COMPUTE's fixed cost is
  shared by its experts, which one-expert timings cannot show.
- **NON-MoE stand-in** (RMSNorm + ``[d_model x d_model]`` matmul + residual add) against tokens in the step, at the
  first model's ``d_model``; every model's table is in ``extra["nonmoe_tables"]``.
- **Host issue costs** (``host_issue_us``): microseconds of host time per NON-MoE op, LOAD, COMPUTE and expert in
  a COMPUTE, fitted to lean engine runs (``measure_host_issue``), whose plans come from the one scheduler
  (:func:`artifact.planner.plan`) on the profile measured so far.
- **COMPUTE grid** (``compute_tables``, what the simulator times COMPUTEs with): one COMPUTE of ``n`` experts with
  ``t`` tokens each, for ``n`` in ``GRID_EXPERTS`` (up to the model's experts) and ``t`` in ``GRID_TOKENS``.

Device times are GPU times (:class:`~artifact.measure.timers.Timer`): a spin kernel (``torch.cuda._sleep``) holds
the stream while the host queues all repeats, so the events time the kernels, not Python's launch rate. The host's
own issue time per call is in ``extra["ffn_issue_us"]`` (what bounds a host-bound engine). On the CPU everything is
synchronous and timed with ``perf_counter``; ``quick=True`` uses few sizes and repeats so a test can run it.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from artifact.engine.kernels import ExpertKernels, grouped_mm_supported
from artifact.engine.weights import expert_layout, expert_numel, torch_dtype
from artifact.measure.environment import device_name, driver_version, gpu_family, utc_now
from artifact.measure.timers import Timer
from artifact.models import PRESETS, ModelSpec, get_model
from artifact.runtime.hardware import HardwareProfile, save_profile

MB = 1_000_000
# Sizes of FACTS.md section 1 plus one bf16 Switch expert (9,437,184 B) and one fp32 (18,874,368 B).
COPY_SIZES_MB = (1.0, 2.5, 4.0, 9.437184, 18.874368, 64.0, 128.0, 336.0)
FFN_TOKENS = tuple(2 ** i for i in range(13))  # 1 .. 4096
QUICK_COPY_SIZES_MB = (1.0, 4.0, 16.0)
QUICK_TOKENS = (1, 4, 16)
# The COMPUTE grid: experts in one COMPUTE x tokens per expert (decode batches of 1-64 and prefill chunks).
GRID_EXPERTS = (1, 2, 4, 8, 16, 32, 64)
GRID_TOKENS = (1, 2, 4, 8, 16, 32, 64, 256, 1024)
QUICK_GRID_EXPERTS = (1, 2)
QUICK_GRID_TOKENS = (1, 4)


def _copy_buffers(max_bytes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    pin = device.type == "cuda"
    src = torch.empty(max_bytes, dtype=torch.uint8, pin_memory=pin)  # one pinned piece, like the engine's slab
    src.fill_(1)  # touch every page before timing
    dst = torch.empty(max_bytes, dtype=torch.uint8, device=device)
    return src, dst


def measure_copy(device: str | torch.device = "cuda", sizes_bytes: Sequence[int] = (), repeats: int = 20,
                 ) -> list[tuple[int, float]]:
    """Median ms of one host-to-device copy (pinned source, copy stream) per size in ``sizes_bytes``."""
    dev = torch.device(device)
    sizes = [int(s) for s in sizes_bytes]
    if not sizes:
        raise ValueError("measure_copy: no sizes given")
    src, dst = _copy_buffers(max(sizes), dev)
    stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
    timer = Timer(dev, stream)
    out = []
    for n in sizes:
        s, d = src[:n], dst[:n]
        ms, _ = timer(lambda s=s, d=d: d.copy_(s, non_blocking=True), repeats)
        out.append((n, ms))
    return out


def _random_slots(model: ModelSpec, n: int, device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``[n, numel]`` expert weights drawn on the device (timing only needs realistic magnitudes, not the host slab)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    slots = torch.empty(n, expert_numel(model), device=device, dtype=dtype)
    for _name, (r, c), off in expert_layout(model):
        slots[:, off:off + r * c].copy_(torch.randn(n, r * c, generator=gen, device=device) * c ** -0.5)
    return slots


def measure_ffn(model: ModelSpec, device: str | torch.device = "cuda", dtype: str | torch.dtype = "bfloat16",
                tokens: Sequence[int] = FFN_TOKENS, repeats: int = 20, group: int = 1, ffn: str = "auto",
                seed: int = 0) -> tuple[list[tuple[int, float]], list[tuple[int, float]], str]:
    """Time of one COMPUTE of ``group`` experts with ``t`` tokens each, per expert, through the engine's kernels.

    Returns ``(table of (t, ms per expert), table of (t, host issue us per COMPUTE), FFN path used)``.
    """
    dev, dt = torch.device(device), torch_dtype(dtype)
    if ffn == "auto":
        ok, _ = grouped_mm_supported(dev, dt)
        ffn = "grouped" if ok and dev.type == "cuda" else "loop"
    group = max(1, min(group, model.experts))
    slots = _random_slots(model, group, dev, dt, seed)
    kernels = ExpertKernels(model, slots, ffn)
    tmax = max(tokens)
    gen = torch.Generator(device=dev).manual_seed(seed + 1)
    x = torch.randn(group * tmax, model.d_model, generator=gen, device=dev).to(dt)  # [R, D]
    out = torch.zeros(group * tmax, model.d_model, device=dev, dtype=dt)  # [R, D]
    kernels.ensure_capacity(group * tmax if ffn == "grouped" else tmax)
    timer = Timer(dev)
    table, issue = [], []
    for t in tokens:
        n = group * t
        rows = torch.randperm(group * tmax, generator=gen, device=dev)[:n]  # [n]: a scattered gather, as in a batch
        gate = torch.full((n, 1), 0.5, device=dev, dtype=dt)  # [n, 1]
        if ffn == "grouped":
            offs = torch.arange(1, group + 1, device=dev, dtype=torch.int32) * t  # [group]
            work = [kernels.chunk_work(rows, gate, 0, group, offs)]
        else:
            work = [kernels.use_work(rows[j * t:(j + 1) * t], gate[j * t:(j + 1) * t], j) for j in range(group)]
        with torch.inference_mode():
            ms, us = timer(lambda work=work: kernels.run(work, x, out), repeats)
        table.append((int(t), ms / group))
        issue.append((int(t), us))
    return table, issue, ffn


def measure_nonmoe(d_model: int, device: str | torch.device = "cuda", dtype: str | torch.dtype = "bfloat16",
                   tokens: Sequence[int] = FFN_TOKENS, repeats: int = 20, seed: int = 0) -> list[tuple[int, float]]:
    """Time of the engine's NON-MoE stand-in over ``t`` tokens (``ExpertKernels.nonmoe``)."""
    dev, dt = torch.device(device), torch_dtype(dtype)
    gen = torch.Generator(device=dev).manual_seed(seed)
    wn_t = (torch.randn(d_model, d_model, generator=gen, device=dev) * d_model ** -0.5).to(dt).t()  # [D, D]
    tmax = max(tokens)
    h_all = torch.randn(tmax, d_model, generator=gen, device=dev).to(dt)  # [T, D]
    x_all = torch.empty(tmax, d_model, device=dev, dtype=dt)
    timer = Timer(dev)
    table = []
    for t in tokens:
        h, x = h_all[:t], x_all[:t]
        with torch.inference_mode():
            ms, _ = timer(lambda h=h, x=x: ExpertKernels.nonmoe(h, x, wn_t), repeats)
        table.append((int(t), ms))
    return table


def measure_host_issue(model: ModelSpec, hardware: HardwareProfile, device: str | torch.device = "cuda",
                       dtype: str = "bfloat16", repeats: int = 15, layers: int = 4, steps: int = 2,
                       quick: bool = False) -> dict:
    """Host time the engine spends issuing each kind of operation (lean runs: no timeline events).

    Runs the engine on short plans (``steps`` x ``layers`` layer-steps, so that the device's launch queue never
    fills and blocks the host, which would time the GPU instead) with and without copies, batched and per item, at
    batch 1, 8 and 64 (a ``layers``-layer slice of the model's expert shape, synthetic routing; ``gpu_only`` and
    ``on_demand`` plans of the one scheduler, which needs ``hardware`` although these two strategies' decisions do
    not read it); takes the median host issue time of ``repeats`` runs of each and fits, by least squares,
    ``issue = a * NON-MoE ops + b * LOADs + c * COMPUTEs + d * experts in COMPUTEs`` (microseconds per op, clipped
    at zero). When the device is faster than this, the engine is host-bound; the simulator adds these costs as a
    third resource (the issuing thread).
    """
    from artifact.engine import ExpertWeights, OffloadEngine
    from artifact.planner import plan as make_plan
    from artifact.traces.synthetic import generate
    from artifact.traces.workload import decode_workload

    dev = torch.device(device)
    spec = replace(model, name=f"{model.name}-slice", moe_layers=min(layers, model.moe_layers))
    weights = ExpertWeights.random(spec, dtype=dtype, seed=0)
    eng = OffloadEngine(spec, spec.total_experts, weights=weights, device=dev)
    rows, ys = [], []
    batches = (1, 8) if quick else (1, 8, 64)
    for b in batches:
        # b sequences of exactly `steps` tokens: every step runs the whole batch.
        wl = decode_workload(generate(spec, b, steps, b, lengths=[steps] * b), b, steps, model=spec)
        cache = spec.top_k * max(b, 2)
        plans = [make_plan(wl, strategy, slots, protocol, 0, hardware)
                 for strategy, slots in (("gpu_only", spec.total_experts), ("on_demand", cache))
                 for protocol in ("batched", "per_item")]
        for plan in plans:
            _, tl = eng.run(plan, wl, repeats=3 if quick else repeats, warmup=1, timeline=False)
            issue = tl.info["issue_ms"]  # median over the repeats
            rows.append([plan.layer_steps, plan.num_loads, plan.num_computes, plan.use_gid.shape[0]])
            ys.append(issue * 1e3)
    X = np.asarray(rows, float)
    y = np.asarray(ys, float)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    if (coef < 0).any():  # refit without the terms that came out negative (an active-set step of NNLS)
        keep = coef > 0
        sub, *_ = np.linalg.lstsq(X[:, keep], y, rcond=None)
        coef = np.zeros_like(coef)
        coef[keep] = np.maximum(sub, 0.0)
    fit = X @ coef
    return {"nonmoe_us": float(coef[0]), "load_us": float(coef[1]), "compute_us": float(coef[2]),
            "use_us": float(coef[3]), "fit_max_rel_err": float(np.max(np.abs(fit - y) / np.maximum(y, 1e-9))),
            "runs": [{"nonmoe": r[0], "loads": r[1], "computes": r[2], "uses": r[3], "issue_us": v}
                     for r, v in zip(rows, ys)]}


def calibrate(device: str = "cuda", models: Sequence[str | ModelSpec] | None = None, out: str | None = None,
              quick: bool = False, name: str | None = None, dtype: str = "bfloat16", repeats: int | None = None,
              group: int = 8, ffn: str = "auto") -> HardwareProfile:
    """Measure this machine and return a :class:`HardwareProfile` (written atomically to ``out`` when given).

    ``models`` default to every preset (names or :class:`ModelSpec`); ``quick`` uses a few sizes, tokens and
    repeats (for tests and smoke runs); ``name`` defaults to the GPU's family (``h200``) or ``cpu``.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("calibrate: device 'cuda' asked for, but torch.cuda.is_available() is False")
    specs = [get_model(m) if isinstance(m, str) else m for m in (models if models is not None else PRESETS)]
    if not specs:
        raise ValueError("calibrate: no models given")
    reps = repeats or (3 if quick else 20)
    sizes_mb = QUICK_COPY_SIZES_MB if quick else COPY_SIZES_MB
    tokens = QUICK_TOKENS if quick else FFN_TOKENS
    grp = min(group, 2) if quick else group

    copy_table = measure_copy(dev, [int(mb * MB) for mb in sizes_mb], max(reps, 10))  # copies are cheap
    ffn_tables, group_tables, issue_tables, nonmoe_tables, compute_tables = {}, {}, {}, {}, {}
    path = ffn
    for spec in specs:
        tab, issue, path = measure_ffn(spec, dev, dtype, tokens, reps, group=1, ffn=ffn)
        ffn_tables[spec.name] = tuple(tab)
        issue_tables[spec.name] = [list(p) for p in issue]
        gtab, _, _ = measure_ffn(spec, dev, dtype, tokens, reps, group=grp, ffn=ffn)
        group_tables[spec.name] = [list(p) for p in gtab]
        nonmoe_tables[spec.name] = [list(p) for p in measure_nonmoe(spec.d_model, dev, dtype, tokens, reps)]
        g_exp = [n for n in (QUICK_GRID_EXPERTS if quick else GRID_EXPERTS) if n <= spec.experts]
        g_tok = list(QUICK_GRID_TOKENS if quick else GRID_TOKENS)
        rows = []
        for n in g_exp:
            tab_n, _, _ = measure_ffn(spec, dev, dtype, g_tok, reps, group=n, ffn=ffn)
            rows.append([ms * n for _, ms in tab_n])  # ms per expert -> ms per COMPUTE
        compute_tables[spec.name] = {"experts": g_exp, "tokens": g_tok, "ms": rows}
    dev_name = device_name(dev)
    driver, cuda_v = (driver_version(), torch.version.cuda) if dev.type == "cuda" else ("n/a", None)
    now = utc_now()
    first = specs[0]
    measured = HardwareProfile(
        name=name or gpu_family(dev),
        description=f"{dev_name}, calibrated by artifact.measure.calibrate ({dtype}, {path} FFN path, "
                    f"median of {reps})",
        copy_table=tuple(copy_table),
        ffn_tables=ffn_tables,
        nonmoe_table=tuple((t, ms) for t, ms in nonmoe_tables[first.name]),
        source=f"artifact.measure.calibrate on {now}",
        compute_tables=compute_tables,
    )
    # The host-issue runs are planned on the profile measured so far (planning needs one; gpu_only and on_demand
    # decide without reading it), then their fit completes it.
    host_issue = measure_host_issue(first, measured, dev, dtype, quick=quick)
    profile = replace(
        measured,
        host_issue_us={k: host_issue[k] for k in ("nonmoe_us", "load_us", "compute_us", "use_us")},
        extra={
            "device_name": dev_name,
            "driver": driver,
            "torch": torch.__version__,
            "cuda": cuda_v,
            "date": now,
            "host": platform.node(),
            "dtype": dtype,
            "ffn_path": path,
            "repeats": reps,
            "quick": quick,
            "copy_gbps": {str(b): (b / (ms * 1e6) if ms > 0 else float("nan")) for b, ms in copy_table},
            "ffn_group": grp,
            "ffn_group_tables": group_tables,
            "ffn_issue_us": issue_tables,
            "nonmoe_d_model": first.d_model,
            "nonmoe_tables": nonmoe_tables,
            "host_issue_fit": host_issue,
            "method": "CUDA events per call with the stream held by a spin kernel while the host queues (GPU time); "
                      "perf_counter on the CPU",
        },
    )
    if out:
        save_profile(profile, out)
    return profile


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m artifact.measure.calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="*", default=None, help="preset names (default: all)")
    ap.add_argument("--out", default=None, help="profile JSON path (written atomically)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    prof = calibrate(args.device, args.models, args.out, args.quick, args.name, args.dtype)
    print(f"{prof.name}: {prof.description}")
    print(f"  copy: {prof.copy_bandwidth_gbps:.1f} GB/s fitted, latency {prof.copy_latency_ms * 1e3:.1f} us")
    for b, gbps in prof.extra["copy_gbps"].items():
        print(f"    {int(b) / MB:9.3f} MB  {gbps:6.1f} GB/s")
    for m, tab in prof.ffn_tables.items():
        print(f"  ffn {m}: " + ", ".join(f"{t}:{ms:.3f}" for t, ms in tab) + " (tokens:ms)")
    if args.out:
        print(f"  written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
