"""Reading the results folder: the grids' CSV files, typed; the hardware profiles they name; the GPU checks; the
step timelines the runner saved. Nothing here computes a result: it reads and types.

- ``raw/{sim,engine,cpu_engine,models,real,sensitivity,ablation,frontier,horizon}.csv``: one row per run (schema:
  ``artifact/experiments/schema.py``), read as text and typed once by :func:`prepare`. A refusal row (a
  configuration that cannot run) has empty numeric cells, typed as NaN, and a ``note`` starting with
  :data:`REFUSED`.
- ``hardware/NAME.json``: only what the report prints of a profile (:class:`Profile`).
- ``raw/gpu_checks.json``: as written by the GPU checks.
- ``raw/routing_stats.json``: routing statistics of the real traces, the synthetic presets and the E9 sweep
  (written by ``artifact/experiments/routing.py``), as a dict.
- ``raw/e10.csv``: E10's rows (real ``transformers`` models offloaded): read by ``artifact/report/e10.py``.
- ``raw/timelines.json``: one decode step's timeline for each point the timeline figure shows
  (:class:`StepTimeline`; written by ``artifact/experiments/runner.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

RAW_FILES = ("sim", "engine", "cpu_engine", "models", "real", "sensitivity", "ablation", "frontier", "horizon")
TIMELINES_FILE = "timelines.json"
ROUTING_STATS_FILE = "routing_stats.json"
E10_FILE = "e10.csv"
REFUSED = "refused: "  # how the runner starts the note of a configuration that cannot run
# The repository's own profiles: where a results folder that lacks a profile its rows name falls back to.
BUILTIN_PROFILES = Path(__file__).resolve().parents[2] / "results" / "hardware"

INT_FIELDS = ["trace_seed", "batch", "cache_experts", "steps", "layers", "repeats"]
COUNT_CHECK = ["requests", "unique_requests", "hits", "demand_loads", "loads", "prefetch_issued"]
SIM_COUNT_FIELDS = [f"sim_{c}" for c in COUNT_CHECK]  # engine rows: the simulator's decisions, same configuration
NUM_FIELDS = ["cache_fraction", "requests", "unique_requests", "hits", "demand_loads", "loads", "bytes_h2d",
              "prefetch_issued", "prefetch_used", "prefetch_wasted", "hit_rate", "latency_ms_per_step",
              "latency_ms_per_step_min", "latency_ms_per_step_max", "stall_ms_per_step", "copy_busy_ms",
              "compute_busy_ms", "tokens_per_s", "sim_latency_ms_per_step", "peak_device_bytes", *SIM_COUNT_FIELDS]
STR_FIELDS = ["experiment", "point_id", "model", "workload", "protocol", "strategy", "variant", "executor",
              "hardware", "oracle_source", "note", "gpu", "driver", "torch", "cuda", "package_version", "git_commit"]


# --------------------------------------------------------------------------------------------------------------
# CSV rows
# --------------------------------------------------------------------------------------------------------------


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Typed columns, plus ``cache``: the cache size the grid asked for (``gpu_only`` rows record every expert in
    ``cache_experts``; the point id keeps the requested size, so they stay in their cache group), and ``refused``:
    the row is a refusal (see :data:`REFUSED`)."""
    d = df.copy()
    for c in STR_FIELDS:
        if c not in d.columns:
            d[c] = ""
        d[c] = d[c].astype(object).where(d[c].notna(), "").astype(str)
    for c in INT_FIELDS + NUM_FIELDS:
        if c not in d.columns:
            d[c] = np.nan
        d[c] = pd.to_numeric(d[c], errors="coerce").astype(float)
    req = d["point_id"].str.extract(r"\|C(\d+)\|", expand=False)
    d["cache"] = pd.to_numeric(req, errors="coerce").fillna(d["cache_experts"])
    for c in ("trace_seed", "batch", "cache", "steps"):
        d[c] = d[c].fillna(-1).astype(int)
    d["refused"] = d["note"].str.startswith(REFUSED)
    return d.reset_index(drop=True)


def read_raw(results: Path) -> dict[str, pd.DataFrame]:
    """The grids' CSV files that exist, typed (see :func:`prepare`)."""
    out = {}
    for name in RAW_FILES:
        p = Path(results) / "raw" / f"{name}.csv"
        if p.is_file():
            # Read every cell as text and convert once in prepare(): the same bytes give the same frame whatever
            # pandas would have guessed per column.
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
            out[name] = prepare(df)
    return out


def refusal_reason(note: str) -> str:
    return note[len(REFUSED):] if note.startswith(REFUSED) else note


# --------------------------------------------------------------------------------------------------------------
# Hardware profiles
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """What the report prints of a hardware profile: its provenance and the fit of its pinned-copy table."""

    name: str
    description: str
    source: str
    extra: dict
    copy_latency_ms: float  # intercept of the least-squares line through the copy table (>= 0)
    copy_bandwidth_gbps: float  # 1 / its slope


def read_profile(path: Path) -> Profile:
    """A profile JSON file (``artifact.runtime.hardware`` writes them); ValueError if it is not one."""
    try:
        d = json.loads(Path(path).read_text())
        table = [(float(b), float(t)) for b, t in d["copy_table"]]
        name = d["name"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"hardware profile {path}: not readable ({type(exc).__name__}: {exc})") from None
    if len(table) < 2:
        raise ValueError(f"hardware profile {path}: copy_table needs at least 2 (bytes, ms) points")
    # The same fit as HardwareProfile: bytes -> ms, the latency clipped at 0.
    slope, icpt = np.polyfit(np.array([b for b, _ in table]), np.array([t for _, t in table]), 1)
    extra = d.get("extra", {})
    return Profile(name, d.get("description", ""), d.get("source", ""), extra if isinstance(extra, dict) else {},
                   float(max(icpt, 0.0)), 1e-6 / float(slope))


def read_profiles(results: Path, names) -> dict[str, tuple[Profile, str]]:
    """Each profile the rows name, with where it came from: ``results/hardware/NAME.json`` first, else the
    repository's profile of that name; a name with neither (or an unreadable file) is left out."""
    out = {}
    for n in sorted(set(names)):
        if not n:
            continue
        p = Path(results) / "hardware" / f"{n}.json"
        src = f"{p.parent.name}/{p.name}"
        if not p.is_file():
            p, src = BUILTIN_PROFILES / f"{n}.json", "artifact's results/hardware"
        if not p.is_file():
            continue
        try:
            out[n] = (read_profile(p), src)
        except ValueError:
            continue
    return out


# --------------------------------------------------------------------------------------------------------------
# JSON side files
# --------------------------------------------------------------------------------------------------------------


def read_gpu_checks(results: Path) -> dict | None:
    for p in (Path(results) / "raw" / "gpu_checks.json", Path(results) / "gpu_checks.json"):
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError:
                return {"checks": {"gpu_checks.json": {"error": "unreadable JSON"}}}
    return None


def read_routing_stats(results: Path) -> dict | None:
    """``raw/routing_stats.json``; None when absent. ValueError when it is not JSON."""
    p = Path(results) / "raw" / ROUTING_STATS_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not JSON ({exc})") from None


@dataclass(frozen=True)
class StepTimeline:
    """One decode step of one run, as the runner saved it: times in ms since the step's start (its first NON-MoE
    part); an operation that started before the step (a prefetch) has a negative start."""

    point_id: str
    strategy: str
    step: int  # the decode step shown (0-based)
    steps: int  # decode steps of the run
    step_ms: float  # the step's length: to its last COMPUTE or NON-MoE part
    load_start: np.ndarray  # [n] LOADs that overlap the step, in plan order
    load_end: np.ndarray
    load_prefetch: np.ndarray  # bool: prefetch (True) or demand load
    comp_start: np.ndarray  # COMPUTEs (expert FFNs) that overlap the step
    comp_end: np.ndarray
    nonmoe_start: np.ndarray  # NON-MoE parts (attention, norms, router) that overlap the step
    nonmoe_end: np.ndarray


def read_timelines(results: Path) -> dict[str, StepTimeline]:
    """``raw/timelines.json`` by point id; empty when the file is absent. Its format: see
    ``artifact.experiments.runner.step_timeline``."""
    p = Path(results) / "raw" / TIMELINES_FILE
    if not p.is_file():
        return {}
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not JSON ({exc})") from None
    out = {}
    for pid, t in sorted(doc.get("points", {}).items()):
        try:
            out[pid] = StepTimeline(
                pid, t["strategy"], int(t["step"]), int(t["steps"]), float(t["step_ms"]),
                np.asarray(t["loads"]["start_ms"], float), np.asarray(t["loads"]["end_ms"], float),
                np.asarray(t["loads"]["prefetch"], bool), np.asarray(t["computes"]["start_ms"], float),
                np.asarray(t["computes"]["end_ms"], float), np.asarray(t["nonmoe"]["start_ms"], float),
                np.asarray(t["nonmoe"]["end_ms"], float))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{p}: point {pid}: bad or missing field ({type(exc).__name__}: {exc})") from None
    return out
