"""Calibration: measure this machine's copy, expert FFN and NON-MoE times into a :class:`HardwareProfile`.

What is measured, and how (the simulator times plans from exactly these tables):

- **Pinned H2D copies** (:mod:`artifact.measure.copies`): the engine's own copy pattern (one expert at a time from a
  slice of one pinned host slab into a slot of a device slab, on a copy stream, back to back), at the sizes of
  ``COPY_SIZES_MB`` and at every model's expert size; sizes interleaved round-robin and rounds repeated until the
  95% confidence half-width of every size's median is under 0.5% (capped in rounds and time). The spread reached
  is in ``extra["copy_spread"]`` (per size), the GB/s in ``extra["copy_gbps"]``.
- **Expert FFN** against tokens (1, 2, 4, ..., 4096) for every model preset, through the engine's own COMPUTE code
  (:class:`~artifact.engine.kernels.ExpertKernels`: gather + FFN + gate + scatter-add, on the FFN path the engine
  picks for this device and dtype) with one expert per COMPUTE. ``extra["ffn_group_tables"]`` adds the time per
  expert when one COMPUTE runs ``group`` experts of ``t`` tokens each.
- **COMPUTE grid** (``compute_tables``, what the simulator times COMPUTEs with): one COMPUTE of ``n`` experts with
  ``t`` tokens each, for ``n`` in ``GRID_EXPERTS`` (up to the model's experts and the memory budget) and ``t`` in
  ``GRID_TOKENS``. Each model's slots and activations are allocated once, for the largest group and token count it
  needs within ``memory_budget`` bytes (a DeepSeek-V3 expert is 88 MB), and every cell runs on views of them. A
  cell whose repeats scatter by more than 2% (IQR over median) is measured again (up to twice more) and the median
  of its passes kept; ``extra["compute_spread"]`` records the spread per model. Back-to-back calls read disjoint
  windows of slots in rotation (``ROTATE_WINDOWS``), as consecutive layer-steps of the engine read other experts: a
  call never finds its weights left in the L2 cache by the previous one (3 us of a 31 us COMPUTE on the H200).
- **Cross-stream wait** (``dependency_us``, :func:`measure_dependency`): what a LOAD -> COMPUTE -> LOAD chain with
  event waits costs beyond its parts, per wait, inside a CUDA graph (``extra["dependency"]``).
- **NON-MoE stand-in** (RMSNorm + ``[d_model x d_model]`` matmul + residual add) against tokens in the step, per
  model (``extra["nonmoe_tables"]``; the first model's is the profile's ``nonmoe_table``).
- **Host issue costs** (``host_issue_us``): microseconds of host time per NON-MoE op, LOAD, COMPUTE and expert in
  a COMPUTE, fitted to lean engine runs (``measure_host_issue``), in the engine mode the grids run on this device
  (``extra["host_issue_mode"]``: ``graph`` on CUDA, a CUDA graph replay per run, ``eager`` on the CPU); the other
  mode's fit is in ``extra["host_issue_us_by_mode"]``, with each fit's spread in ``extra["host_issue_fit"]``.

Device times are GPU times (:class:`~artifact.measure.timers.Timer`): a spin kernel (``torch.cuda._sleep``) holds
the stream while the host queues all repeats, so the events time the kernels, not Python's launch rate. On the CPU
everything is synchronous and timed with ``perf_counter``; ``quick=True`` uses few sizes and repeats so a test can
run it. ``python -m artifact.measure.calibrate --compare A.json B.json`` holds two profiles against each other
(:mod:`artifact.measure.compare`).
"""

from __future__ import annotations

import itertools
import platform
import statistics
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from artifact.engine.kernels import ExpertKernels, grouped_mm_supported
from artifact.engine.weights import expert_layout, expert_numel, torch_dtype
from artifact.measure.copies import measure_copies
from artifact.measure.environment import device_name, driver_version, gpu_family, utc_now
from artifact.measure.timers import Timer, spread
from artifact.models import PRESETS, ModelSpec, get_model
from artifact.runtime.hardware import HardwareProfile, save_profile

MB = 1_000_000
# Sizes of FACTS.md section 1 plus one bf16 Switch expert (9,437,184 B) and one fp32 (18,874,368 B); every model's
# expert size is added to these.
COPY_SIZES_MB = (1.0, 2.5, 4.0, 9.437184, 18.874368, 64.0, 128.0, 336.0)
FFN_TOKENS = tuple(2 ** i for i in range(13))  # 1 .. 4096
QUICK_COPY_SIZES_MB = (1.0, 4.0, 16.0)
QUICK_TOKENS = (1, 4, 16)
# The COMPUTE grid: experts in one COMPUTE x tokens per expert (decode batches of 1-64 and prefill chunks).
GRID_EXPERTS = (1, 2, 4, 8, 16, 32, 64)
GRID_TOKENS = (1, 2, 4, 8, 16, 32, 64, 256, 1024)
QUICK_GRID_EXPERTS = (1, 2)
QUICK_GRID_TOKENS = (1, 4)
MEMORY_BUDGET = 16_000_000_000  # bytes of slots + activations one model's FFN timings may hold (at most half free)
RETIME_IQR = 0.02  # a COMPUTE-grid cell whose repeats scatter more than this is measured again
RETIME_PASSES = 2
# COMPUTE timings rotate over this many disjoint windows of slots (when the bench holds them): 8 switch-base-128
# experts are 75 MB, more than an H200's 50 MB L2 cache, so no call reads weights the previous one left there.
ROTATE_WINDOWS = 8
DEPENDENCY_CHAIN = 24  # LOAD -> COMPUTE pairs in the graph that times the cross-stream wait


def measure_copy(device: str | torch.device = "cuda", sizes_bytes: Sequence[int] = (), repeats: int = 20,
                 ) -> list[tuple[int, float]]:
    """Median ms of one host-to-device copy per size in ``sizes_bytes`` (the engine's copy pattern, at least
    ``repeats`` bursts per size; see :func:`~artifact.measure.copies.measure_copies`)."""
    sizes = [int(s) for s in sizes_bytes]
    if not sizes:
        raise ValueError("measure_copy: no sizes given")
    table, _ = measure_copies(device, sizes, min_rounds=max(3, repeats), max_rounds=max(3, repeats))
    by = dict(table)
    return [(n, by[n]) for n in sizes]


def copy_sizes(specs: Sequence[ModelSpec], dtype: str, quick: bool = False) -> list[int]:
    """The size table and every model's expert size in ``dtype`` (what the engine copies), sorted, distinct."""
    table = QUICK_COPY_SIZES_MB if quick else COPY_SIZES_MB
    nbytes = torch.tensor([], dtype=torch_dtype(dtype)).element_size()
    experts = [] if quick else [s.expert_params * nbytes for s in specs]
    return sorted({int(round(mb * MB)) for mb in table} | set(experts))


# --------------------------------------------------------------------------------------------------------------
# Expert FFN and COMPUTE timings through the engine's kernels
# --------------------------------------------------------------------------------------------------------------


def _pick_ffn(dev: torch.device, dt: torch.dtype, ffn: str) -> str:
    if ffn == "auto":
        ok, _ = grouped_mm_supported(dev, dt)
        return "grouped" if ok and dev.type == "cuda" else "loop"
    return ffn


class ComputeBench:
    """One model's expert slots and activations, allocated once for the largest COMPUTE it will time (at most
    ``max_group`` experts, ``max_rows`` tokens in all), and COMPUTEs of any smaller shape on views of them."""

    def __init__(self, model: ModelSpec, device: torch.device, dtype: torch.dtype, ffn: str, max_group: int,
                 max_rows: int, seed: int = 0) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.ffn = _pick_ffn(device, dtype, ffn)
        self.max_group = max(1, min(max_group, model.experts))
        gen = torch.Generator(device=device).manual_seed(seed)
        slots = torch.empty(self.max_group, expert_numel(model), device=device, dtype=dtype)  # [G, numel]
        for _name, (r, c), off in expert_layout(model):  # matrix by matrix: no fp32 copy of all slots at once
            for g in range(self.max_group):
                slots[g, off:off + r * c].copy_(torch.randn(r * c, generator=gen, device=device) * c ** -0.5)
        self.kernels = ExpertKernels(model, slots, self.ffn)
        rows = max(1, max_rows)
        self.x = torch.randn(rows, model.d_model, generator=gen, device=device).to(dtype)  # [R, D]
        self.out = torch.zeros(rows, model.d_model, device=device, dtype=dtype)  # [R, D]
        self.kernels.ensure_capacity(rows)
        self.gen = gen
        self.timer = Timer(device)

    @staticmethod
    def bytes_needed(model: ModelSpec, dtype: torch.dtype, group: int, rows: int) -> int:
        """Device bytes of ``group`` slots and of the inputs, outputs, staging and kernel temporaries of ``rows``
        tokens."""
        el = torch.tensor([], dtype=dtype).element_size()
        f1 = model.d_ff if model.activation == "relu" else 2 * model.d_ff
        return el * (group * expert_numel(model) + rows * (4 * model.d_model + f1))

    def time(self, group: int, tokens: int, repeats: int) -> tuple[list[float], float]:
        """(ms of each repeat of one COMPUTE of ``group`` experts x ``tokens`` tokens, host issue us per COMPUTE)."""
        n = group * tokens
        if group > self.max_group or n > self.x.shape[0]:
            raise ValueError(f"ComputeBench of {self.model.name}: {group} experts x {tokens} tokens exceed its "
                             f"{self.max_group} slots or {self.x.shape[0]} rows")
        k = self.kernels
        works = self.works(group, tokens)
        turn = itertools.cycle(works)
        with torch.inference_mode():
            # On CUDA the engine replays whole plans as graphs (its default), so time COMPUTEs the same way; calls
            # back to back read other slots (other experts), as the engine's layer-steps do, so a call does not
            # find the previous call's weights in the L2 cache.
            return self.timer.graph_samples(lambda: k.run(next(turn), self.x, self.out), repeats)

    def works(self, group: int, tokens: int, windows: int = ROTATE_WINDOWS) -> list[list[tuple]]:
        """Work lists of one COMPUTE of ``group`` experts x ``tokens`` tokens, on up to ``windows`` disjoint windows
        of ``group`` slots (as many as the bench holds)."""
        n = group * tokens
        dev, k = self.device, self.kernels
        rows = torch.randperm(self.x.shape[0], generator=self.gen, device=dev)[:n]  # a scattered gather
        gate = torch.full((n, 1), 0.5, device=dev, dtype=self.dtype)  # [n, 1]
        offs = torch.arange(1, group + 1, device=dev, dtype=torch.int32) * tokens  # [group]
        out = []
        for w in range(max(1, min(windows, self.max_group // group))):
            lo = w * group
            if self.ffn == "grouped":
                out.append([k.chunk_work(rows, gate, lo, lo + group, offs)])
            else:
                out.append([k.use_work(rows[j * tokens:(j + 1) * tokens], gate[j * tokens:(j + 1) * tokens], lo + j)
                            for j in range(group)])
        return out


def _bench_for(model: ModelSpec, dev: torch.device, dt: torch.dtype, ffn: str, grid_groups: Sequence[int],
               grid_tokens: int, table_group: int, table_tokens: int, budget: int
               ) -> tuple[ComputeBench, list[int]]:
    """One bench for every timing of a model: the FFN tables (``table_group`` experts x up to ``table_tokens``) and
    the COMPUTE grid's groups whose largest COMPUTE (``g`` x ``grid_tokens``) fits ``budget`` with them. Returns
    the bench and the grid groups it can time (the simulator scales beyond the largest)."""
    table_rows = max(1, table_group) * table_tokens

    def need(g: int) -> int:
        return ComputeBench.bytes_needed(model, dt, max(g, table_group), max(table_rows, g * grid_tokens))

    fits = [g for g in grid_groups if g <= model.experts and need(g) <= budget] or [1]
    top = max(fits)
    return ComputeBench(model, dev, dt, ffn, max(top, table_group), max(table_rows, top * grid_tokens)), fits


def measure_ffn(model: ModelSpec, device: str | torch.device = "cuda", dtype: str | torch.dtype = "bfloat16",
                tokens: Sequence[int] = FFN_TOKENS, repeats: int = 20, group: int = 1, ffn: str = "auto",
                seed: int = 0, bench: ComputeBench | None = None
                ) -> tuple[list[tuple[int, float]], list[tuple[int, float]], str]:
    """Time of one COMPUTE of ``group`` experts with ``t`` tokens each, per expert, through the engine's kernels.

    Returns ``(table of (t, ms per expert), table of (t, host issue us per COMPUTE), FFN path used)``. ``bench``
    reuses slots and activations already allocated (at least ``group`` x ``max(tokens)``).
    """
    dev, dt = torch.device(device), torch_dtype(dtype)
    group = max(1, min(group, model.experts))
    b = bench or ComputeBench(model, dev, dt, ffn, group, group * max(tokens), seed)
    table, issue = [], []
    for t in tokens:
        ms, us = b.time(group, int(t), repeats)
        table.append((int(t), statistics.median(ms) / group))
        issue.append((int(t), us))
    return table, issue, b.ffn


def measure_compute_grid(bench: ComputeBench, groups: Sequence[int], tokens: Sequence[int], repeats: int) -> dict:
    """The COMPUTE grid (ms per COMPUTE of ``n`` experts x ``t`` tokens) and its spread; noisy cells re-timed."""
    cells, spreads = [], []
    for n in groups:
        row, sp_row = [], []
        for t in tokens:
            ms, _ = bench.time(n, t, repeats)
            passes = [statistics.median(ms)]
            sp = spread(ms)
            for _ in range(RETIME_PASSES):
                if sp["iqr_rel"] is None or sp["iqr_rel"] <= RETIME_IQR:
                    break
                ms, _ = bench.time(n, t, repeats)
                passes.append(statistics.median(ms))
                sp = spread(ms)
            row.append(statistics.median(passes))
            sp_row.append(round(sp["iqr_rel"] or 0.0, 6))
            spreads.append({"experts": n, "tokens": t, "iqr_rel": sp["iqr_rel"], "passes": len(passes),
                            "pass_spread_rel": (max(passes) - min(passes)) / statistics.median(passes)
                            if len(passes) > 1 else 0.0})
        cells.append(row)
    iqr = [s["iqr_rel"] or 0.0 for s in spreads]
    return {"table": {"experts": list(groups), "tokens": list(tokens), "ms": cells},
            "spread": {"iqr_rel": [[v for v in r] for r in _rows(spreads, len(tokens))],
                       "iqr_rel_median": statistics.median(iqr), "iqr_rel_max": max(iqr),
                       "retimed": [s for s in spreads if s["passes"] > 1], "repeats": repeats}}


def measure_dependency(bench: ComputeBench, repeats: int = 15, chain: int = DEPENDENCY_CHAIN) -> dict:
    """Latency of a wait across the copy and compute streams, inside a CUDA graph as the engine's graph mode has it.

    Three graphs of ``chain`` operations each, every replay timed (GPU time, the stream held while the host queues):
    LOADs alone (one expert each, from a slice of one pinned host slab into a slot, back to back on a copy stream);
    COMPUTEs alone (one expert x one token, slots in rotation); and the chain LOAD i -> COMPUTE i (on the slot just
    loaded, waiting for the LOAD's event) -> LOAD i+1 (waiting for COMPUTE i's event), the pattern of a demand miss.
    The chain's time beyond the sum of its parts, per wait (two per pair), is the profile's ``dependency_us``
    (clipped at 0). On the CPU every op is synchronous and there is no second stream: 0.
    """
    if bench.device.type != "cuda":
        return {"dependency_us": 0.0, "method": "no device streams on the CPU: not modelled"}
    dev, k = bench.device, bench.kernels
    works = bench.works(1, 1)
    rot = len(works)
    slots = k.slots.view(torch.uint8).view(k.slots.shape[0], -1)  # [S, bytes]
    nbytes = slots.shape[1]
    host = torch.empty(rot, nbytes, dtype=torch.uint8, pin_memory=True)  # one pinned slab: a slice per expert
    host.fill_(1)
    cs, ks = torch.cuda.Stream(dev), torch.cuda.Stream(dev)

    def capture(kind: str) -> torch.cuda.CUDAGraph:
        loaded = [torch.cuda.Event() for _ in range(chain)]
        done = [torch.cuda.Event() for _ in range(chain)]
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(dev)
        with torch.cuda.graph(graph, stream=cs):
            ks.wait_stream(cs)
            for i in range(chain):
                j = i % rot
                if kind != "computes":
                    with torch.cuda.stream(ks):
                        if kind == "chain" and i:
                            ks.wait_event(done[i - 1])
                        slots[j].copy_(host[j], non_blocking=True)
                        loaded[i].record(ks)
                if kind != "loads":
                    if kind == "chain":
                        cs.wait_event(loaded[i])
                    k.run(works[j], bench.x, bench.out)
                    done[i].record(cs)
            cs.wait_stream(ks)
        return graph

    per_op = {}
    spreads = {}
    with torch.inference_mode():
        for w in works:  # lazy initialisation outside the capture
            k.run(w, bench.x, bench.out)
        for kind in ("loads", "computes", "chain"):
            graph = capture(kind)
            ms = [m / chain for m in bench.timer.replay_samples(graph, cs, repeats)[0]]
            per_op[kind] = statistics.median(ms)
            spreads[kind] = spread(ms)
            del graph
    extra_ms = per_op["chain"] - per_op["loads"] - per_op["computes"]
    return {"dependency_us": max(0.0, extra_ms / 2 * 1e3), "per_pair_ms": per_op, "chain": chain, "slots": rot,
            "expert_bytes": int(nbytes), "repeats": repeats,
            "iqr_rel": {kind: sp["iqr_rel"] for kind, sp in spreads.items()},
            "method": "graphs of LOADs alone, COMPUTEs alone (1 expert x 1 token) and the chain LOAD -> COMPUTE -> "
                      "LOAD with an event wait each way; (chain - LOADs - COMPUTEs) / 2 per pair"}


def _rows(spreads: list[dict], width: int) -> list[list[float]]:
    vals = [s["iqr_rel"] or 0.0 for s in spreads]
    return [vals[i:i + width] for i in range(0, len(vals), width)]


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
            ms, _ = timer.graph_samples(lambda h=h, x=x: ExpertKernels.nonmoe(h, x, wn_t), repeats)
        table.append((int(t), statistics.median(ms)))
    return table


# --------------------------------------------------------------------------------------------------------------
# Host issue costs
# --------------------------------------------------------------------------------------------------------------


def measure_host_issue(model: ModelSpec, hardware: HardwareProfile, device: str | torch.device = "cuda",
                       dtype: str = "bfloat16", repeats: int = 31, layers: int = 4, steps: int = 2,
                       quick: bool = False, graph: bool = False, engine=None) -> dict:
    """Host time the engine spends issuing each kind of operation (lean runs: no timeline events).

    Runs the engine on short plans (``steps`` x ``layers`` layer-steps, so that the device's launch queue never
    fills and blocks the host, which would time the GPU instead) with and without copies, batched and per item, at
    batch 1, 8 and 64 (a ``layers``-layer slice of the model's expert shape, synthetic routing; ``gpu_only`` and
    ``on_demand`` plans of the one scheduler, which needs ``hardware`` although these two strategies' decisions do
    not read it); takes the median host issue time of ``repeats`` runs of each and fits, by least squares,
    ``issue = a * NON-MoE ops + b * LOADs + c * COMPUTEs + d * experts in COMPUTEs`` (microseconds per op, clipped
    at zero). ``graph=True`` times the launch of each plan's CUDA graph instead (``OffloadEngine.run(graph=True)``)
    and fits a constant per launch beside the per-op terms (``launch_us``). When the device is faster than this,
    the engine is host-bound; the simulator adds these costs as a third resource (the issuing thread).
    """
    from artifact.engine import ExpertWeights, OffloadEngine
    from artifact.planner import plan as make_plan
    from artifact.traces.synthetic import generate
    from artifact.traces.workload import decode_workload

    dev = torch.device(device)
    spec = replace(model, name=f"{model.name}-slice", moe_layers=min(layers, model.moe_layers))
    eng = engine
    if eng is None:
        weights = ExpertWeights.random(spec, dtype=dtype, seed=0)
        eng = OffloadEngine(spec, spec.total_experts, weights=weights, device=dev)
    rows, ys, spreads = [], [], []
    batches = (1, 8) if quick else (1, 8, 64)
    for b in batches:
        # b sequences of exactly `steps` tokens: every step runs the whole batch.
        wl = decode_workload(generate(spec, b, steps, b, lengths=[steps] * b), b, steps, model=spec)
        cache = spec.top_k * max(b, 2)
        plans = [make_plan(wl, strategy, slots, protocol, 0, hardware)
                 for strategy, slots in (("gpu_only", spec.total_experts), ("on_demand", cache))
                 for protocol in ("batched", "per_item")]
        for plan in plans:
            _, tl = eng.run(plan, wl, repeats=3 if quick else repeats, warmup=1, timeline=False, graph=graph)
            issue = tl.info["issue_ms"]  # median over the repeats
            rows.append([plan.layer_steps, plan.num_loads, plan.num_computes, plan.use_gid.shape[0]])
            ys.append(issue * 1e3)
            spreads.append(spread([v * 1e3 for v in tl.info["issue_ms_repeats"]]))
    X = np.asarray(rows, float)
    if graph:
        X = np.hstack([X, np.ones((X.shape[0], 1))])  # a constant per launch
    y = np.asarray(ys, float)
    coef = _nonneg_lstsq(X, y)
    fit = X @ coef
    out = {"mode": "graph" if graph else "eager", "nonmoe_us": float(coef[0]), "load_us": float(coef[1]),
           "compute_us": float(coef[2]), "use_us": float(coef[3]),
           "launch_us": float(coef[4]) if graph else 0.0,
           "fit_max_rel_err": float(np.max(np.abs(fit - y) / np.maximum(y, 1e-9))),
           "spread": {"iqr_rel_median": statistics.median(s["iqr_rel"] or 0.0 for s in spreads),
                      "iqr_rel_max": max(s["iqr_rel"] or 0.0 for s in spreads),
                      "ci95_rel_max": max(s["ci95_rel"] or 0.0 for s in spreads), "repeats": spreads[0]["n"]},
           "runs": [{"nonmoe": r[0], "loads": r[1], "computes": r[2], "uses": r[3], "issue_us": v,
                     "iqr_rel": s["iqr_rel"]} for r, v, s in zip(rows, ys, spreads)]}
    return out


def _nonneg_lstsq(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0 (active-set steps of NNLS: drop the negative terms, refit)."""
    keep = np.ones(X.shape[1], bool)
    coef = np.zeros(X.shape[1])
    for _ in range(X.shape[1]):
        sub, *_ = np.linalg.lstsq(X[:, keep], y, rcond=None)
        coef = np.zeros(X.shape[1])
        coef[keep] = sub
        if (sub >= 0).all():
            break
        keep[np.flatnonzero(keep)[sub < 0]] = False
    return np.maximum(coef, 0.0)


# --------------------------------------------------------------------------------------------------------------
# The whole calibration
# --------------------------------------------------------------------------------------------------------------


def calibrate(device: str = "cuda", models: Sequence[str | ModelSpec] | None = None, out: str | None = None,
              quick: bool = False, name: str | None = None, dtype: str = "bfloat16", repeats: int | None = None,
              group: int = 8, ffn: str = "auto", memory_budget: int | None = None,
              copy_seconds: float | None = None) -> HardwareProfile:
    """Measure this machine and return a :class:`HardwareProfile` (written atomically to ``out`` when given).

    ``models`` default to every preset (names or :class:`ModelSpec`); ``quick`` uses a few sizes, tokens and
    repeats (for tests and smoke runs); ``name`` defaults to the GPU's family (``h200``) or ``cpu``.
    ``memory_budget`` caps the device bytes of one model's FFN timings (default: ``MEMORY_BUDGET`` or half the free
    device memory, the smaller); ``copy_seconds`` caps the copy rounds (default 40 s, quick 2 s).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("calibrate: device 'cuda' asked for, but torch.cuda.is_available() is False")
    specs = [get_model(m) if isinstance(m, str) else m for m in (models if models is not None else PRESETS)]
    if not specs:
        raise ValueError("calibrate: no models given")
    dt = torch_dtype(dtype)
    reps = repeats or (3 if quick else 20)
    tokens = QUICK_TOKENS if quick else FFN_TOKENS
    grp = min(group, 2) if quick else group
    budget = memory_budget or MEMORY_BUDGET
    if dev.type == "cuda" and memory_budget is None:
        budget = min(budget, torch.cuda.mem_get_info(dev)[0] // 2)

    sizes = copy_sizes(specs, dtype, quick)
    cs = copy_seconds if copy_seconds is not None else (2.0 if quick else 40.0)
    copy_table, copy_spread = measure_copies(dev, sizes, min_rounds=3 if quick else 5,
                                             max_rounds=3 if quick else 60, max_seconds=cs)
    ffn_tables, group_tables, issue_tables, nonmoe_tables, compute_tables = {}, {}, {}, {}, {}
    compute_spread, grid_experts = {}, {}
    path = ffn
    g_tok = list(QUICK_GRID_TOKENS if quick else GRID_TOKENS)
    for spec in specs:
        g_exp = [n for n in (QUICK_GRID_EXPERTS if quick else GRID_EXPERTS) if n <= spec.experts]
        g_grp = max(1, min(grp, spec.experts))
        # One allocation per model, for the largest COMPUTE any of its tables times (within the budget).
        bench, fits = _bench_for(spec, dev, dt, ffn, g_exp, max(g_tok), g_grp, max(tokens), budget)
        path = bench.ffn
        tab, issue, _ = measure_ffn(spec, dev, dt, tokens, reps, group=1, bench=bench)
        ffn_tables[spec.name] = tuple(tab)
        issue_tables[spec.name] = [list(p) for p in issue]
        gtab, _, _ = measure_ffn(spec, dev, dt, tokens, reps, group=g_grp, bench=bench)
        group_tables[spec.name] = [list(p) for p in gtab]
        nonmoe_tables[spec.name] = [list(p) for p in measure_nonmoe(spec.d_model, dev, dtype, tokens, reps)]
        grid = measure_compute_grid(bench, fits, g_tok, reps)
        if spec is specs[0]:  # a property of the device's streams: measured once, with the first model's experts
            dependency = measure_dependency(bench, repeats=3 if quick else 15)
        compute_tables[spec.name] = grid["table"]
        compute_spread[spec.name] = grid["spread"]
        grid_experts[spec.name] = {"measured": grid["table"]["experts"], "asked": g_exp,
                                   "budget_bytes": int(budget)}
        del bench
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    dev_name = device_name(dev)
    driver, cuda_v = (driver_version(), torch.version.cuda) if dev.type == "cuda" else ("n/a", None)
    now = utc_now()
    first = specs[0]
    measured = HardwareProfile(
        name=name or gpu_family(dev),
        description=f"{dev_name}, calibrated by artifact.measure.calibrate ({dtype}, {path} FFN path, "
                    f"median of {reps}; COMPUTEs and NON-MoE parts timed inside CUDA graphs of 8 back-to-back calls "
                    f"on CUDA, as the engine's graph mode runs them, COMPUTEs on slots in rotation; copies until the "
                    f"median's 95% CI is within 0.5%; cross-stream wait from a LOAD-COMPUTE chain)",
        copy_table=tuple(copy_table),
        ffn_tables=ffn_tables,
        nonmoe_table=tuple((t, ms) for t, ms in nonmoe_tables[first.name]),
        source=f"artifact.measure.calibrate on {now}",
        compute_tables=compute_tables,
        dependency_us=float(dependency["dependency_us"]),
    )
    # The host-issue runs are planned on the profile measured so far (planning needs one; gpu_only and on_demand
    # decide without reading it), then their fit completes it: in the mode the grids run (graph on CUDA).
    host_fits = _host_issue_fits(first, measured, dev, dtype, quick)
    mode = "graph" if "graph" in host_fits else "eager"
    keys = ("nonmoe_us", "load_us", "compute_us", "use_us")
    profile = replace(
        measured,
        host_issue_us={k: host_fits[mode][k] for k in keys},
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
            "copy_gbps": {str(b): (b / (ms * 1e6) if ms > 0 else None) for b, ms in copy_table},
            "copy_spread": copy_spread,
            "copy_method": "the engine's copy pattern: one pinned slab, distinct slices into alternating device "
                           "slots, bursts back to back on a copy stream held while the host queues, CUDA events per "
                           "copy; sizes round-robin, rounds until the median's 95% CI half-width <= 0.5%",
            "dependency": dependency,
            "ffn_group": grp,
            "ffn_group_tables": group_tables,
            "ffn_issue_us": issue_tables,
            "compute_spread": compute_spread,
            "compute_grid_experts": grid_experts,
            "nonmoe_d_model": first.d_model,
            "nonmoe_tables": nonmoe_tables,
            "host_issue_mode": mode,
            "host_issue_us_by_mode": {m: {k: f[k] for k in keys} for m, f in host_fits.items()},
            "host_issue_fit": host_fits[mode],
            "host_issue_fits": host_fits,
            "method": "CUDA events per call with the stream held by a spin kernel while the host queues (GPU time); "
                      "perf_counter on the CPU",
        },
    )
    if out:
        save_profile(profile, out)
    return profile


def _host_issue_fits(model: ModelSpec, hw: HardwareProfile, dev: torch.device, dtype: str, quick: bool) -> dict:
    """The eager fit, and on CUDA the graph fit (the engine the grids run), on one engine."""
    from artifact.engine import ExpertWeights, OffloadEngine

    if quick:  # a smoke run: a small expert shape (the host's issue cost barely depends on it; its weights do)
        model = replace(model, experts=min(model.experts, 16), d_model=min(model.d_model, 256),
                        d_ff=min(model.d_ff, 512))
    spec = replace(model, name=f"{model.name}-slice", moe_layers=min(4, model.moe_layers))
    eng = OffloadEngine(spec, spec.total_experts, weights=ExpertWeights.random(spec, dtype=dtype, seed=0), device=dev)
    fits = {"eager": measure_host_issue(model, hw, dev, dtype, quick=quick, engine=eng)}
    if dev.type == "cuda":
        try:
            fits["graph"] = measure_host_issue(model, hw, dev, dtype, quick=quick, graph=True, engine=eng)
        except (RuntimeError, ValueError) as exc:  # no graph here: the grids fall back to eager, and so does this
            fits["eager"]["graph_unavailable"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    del eng
    return fits


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m artifact.measure.calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="*", default=None, help="preset names (default: all)")
    ap.add_argument("--out", default=None, help="profile JSON path (written atomically)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                    help="compare two profiles (fitted and measured figures) instead of calibrating")
    ap.add_argument("--tolerance", type=float, default=0.02, help="--compare: relative tolerance")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="--compare: also write the per-family summary to PATH (JSON, atomically)")
    args = ap.parse_args(argv)
    if args.compare:
        from artifact.measure.compare import main_compare

        return main_compare(args.compare[0], args.compare[1], args.tolerance, args.json)
    prof = calibrate(args.device, args.models, args.out, args.quick, args.name, args.dtype)
    print(f"{prof.name}: {prof.description}")
    print(f"  copy: {prof.copy_bandwidth_gbps:.1f} GB/s fitted, latency {prof.copy_latency_ms * 1e3:.1f} us")
    for b, gbps in prof.extra["copy_gbps"].items():
        sp = prof.extra["copy_spread"][b]
        print(f"    {int(b) / MB:9.3f} MB  {gbps:6.1f} GB/s  (95% CI +-{100 * (sp['ci95_rel'] or 0):.2f}%, "
              f"{sp['rounds']} rounds)")
    print(f"  cross-stream wait: {prof.dependency_us:.2f} us")
    print(f"  host issue ({prof.extra['host_issue_mode']}): " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                                        prof.host_issue_us.items()))
    for m, tab in prof.ffn_tables.items():
        print(f"  ffn {m}: " + ", ".join(f"{t}:{ms:.3f}" for t, ms in tab) + " (tokens:ms)")
    if args.out:
        print(f"  written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
