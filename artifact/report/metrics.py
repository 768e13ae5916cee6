"""Derived quantities over the typed CSV rows (see ``load.prepare``): numeric frames that the tables, the claims
and the figures share. No formatting here.

Definitions (printed in REPORT.md, see ``tables.definitions``):

- memory savings at batch B: ``1 - unique_requests / requests`` under ``batched``;
- bandwidth savings at batch B: ``1 - bytes_h2d(batched) / bytes_h2d(per_item)`` for on_demand, and
  ``1 - bytes_h2d(intelligent_dedup) / mean bytes_h2d(paper baselines, per_item)`` (the seed's comparison);
- expert reuse factor: ``requests / unique_requests`` under ``batched`` (the seed does not define its own);
- speedup of S over R: mean latency per step of R over that of S, each the mean over batch sizes, per seed;
- gap to a bound: a strategy's value / the bound's value on the same seed, batch and cache;
- engine error: (simulator - engine) / engine on the same plan.

A refusal row (a configuration that cannot run) has NaN figures: a mean over batch sizes or strategies that
needs it is NaN too (never a mean over fewer configurations); the tables say "refused" there.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from artifact.planner import strategies as _strategies

PROTOCOLS = ("batched", "per_item")
STRATEGIES = _strategies()


# --------------------------------------------------------------------------------------------------------------
# Which rows: strategies, the seed's groups, the default cache and batch, refusals
# --------------------------------------------------------------------------------------------------------------


def strategy_order(names) -> list[str]:
    """Registry order (the order of every table and legend), unknown names last in alphabetical order."""
    names = set(names)
    known = [n for n in STRATEGIES if n in names]
    return known + sorted(names - set(known))


def seed_groups(claims: Mapping) -> tuple[list[str], list[str]]:
    """(paper baselines, the seed's own methods) as our strategy names, from the seed's summary table."""
    rows = claims["tables"]["strategy_summary"]["rows"]
    paper = [r["strategy"] for r in rows if r["category"] == "Paper Baselines"]
    ours = [r["strategy"] for r in rows if r["category"] == "Our Contributions"]
    return paper, ours


def flagship(claims: Mapping) -> str:
    return claims["method_map"]["Intelligent+Deduplication"]


def baseline(claims: Mapping) -> str:
    return claims["method_map"]["On-Demand"]


def batch_aware() -> list[str]:
    return [n for n, s in STRATEGIES.items() if s.batch_aware]


def default_cache(sim: pd.DataFrame) -> int:
    """The grid's default cache size: the one it also ran under ``per_item`` (see grids.sim_grid); else the most
    frequent cache size (ties: the smallest)."""
    per_item = sorted(set(sim.loc[sim["protocol"] == "per_item", "cache"]))
    if len(per_item) == 1:
        return int(per_item[0])
    counts = sim["cache"].value_counts()
    best = counts[counts == counts.max()].index
    return int(min(best))


def mid_batch(batches, want: int = 8) -> int:
    """``want`` if measured, else the measured batch nearest to it (ties: the smaller)."""
    bs = sorted(set(batches))
    return min(bs, key=lambda b: (abs(b - want), b))


def timeline_rows(sim: pd.DataFrame, point_ids) -> pd.DataFrame:
    """The rows the timeline figure shows: those of ``point_ids`` (the points with a saved step timeline: the grid
    marks them, see ``grids.TIMELINE_STRATEGIES``) that ran, in registry order."""
    d = sim[sim["point_id"].isin(list(point_ids)) & sim["latency_ms_per_step"].notna()]
    order = {s: i for i, s in enumerate(strategy_order(d["strategy"]))}
    return (d.assign(_o=d["strategy"].map(order)).sort_values(["_o", "batch", "cache", "trace_seed"], kind="mergesort")
            .drop(columns="_o"))


def refused(rows: pd.DataFrame, strategy: str, **where) -> bool:
    """Whether ``rows`` hold a refusal of ``strategy`` where each column named in ``where`` equals its value."""
    sel = rows["refused"] & (rows["strategy"] == strategy)
    for col, val in where.items():
        sel &= rows[col] == val
    return bool(sel.any())


# --------------------------------------------------------------------------------------------------------------
# Latency, speedups, savings, scaling
# --------------------------------------------------------------------------------------------------------------


def by_seed(rows: pd.DataFrame, value: str, index=("strategy", "trace_seed"), columns="batch") -> pd.DataFrame:
    """``value`` as a frame: rows ``index``, columns ``columns`` (duplicates averaged; missing = NaN)."""
    keys = list(index) + [columns]
    return rows.groupby(keys, sort=True)[value].mean().unstack(columns)


def latency_by_batch(sim: pd.DataFrame, cache: int, protocol: str) -> pd.DataFrame:
    """Latency per step [ms]: index (strategy, trace_seed), columns batch."""
    d = sim[(sim["cache"] == cache) & (sim["protocol"] == protocol)]
    return by_seed(d, "latency_ms_per_step")


def mean_over_batches(lat: pd.DataFrame) -> pd.Series:
    """Mean over the batch columns; NaN when any batch is missing, so no strategy is averaged over fewer sizes."""
    return lat.mean(axis=1, skipna=False)


def seed_stats(s: pd.Series, level: str = "strategy") -> pd.DataFrame:
    """Mean, min and max over seeds of a series indexed by (``level``, trace_seed)."""
    g = s.groupby(level=level, sort=False)
    return pd.DataFrame({"mean": g.mean(), "min": g.min(), "max": g.max()})


def speedups(sim: pd.DataFrame, cache: int, protocol: str, reference: str) -> pd.Series:
    """Per (strategy, seed): mean latency of ``reference`` over batches / that of the strategy."""
    m = mean_over_batches(latency_by_batch(sim, cache, protocol))
    if reference not in m.index.get_level_values("strategy"):
        return m * np.nan
    ref = m.xs(reference, level="strategy")
    return m.groupby(level="strategy", group_keys=False).apply(lambda s: ref.reindex(s.index.get_level_values(1)).
                                                               set_axis(s.index) / s)


def dedup_savings(sim: pd.DataFrame, cache: int, claims: Mapping) -> pd.DataFrame:
    """Per (trace_seed, batch): memory savings, reuse factor and bandwidth savings (see the module docstring)."""
    paper, _ = seed_groups(claims)
    od, fl = baseline(claims), flagship(claims)
    d = sim[sim["cache"] == cache]
    b = d[d["protocol"] == "batched"]
    src = b[b["strategy"] == od]
    if src.empty:  # the workload property is the same in every strategy's rows
        src = b[b["strategy"] == strategy_order(b["strategy"])[0]] if not b.empty else b
    g = src.groupby(["trace_seed", "batch"], sort=True)[["requests", "unique_requests"]].mean()
    out = pd.DataFrame(index=g.index)
    out["requests"] = g["requests"]
    out["unique_requests"] = g["unique_requests"]
    out["memory_savings"] = 1.0 - g["unique_requests"] / g["requests"]
    out["reuse_factor"] = g["requests"] / g["unique_requests"]
    byts = d.groupby(["protocol", "strategy", "trace_seed", "batch"], sort=True)["bytes_h2d"].mean()

    def pick(protocol, strategy):
        try:
            return byts.xs((protocol, strategy), level=("protocol", "strategy")).reindex(out.index)
        except KeyError:
            return pd.Series(np.nan, index=out.index)

    out["bandwidth_savings_on_demand"] = 1.0 - pick("batched", od) / pick("per_item", od)
    paper_bytes = pd.concat([pick("per_item", p) for p in paper], axis=1).mean(axis=1, skipna=False)
    out["bandwidth_savings_dedup_vs_paper"] = 1.0 - pick("per_item", fl) / paper_bytes
    return out


def scaling(sim: pd.DataFrame, cache: int, protocol: str, claims: Mapping) -> pd.DataFrame:
    """Per (trace_seed, batch): Paper Avg, Our Best (and which), Improvement."""
    paper, ours = seed_groups(claims)
    lat = latency_by_batch(sim, cache, protocol)
    have = set(lat.index.get_level_values("strategy")) if not lat.empty else set()
    cols = ["paper_avg_ms", "our_best_ms", "our_best", "improvement"]
    if not set(paper) <= have or not set(ours) & have:
        return pd.DataFrame(columns=cols)
    long = lat.stack(future_stack=True).rename("ms").reset_index()  # strategy, trace_seed, batch, ms
    w = long.pivot_table(index=["trace_seed", "batch"], columns="strategy", values="ms", aggfunc="mean",
                         dropna=False)
    out = pd.DataFrame(index=w.index)
    out["paper_avg_ms"] = w[paper].mean(axis=1, skipna=False)
    mine = [s for s in ours if s in w.columns]
    out["our_best_ms"] = w[mine].min(axis=1, skipna=False)
    out["our_best"] = w[mine].idxmin(axis=1, skipna=True) if w[mine].notna().any().any() else ""
    out["improvement"] = out["paper_avg_ms"] / out["our_best_ms"]
    return out


def over_seeds(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    """Mean, min, max of ``value`` over seeds for each batch of a (trace_seed, batch)-indexed frame."""
    g = frame[value].astype(float).groupby(level="batch", sort=True)
    return pd.DataFrame({"mean": g.mean(), "min": g.min(), "max": g.max()})


def latency_seed_mean(sim: pd.DataFrame, cache: int, protocol: str) -> pd.DataFrame:
    """Latency per step [ms], mean over seeds: index strategy, columns batch."""
    lat = latency_by_batch(sim, cache, protocol)
    if lat.empty:
        return lat
    return lat.groupby(level="strategy", sort=False).mean()


# --------------------------------------------------------------------------------------------------------------
# Gaps to the bounds; engine error
# --------------------------------------------------------------------------------------------------------------


def gap_frame(sim: pd.DataFrame, value: str, bound: str, cache: int, protocol: str = "batched") -> pd.DataFrame:
    """Per (strategy, trace_seed) x batch: ``value`` / the bound's ``value`` on the same seed and batch."""
    d = sim[(sim["cache"] == cache) & (sim["protocol"] == protocol)]
    v = by_seed(d, value)
    if v.empty or bound not in v.index.get_level_values("strategy"):
        return pd.DataFrame()
    ref = v.xs(bound, level="strategy")
    parts = []
    for s in v.index.get_level_values("strategy").unique():
        x = v.xs(s, level="strategy")
        r = x / ref.reindex(x.index)
        r.index = pd.MultiIndex.from_product([[s], r.index], names=["strategy", "trace_seed"])
        parts.append(r)
    return pd.concat(parts)


def engine_error(engine: pd.DataFrame) -> pd.DataFrame:
    """Per engine row: engine median, min, max, simulator figure and relative error (sim - engine) / engine."""
    d = engine[engine["executor"] == "engine"].copy()
    d["rel_error"] = (d["sim_latency_ms_per_step"] - d["latency_ms_per_step"]) / d["latency_ms_per_step"]
    order = {s: i for i, s in enumerate(strategy_order(d["strategy"]))}
    d["_o"] = d["strategy"].map(order)
    d = d.sort_values(["_o", "batch", "trace_seed", "cache"], kind="mergesort").drop(columns="_o")
    return d.reset_index(drop=True)

