"""The experiment grids of the design (E1 to E7), declared as data.

- ``sim`` (E1, E2, E3, E4, E6): switch-base-128 on the calibrated synthetic workload, every strategy, batch 1 to 64,
  four cache sizes, three seeds, 256 decode steps, protocol ``batched``; plus ``per_item`` (the seed report's
  accounting) at the default cache size for seed 0. Simulator. The points the report's timeline figure shows
  (``mark_timelines``) also save one decode step's timeline.
- ``engine`` (E5): the same plans executed on the GPU engine (every strategy, batch 1 to 64, the default cache,
  seed 0), fewer steps, three timed repeats after a warm-up; each row carries the simulator's figure beside.
- ``models`` (E7): the other presets, every strategy, batch 1 / 8 / 64, a cache of 1/8 of their experts. Simulator.
- ``cpu_engine``: without CUDA, a small engine check on the CPU (a scaled-down Switch expert shape, the same
  routing), so a CPU-only reproduction still executes real plans; each row carries the simulator's decision counts
  for the same configuration beside the engine's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from artifact.experiments.runs import DEFAULT_SEQUENCES, DEFAULT_TOKENS, WorkloadSpec
from artifact.models import PRESETS, ModelSpec
from artifact.planner import strategies

BATCHES = (1, 2, 4, 8, 16, 32, 64)
SEEDS = (0, 1, 2)
DEFAULT_MODEL = "switch-base-128"
DEFAULT_CACHE = 128  # 8.3% of switch-base-128's 1,536 routed experts: 1.2 GB of bf16 experts
CACHES = (64, 128, 256, 512)  # 4.2% .. 33% of the experts
SIM_STEPS = 256
ENGINE_STEPS = 32
ENGINE_REPEATS = 3
MODELS_BATCHES = (1, 8, 64)
MODELS_STEPS = 128

# The CPU engine check runs the Switch routing through experts of this (scaled-down) shape.
SWITCH_MINI = ModelSpec("switch-mini", 12, 128, 1, 64, 256, "relu", "float32")

# The report's step-timeline figure draws one decode step of these strategies at the default cache, this batch,
# `batched`, the first seed: the runner saves that step's timeline for these points (raw/timelines.json).
TIMELINE_STRATEGIES = ("on_demand", "pregated", "intelligent_dedup")
TIMELINE_BATCH = 8


@dataclass(frozen=True)
class Point:
    grid: str
    model: str
    workload: WorkloadSpec
    batch: int
    cache_experts: int
    protocol: str
    strategy: str
    steps: int
    executor: str = "simulator"
    repeats: int = 1
    engine_model: ModelSpec | None = field(default=None, compare=False)
    # The decode step whose timeline the runner saves (raw/timelines.json); None: none (almost every point).
    timeline_step: int | None = field(default=None, compare=False)

    @property
    def point_id(self) -> str:
        return (f"{self.model}|{self.workload.label}|B{self.batch}|C{self.cache_experts}|{self.protocol}|"
                f"{self.strategy}|S{self.steps}|{self.executor}")

    @property
    def task_key(self) -> tuple:
        """Points sharing a task share one workload, its request tables and the plans the oracle reuses."""
        return (self.model, self.workload, self.batch, self.cache_experts, self.protocol, self.steps, self.executor)


@dataclass(frozen=True)
class Grid:
    name: str
    experiments: tuple[str, ...]
    points: tuple[Point, ...]
    description: str = ""


def mark_timelines(points, seed: int, cache: int = DEFAULT_CACHE, batch: int = TIMELINE_BATCH) -> list[Point]:
    """``points`` with ``timeline_step`` set on those the timeline figure shows (:data:`TIMELINE_STRATEGIES` at
    ``cache``, ``batch``, `batched`, ``seed``): the middle step, when the cache is warm and the pool not yet
    draining."""

    def shown(p: Point) -> bool:
        return (p.workload.seed == seed and p.cache_experts == cache and p.batch == batch
                and p.protocol == "batched" and p.strategy in TIMELINE_STRATEGIES)

    return [replace(p, timeline_step=p.steps // 2) if shown(p) else p for p in points]


def _strategies(skip: tuple[str, ...] = ()) -> list[str]:
    # Every registered strategy and bound, in table order; belady comes before the oracle, which reuses its plan.
    return [n for n in strategies() if n not in skip]


def sim_grid(quick: bool = False) -> Grid:
    seeds = SEEDS[:1] if quick else SEEDS
    caches = (DEFAULT_CACHE,) if quick else CACHES
    batches = (1, 8, 64) if quick else BATCHES
    steps = 64 if quick else SIM_STEPS
    pts = []
    for seed in seeds:
        ws = WorkloadSpec(DEFAULT_MODEL, None, DEFAULT_SEQUENCES, DEFAULT_TOKENS, seed)
        for cache in caches:
            for b in batches:
                # per_item (the seed's accounting, for its tables) at the default cache and the first seed only:
                # serving items one by one is ~10x the planning work, and its rows only ever sit beside batched ones.
                per_item = cache == DEFAULT_CACHE and seed == seeds[0]
                protocols = ("batched", "per_item") if per_item else ("batched",)
                for proto in protocols:
                    for s in _strategies():
                        pts.append(Point("sim", DEFAULT_MODEL, ws, b, cache, proto, s, steps))
    pts = mark_timelines(pts, seeds[0])
    return Grid("sim", ("E1", "E2", "E3", "E4", "E6"), tuple(pts),
                "switch-base-128, synthetic workload, simulator")


def engine_grid(quick: bool = False, steps: int = ENGINE_STEPS, repeats: int = ENGINE_REPEATS) -> Grid:
    ws = WorkloadSpec(DEFAULT_MODEL, None, DEFAULT_SEQUENCES, DEFAULT_TOKENS, 0)
    batches = (1, 8, 64) if quick else BATCHES
    # prefetch_all copies ~117 experts per layer-step (~270 ms a step on an H200): fewer steps keep the grid short.
    pts = [Point("engine", DEFAULT_MODEL, ws, b, DEFAULT_CACHE, "batched", s, steps if s != "prefetch_all" else 8,
                 "engine", repeats) for b in batches for s in _strategies()]
    return Grid("engine", ("E5",), tuple(pts), "switch-base-128, synthetic workload, GPU engine vs simulator")


def models_grid(quick: bool = False) -> Grid:
    pts = []
    for name, spec in PRESETS.items():
        if name == DEFAULT_MODEL:
            continue
        ws = WorkloadSpec(name, None, DEFAULT_SEQUENCES, DEFAULT_TOKENS, 0)
        cache = max(spec.top_k * 8, spec.total_experts // 8)
        for b in (MODELS_BATCHES[:2] if quick else MODELS_BATCHES):
            for s in _strategies():
                pts.append(Point("models", name, ws, b, cache, "batched", s, 32 if quick else MODELS_STEPS))
    return Grid("models", ("E7",), tuple(pts), "other model presets, synthetic workloads, simulator")


def cpu_engine_grid(quick: bool = False) -> Grid:
    ws = WorkloadSpec(DEFAULT_MODEL, None, DEFAULT_SEQUENCES, DEFAULT_TOKENS, 0)
    pts = [Point("cpu_engine", DEFAULT_MODEL, ws, b, DEFAULT_CACHE, "batched", s, 4, "engine", 1, SWITCH_MINI)
           for b in (1, 8) for s in _strategies()]
    return Grid("cpu_engine", ("E5",), tuple(pts), "CPU engine check (scaled-down expert shape)")


GRIDS = {"sim": sim_grid, "engine": engine_grid, "models": models_grid, "cpu_engine": cpu_engine_grid}
