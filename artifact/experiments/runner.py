"""The resumable grid runner: one CSV row per run, written atomically, finishing only what is missing.

``run_grid(grid, out_dir)`` reads ``out_dir/<grid>.csv`` if it exists, skips every point already there, runs the
rest grouped into tasks (one workload, one cache size, one protocol: the request tables and the plans the oracle
reuses are shared), and rewrites the file atomically after every finished task, so a stopped run loses at most the
task in flight and the next run finishes the rest. Simulator tasks run in parallel processes; engine tasks run one
after another in this process (one GPU). Progress goes to stderr.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os
import subprocess
import sys
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from artifact import __version__
from artifact.atomicfile import atomic_write_text
from artifact.core.errors import Unrunnable
from artifact.core.requests import build_requests
from artifact.experiments.grids import Grid, Point
from artifact.experiments.runs import load_trace, make_workload, simulate_one
from artifact.experiments.schema import FIELDS
from artifact.runtime.hardware import HardwareProfile, load_profile

REPO_ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """GPU, driver, torch, CUDA, package version and git commit of this run."""
    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda or "", "package_version": __version__}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=False).stdout.strip()
            env["driver"] = out.splitlines()[0] if out else "unknown"
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "unknown"
    else:
        env["gpu"] = "none"
        env["driver"] = ""
    env["git_commit"] = os.environ.get("ARTIFACT_GIT_COMMIT") or _git_commit()
    return env


def _git_commit() -> str:
    try:
        res = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
        if res.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return res.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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


def _run_task(points: list[Point], hw: HardwareProfile, env: dict, execute) -> list[dict]:
    """Rows of one task: one workload (and its request tables) shared by its points, the plans handed on so the
    oracle reuses them. ``execute(workload, point, requests, plans) -> (metrics, plan)``."""
    p0 = points[0]
    w = make_workload(p0.workload, p0.batch, p0.steps, _trace(p0.workload))
    req = build_requests(w)
    plans: dict = {}
    rows = []
    for p in points:
        row = _base_row(p, hw, env)
        try:
            metrics, plan = execute(w, p, req, plans)
        except Unrunnable as exc:  # a configuration that cannot run: a refusal with its reason, numbers left empty
            row["note"] = f"refused: {exc}"
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
    return rows


def _sim_task(points: list[Point], hardware: str | HardwareProfile, env: dict) -> list[dict]:
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
        from artifact.runtime.engine import OffloadEngine

        key = model.name
        eng = self.engines.get(key)
        if eng is None or eng.cache_experts < need:
            self.engines.pop(key, None)
            eng = OffloadEngine(model, max(need, model.total_experts), device=self.device)
            self.engines[key] = eng
        return eng


def _engine_task(points: list[Point], hw: HardwareProfile, env: dict, engines: _EngineCache) -> list[dict]:
    from artifact.experiments.runs import engine_one

    def execute(w, p, req, plans):
        exec_model = p.engine_model if p.engine_model is not None else w.model
        eng = engines.get(exec_model, exec_model.total_experts)
        metrics, plan, _ = engine_one(w, p.strategy, p.cache_experts, p.protocol, p.workload.seed, hw,
                                      device=engines.device, repeats=p.repeats, engine=eng, requests=req,
                                      plans=plans, engine_model=p.engine_model)
        return metrics, plan

    return _run_task(points, hw, env, execute)


def run_grid(grid: Grid, out_dir: str | os.PathLike, hardware: str | HardwareProfile = "h200", jobs: int | None = None,
             device: str | None = None, progress: bool = True) -> Path:
    """Run the missing points of ``grid`` into ``out_dir/<grid.name>.csv``; returns the path."""
    path = Path(out_dir) / f"{grid.name}.csv"
    existing = read_rows(path)
    done = {r["point_id"] for r in existing}
    todo = [p for p in grid.points if p.point_id not in done]
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

    def finish(new_rows: list[dict]) -> None:
        rows.extend(new_rows)
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
