"""The offloading engine: executes a :class:`~artifact.core.plan.Plan` for real, with PyTorch.

Memory
    The host holds every expert in one pinned slab (:mod:`artifact.engine.weights`). The device holds a slab of
    ``cache_experts`` slots (``[C, numel]``), allocated once. Every buffer a run needs (hidden states, expert-input
    staging, index and gate tensors for the whole plan) is allocated by ``prepare`` (:mod:`artifact.engine.prepare`),
    before timing. In steady state only PyTorch's caching allocator hands out the outputs of ``rms_norm`` and
    ``_grouped_mm`` (ops without an ``out=`` form): cached blocks, no ``cudaMalloc``.

Math
    What "the model" is here is in :mod:`artifact.engine.reference`; the kernels that compute it on the device are
    in :mod:`artifact.engine.kernels`.

Execution (host issue order of plan.py)
    LOADs are ``non_blocking`` copies from the pinned slab into a device slot on a dedicated copy stream, in plan
    order (one FIFO link). NON-MoE ops and COMPUTEs run on the compute stream. Dependencies are CUDA events, never a
    host sync: a LOAD waits for the event after COMPUTE ``load_wait`` (slot reuse) and after NON-MoE ``load_gate``;
    a COMPUTE waits for the events of the LOADs its uses read (which LOADs go where, and which waits are needed, is
    decided in :mod:`artifact.engine.prepare`).

    While issuing, the engine counts what it did: the copies it issued and the bytes they moved (each copy's
    destination size), the COMPUTEs it launched and the uses (experts) they ran. ``Timeline.info`` carries these
    counts (``copies_issued``, ``bytes_copied``, ``computes_issued``, ``uses_issued``), so a test can hold them
    against the plan and the simulator rather than the plan against itself.

Graph mode (``run(..., graph=True)`` or ``"auto"``, :mod:`artifact.engine.graph`): on CUDA the lean issue loop is
captured once per prepared plan into a CUDA graph (copies become memcpy nodes, events become edges between the copy
and compute branches) and replayed per repeat, so the host's issue cost per layer-step tends to zero; the eager loop
stays the reference and the CPU path. ``info["engine_mode"]`` records which ran.

On the CPU the same code runs synchronously: streams and events become no-ops (``_HostStream``), timestamps are
``perf_counter`` readings around each op (``_HostStamp``), so CI tests the engine end to end.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from artifact.core.plan import Plan
from artifact.core.timeline import Timeline
from artifact.core.workload import Workload
from artifact.engine.graph import FAILED_KEY, GRAPH_KEY, CapturedPlan, capture_plan, graph_refusal, release_graph
from artifact.engine.kernels import ExpertKernels, grouped_mm_supported
from artifact.engine.prepare import PreparedRun, prepare_run
from artifact.engine.weights import ExpertWeights, expert_numel, shape_difference, torch_dtype
from artifact.models import ModelSpec

# --------------------------------------------------------------------------------------------------------------
# Streams and events, and their synchronous host stand-ins
# --------------------------------------------------------------------------------------------------------------


class _HostStamp:
    """A CPU 'event': ``record`` reads the clock (ops before it have finished: the CPU runs synchronously)."""

    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t = float("nan")

    def record(self, stream=None) -> None:
        self.t = time.perf_counter()


class _HostStream:
    """A CPU 'stream': work is already done when issued, so waiting is a no-op."""

    def wait_event(self, event) -> None:
        pass


def _stamp_ms(origin, ev) -> float:
    if isinstance(ev, _HostStamp):
        return (ev.t - origin.t) * 1e3
    return float(origin.elapsed_time(ev))


# --------------------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Program:
    """Events of one run mode (timeline or lean) laid out per operation."""

    timeline: bool
    load_ops: list  # per LOAD: (dst, src, bytes of dst, wait event, start, end)
    nm_ops: list  # per layer-step: (h, x, wn_t, start, end)
    comp_ops: list  # per COMPUTE: (ready, wait event, start, end, work, uses its work runs)
    origin: object


@dataclass(frozen=True)
class IssueCounts:
    """What one pass of the issue loop did, counted as it went."""

    copies: int  # LOAD copies issued
    bytes_copied: int  # their destination sizes, summed
    computes: int  # COMPUTEs launched
    uses: int  # experts those COMPUTEs ran


class OffloadEngine:
    """Runs plans on a device with ``cache_experts`` expert slots.

    ``OffloadEngine(model, cache_experts, weights=None, dtype=None, device=None, seed=0, ffn="auto")``:
    ``weights`` default to :meth:`ExpertWeights.random` (``seed``, ``dtype`` default ``model.dtype``); ``device``
    defaults to ``cuda`` when available; ``ffn`` is ``"auto"`` (grouped where it runs without a host sync, else
    loop), ``"grouped"`` or ``"loop"``.
    """

    def __init__(self, model: ModelSpec, cache_experts: int, *, weights: ExpertWeights | None = None,
                 dtype: str | torch.dtype | None = None, device: str | torch.device | None = None, seed: int = 0,
                 ffn: str = "auto", input_seed: int = 0) -> None:
        if cache_experts < 1:
            raise ValueError(f"engine: cache_experts must be >= 1, got {cache_experts}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if weights is None:
            weights = ExpertWeights.random(model, dtype, seed, init_device=self.device.type if self.cuda else "cpu")
        elif dtype is not None and torch_dtype(dtype) != weights.dtype:
            raise ValueError(f"engine: dtype {dtype} differs from the weights' {weights.dtype}")
        diff = shape_difference(model, weights.model)
        if diff:
            raise ValueError(f"engine: model {model.name} and weights of {weights.model.name} differ ({diff})")
        self.model = model
        self.weights = weights
        self.dtype = weights.dtype
        self.cache_experts = int(cache_experts)
        self.input_seed = input_seed
        if ffn == "auto":
            ok, _why = grouped_mm_supported(self.device, self.dtype)
            ffn = "grouped" if ok and self.cuda else "loop"
        elif ffn == "grouped":
            ok, why = grouped_mm_supported(self.device, self.dtype)
            if not ok:
                raise ValueError(f"engine: ffn='grouped' is not available here: {why}")
        elif ffn != "loop":
            raise ValueError(f"engine: ffn must be 'auto', 'grouped' or 'loop', got {ffn!r}")
        self.ffn = ffn
        numel = expert_numel(model)
        self.slab = torch.empty(self.cache_experts, numel, dtype=self.dtype, device=self.device)  # [C, numel]
        self.kernels = ExpertKernels(model, self.slab, ffn)
        self.wn_t = weights.nonmoe.to(self.device, self.dtype).transpose(1, 2)  # [L, D, D]: Wn^T per layer
        if self.cuda:
            self.compute_stream = torch.cuda.Stream(self.device)
            self.copy_stream = torch.cuda.Stream(self.device)
        else:
            self.compute_stream = _HostStream()
            self.copy_stream = _HostStream()
        self._prepared: dict = {}

    @property
    def bytes_per_expert(self) -> int:
        return self.weights.bytes_per_expert

    # ---------------------------------------------------------------------------------------------------------
    def prepare(self, plan: Plan, workload: Workload, inputs: torch.Tensor | None = None,
                check: bool = True) -> PreparedRun:
        """Validate the plan against the workload and build every tensor and list a run needs (cached)."""
        key = (id(plan), id(workload), None if inputs is None else id(inputs), check)
        hit = self._prepared.get(key)
        if hit is not None and hit.plan is plan and hit.workload is workload and hit.given_inputs is inputs:
            return hit
        prep = prepare_run(self, plan, workload, inputs, check)
        self._load_resident(plan)
        for old in self._prepared.values():  # one plan (and its CUDA graph) at a time keeps device memory bounded
            release_graph(old)
        self._prepared = {key: prep}
        return prep

    def _load_resident(self, plan: Plan) -> None:
        """Copy ``resident_at_start`` gids into slots 0..n-1 (untimed)."""
        res = plan.resident_at_start
        if not res.shape[0]:
            return
        host = self.weights.host
        if np.array_equal(res, np.arange(res.shape[0])):
            self.slab[:res.shape[0]].copy_(host[:res.shape[0]])  # gpu_only: one contiguous copy
        else:
            for s, gid in enumerate(res.tolist()):
                self.slab[s].copy_(host[gid])
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _program(self, prep: PreparedRun, timeline: bool) -> _Program:
        prog = prep.programs.get(timeline)
        if prog is not None:
            return prog
        N, M, G = prep.plan.num_loads, prep.plan.num_computes, prep.G
        if self.cuda:
            def timing():
                return torch.cuda.Event(enable_timing=True)

            def dep():
                return torch.cuda.Event()
        else:
            def timing():
                return _HostStamp()

            def dep():
                return None
        pos_ev: dict[int, object] = {}  # compute-stream position -> event recorded after that op
        load_end: dict[int, object] = {}
        if timeline:
            nm_se = [(timing(), timing()) for _ in range(G)]
            comp_rse = [(timing() if self.cuda else None, timing(), timing()) for _ in range(M)]
            ld_se = [(timing(), timing()) for _ in range(N)]
            for g in range(G):
                pos_ev[int(prep.pos_nonmoe[g])] = nm_se[g][1]
            for c in range(M):
                pos_ev[int(prep.pos_comp[c])] = comp_rse[c][2]
            for n in range(N):
                load_end[n] = ld_se[n][1]
        else:
            # Lean: only the events some wait needs (none on the CPU, where every op has finished when issued).
            if self.cuda:
                for p in set(prep.load_wait_pos[prep.load_wait_pos >= 0].tolist()):
                    pos_ev[int(p)] = dep()
                for n in set(prep.comp_wait_load[prep.comp_wait_load >= 0].tolist()):
                    load_end[int(n)] = dep()
            nm_se = [(None, pos_ev.get(int(prep.pos_nonmoe[g]))) for g in range(G)]
            comp_rse = [(None, None, pos_ev.get(int(prep.pos_comp[c]))) for c in range(M)]
            ld_se = [(None, load_end.get(n)) for n in range(N)]
        cuda = self.cuda
        load_ops = []
        for n in range(N):
            p = int(prep.load_wait_pos[n])
            wait = pos_ev.get(p) if (cuda and p >= 0) else None
            dst = prep.load_dst[n]
            load_ops.append((dst, prep.load_src[n], dst.numel() * dst.element_size(), wait, ld_se[n][0],
                             ld_se[n][1]))
        nm_ops = [(*prep.nm_args[g], nm_se[g][0], nm_se[g][1]) for g in range(G)]
        comp_ops = []
        for c in range(M):
            n = int(prep.comp_wait_load[c])
            wait = load_end.get(n) if (cuda and n >= 0) else None
            ready, start, end = comp_rse[c]
            comp_ops.append((ready if wait is not None else None, wait, start, end, prep.work[c], prep.work_uses[c]))
        prog = _Program(timeline, load_ops, nm_ops, comp_ops, timing() if timeline else None)
        prep.programs[timeline] = prog
        return prog

    # ---------------------------------------------------------------------------------------------------------
    def _issue(self, prep: PreparedRun, prog: _Program) -> IssueCounts:
        """Issue every operation of the plan in host issue order (the hot path: no allocation, no host sync);
        count the copies, bytes, COMPUTEs and uses issued (integer adds beside each op)."""
        cs, ks = self.compute_stream, self.copy_stream
        set_stream = torch.cuda.set_stream if self.cuda else None
        load_ops, nm_ops, comp_ops = prog.load_ops, prog.nm_ops, prog.comp_ops
        kernels, x, out = self.kernels, prep.x, prep.out
        nonmoe = kernels.nonmoe
        run = kernels.run
        copies = copied = computes = uses = 0

        def loads(lo: int, hi: int) -> None:
            nonlocal copies, copied
            if set_stream is not None:
                set_stream(ks)
            for i in range(lo, hi):
                dst, src, nbytes, wait, start, end = load_ops[i]
                if wait is not None:
                    ks.wait_event(wait)
                if start is not None:
                    start.record(ks)
                dst.copy_(src, non_blocking=True)
                copies += 1
                copied += nbytes
                if end is not None:
                    end.record(ks)
            if set_stream is not None:
                set_stream(cs)

        comp_range, early, late = prep.comp_range, prep.early, prep.late
        for g in range(prep.G):
            lo, hi = early[g]
            if hi > lo:
                loads(lo, hi)
            h, xs, wn_t, start, end = nm_ops[g]
            if start is not None:
                start.record(cs)
            nonmoe(h, xs, wn_t)
            if end is not None:
                end.record(cs)
            for c in range(int(comp_range[g]), int(comp_range[g + 1])):
                lo, hi = late[c]
                if hi > lo:
                    loads(lo, hi)
                ready, wait, start, end, work, n_uses = comp_ops[c]
                if ready is not None:
                    ready.record(cs)
                if wait is not None:
                    cs.wait_event(wait)
                if start is not None:
                    start.record(cs)
                run(work, x, out)
                computes += 1
                uses += n_uses
                if end is not None:
                    end.record(cs)
        lo, hi = prep.trailing
        if hi > lo:
            loads(lo, hi)
        return IssueCounts(copies, copied, computes, uses)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _reset(self, prep: PreparedRun) -> None:
        """Bring the device to the plan's start state (untimed): preloaded slots, layer-0 hidden states."""
        if prep.reset_resident:
            self._load_resident(prep.plan)
        prep.out.copy_(prep.inputs)
        self._sync()

    def run(self, plan: Plan, workload: Workload, repeats: int = 1, warmup: int = 1, timeline: bool = True,
            inputs: torch.Tensor | None = None, check: bool = True,
            graph: bool | str = False) -> tuple[torch.Tensor, Timeline]:
        """Execute ``plan`` ``warmup + repeats`` times; time the ``repeats``.

        Returns the final hidden state of every token the plan covers (float32, CPU, ``[T, D]``) and the timeline of
        the median repeat (by wall time). ``timeline=False`` records only the events dependencies need (lean runs:
        the Timeline's per-operation arrays are NaN, its figures and the busy and stall times in ``info`` are None:
        not measured). ``check`` runs :func:`check_plan` and the coverage checks.

        ``graph``: ``False`` issues every operation from Python (eager: the reference, and the CPU path); ``True``
        captures the plan once into a CUDA graph and replays it per repeat (:mod:`artifact.engine.graph`: CUDA, a
        pinned slab and ``timeline=False`` only, else ``ValueError``); ``"auto"`` replays a graph where one can run
        and runs eagerly elsewhere. ``info["engine_mode"]`` says which ran, ``info["graph_fallback"]`` why not a
        graph (None when it was one, or when eager was asked for).
        """
        if repeats < 1 or warmup < 0:
            raise ValueError(f"engine: repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
        if graph not in (False, True, "auto"):
            raise ValueError(f"engine: graph must be False, True or 'auto', got {graph!r}")
        prep = self.prepare(plan, workload, inputs, check)
        prog = self._program(prep, timeline)
        why = graph_refusal(self, timeline) if graph else None
        if graph is True and why:
            raise ValueError(f"engine: graph mode: {why}")
        walls, issues, stamps, counts = [], [], [], []
        prev_stream = torch.cuda.current_stream(self.device) if self.cuda else None
        captured: CapturedPlan | None = None
        try:
            if self.cuda:
                torch.cuda.set_stream(self.compute_stream)
            if graph and why is None:
                captured, why, fresh = self._graph(prep, prog, strict=graph is True)
                if fresh:
                    warmup = max(warmup, 1)  # the first replay uploads the graph
            for i in range(warmup + repeats):
                self._reset(prep)
                if i == warmup and self.cuda:
                    torch.cuda.reset_peak_memory_stats(self.device)
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    if captured is not None:
                        captured.graph.replay()
                        issued = captured.counts
                    else:
                        if prog.origin is not None:
                            prog.origin.record(self.compute_stream)
                        issued = self._issue(prep, prog)
                    t1 = time.perf_counter()
                    self._sync()
                    t2 = time.perf_counter()
                if i >= warmup:
                    walls.append((t2 - t0) * 1e3)
                    issues.append((t1 - t0) * 1e3)
                    counts.append(issued)
                    if timeline:
                        stamps.append(self._read_timeline(prep, prog))
        finally:
            if self.cuda:
                torch.cuda.set_stream(prev_stream)
        med = statistics.median(walls)
        pick = int(np.argmin([abs(w - med) for w in walls]))
        info = self._info(prep, walls, issues, counts[pick], warmup, timeline, captured)
        info["graph_fallback"] = why if graph else None
        if timeline:
            arrays = stamps[pick]
        else:
            nan = np.full
            arrays = (nan(plan.num_loads, np.nan), nan(plan.num_loads, np.nan), nan(plan.num_computes, np.nan),
                      nan(plan.num_computes, np.nan), nan(prep.G, np.nan), nan(prep.G, np.nan),
                      nan(plan.num_computes, np.nan))
        tl = Timeline(*arrays[:6], executor="engine", info=info, measured=timeline)
        if timeline:
            comp_ready = arrays[6]
            info["copy_busy_ms"] = tl.copy_busy_ms
            info["compute_busy_ms"] = tl.compute_busy_ms
            info["stall_ms"] = tl.stall_ms(comp_ready)
            info["comp_ready"] = comp_ready
            info["step_ms"] = self._step_ms(prep, tl)
        else:
            info["copy_busy_ms"] = info["compute_busy_ms"] = info["stall_ms"] = None  # not measured
        outputs = prep.out.float().cpu()
        return outputs, tl

    def _graph(self, prep: PreparedRun, prog: _Program, strict: bool) -> tuple[CapturedPlan | None, str | None, bool]:
        """``prep``'s CUDA graph, captured on first use after one eager pass: ``(graph or None, why none, fresh)``.
        A capture that fails raises when ``strict``; else the run falls back to eager, with the reason."""
        captured = prep.programs.get(GRAPH_KEY)
        if captured is not None:
            return captured, None, False
        if FAILED_KEY in prep.programs:
            return None, prep.programs[FAILED_KEY], False
        self._reset(prep)
        with torch.inference_mode():
            self._issue(prep, prog)  # lazy initialisation (cuBLAS handles, workspaces) outside the capture
        self._sync()
        try:
            captured = capture_plan(self, prep, prog, self._issue)
        except RuntimeError as exc:
            if strict:
                raise
            torch.cuda.synchronize(self.device)
            why = f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            prep.programs[FAILED_KEY] = why
            return None, why, False
        prep.programs[GRAPH_KEY] = captured
        return captured, None, True

    def _read_timeline(self, prep: PreparedRun, prog: _Program) -> tuple:
        o = prog.origin
        ls = np.array([_stamp_ms(o, op[4]) for op in prog.load_ops])
        le = np.array([_stamp_ms(o, op[5]) for op in prog.load_ops])
        ns = np.array([_stamp_ms(o, op[3]) for op in prog.nm_ops])
        ne = np.array([_stamp_ms(o, op[4]) for op in prog.nm_ops])
        cs = np.array([_stamp_ms(o, op[2]) for op in prog.comp_ops])
        ce = np.array([_stamp_ms(o, op[3]) for op in prog.comp_ops])
        # Ready = when the compute stream reached the COMPUTE, before its wait on a LOAD (start when no wait).
        cr = np.array([_stamp_ms(o, op[0]) if op[0] is not None else np.nan for op in prog.comp_ops])
        cr = np.where(np.isnan(cr), cs, cr)
        f = np.float64
        return (ls.astype(f), le.astype(f), cs.astype(f), ce.astype(f), ns.astype(f), ne.astype(f), cr.astype(f))

    def _step_ms(self, prep: PreparedRun, tl: Timeline) -> list[float]:
        """Per step: end of its last op on the compute stream minus the previous step's."""
        L = self.model.moe_layers
        ends = []
        for s in range(prep.plan.steps):
            g0, g1 = s * L, (s + 1) * L
            e = float(tl.nonmoe_end[g0:g1].max()) if g1 > g0 else 0.0
            c0, c1 = int(prep.comp_range[g0]), int(prep.comp_range[g1])
            if c1 > c0:
                e = max(e, float(tl.comp_end[c0:c1].max()))
            ends.append(e)
        return np.diff(np.concatenate([[0.0], ends])).tolist()

    def _info(self, prep: PreparedRun, walls: list, issues: list, issued: IssueCounts, warmup: int,
              timeline: bool, captured: CapturedPlan | None = None) -> dict:
        plan = prep.plan
        med = statistics.median(walls)
        if self.cuda:
            peak = int(torch.cuda.max_memory_allocated(self.device))
            peak_src = "torch.cuda.max_memory_allocated"
            if captured is not None:  # a replay allocates nothing: its temporaries live in the graph's pool
                peak += captured.pool_bytes
                peak_src += " + the CUDA graph's private pool (reserved: an upper bound)"
        else:
            k = self.kernels
            own = [self.slab, self.wn_t, prep.out, prep.x, prep.inputs, k.xin] + \
                ([k.hid, k.y] if k.path == "loop" else [])
            peak = int(sum(t.numel() * t.element_size() for t in own))
            peak_src = "engine tensors (cpu run)"
        return {
            "wall_ms": med,
            "wall_ms_repeats": list(walls),
            "wall_ms_per_step": med / max(plan.steps, 1),
            "issue_ms": statistics.median(issues),
            "issue_ms_repeats": list(issues),
            # "graph": one CUDA graph replay per repeat (issue_ms = host time of the launch); "eager": the issue loop
            "engine_mode": "graph" if captured is not None else "eager",
            "graph_capture_ms": captured.capture_ms if captured is not None else None,
            "repeats": len(walls),
            "warmup": warmup,
            "timeline": timeline,
            "peak_device_bytes": peak,
            "peak_device_bytes_source": peak_src,
            "bytes_per_expert": self.bytes_per_expert,
            # Counted by the issue loop of the reported repeat (every repeat issues the same operations).
            "copies_issued": issued.copies,
            "bytes_copied": issued.bytes_copied,
            "computes_issued": issued.computes,
            "uses_issued": issued.uses,
            "layer_steps": prep.G,
            "tokens": prep.T,
            "device": torch.cuda.get_device_name(self.device) if self.cuda else "cpu",
            "dtype": str(self.dtype).replace("torch.", ""),
            "ffn_path": self.ffn,
            "pinned_host": self.weights.pinned,
        }


