"""The resumable grid runner: one CSV row per run, written atomically, finishing only what is missing.

``run_grid(grid, out_dir)`` reads ``out_dir/<grid>.csv`` if it exists, skips every point already there, runs the
rest grouped into tasks (one workload, one cache size, one protocol: the request tables and the plans the oracle
reuses are shared), and rewrites the file atomically after every finished task, so a stopped run loses at most the
tasks in flight and the next run finishes the rest. Simulator tasks run in parallel processes; engine tasks run one
after another in this process (one GPU), as CUDA-graph replays unless ``engine_graph=False`` (``--eager``).

Progress goes to stderr, measured in expected cost (:func:`point_cost`: batch x steps x layers x a per-strategy
factor measured on a 2-core machine), not in runs, so the remaining time it shows holds from the start.

Stopping (SIGTERM or Ctrl-C): the runner finishes writing the file it is writing, cancels the pending tasks, ends
its worker processes (which also end on their own when the runner dies: each watches its parent), keeps every
finished row and exits with status 128 + the signal's number (:class:`GridStopped`); the next run resumes.

Beside the CSV the runner keeps ``out_dir/timelines.json``: for each point whose grid asks for it
(``Point.timeline_step``), one decode step's timeline as the simulator timed the point's plan (see
:func:`step_timeline`); the report's timeline figure draws it. It is merged by point id and rewritten atomically
before the CSV, so resuming keeps it whole; a point with a row but without the timeline it asks for runs again.
Engine rows also carry the simulator's decision counts for the same configuration (``sim_*`` columns).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
from tqdm import tqdm

from artifact.atomicfile import atomic_write_json, atomic_write_text
from artifact.core.errors import Unrunnable
from artifact.core.requests import build_requests
from artifact.experiments.grids import Grid, Point
from artifact.experiments.runs import load_trace, make_workload, simulate_one
from artifact.experiments.schema import FIELDS, SIM_COUNT_FIELDS
from artifact.measure.environment import environment
from artifact.runtime.hardware import HardwareProfile, load_profile
from artifact.runtime.simulator import simulate

TIMELINES_FILE = "timelines.json"
REFUSED = "refused: "  # the start of a refusal row's note

# --------------------------------------------------------------------------------------------------------------
# Expected cost of a run (what the progress bar counts)
# --------------------------------------------------------------------------------------------------------------

# Planning + simulating one layer-step of B tokens routed to k experts each costs about BASE + PER_TOKEN * B * k
# microseconds of one core, per strategy: fitted (least squares on relative error) to the minimum CPU time of
# plan+simulate of the grids' switch-base-128 workload (64 steps, batch 1..64, cache 128) on a 2-core x86 VM (AMD
# EPYC, thread caps 1, `python -m pytest benchmarks`), 2026-11-30. Only ratios matter: the bar's remaining time
# comes from the measured rate. Under `per_item` a strategy that is not batch-aware serves each item as its own
# stream: about B times its batch-1 cost (measured 5.4-5.8x at B=8, 24-27x at B=64 for on_demand and belady).
SIM_COST_US = {
    "on_demand": (28, 0.6), "prefetch_all": (112, 0.4), "pregated": (64, 0.8), "pregated_proxy": (68, 1.2),
    "expertflow": (70, 1.3), "mixtral_offloading": (68, 2.2), "moe_infinity": (38, 0.8), "topk": (67, 0.8),
    "multi_lookahead": (134, 5.0), "intelligent_dedup": (147, 2.7), "belady": (27, 0.6), "oracle": (180, 4.7),
    "gpu_only": (12, 0.1), "lfu": (32, 0.7), "lfru": (30, 2.4), "arc": (22, 23.8), "s3fifo": (24, 10.6),
}
SIM_COST_DEFAULT_US = (70, 3.0)  # a strategy not in the table
# Engine points: per layer-step and repeat (warm-up and the CUDA-graph capture count as repeats), plus the
# simulator run the row carries beside it. Copy-heavy strategies move many experts per layer-step.
ENGINE_COST_US = {"prefetch_all": 20000, "gpu_only": 150}
ENGINE_COST_DEFAULT_US = 1500


def point_cost(p: Point) -> float:
    """Expected cost of one run, in microseconds of the reference machine (only ratios matter)."""
    layers, top_k = _shape(p.model)
    if p.engine_model is not None:
        layers = p.engine_model.moe_layers
    base, per_token = SIM_COST_US.get(p.strategy, SIM_COST_DEFAULT_US)
    if p.protocol == "per_item" and not _batch_aware(p.strategy):
        sim = p.steps * layers * p.batch * (base + per_token * top_k)
    else:
        sim = p.steps * layers * (base + per_token * p.batch * top_k)
    if p.executor != "engine":
        return float(sim)
    per = ENGINE_COST_US.get(p.strategy, ENGINE_COST_DEFAULT_US) * (1 + p.batch / 64)
    return float(sim + p.steps * layers * per * (p.repeats + 2))


@functools.lru_cache(maxsize=64)
def _batch_aware(strategy: str) -> bool:
    from artifact.planner import strategies

    info = strategies().get(strategy)
    return bool(info is not None and info.batch_aware)


@functools.lru_cache(maxsize=64)
def _shape(model: str) -> tuple[int, int]:
    """(MoE layers, top-k) of a preset; a model that is no preset (a trace's own) counts as switch-base-128's."""
    from artifact.models import PRESETS

    spec = PRESETS.get(model)
    return (spec.moe_layers, spec.top_k) if spec is not None else (12, 1)


# --------------------------------------------------------------------------------------------------------------
# Stopping: SIGTERM and Ctrl-C end the workers and keep every finished row
# --------------------------------------------------------------------------------------------------------------


class GridStopped(SystemExit):
    """The grid was stopped by a signal; every finished row is on disk. Exit status 128 + the signal's number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message


class _Interrupted(BaseException):
    """Raised by the signal handler in the runner's main thread (not an Exception: nothing may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopOnSignal:
    """SIGTERM and SIGINT handlers for the runner's main thread. While a results file is being written (``hold``),
    a signal is remembered and raised when the write is done, so a file is never left half-replaced."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.pending: int | None = None
        self.holding = 0
        self.previous: dict = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        self.pending = signum
        if not self.holding:
            raise _Interrupted(signum)

    @contextlib.contextmanager
    def hold(self):
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
        if not self.holding and self.pending is not None:
            raise _Interrupted(self.pending)


def _worker_init() -> None:
    """In each worker process: leave SIGINT to the runner (a Ctrl-C reaches the whole process group), die on
    SIGTERM, and exit as soon as the runner is gone (its parent changes: killed, or crashed), so no worker runs on
    without a parent whatever the start method."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.2)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _end_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the worker processes now (SIGTERM, then SIGKILL after 3 s)."""
    procs = list(getattr(pool, "_processes", {}).values())  # the executor has no public handle on its workers
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + 3.0
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and "point_id" not in rows[0]:
        raise ValueError(f"results file {path}: field 'point_id' missing from the header; not a grid CSV")
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    """Atomically replace ``path`` with ``rows`` (temp file in the same folder, fsync, rename)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k, "")) for k in FIELDS})
    atomic_write_text(path, buf.getvalue())


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"results row: a non-finite number ({v}) would be written; refusals leave cells empty")
        return repr(round(v, 9))
    return str(v)


def step_timeline(plan, tl, step: int) -> dict:
    """Decode step ``step`` of a timed plan, as the report's timeline figure draws it (one entry of timelines.json).

    The step runs from its first NON-MoE part to its last COMPUTE or NON-MoE part. Every LOAD, COMPUTE and NON-MoE
    part that overlaps it is listed, in plan order, by kind: ``start_ms`` and ``end_ms`` in ms since the step's
    start (negative for an operation that began before it, e.g. a prefetch), rounded to 1e-6 ms; LOADs with their
    expert (global id ``layer * experts + expert``), device slot and whether a prefetch; COMPUTEs and NON-MoE parts
    with their layer-step (``step * layers + layer``)."""
    L = plan.layers
    if not 0 <= step < plan.steps:
        raise ValueError(f"timeline of decode step {step}: the plan has {plan.steps} steps")
    in_step = (plan.comp_ls // L) == step
    ends = [float(tl.nonmoe_end[(step + 1) * L - 1])]
    if in_step.any():
        ends.append(float(tl.comp_end[in_step].max()))
    t0, t1 = float(tl.nonmoe_start[step * L]), max(ends)

    def ms(a: np.ndarray) -> list[float]:
        return [round(float(x) - t0, 6) + 0.0 for x in a]  # + 0.0: no "-0.0" in the file

    ld = np.flatnonzero((tl.load_end > t0) & (tl.load_start < t1))
    cp = np.flatnonzero((tl.comp_end > t0) & (tl.comp_start < t1))
    nm = np.flatnonzero((tl.nonmoe_end > t0) & (tl.nonmoe_start < t1))
    return {"strategy": plan.strategy, "executor": tl.executor, "step": step, "steps": plan.steps, "layers": L,
            "step_start_ms": round(t0, 6), "step_ms": round(t1 - t0, 6),
            "loads": {"start_ms": ms(tl.load_start[ld]), "end_ms": ms(tl.load_end[ld]),
                      "gid": plan.load_gid[ld].tolist(), "slot": plan.load_slot[ld].tolist(),
                      "prefetch": plan.load_prefetch[ld].tolist()},
            "computes": {"start_ms": ms(tl.comp_start[cp]), "end_ms": ms(tl.comp_end[cp]),
                         "layer_step": plan.comp_ls[cp].tolist()},
            "nonmoe": {"start_ms": ms(tl.nonmoe_start[nm]), "end_ms": ms(tl.nonmoe_end[nm]), "layer_step": nm.tolist()}}


def read_timelines(path: Path) -> dict[str, dict]:
    """The step timelines in ``path`` by point id (empty when the file is absent)."""
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text())["points"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"timelines file {path}: not one the runner wrote ({type(exc).__name__}: {exc})") from None


def write_timelines(path: Path, points: dict[str, dict]) -> None:
    """Atomically replace ``path`` with ``points`` (sorted keys: the same timelines give the same bytes)."""
    doc = {"about": "one decode step of each point the report's timeline figure shows, as the simulator timed the "
                    "point's plan (artifact.experiments.runner.step_timeline)", "points": points}
    atomic_write_json(path, doc, indent=1, sort_keys=True)


def _base_row(p: Point, hw: HardwareProfile, env: dict) -> dict:
    model = p.engine_model if p.engine_model is not None else None
    from artifact.models import get_model

    spec = model or get_model(p.model)
    return {"experiment": p.grid, "point_id": p.point_id, "model": p.model if model is None else model.name,
            "workload": p.workload.label, "trace_seed": p.workload.seed, "batch": p.batch,
            "cache_experts": p.cache_experts, "cache_fraction": p.cache_experts / spec.total_experts,
            "protocol": p.protocol, "strategy": p.strategy, "variant": p.variant, "steps": p.steps,
            "executor": p.executor,
            "hardware": hw.name, "repeats": p.repeats, **env}


@functools.lru_cache(maxsize=4)
def _trace(ws):
    return load_trace(ws)


def _run_task(points: list[Point], hw: HardwareProfile, env: dict, execute) -> tuple[list[dict], dict[str, dict]]:
    """Rows of one task: one workload (and its request tables) shared by its points, the plans handed on so the
    oracle reuses them. ``execute(workload, point, requests, plans) -> (metrics, plan)``. Also returns the step
    timelines its points ask for, by point id."""
    p0 = points[0]
    w = make_workload(p0.workload, p0.batch, p0.steps, _trace(p0.workload))
    req = build_requests(w)
    plans: dict = {}
    rows = []
    timelines = {}
    for p in points:
        row = _base_row(p, hw, env)
        try:
            metrics, plan = execute(w, p, req, plans)
        except Unrunnable as exc:  # a configuration that cannot run: a refusal with its reason, numbers left empty
            row["note"] = f"{REFUSED}{exc}"
            rows.append(row)
            continue
        if not p.variant:  # the oracle reuses belady's own plan, never a variant's
            plans[p.strategy] = plan
        metrics.pop("hardware", None)
        row.update(metrics)
        row["layers"] = w.layers
        row["cache_experts"] = plan.cache_experts
        if "wall_ms_per_step_median" in metrics:  # engine: the median wall time over repeats, min and max beside
            row["latency_ms_per_step"] = metrics["wall_ms_per_step_median"]
            row["latency_ms_per_step_min"] = metrics["wall_ms_per_step_min"]
            row["latency_ms_per_step_max"] = metrics["wall_ms_per_step_max"]
            row["peak_device_bytes"] = metrics.get("engine_peak_device_bytes", "")
        else:  # simulator: deterministic, one run
            row["latency_ms_per_step_min"] = row["latency_ms_per_step_max"] = row["latency_ms_per_step"]
        rows.append(row)
        if p.timeline_step is not None:  # the simulator is deterministic: this is the timeline of the row's run
            timelines[p.point_id] = {**step_timeline(plan, simulate(plan, w, hw), p.timeline_step),
                                     "hardware": hw.name}
    return rows, timelines


def _sim_task(points: list[Point], hardware: str | HardwareProfile, env: dict) -> tuple[list[dict], dict]:
    hw = load_profile(hardware) if isinstance(hardware, str) else hardware

    def execute(w, p, req, plans):
        return simulate_one(w, p.strategy, p.cache_experts, p.protocol, p.workload.seed, hw, req, plans,
                            dict(p.params))

    return _run_task(points, hw, env, execute)


class _EngineCache:
    """One engine per expert shape, sized for the largest plan (gpu_only: every expert), reused across points."""

    def __init__(self, device: str, graph: bool | str = "auto") -> None:
        self.device = device
        self.graph = graph  # OffloadEngine.run's mode: "auto" replays a CUDA graph on CUDA, False is eager
        self.engines: dict = {}

    def get(self, model, need: int):
        from artifact.engine import OffloadEngine

        key = model.name
        eng = self.engines.get(key)
        if eng is None or eng.cache_experts < need:
            self.engines.pop(key, None)
            eng = OffloadEngine(model, max(need, model.total_experts), device=self.device)
            self.engines[key] = eng
        return eng


def _engine_task(points: list[Point], hw: HardwareProfile, env: dict,
                 engines: _EngineCache) -> tuple[list[dict], dict]:
    from artifact.experiments.runs import engine_one

    def execute(w, p, req, plans):
        exec_model = p.engine_model if p.engine_model is not None else w.model
        eng = engines.get(exec_model, exec_model.total_experts)
        metrics, plan, _ = engine_one(w, p.strategy, p.cache_experts, p.protocol, p.workload.seed, hw,
                                      device=engines.device, repeats=p.repeats, engine=eng, requests=req,
                                      plans=plans, engine_model=p.engine_model, graph=engines.graph)
        # The simulator's decisions for the same configuration, planned again as a simulator row is: the report
        # checks that the engine's are the same.
        sim, _ = simulate_one(w, p.strategy, p.cache_experts, p.protocol, p.workload.seed, hw, req, plans)
        metrics.update({f: sim[f.removeprefix("sim_")] for f in SIM_COUNT_FIELDS})
        return metrics, plan

    return _run_task(points, hw, env, execute)


def run_grid(grid: Grid, out_dir: str | os.PathLike, hardware: str | HardwareProfile = "h200", jobs: int | None = None,
             device: str | None = None, progress: bool = True, engine_graph: bool | str = "auto") -> Path:
    """Run the missing points of ``grid`` into ``out_dir/<grid.name>.csv``; returns the path.

    ``engine_graph``: the engine's mode for engine points (``"auto"``: CUDA-graph replays on CUDA; ``False``: the
    eager issue loop). A SIGTERM or Ctrl-C raises :class:`GridStopped` after the finished rows are saved.
    """
    path = Path(out_dir) / f"{grid.name}.csv"
    tl_path = Path(out_dir) / TIMELINES_FILE
    existing = read_rows(path)
    timelines = read_timelines(tl_path)
    done = {r["point_id"] for r in existing}
    refused = {r["point_id"] for r in existing if r.get("note", "").startswith(REFUSED)}
    # A point with a row but without the timeline it asks for (a run stopped between the two files, or results from
    # before timelines were saved) runs again: its row and its timeline then come from one run.
    todo = [p for p in grid.points if p.point_id not in done
            or (p.timeline_step is not None and p.point_id not in timelines and p.point_id not in refused)]
    hw = load_profile(hardware) if isinstance(hardware, str) else hardware
    env = environment()
    rows = list(existing)
    if not todo:
        if progress:
            print(f"{grid.name}: all {len(grid.points)} runs already in {path}", file=sys.stderr)
        return path
    groups: OrderedDict = OrderedDict()
    for p in todo:
        groups.setdefault(p.task_key, []).append(p)
    n_sim = sum(1 for t in groups.values() if t[0].executor == "simulator")
    n_jobs = jobs if jobs is not None else max(1, min(n_sim, os.cpu_count() or 1))
    tasks = _split_tasks(groups, n_jobs)
    # Whole microseconds: the updates then add up to the total exactly (float sums in another order overshoot it,
    # and the bar would end past 100% with a negative time left).
    cost = {k: max(1, round(sum(point_cost(p) for p in t))) for k, t in tasks.items()}
    runs_done = [0]
    before = f"{len(done)} of {len(grid.points)} done before"
    bar = tqdm(total=sum(cost.values()), desc=f"{grid.name}: 0/{len(todo)} runs ({before})", disable=not progress,
               file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
    order = {p.point_id: i for i, p in enumerate(grid.points)}

    def finish(key, result: tuple[list[dict], dict]) -> None:
        new_rows, new_timelines = result
        with stop.hold():  # a signal now waits until both files are whole
            if new_timelines:  # before the CSV: a row on disk then has its timeline on disk
                timelines.update(new_timelines)
                write_timelines(tl_path, timelines)
            new_ids = {r["point_id"] for r in new_rows}
            rows[:] = [r for r in rows if r["point_id"] not in new_ids] + new_rows
            rows.sort(key=lambda r: order.get(r["point_id"], len(order)))
            write_rows(path, rows)
        runs_done[0] += len(new_rows)
        bar.set_description_str(f"{grid.name}: {runs_done[0]}/{len(todo)} runs ({before})", refresh=False)
        bar.update(cost[key])  # the bar advances by what the task was expected to cost: the ETA holds from the start

    engine_tasks = [(k, t) for k, t in tasks.items() if t[0].executor == "engine"]
    # Most expensive first, so the worker pool does not end waiting on one big task.
    sim_tasks = sorted(((k, t) for k, t in tasks.items() if t[0].executor == "simulator"), key=lambda kt: -cost[kt[0]])
    stop = _StopOnSignal()
    try:
        with stop:
            if sim_tasks and n_jobs > 1:
                _run_pool(sim_tasks, n_jobs, hw, env, finish)
            else:
                for k, t in sim_tasks:
                    finish(k, _sim_task(t, hw, env))
            if engine_tasks:
                import torch

                dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
                engines = _EngineCache(dev, engine_graph)
                for k, t in engine_tasks:
                    finish(k, _engine_task(t, hw, env, engines))
    except _Interrupted as exc:
        bar.close()
        name = signal.Signals(exc.signum).name
        left = len(grid.points) - len({r["point_id"] for r in rows})
        msg = (f"{grid.name}: stopped by {name}: {len(rows)} finished rows kept in {path}; {left} runs left. Run "
               "the same command again to finish them.")
        print(msg, file=sys.stderr, flush=True)
        raise GridStopped(exc.signum, msg) from None
    bar.close()
    return path


def _split_tasks(groups: OrderedDict, n_jobs: int) -> OrderedDict:
    """Tasks of at most about 1/(4 n_jobs) of the simulator's expected cost each: a group of points sharing a
    workload is split into chunks (``belady`` and ``oracle`` stay together: the oracle reuses belady's plan), so
    the pool's processes stay busy to the end and the bar advances often. Engine groups stay whole."""
    sim_total = sum(point_cost(p) for t in groups.values() if t[0].executor == "simulator" for p in t)
    target = sim_total / (4 * max(n_jobs, 1)) if n_jobs > 1 else float("inf")
    out: OrderedDict = OrderedDict()
    for key, pts in groups.items():
        if pts[0].executor != "simulator" or sum(point_cost(p) for p in pts) <= target:
            out[(key, 0)] = pts
            continue
        units, pair = [], [p for p in pts if p.strategy in ("belady", "oracle")]
        for p in pts:
            if p.strategy not in ("belady", "oracle"):
                units.append([p])
            elif p is pair[0]:
                units.append(pair)
        chunk, chunk_cost, i = [], 0.0, 0
        for u in units:
            c = sum(point_cost(p) for p in u)
            if chunk and chunk_cost + c > target:
                out[(key, i)] = chunk
                chunk, chunk_cost, i = [], 0.0, i + 1
            chunk, chunk_cost = chunk + u, chunk_cost + c
        out[(key, i)] = chunk
    return out


def _run_pool(sim_tasks: list, n_jobs: int, hw: HardwareProfile, env: dict, finish) -> None:
    """Simulator tasks in ``n_jobs`` worker processes; every way out (done, error, signal) ends the workers."""
    pool = ProcessPoolExecutor(max_workers=n_jobs, initializer=_worker_init)
    try:
        futs = {pool.submit(_sim_task, t, hw, env): k for k, t in sim_tasks}
        pending = set(futs)
        while pending:
            # A bounded wait, so a signal is handled within a second even where a blocked wait would defer it.
            finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for f in finished:
                finish(futs[f], f.result())
    except BaseException:
        _end_pool(pool)
        raise
    pool.shutdown(wait=True)
