"""The experiment grids of the design (E1 to E9 and the flagship's ablation), declared as data.

- ``sim`` (E1, E2, E3, E4, E6): switch-base-128 on the calibrated synthetic workload, every strategy, batch 1 to 64,
  four cache sizes, three seeds, 256 decode steps, protocol ``batched``; plus ``per_item`` (the seed report's
  accounting) at the default cache size for seed 0. Simulator. The points the report's timeline figure shows
  (``mark_timelines``) also save one decode step's timeline.
- ``engine`` (E5): the same plans executed on the GPU engine (every strategy, batch 1 to 64, the default cache,
  seed 0), fewer steps, three timed repeats after a warm-up; each row carries the simulator's figure beside.
- ``models`` (E7): the other presets, every strategy, batch 1 / 8 / 64, a cache of 1/8 of their experts. Simulator.
- ``real`` (E8): every strategy on every vendored real decode trace, batch 1, caches of 5-40% of routed experts.
- ``sensitivity`` (E9): switch-base-128 with the generator's temporal locality and adjacent-layer coupling swept, and
  its lookahead's accuracy.
- ``ablation``: the flagship with each component off in turn, each optional one on (and its recency/frequency
  balance fixed at each setting), on the synthetic workload and every real trace.
- ``frontier``: target 1 at small batch on the development split: the flagship's prefetch bar swept (fixed bars from
  0.5 to 0.99, no prefetch, and the default break-even bar) at batch 1, 2 and 4, every cache and development seed of
  ``sim``, so that its loads and latency sit beside the peers' rows of ``sim`` at the same points.
- ``horizon``: target 2 in context: Belady's MIN seeing only the next 1, 2, 4, 8 or 16 decode steps, on every
  vendored real trace at the caches of ``real`` (references in hindsight, not policies).
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
SIM_STEPS = 64  # decode steps of every simulated synthetic run: 768 layer-steps each (a CPU reproduction in minutes)
ENGINE_STEPS = 32
ENGINE_BATCHES = (1, 4, 16, 64)  # E5: four batch sizes keep the GPU grid and its calibration inside one 10-minute call
ENGINE_REPEATS = 3
MODELS_BATCHES = (1, 8)  # E7: batch 64 of 10 presets alone would take a CPU reproduction past 5 minutes
MODELS_STEPS = 32

# The strategies the seed report's tables compare (its method_map in artifact/report/claims.json) and the MoE-OnDemand
# baseline: the ones the per_item protocol (the seed's accounting) is run for.
PER_ITEM_STRATEGIES = ("on_demand", "pregated", "expertflow", "topk", "multi_lookahead", "intelligent_dedup")

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
    # A named variant of the strategy (the ablation grid: one component off) and its parameters.
    variant: str = ""
    params: tuple[tuple[str, object], ...] = ()

    @property
    def point_id(self) -> str:
        v = f"[{self.variant}]" if self.variant else ""
        return (f"{self.model}|{self.workload.label}|B{self.batch}|C{self.cache_experts}|{self.protocol}|"
                f"{self.strategy}{v}|S{self.steps}|{self.executor}")

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
                for s in _strategies():
                    pts.append(Point("sim", DEFAULT_MODEL, ws, b, cache, "batched", s, steps))
                # per_item (the seed's accounting, for its tables) for the strategies its tables name, at the
                # default cache and the first seed: serving items one by one is ~10x the planning work at batch 64,
                # and these rows only ever sit beside batched ones.
                if cache == DEFAULT_CACHE and seed == seeds[0]:
                    for s in _strategies():
                        if s in PER_ITEM_STRATEGIES:
                            pts.append(Point("sim", DEFAULT_MODEL, ws, b, cache, "per_item", s, steps))
    pts = mark_timelines(pts, seeds[0])
    return Grid("sim", ("E1", "E2", "E3", "E4", "E6"), tuple(pts),
                "switch-base-128, synthetic workload, simulator")


def engine_grid(quick: bool = False, steps: int = ENGINE_STEPS, repeats: int = ENGINE_REPEATS) -> Grid:
    ws = WorkloadSpec(DEFAULT_MODEL, None, DEFAULT_SEQUENCES, DEFAULT_TOKENS, 0)
    batches = (1, 8, 64) if quick else ENGINE_BATCHES
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


# --- real traces, sensitivity, ablation -------------------------------------------------------------------------

REAL_FRACTIONS = (0.05, 0.10, 0.20, 0.40)  # cache sizes of E8, as fractions of the routed experts
# E9: the generator's temporal locality over 0 to 0.4 and its adjacent-layer coupling (the probability a token keeps
# its popularity quantile from one layer to the next) over values whose measured adjacent-layer predictability spans
# the real traces' 0.21-0.33 up to the synthetic default's ~0.58 (the report prints the measured figure of each).
SENSITIVITY_LOCALITY = (0.0, 0.1, 0.2, 0.3, 0.4)
SENSITIVITY_COUPLING = (0.0, 0.5, 0.85)
SENSITIVITY_BATCHES = (1, 8, 64)
SENSITIVITY_STEPS = 64
# E9 also sweeps the accuracy of the synthetic lookahead (the share of the next layer's true experts it names; the
# generator's assumption is 0.85) up to an exact one, for the strategies that read it and the bounds: how far a better
# next-layer predictor would bring each toward the oracle.
SENSITIVITY_LOOKAHEAD = (0.7, 0.85, 1.0)
# The ablation: the flagship with each component switched off in turn, each optional component (the learned
# co-occurrence forecast and the imitation of Belady on the past, both off by default) switched on, and the
# recency/frequency balance fixed at each setting the shadow caches choose from (variant name -> parameters). The
# report also takes, at each point, the best variant in hindsight: how far switching the flagship's parts could go.
ABLATION = {
    "": (),
    "no_adaptive": (("adaptive", False),),
    "no_distance": (("distance", False),),
    "no_frequency": (("frequency", False),),
    "no_rank": (("rank", False),),
    "no_prefetch": (("prefetch", False),),
    "with_cooccurrence": (("cooccurrence", True),),
    "no_lookahead": (("lookahead", False),),
    "no_hardware_window": (("hardware_window", False),),
    "fixed_bar": (("break_even", False),),
    "beta_0": (("adaptive", False), ("beta", 0.0)),
    "beta_2": (("adaptive", False), ("beta", 2.0)),
    "with_imitation": (("imitation", True),),
}
FLAGSHIP = "intelligent_dedup"
# Target 1 asks for loads and latency both within 2% of the best peer at every point; at small batch the peers that
# prefetch are fastest and the ones that wait need the fewest loads. The frontier grid sweeps the flagship's prefetch
# bar (the fixed bars, ``break_even=False``: ``min_probability`` inside the copy window, ``sure_probability`` past
# it, never below 0.95) between those two corners, on the development split only (it decides nothing: it shows
# whether any setting of this one knob reaches both).
FRONTIER_BARS = (0.5, 0.7, 0.85, 0.9, 0.95, 0.99)
FRONTIER_BATCHES = (1, 2, 4)
FRONTIER = {"": (), "no_prefetch": (("prefetch", False),),
            **{f"bar_{p:g}": (("break_even", False), ("min_probability", p), ("sure_probability", max(p, 0.95)))
               for p in FRONTIER_BARS}}


def real_traces() -> list[tuple[str, str, int]]:
    """(vendored trace, its model preset, decode tokens) of every vendored real trace."""
    from artifact.traces.trace import DECODE
    from artifact.traces.vendored import load, names

    out = []
    for name in names():
        tr = load(name)
        dec = int((tr.phase == DECODE).sum()) if tr.phase is not None else tr.num_tokens
        out.append((f"vendored:{name}", str(tr.meta["model"]), dec))
    return out


def _real_caches(model: str, layers: int) -> list[int]:
    experts = PRESETS[model].experts
    return [max(PRESETS[model].top_k, round(f * layers * experts)) for f in REAL_FRACTIONS]


def real_grid(quick: bool = False) -> Grid:
    """E8: every strategy on every vendored real decode trace, batch 1 (one prompt each: batches cannot be formed
    honestly from them), caches of 5-40% of the routed experts; a strategy that needs a lookahead the trace lacks is
    a recorded refusal."""
    pts = []
    for trace, model, tokens in real_traces():
        ws = WorkloadSpec(model, trace)
        caches = _real_caches(model, PRESETS[model].moe_layers)
        for cache in (caches[1:2] if quick else caches):
            for s in _strategies():
                pts.append(Point("real", model, ws, 1, cache, "batched", s, min(tokens, 32) if quick else tokens))
    return Grid("real", ("E8",), tuple(pts), "vendored real decode traces, batch 1, simulator")


SENSITIVITY_STRATEGIES = ("on_demand", "pregated_proxy", "mixtral_offloading", "moe_infinity", "lfu", "lfru", "arc",
                          "s3fifo", FLAGSHIP, "belady", "oracle")
LOOKAHEAD_STRATEGIES = ("pregated_proxy", "mixtral_offloading", "multi_lookahead", FLAGSHIP, "pregated", "belady",
                        "oracle")


def sensitivity_grid(quick: bool = False) -> Grid:
    """E9: switch-base-128's synthetic workload (seed 0, cache 128) with the generator's temporal locality and
    adjacent-layer coupling swept, batch 1, 8 and 64: which strategy wins where; and with its lookahead's accuracy
    swept, for the strategies that read a lookahead and the bounds."""
    pts = []
    locs = SENSITIVITY_LOCALITY[::2] if quick else SENSITIVITY_LOCALITY
    coups = SENSITIVITY_COUPLING[:2] if quick else SENSITIVITY_COUPLING
    for loc in locs:
        for coup in coups:
            ws = WorkloadSpec(DEFAULT_MODEL, None, DEFAULT_SEQUENCES, DEFAULT_TOKENS, 0,
                              (("locality", loc), ("cross_layer", coup)))
            for b in (SENSITIVITY_BATCHES[:2] if quick else SENSITIVITY_BATCHES):
                for s in SENSITIVITY_STRATEGIES:
                    pts.append(Point("sensitivity", DEFAULT_MODEL, ws, b, DEFAULT_CACHE, "batched", s,
                                     32 if quick else SENSITIVITY_STEPS))
    for acc in SENSITIVITY_LOOKAHEAD[-1:] if quick else SENSITIVITY_LOOKAHEAD:
        ws = WorkloadSpec(DEFAULT_MODEL, None, DEFAULT_SEQUENCES, DEFAULT_TOKENS, 0, (("lookahead_accuracy", acc),))
        for b in (SENSITIVITY_BATCHES[:1] if quick else SENSITIVITY_BATCHES):
            for s in LOOKAHEAD_STRATEGIES:
                pts.append(Point("sensitivity", DEFAULT_MODEL, ws, b, DEFAULT_CACHE, "batched", s,
                                 32 if quick else SENSITIVITY_STEPS))
    return Grid("sensitivity", ("E9",), tuple(pts), "switch-base-128 synthetic, locality x coupling and lookahead "
                "accuracy swept")


def ablation_grid(quick: bool = False) -> Grid:
    """The flagship with each component switched off in turn, on every workload of the grids: switch-base-128's
    synthetic workload (seed 0, cache 128, batch 1 / 8 / 64) and every vendored real trace (batch 1, caches of
    5-40%)."""
    pts = []
    ws = WorkloadSpec(DEFAULT_MODEL, None, DEFAULT_SEQUENCES, DEFAULT_TOKENS, 0)
    for b in ((1, 8) if quick else (1, 8, 64)):
        for v, params in ABLATION.items():
            pts.append(Point("ablation", DEFAULT_MODEL, ws, b, DEFAULT_CACHE, "batched", FLAGSHIP,
                             32 if quick else SIM_STEPS, variant=v, params=params))
    for trace, model, tokens in real_traces():
        wr = WorkloadSpec(model, trace)
        caches = _real_caches(model, PRESETS[model].moe_layers)
        for cache in (caches[1:2] if quick else caches):
            for v, params in ABLATION.items():
                pts.append(Point("ablation", model, wr, 1, cache, "batched", FLAGSHIP,
                                 min(tokens, 32) if quick else tokens, variant=v, params=params))
    return Grid("ablation", ("ablation",), tuple(pts), "the flagship with one component off, every workload")


def frontier_grid(quick: bool = False) -> Grid:
    """The flagship's prefetch bar swept at batch 1, 2 and 4 on the development seeds of ``sim``, at its caches and
    steps (``FRONTIER``)."""
    pts = []
    for seed in SEEDS[:1] if quick else SEEDS:
        ws = WorkloadSpec(DEFAULT_MODEL, None, DEFAULT_SEQUENCES, DEFAULT_TOKENS, seed)
        for cache in (DEFAULT_CACHE,) if quick else CACHES:
            for b in FRONTIER_BATCHES[:1] if quick else FRONTIER_BATCHES:
                for v, params in FRONTIER.items():
                    pts.append(Point("frontier", DEFAULT_MODEL, ws, b, cache, "batched", FLAGSHIP,
                                     64 if quick else SIM_STEPS, variant=v, params=params))
    return Grid("frontier", ("flagship target 1",), tuple(pts),
                "the flagship's prefetch bar swept, switch-base-128 development seeds, batch 1-4")


# How much of the future MIN's advantage needs: Belady's MIN limited to a horizon of so many decode steps (beyond it,
# LRU), on the real traces.
HORIZONS = (1, 2, 4, 8, 16)


def horizon_grid(quick: bool = False) -> Grid:
    """``belady`` with each horizon of ``HORIZONS`` (decode steps) on every vendored real trace, batch 1, at the
    caches and steps of ``real`` (whose rows hold ``on_demand`` and the full ``belady`` beside them)."""
    pts = []
    for trace, model, tokens in real_traces():
        ws = WorkloadSpec(model, trace)
        caches = _real_caches(model, PRESETS[model].moe_layers)
        for cache in (caches[1:2] if quick else caches):
            for h in HORIZONS[:2] if quick else HORIZONS:
                pts.append(Point("horizon", model, ws, 1, cache, "batched", "belady",
                                 min(tokens, 32) if quick else tokens, variant=f"horizon_{h}",
                                 params=(("horizon", h),)))
    return Grid("horizon", ("flagship target 2",), tuple(pts), "Belady's MIN with a horizon, vendored real traces")


GRIDS = {"sim": sim_grid, "engine": engine_grid, "models": models_grid, "cpu_engine": cpu_engine_grid,
         "real": real_grid, "sensitivity": sensitivity_grid, "ablation": ablation_grid,
         "frontier": frontier_grid, "horizon": horizon_grid}
