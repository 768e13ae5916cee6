"""The resumable grid runner: one CSV row per run, written atomically, finishing only what is missing.

``run_grid(grid, out_dir)`` reads ``out_dir/<grid>.csv`` if it exists, skips every point already there, runs the
rest grouped into tasks (one workload, one cache size, one protocol: the request tables and the plans the oracle
reuses are shared), and rewrites the file atomically after every finished task, so a stopped run loses at most the
task in flight and the next run finishes the rest. Simulator tasks run in parallel processes; engine tasks run one
after another in this process (one GPU). Progress goes to stderr.

Beside the CSV the runner keeps ``out_dir/timelines.json``: for each point whose grid asks for it
(``Point.timeline_step``), one decode step's timeline as the simulator timed the point's plan (see
:func:`step_timeline`); the report's timeline figure draws it. It is merged by point id and rewritten atomically
before the CSV, so resuming keeps it whole; a point with a row but without the timeline it asks for runs again.
Engine rows also carry the simulator's decision counts for the same configuration (``sim_*`` columns).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import sys
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from artifact.atomicfile import atomic_write_text
from artifact.core.errors import Unrunnable
from artifact.core.requests import build_requests
from artifact.experiments.grids import Grid, Point
from artifact.experiments.runs import load_trace, make_workload, simulate_one
from artifact.experiments.schema import FIELDS, SIM_COUNT_FIELDS
from artifact.measure.environment import environment
from artifact.runtime.hardware import HardwareProfile, load_profile
from artifact.runtime.simulator import simulate

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMELINES_FILE = "timelines.json"
REFUSED = "refused: "  # the start of a refusal row's note


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
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _base_row(p: Point, hw: HardwareProfile, env: dict) -> dict:
    model = p.engine_model if p.engine_model is not None else None
    from artifact.models import get_model

    spec = model or get_model(p.model)
    return {"experiment": p.grid, "point_id": p.point_id, "model": p.model if model is None else model.name,
            "workload": p.workload.label, "trace_seed": p.workload.seed, "batch": p.batch,
            "cache_experts": p.cache_experts, "cache_fraction": p.cache_experts / spec.total_experts,
            "protocol": p.protocol, "strategy": p.strategy, "steps": p.steps, "executor": p.executor,
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
        return simulate_one(w, p.strategy, p.cache_experts, p.protocol, p.workload.seed, hw, req, plans)

    return _run_task(points, hw, env, execute)


class _EngineCache:
    """One engine per expert shape, sized for the largest plan (gpu_only: every expert), reused across points."""

    def __init__(self, device: str) -> None:
        self.device = device
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
                                      plans=plans, engine_model=p.engine_model)
        # The simulator's decisions for the same configuration, planned again as a simulator row is: the report
        # checks that the engine's are the same.
        sim, _ = simulate_one(w, p.strategy, p.cache_experts, p.protocol, p.workload.seed, hw, req, plans)
        metrics.update({f: sim[f.removeprefix("sim_")] for f in SIM_COUNT_FIELDS})
        return metrics, plan

    return _run_task(points, hw, env, execute)


def run_grid(grid: Grid, out_dir: str | os.PathLike, hardware: str | HardwareProfile = "h200", jobs: int | None = None,
             device: str | None = None, progress: bool = True) -> Path:
    """Run the missing points of ``grid`` into ``out_dir/<grid.name>.csv``; returns the path."""
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
    tasks: OrderedDict = OrderedDict()
    for p in todo:
        tasks.setdefault(p.task_key, []).append(p)
    bar = tqdm(total=len(todo), desc=f"{grid.name} ({len(done)} of {len(grid.points)} done before)", unit="run",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    order = {p.point_id: i for i, p in enumerate(grid.points)}

    def finish(result: tuple[list[dict], dict]) -> None:
        new_rows, new_timelines = result
        if new_timelines:  # before the CSV: a row on disk then has its timeline on disk
            timelines.update(new_timelines)
            write_timelines(tl_path, timelines)
        new_ids = {r["point_id"] for r in new_rows}
        rows[:] = [r for r in rows if r["point_id"] not in new_ids] + new_rows
        rows.sort(key=lambda r: order.get(r["point_id"], len(order)))
        write_rows(path, rows)
        bar.update(len(new_rows))

    engine_tasks = [t for t in tasks.values() if t[0].executor == "engine"]
    # Longest first (planning grows with batch and steps; per_item serves items one by one), so the worker pool
    # does not end waiting on one big task.
    sim_tasks = sorted((t for t in tasks.values() if t[0].executor == "simulator"),
                       key=lambda t: -(t[0].batch * t[0].steps * (8 if t[0].protocol == "per_item" else 1)))
    n_jobs = jobs if jobs is not None else max(1, min(len(sim_tasks), os.cpu_count() or 1))
    if sim_tasks:
        if n_jobs > 1:
            with ProcessPoolExecutor(max_workers=n_jobs) as pool:
                futs = [pool.submit(_sim_task, t, hw, env) for t in sim_tasks]
                for f in as_completed(futs):
                    finish(f.result())
        else:
            for t in sim_tasks:
                finish(_sim_task(t, hw, env))
    if engine_tasks:
        import torch

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        engines = _EngineCache(dev)
        for t in engine_tasks:
            finish(_engine_task(t, hw, env, engines))
    bar.close()
    return path
