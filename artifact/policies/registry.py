"""The registry: every strategy is a named composition of a predictor and an eviction policy.

Adding a strategy is one module (or class) plus one line here; every test and benchmark iterates this table.

``access`` says what the strategy may look at (the scheduler enforces it): ``past`` (what a real engine has: the
past, the current layer's routing, the trace's lookahead for the next layer), ``next_layer`` (the exact routing of
the next layer: Pre-gated MoE's fine-tuned pre-gate), ``path`` (a whole step's routing degraded to a stated
accuracy: ExpertFlow's predictor arm) and ``future`` (the bounds).
``batch_aware``: dedups across the batch even under the seed's ``per_item`` protocol (the seed's own
Intelligent+Deduplication).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from artifact.policies import eviction as ev
from artifact.policies import predictors as pr
from artifact.policies.intelligent import ExpectedReuse, IntelligentDedup


@dataclass(frozen=True)
class StrategySpec:
    name: str
    summary: str
    source: str
    predictor: str
    eviction: str
    make: Callable  # (ctx, **params) -> Strategy
    access: str = "past"
    batch_aware: bool = False
    needs_lookahead: bool = False
    bound: bool = False


def _mk(predictor, eviction, **fixed):
    def make(ctx, **params):
        return predictor(ctx, eviction(ctx), **fixed, **params)

    return make


def _planned_elsewhere(ctx, **params):
    raise RuntimeError("gpu_only and oracle are planned by the scheduler itself (see scheduler.py)")


_TABLE = [
    StrategySpec("on_demand", "MoE-OnDemand: fetch an expert when the router picks it",
                 "Pre-gated MoE artifact baseline (arXiv:2308.12066)", "none", "LRU", _mk(pr.OnDemand, ev.LRU)),
    StrategySpec("prefetch_all", "MoE-Prefetch: fetch every expert of the next layer",
                 "SE-MoE; Pre-gated MoE artifact baseline", "all of layer l+1", "LRU", _mk(pr.PrefetchAll, ev.LRU)),
    StrategySpec("pregated", "Pre-gated MoE as built: the next layer's exact experts, one layer ahead",
                 "Hwang et al., ISCA 2024, arXiv:2308.12066", "exact layer l+1", "LFU",
                 _mk(pr.NextLayerSet, ev.LFU, source="exact"), access="next_layer"),
    StrategySpec("pregated_proxy", "training-free pre-gate: next router on this layer's hidden state",
                 "mixtral-offloading arXiv:2312.17238; DAOP", "trace lookahead", "LFU",
                 _mk(pr.NextLayerSet, ev.LFU, source="lookahead"), needs_lookahead=True),
    StrategySpec("expertflow", "ExpertFlow PLEC: path predictor (true path at a stated accuracy), per-layer slots",
                 "He et al., arXiv:2410.17954", "path predictor @accuracy", "PLEC",
                 _mk(pr.ExpertFlowPLEC, pr.PLECEviction), access="path"),
    StrategySpec("mixtral_offloading", "per-layer LRU slots + speculative next-layer prefetch",
                 "dvmazur/mixtral-offloading, arXiv:2312.17238", "trace lookahead", "per-layer LRU",
                 _mk(pr.NextLayerSet, ev.PerLayerLRU, source="lookahead"), needs_lookahead=True),
    StrategySpec("moe_infinity", "activation-matrix matching, evict lowest visit count",
                 "EfficientMoE/MoE-Infinity, arXiv:2401.14361", "EAM cosine match", "lowest visit count",
                 _mk(pr.MoEInfinity, ev.VisitCount)),
    StrategySpec("topk", "seed's Top-K: most frequent experts of the next layer across the batch",
                 "seed report (seeds/000), 'Top-K (Ours)'", "per-layer frequency", "LFU",
                 _mk(pr.TopKFrequency, ev.LFU)),
    StrategySpec("multi_lookahead", "seed's Multi-Look-Ahead: chained cross-layer transitions",
                 "seed report (seeds/000), 'Multi-Look-Ahead (Ours)'", "transitions, 2 layers", "LRU",
                 _mk(pr.MultiLookAhead, ev.LRU)),
    StrategySpec("intelligent_dedup", "ours: dedup + expected-reuse eviction + admitted lookahead prefetch",
                 "this artifact (the seed's Intelligent+Deduplication, redesigned)", "lookahead, admitted",
                 "expected time to next use", _mk(IntelligentDedup, ExpectedReuse), batch_aware=True),
    StrategySpec("belady", "offline optimal eviction, demand fetch: fewest loads", "Belady 1966 (MIN)", "none",
                 "Belady MIN", _mk(pr.OnDemand, ev.Belady), access="future", bound=True),
    StrategySpec("oracle", "perfect prefetch: the fastest of MIN's loads, Cao's aggressive prefetch, and every "
                 "strategy's cache decisions issued as early as possible", "Belady 1966; Cao et al. SIGMETRICS 1995",
                 "the future", "Belady MIN (or the chosen construction's)", _planned_elsewhere,
                 access="future", bound=True),
    StrategySpec("gpu_only", "every expert resident: no offloading", "Pre-gated MoE artifact baseline", "-", "-",
                 _planned_elsewhere, access="future", bound=True),
]

STRATEGIES: dict[str, StrategySpec] = {s.name: s for s in _TABLE}


def get_strategy(name: str) -> StrategySpec:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; strategies: {', '.join(STRATEGIES)}") from None


AGGRESSIVE_MIN = StrategySpec("aggressive_min", "aggressive prefetch with MIN replacement (oracle construction)",
                              "Cao et al., SIGMETRICS 1995", "the future", "Belady MIN",
                              _mk(pr.AggressiveMIN, ev.Belady), access="future", bound=True)
