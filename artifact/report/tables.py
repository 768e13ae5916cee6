"""The report's tables: pure functions of the CSV rows (pandas DataFrames) and the seed's quoted claims.

Every function takes DataFrames read from ``results/raw/*.csv`` (after :func:`prepare`) and returns a
:class:`Table`: the numbers (``frame``, NaN where a configuration did not run), the same table formatted for print
(``text``: strings, so Markdown is byte-stable) and a caption that names model, workload, cache size, hardware,
steps, seeds or repeats and protocol. Nothing here is typed by hand except what ``claims.json`` quotes from the seed.

Definitions (also printed in REPORT.md, see :func:`definitions`):

- memory savings at batch B: ``1 - unique_requests / requests`` under ``batched``;
- bandwidth savings at batch B: ``1 - bytes_h2d(batched) / bytes_h2d(per_item)`` for on_demand, and
  ``1 - bytes_h2d(intelligent_dedup) / mean bytes_h2d(paper baselines, per_item)`` (the seed's comparison);
- expert reuse factor: ``requests / unique_requests`` under ``batched`` (the seed does not define its own);
- speedup of S over R: mean latency per step of R over that of S, each the mean over batch sizes, per seed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from artifact.planner import strategies as _strategies

CLAIMS_PATH = Path(__file__).with_name("claims.json")

# Tolerance of every numeric verdict: a claimed figure "holds" when ours is within 10% (relative) of it, or better
# in the direction the claim argues for. Stated once here and printed in the report.
TOLERANCE = 0.10
# "Degrades": the ratio to the best batch-aware strategy grows by more than this from the smallest batch to the
# largest.
DEGRADE_MARGIN = 0.10

HOLDS = "holds"
FAILS = "does not hold"
PER_ITEM_ONLY = "holds only under the per-item protocol"
NOT_MEASURED = "not measured"
VERDICTS = (HOLDS, FAILS, PER_ITEM_ONLY, NOT_MEASURED)

PROTOCOLS = ("batched", "per_item")
INT_FIELDS = ["trace_seed", "batch", "cache_experts", "steps", "layers", "repeats"]
NUM_FIELDS = ["cache_fraction", "requests", "unique_requests", "hits", "demand_loads", "loads", "bytes_h2d",
              "prefetch_issued", "prefetch_used", "prefetch_wasted", "hit_rate", "latency_ms_per_step",
              "latency_ms_per_step_min", "latency_ms_per_step_max", "stall_ms_per_step", "copy_busy_ms",
              "compute_busy_ms", "tokens_per_s", "sim_latency_ms_per_step", "peak_device_bytes"]
STR_FIELDS = ["experiment", "point_id", "model", "workload", "protocol", "strategy", "executor", "hardware",
              "oracle_source", "note", "gpu", "driver", "torch", "cuda", "package_version", "git_commit"]

_DEFINITIONS = """\
- **Latency per step** (ms): time of one decode step for the whole batch (every MoE layer, every token of the
  batch): the run's total time divided by its steps. Simulator rows: the calibrated simulator's time of the plan;
  engine rows: the median wall time over timed repeats, with min and max. Per-token latency is latency per step
  divided by the batch size.
- **Requests**: token-expert pairs (each token asks each MoE layer for its top-k experts). **Unique requests**: the
  (COMPUTE, expert) pairs the plan runs: under `batched` the distinct experts of each layer-step; under `per_item`
  the distinct experts of each item and layer-step, unless the strategy is batch-aware (`intelligent_dedup`).
- **Protocols**: `batched` loads each expert once per layer-step for every token of the batch, as every real engine
  does (FACTS.md section 4); `per_item` serves each batch item as if alone (the seed's accounting for its paper
  baselines). Under `per_item` only batch-aware strategies share an expert between items.
- **Memory savings** at batch B (ours): `1 - unique_requests / requests` under `batched`: the share of token-expert
  requests that deduplication folds because several tokens of one layer-step need the same expert. It is a property
  of the routing (the same for every strategy); we read it from the `on_demand` rows at the default cache.
- **Bandwidth savings** at batch B (ours): `1 - bytes_h2d(batched) / bytes_h2d(per_item)` for the same strategy,
  reported for `on_demand` (every miss is a load); and, as the seed compared, `intelligent_dedup`'s bytes against
  the mean bytes of the paper baselines (`on_demand`, `pregated`, `expertflow`) under `per_item`:
  `1 - bytes_h2d(intelligent_dedup) / mean bytes_h2d(paper baselines, per_item)`. Unlike memory savings it depends
  on the cache: a folded request might have been a hit anyway.
- **Expert reuse factor**: the seed does not define it (its column runs from {reuse_first} at batch {b_first} to
  {reuse_last} at batch {b_last}). Ours: `requests / unique_requests` under `batched`: the mean number of tokens
  served by each expert that is loaded or hit in a layer-step; 1.0 means no sharing.
- **Speedup** of strategy S over R: mean latency per step of R divided by that of S, each the mean over the batch
  sizes of the grid, computed per seed; we print the mean over seeds and [min, max]. The seed's Avg Latency is a
  mean over its batch sizes too: its Intelligent+Deduplication figure, {flag_avg} ms, equals the mean of its
  Our Best column over batch {b_first} to {b_last} ({best_mean} ms).
- **Paper Avg** (the seed's term): at each batch, the mean latency of the paper baselines `on_demand`, `pregated`,
  `expertflow`. **Our Best**: the lowest latency among the seed's own methods `topk`, `multi_lookahead`,
  `intelligent_dedup`. **Improvement**: Paper Avg / Our Best.
- **Hit rate**: hits / unique requests (a hit: the expert was resident or already loaded ahead when its COMPUTE
  was decided).
- **Gap to the bounds**: a strategy's loads / `belady`'s loads (Belady's MIN: fewest loads with demand fetch) and
  its latency / `oracle`'s latency (the fastest perfect-prefetch construction), both at the same cache size.
  `gpu_only` holds every expert and is not iso-cache.
- **Relative error** (E5): (simulator - engine) / engine, on the same plan.
"""

STRATEGIES = _strategies()


def definitions(claims: Mapping) -> str:
    """The Definitions section; the seed's figures it mentions come from ``claims.json``."""
    reuse = claims["tables"]["savings_by_batch"]["rows"]
    best = claims["tables"]["batch_scaling"]["rows"]
    flag = {r["strategy"]: r for r in claims["tables"]["strategy_summary"]["rows"]}[flagship(claims)]
    return _DEFINITIONS.format(reuse_first=f"{reuse[0]['expert_reuse_factor']:.3f}", b_first=reuse[0]["batch"],
                               reuse_last=f"{reuse[-1]['expert_reuse_factor']:.3f}", b_last=reuse[-1]["batch"],
                               flag_avg=fmt_seed_num(flag["avg_latency_ms"]),
                               best_mean=fmt_seed_num(round(float(np.mean([r["our_best_ms"] for r in best])))))


# --------------------------------------------------------------------------------------------------------------
# Tables and formatting
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    caption: str
    frame: pd.DataFrame  # numbers; NaN where a configuration did not run
    text: pd.DataFrame  # the same, formatted for print

    def markdown(self) -> str:
        if self.text.empty:
            return "(no rows)"
        # disable_numparse keeps our formatted strings exactly as written (no re-rounding by tabulate).
        return self.text.to_markdown(index=False, disable_numparse=True)


def _nan(x) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))


def fmt_ms(x) -> str:
    return "n/a" if _nan(x) else f"{float(x):,.2f}"


def fmt_x(x) -> str:
    return "n/a" if _nan(x) else f"{float(x):.2f}x"


def fmt_pct(x) -> str:
    """A fraction as a percentage."""
    return "n/a" if _nan(x) else f"{100.0 * float(x):.1f}%"


def fmt_rate(x) -> str:
    return "n/a" if _nan(x) else f"{float(x):.3f}"


def fmt_int(x) -> str:
    return "n/a" if _nan(x) else f"{int(round(float(x))):,d}"


def fmt_seed_num(x) -> str:
    """The seed's numbers as it printed them (thousands separators, no unit change)."""
    if _nan(x):
        return ""
    return f"{x:,.0f}" if float(x) == int(x) and abs(x) >= 100 else f"{x:g}"


def fmt_spread(mean, lo, hi, f: Callable[[object], str]) -> str:
    """``mean [min, max]``; the range is left out when every seed gave the same figure."""
    if _nan(mean):
        return "n/a"
    if _nan(lo) or _nan(hi) or f(lo) == f(hi):
        return f(mean)
    return f"{f(mean)} [{f(lo)}, {f(hi)}]"


# --------------------------------------------------------------------------------------------------------------
# Reading rows
# --------------------------------------------------------------------------------------------------------------


def load_claims(path: str | Path = CLAIMS_PATH) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Typed columns, plus ``cache``: the cache size the grid asked for (``gpu_only`` rows record every expert in
    ``cache_experts``; the point id keeps the requested size, so they stay in their cache group)."""
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
    return d.reset_index(drop=True)


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


def _workload_kind(label: str) -> str:
    m = re.match(r"^synthetic:(?P<model>[^:]+):(?P<s>\d+)x(?P<t>\d+):seed\d+$", label)
    if m:
        return f"synthetic {m['model']} routing (pool of {m['s']} sequences x {m['t']} tokens)"
    return label


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


def describe(rows: pd.DataFrame, hardware: Mapping[str, str] | None = None, **fixed: str) -> str:
    """The caption line: model, workload, cache size, batches, protocol, steps, seeds, executor and repeats,
    hardware. ``fixed`` overrides a part (e.g. ``batch="8"``)."""
    hardware = hardware or {}
    parts = {}
    if rows.empty:
        return "no rows"
    parts["model"] = "model " + _join(sorted(set(rows["model"])))
    parts["workload"] = "workload " + _join(sorted({_workload_kind(w) for w in rows["workload"]}))
    caches = sorted(set(rows["cache"]))
    frac = rows.loc[rows["strategy"] != "gpu_only", ["cache", "cache_fraction"]].drop_duplicates("cache")
    fr = {int(c): f for c, f in zip(frac["cache"], frac["cache_fraction"])}
    parts["cache"] = "cache " + _join(f"{c} experts" + (f" ({100 * fr[c]:.1f}% of routed experts)"
                                                          if c in fr and not _nan(fr[c]) else "") for c in caches)
    parts["batch"] = "batch " + _join(sorted(set(rows["batch"])))
    parts["protocol"] = "protocol " + _join(_ordered_protocols(rows["protocol"]))
    parts["steps"] = _join(sorted(set(rows["steps"]))) + " decode steps"
    seeds = sorted(set(rows["trace_seed"]))
    parts["seeds"] = (f"seeds {_join(seeds)} (mean [min, max] over seeds)" if len(seeds) > 1
                      else f"seed {_join(seeds)}")
    execs = []
    for ex in sorted(set(rows["executor"])):
        reps = sorted({int(r) for r in rows.loc[rows["executor"] == ex, "repeats"] if not _nan(r)})
        if ex == "simulator":
            execs.append("simulator (deterministic, 1 run)")
        else:
            gpus = sorted({g for g in rows.loc[rows["executor"] == ex, "gpu"] if g})
            where = f" on {_join(gpus)}" if gpus and gpus != ["none"] else " on the CPU" if gpus == ["none"] else ""
            execs.append(f"{ex}{where}, {_join(reps)} timed repeat(s) (median [min, max])")
    parts["executor"] = _join(execs)
    hw_names = sorted(set(rows["hardware"]))
    parts["hardware"] = "hardware " + _join(hardware.get(h, f"profile `{h}`") for h in hw_names)
    parts.update(fixed)
    return "; ".join(parts.values()) + "."


def _ordered_protocols(col) -> list[str]:
    present = set(col)
    return [p for p in PROTOCOLS if p in present] + sorted(present - set(PROTOCOLS))


# --------------------------------------------------------------------------------------------------------------
# Core numbers (numeric frames that the tables, the claims and the figures share)
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
# E1: Strategy Performance Summary
# --------------------------------------------------------------------------------------------------------------


def strategy_summary(sim: pd.DataFrame, claims: Mapping, hardware: Mapping[str, str] | None = None) -> Table:
    """Every strategy: mean latency per step over batch sizes and speedup vs on_demand, under both protocols,
    beside the seed's Avg Latency and speedup (its own units: see the caption)."""
    cache = default_cache(sim)
    seed_rows = {r["strategy"]: r for r in claims["tables"]["strategy_summary"]["rows"]}
    d = sim[sim["cache"] == cache]
    names = strategy_order(d["strategy"])
    rows, text = [], []
    stats = {}
    for p in PROTOCOLS:
        lat = latency_by_batch(sim, cache, p)
        if lat.empty:
            stats[p] = (pd.DataFrame(columns=["mean", "min", "max"]),) * 2
            continue
        stats[p] = (seed_stats(mean_over_batches(lat)), seed_stats(speedups(sim, cache, p, baseline(claims))))
    for s in names:
        sr = seed_rows.get(s)
        row = {"strategy": s, "seed_method": sr["method"] if sr else "",
               "seed_avg_latency_ms": sr["avg_latency_ms"] if sr else np.nan,
               "seed_speedup": sr["speedup"] if sr else np.nan}
        trow = {"strategy": f"`{s}`", "seed method": row["seed_method"],
                "seed Avg Latency (ms, its units)": fmt_seed_num(row["seed_avg_latency_ms"]),
                "seed speedup": fmt_x(row["seed_speedup"]) if sr else ""}
        for p in PROTOCOLS:
            lat_s, sp_s = stats[p]
            for name, st, f in (("latency_ms", lat_s, fmt_ms), ("speedup", sp_s, fmt_x)):
                if s in st.index:
                    mean, lo, hi = st.loc[s, "mean"], st.loc[s, "min"], st.loc[s, "max"]
                else:
                    mean = lo = hi = np.nan
                row[f"{p}_{name}"], row[f"{p}_{name}_min"], row[f"{p}_{name}_max"] = mean, lo, hi
                label = "latency (ms/step)" if name == "latency_ms" else "speedup vs on_demand"
                trow[f"{p}: {label}"] = fmt_spread(mean, lo, hi, f)
        rows.append(row)
        text.append(trow)
    batches = _join(sorted(set(d["batch"])))
    cap = describe(d, hardware, batch=f"mean over batch {batches}")
    cap += (" The seed's latencies are totals of its own runs (their unit and workload are not stated), so compare "
            "speedups, not milliseconds.")
    return Table("e1_summary", "E1. Strategy Performance Summary (iso-cache)", cap, pd.DataFrame(rows),
                 pd.DataFrame(text))


def latency_per_batch(sim: pd.DataFrame, protocol: str, hardware: Mapping[str, str] | None = None,
                      cache: int | None = None) -> Table:
    """Latency per step [ms] of every strategy at every batch size (mean over seeds)."""
    cache = default_cache(sim) if cache is None else cache
    m = latency_seed_mean(sim, cache, protocol)
    names = strategy_order(m.index) if not m.empty else []
    m = m.reindex(names)
    text = pd.DataFrame({"strategy": [f"`{s}`" for s in names]})
    for b in m.columns:
        text[f"B={b}"] = [fmt_ms(v) for v in m[b]]
    frame = m.reset_index()
    d = sim[(sim["cache"] == cache) & (sim["protocol"] == protocol)]
    return Table(f"e1_per_batch_{protocol}", f"E1. Latency per step by batch size, `{protocol}` (ms)",
                 describe(d, hardware), frame, text)


# --------------------------------------------------------------------------------------------------------------
# E2: Memory and Bandwidth Savings
# --------------------------------------------------------------------------------------------------------------


def savings_table(sim: pd.DataFrame, claims: Mapping, hardware: Mapping[str, str] | None = None) -> Table:
    cache = default_cache(sim)
    sv = dedup_savings(sim, cache, claims)
    seed = {r["batch"]: r for r in claims["tables"]["savings_by_batch"]["rows"]}
    batches = sorted(set(sv.index.get_level_values("batch")) | set(seed)) if not sv.empty else sorted(seed)
    cols = ["memory_savings", "bandwidth_savings_on_demand", "bandwidth_savings_dedup_vs_paper", "reuse_factor"]
    st = {c: over_seeds(sv, c) if not sv.empty else pd.DataFrame(columns=["mean", "min", "max"]) for c in cols}
    rows, text = [], []
    for b in batches:
        sr = seed.get(b)
        row = {"batch": b}
        for c in cols:
            t = st[c]
            row[c], row[c + "_min"], row[c + "_max"] = ((t.loc[b, "mean"], t.loc[b, "min"], t.loc[b, "max"])
                                                        if b in t.index else (np.nan,) * 3)
        row["seed_memory_savings_pct"] = sr["memory_savings_pct"] if sr else np.nan
        row["seed_bandwidth_savings_pct"] = sr["bandwidth_savings_pct"] if sr else np.nan
        row["seed_expert_reuse_factor"] = sr["expert_reuse_factor"] if sr else np.nan
        rows.append(row)
        sp = {c: fmt_spread(row[c], row[c + "_min"], row[c + "_max"], fmt_rate if c == "reuse_factor" else fmt_pct)
              for c in cols}
        text.append({
            "batch": str(b),
            "memory savings (ours)": sp["memory_savings"],
            "memory savings (seed)": "" if sr is None else f"{sr['memory_savings_pct']:.1f}%",
            "bandwidth savings, on_demand batched vs per_item (ours)": sp["bandwidth_savings_on_demand"],
            "bandwidth savings, intelligent_dedup vs paper per_item (ours)": sp["bandwidth_savings_dedup_vs_paper"],
            "bandwidth savings (seed)": "" if sr is None else f"{sr['bandwidth_savings_pct']:.1f}%",
            "reuse factor (ours: requests/unique)": sp["reuse_factor"],
            "reuse factor (seed, undefined)": "" if sr is None else f"{sr['expert_reuse_factor']:.3f}",
        })
    d = sim[sim["cache"] == cache]
    cap = describe(d, hardware) + " Memory savings and reuse factor from `batched` rows; bandwidth savings compare " \
        "`batched` with `per_item` rows (see Definitions). Blank: batch size not in our grid."
    return Table("e2_savings", "E2. Memory and Bandwidth Savings by batch size", cap, pd.DataFrame(rows),
                 pd.DataFrame(text))


# --------------------------------------------------------------------------------------------------------------
# E3: Performance Across Batch Sizes
# --------------------------------------------------------------------------------------------------------------


def scaling_table(sim: pd.DataFrame, claims: Mapping, hardware: Mapping[str, str] | None = None) -> Table:
    cache = default_cache(sim)
    seed = {r["batch"]: r for r in claims["tables"]["batch_scaling"]["rows"]}
    sc = {p: scaling(sim, cache, p, claims) for p in PROTOCOLS}
    sv = dedup_savings(sim, cache, claims)
    ours_b = set()
    for f in sc.values():
        if not f.empty:
            ours_b |= set(f.index.get_level_values("batch"))
    batches = sorted(ours_b | set(seed))
    rows, text = [], []
    for b in batches:
        sr = seed.get(b)
        row = {"batch": b, "seed_paper_avg_ms": sr["paper_avg_ms"] if sr else np.nan,
               "seed_our_best_ms": sr["our_best_ms"] if sr else np.nan,
               "seed_improvement": sr["improvement"] if sr else np.nan,
               "seed_dedup_savings_pct": sr["dedup_savings_pct"] if sr else np.nan}
        trow = {"batch": str(b), "seed Paper Avg (ms)": fmt_seed_num(row["seed_paper_avg_ms"]),
                "seed Our Best (ms)": fmt_seed_num(row["seed_our_best_ms"]),
                "seed Improvement": fmt_x(row["seed_improvement"]) if sr else "",
                "seed Dedup Savings": "" if sr is None else f"{sr['dedup_savings_pct']:.1f}%"}
        for p in PROTOCOLS:
            f = sc[p]
            sub = f.xs(b, level="batch") if not f.empty and b in f.index.get_level_values("batch") else None
            if sub is None:
                pa = bm = imp = imp_lo = imp_hi = np.nan
                best = ""
            else:
                pa, bm = sub["paper_avg_ms"].mean(), sub["our_best_ms"].mean()
                imp, imp_lo, imp_hi = sub["improvement"].mean(), sub["improvement"].min(), sub["improvement"].max()
                best = _mode(sub["our_best"])
            row.update({f"{p}_paper_avg_ms": pa, f"{p}_our_best_ms": bm, f"{p}_our_best": best,
                        f"{p}_improvement": imp, f"{p}_improvement_min": imp_lo, f"{p}_improvement_max": imp_hi})
            trow[f"{p}: Paper Avg (ms)"] = fmt_ms(pa)
            trow[f"{p}: Our Best (ms)"] = fmt_ms(bm) + (f" (`{best}`)" if best else "")
            trow[f"{p}: Improvement"] = fmt_spread(imp, imp_lo, imp_hi, fmt_x)
        ms = over_seeds(sv, "memory_savings") if not sv.empty else pd.DataFrame()
        row["memory_savings"] = ms.loc[b, "mean"] if b in ms.index else np.nan
        trow["memory savings (ours)"] = fmt_pct(row["memory_savings"])
        rows.append(row)
        text.append(trow)
    d = sim[sim["cache"] == cache]
    paper, ours = seed_groups(claims)
    cap = (describe(d, hardware) + f" Paper Avg: mean of {_join(f'`{s}`' for s in paper)}; Our Best: the fastest of "
           f"{_join(f'`{s}`' for s in ours)} (the most frequent over seeds in brackets); latencies mean over seeds. "
           "The seed's milliseconds are in its own units.")
    return Table("e3_scaling", "E3. Performance Across Batch Sizes", cap, pd.DataFrame(rows), pd.DataFrame(text))


def _mode(s: pd.Series) -> str:
    vc = s.astype(str).value_counts()
    if vc.empty:
        return ""
    top = vc[vc == vc.max()].index
    return sorted(top, key=lambda n: strategy_order(top).index(n))[0]


# --------------------------------------------------------------------------------------------------------------
# Claims checked
# --------------------------------------------------------------------------------------------------------------


def verdict(batched: bool | None, per_item: bool | None) -> str:
    """Batched is the fair test (every real engine dedups); per_item is the seed's own accounting."""
    if batched is None and per_item is None:
        return NOT_MEASURED
    if batched:
        return HOLDS
    if per_item:
        return PER_ITEM_ONLY
    return FAILS


def _at_least(measured: float, claimed: float) -> bool | None:
    return None if _nan(measured) else bool(measured >= (1.0 - TOLERANCE) * claimed)


def _close(measured: float, claimed: float) -> bool | None:
    return None if _nan(measured) else bool(abs(measured - claimed) <= TOLERANCE * abs(claimed))


RULES = {
    "speedup_1_29": "Speedup of `intelligent_dedup` over the mean of the paper baselines (`on_demand`, `pregated`, "
                    "`expertflow`; mean latency over batch sizes, mean over seeds). Holds if it is at least {keep}% of "
                    "the claimed {value}x (a larger speedup supports the claim).",
    "memory_savings_87_6": "Largest memory savings (`batched`, mean over seeds) over our batch sizes. Holds if at "
                           "least {keep}% of the claimed {value}% ('up to'). Per-item has no dedup by definition.",
    "memory_savings_64_9_b64": "Memory savings at batch {batch} (`batched`, mean over seeds). Holds if within "
                               "+-{tol}% (relative) of {value}%: a property of the routing, so both directions count.",
    "bandwidth_savings_64_9_b64": "Bandwidth savings of `on_demand` at batch {batch} (`batched` vs `per_item` bytes, "
                                  "mean over seeds). Holds if within +-{tol}% (relative) of {value}%.",
    "batch_scaling_1_08_to_1_50": "Improvement (Paper Avg / Our Best) at batch {b_lo} and at batch {b_hi} under "
                                  "each protocol. Holds if it is at least {keep}% of {v_lo}x at batch {b_lo} and of "
                                  "{v_hi}x at batch {b_hi} and grows from batch {b_lo} to batch {b_hi}.",
    "paper_methods_degrade": "For each paper baseline P, r_P(B) = latency_P(B) / latency of the best batch-aware "
                             "strategy (registry `batch_aware`: `intelligent_dedup`) at B; per-token latency ratios "
                             "are the same ratios. Holds if r_P at the largest batch exceeds r_P at the smallest "
                             "by more than {margin}% for every paper baseline.",
    "avoid_paper_methods_above_4": "Holds if every paper baseline is slower than the best of the seed's own methods "
                                   "(`topk`, `multi_lookahead`, `intelligent_dedup`) at every batch size above "
                                   "{batch_above} (mean over seeds).",
}


def rule_text(claim: Mapping) -> str:
    """The verdict rule of a claim, with the claimed figures filled in from ``claims.json``."""
    fields = {k: v for k, v in claim.items() if not isinstance(v, dict)}
    fields.update(tol=f"{100 * TOLERANCE:g}", keep=f"{100 * (1 - TOLERANCE):g}", margin=f"{100 * DEGRADE_MARGIN:g}")
    if isinstance(claim.get("value"), dict):
        pts = sorted((int(b), float(v)) for b, v in claim["value"].items())
        fields.update(b_lo=pts[0][0], v_lo=f"{pts[0][1]:.2f}", b_hi=pts[-1][0], v_hi=f"{pts[-1][1]:.2f}")
    return RULES.get(claim["id"], "").format(**fields)


def claims_checked(sim: pd.DataFrame, claims: Mapping, hardware: Mapping[str, str] | None = None) -> Table:
    """Each headline claim of the seed, our measured number(s) under each protocol, and a verdict (rules in
    :data:`RULES`)."""
    cache = default_cache(sim) if not sim.empty else -1
    paper, ours = seed_groups(claims)
    fl = flagship(claims)
    results = []
    for c in claims["claims"]:
        fn = _CHECKS.get(c["id"])
        if fn is None:
            res = {p: ("no rule for this claim", None) for p in PROTOCOLS}
        else:
            res = fn(sim, cache, claims, c, paper, ours, fl)
        v = verdict(res["batched"][1], res["per_item"][1])
        results.append({"id": c["id"], "claim": c["claim"], "quote": c["quote"], "where": c["where"],
                        "batched": res["batched"][0], "per_item": res["per_item"][0],
                        "batched_holds": res["batched"][1], "per_item_holds": res["per_item"][1],
                        "verdict": v, "rule": rule_text(c)})
    frame = pd.DataFrame(results)
    text = pd.DataFrame({
        "#": [str(i + 1) for i in range(len(results))],
        "seed's claim": [r["claim"] for r in results],
        "where in the seed": [r["where"] for r in results],
        "measured, `batched`": [r["batched"] for r in results],
        "measured, `per_item`": [r["per_item"] for r in results],
        "verdict": [f"**{r['verdict']}**" for r in results],
    })
    d = sim[sim["cache"] == cache]
    cap = describe(d, hardware) + (" Verdict: `batched` is the fair protocol (every engine dedups); a claim that "
                                   "holds only with the seed's `per_item` accounting says so.")
    return Table("claims", "Claims checked", cap, frame, text)


def _mean_seed(s: pd.Series) -> float:
    return float(s.mean()) if len(s) else float("nan")


def _check_speedup(sim, cache, claims, c, paper, ours, fl):
    out = {}
    for p in PROTOCOLS:
        m = mean_over_batches(latency_by_batch(sim, cache, p))
        have = set(m.index.get_level_values("strategy")) if not m.empty else set()
        if fl not in have or not set(paper) <= have:
            out[p] = ("no rows", None)
            continue
        f = m.xs(fl, level="strategy")
        pav = pd.concat([m.xs(s, level="strategy") for s in paper], axis=1).mean(axis=1, skipna=False)
        sp = pav / f
        vs = {s: _mean_seed(m.xs(s, level="strategy") / f) for s in paper}
        val = _mean_seed(sp)
        txt = (fmt_spread(val, sp.min(), sp.max(), fmt_x) + " vs paper mean; "
               + "; ".join(f"{fmt_x(v)} vs `{s}`" for s, v in vs.items()))
        out[p] = (txt, _at_least(val, c["value"]))
    return out


def _check_memory_max(sim, cache, claims, c, paper, ours, fl):
    sv = dedup_savings(sim, cache, claims)
    if sv.empty:
        return {"batched": ("no rows", None), "per_item": ("0% by definition (no dedup)", None)}
    st = over_seeds(sv, "memory_savings")
    b = int(st["mean"].idxmax())
    val = float(st.loc[b, "mean"])
    return {"batched": (f"{fmt_pct(val)} (largest, at batch {b}; batches {_join(st.index)})",
                        _at_least(100 * val, c["value"])),
            "per_item": ("0% by definition (no dedup)", None)}


def _check_memory_at(sim, cache, claims, c, paper, ours, fl):
    sv = dedup_savings(sim, cache, claims)
    b = c["batch"]
    if sv.empty or b not in set(sv.index.get_level_values("batch")):
        return {"batched": (f"no batch {b} rows", None), "per_item": ("0% by definition (no dedup)", None)}
    st = over_seeds(sv, "memory_savings")
    val = st.loc[b, "mean"]
    return {"batched": (fmt_spread(val, st.loc[b, "min"], st.loc[b, "max"], fmt_pct) + f" at batch {b}",
                        _close(100 * val, c["value"])),
            "per_item": ("0% by definition (no dedup)", None)}


def _check_bandwidth_at(sim, cache, claims, c, paper, ours, fl):
    sv = dedup_savings(sim, cache, claims)
    b = c["batch"]
    if sv.empty or b not in set(sv.index.get_level_values("batch")):
        return {"batched": (f"no batch {b} rows", None), "per_item": ("(the reference of the ratio)", None)}
    od = over_seeds(sv, "bandwidth_savings_on_demand")
    dv = over_seeds(sv, "bandwidth_savings_dedup_vs_paper")
    val = od.loc[b, "mean"]
    txt = (fmt_spread(val, od.loc[b, "min"], od.loc[b, "max"], fmt_pct) + f" (`on_demand`) at batch {b}; "
           + fmt_pct(dv.loc[b, "mean"]) + f" (`{fl}` vs paper baselines under `per_item`)")
    return {"batched": (txt, _close(100 * val, c["value"])), "per_item": ("(the reference of the ratio)", None)}


def _check_scaling(sim, cache, claims, c, paper, ours, fl):
    want = {int(k): float(v) for k, v in c["value"].items()}
    lo_b, hi_b = min(want), max(want)
    out = {}
    for p in PROTOCOLS:
        f = scaling(sim, cache, p, claims)
        have = set(f.index.get_level_values("batch")) if not f.empty else set()
        if lo_b not in have or hi_b not in have:
            out[p] = (f"no batch {lo_b} and {hi_b} rows" if not have else
                      f"batch {_join(b for b in (lo_b, hi_b) if b not in have)} not in the grid", None)
            continue
        st = over_seeds(f, "improvement")
        a, z = st.loc[lo_b, "mean"], st.loc[hi_b, "mean"]
        ok_a, ok_z = _at_least(a, want[lo_b]), _at_least(z, want[hi_b])
        ok = None if ok_a is None or ok_z is None else bool(ok_a and ok_z and z > a)
        out[p] = (f"{fmt_x(a)} at batch {lo_b} to {fmt_x(z)} at batch {hi_b}", ok)
    return out


def _check_degrade(sim, cache, claims, c, paper, ours, fl):
    aware = batch_aware()
    out = {}
    for p in PROTOCOLS:
        m = latency_seed_mean(sim, cache, p)
        if m.empty or not set(paper) <= set(m.index) or not set(aware) & set(m.index) or m.shape[1] < 2:
            out[p] = ("needs two batch sizes and every paper baseline", None)
            continue
        ref = m.loc[[s for s in aware if s in m.index]].min(axis=0)
        b0, b1 = int(m.columns.min()), int(m.columns.max())
        parts, oks = [], []
        for s in paper:
            r = m.loc[s] / ref
            r0, r1 = r[b0], r[b1]
            ok = None if _nan(r0) or _nan(r1) else bool(r1 > (1.0 + DEGRADE_MARGIN) * r0)
            oks.append(ok)
            parts.append(f"`{s}` {fmt_x(r0)} to {fmt_x(r1)}")
        holds = None if any(o is None for o in oks) else all(oks)
        out[p] = (f"latency / best batch-aware, batch {b0} to {b1}: " + "; ".join(parts), holds)
    return out


def _check_avoid(sim, cache, claims, c, paper, ours, fl):
    above = c.get("batch_above", 4)
    out = {}
    for p in PROTOCOLS:
        m = latency_seed_mean(sim, cache, p)
        bs = [b for b in (m.columns if not m.empty else []) if b > above]
        mine = [s for s in ours if s in m.index]
        if not bs or not mine or not set(paper) <= set(m.index):
            out[p] = (f"no batch above {above} in the grid" if not bs else "missing strategies", None)
            continue
        best = m.loc[mine, bs].min(axis=0)
        ratio = (m.loc[paper, bs] / best).stack()  # > 1: the paper method is slower than our best
        valid = ratio.dropna()
        if valid.empty:
            out[p] = ("no (method, batch) pair with both figures", None)
            continue
        n_lose = int((valid > 1.0).sum())
        s_min, b_min = valid.idxmin()
        missing = len(ratio) - len(valid)
        txt = (f"paper baselines slower than our best at {n_lose} of {len(valid)} (method, batch > {above}) pairs"
               + (f" ({missing} without figures)" if missing else "")
               + f"; closest: `{s_min}` at batch {b_min} takes {fmt_x(valid[(s_min, b_min)])} our best's latency")
        out[p] = (txt, bool(n_lose == len(valid)))
    return out


_CHECKS = {
    "speedup_1_29": _check_speedup,
    "memory_savings_87_6": _check_memory_max,
    "memory_savings_64_9_b64": _check_memory_at,
    "bandwidth_savings_64_9_b64": _check_bandwidth_at,
    "batch_scaling_1_08_to_1_50": _check_scaling,
    "paper_methods_degrade": _check_degrade,
    "avoid_paper_methods_above_4": _check_avoid,
}


# --------------------------------------------------------------------------------------------------------------
# E4: cache sizes
# --------------------------------------------------------------------------------------------------------------


def mid_batch(batches, want: int = 8) -> int:
    """``want`` if measured, else the measured batch nearest to it (ties: the smaller)."""
    bs = sorted(set(batches))
    return min(bs, key=lambda b: (abs(b - want), b))


def cache_table(sim: pd.DataFrame, batch: int, hardware: Mapping[str, str] | None = None,
                protocol: str = "batched") -> Table:
    """Hit rate and latency per strategy at every cache size, at one batch size (mean over seeds)."""
    d = sim[(sim["batch"] == batch) & (sim["protocol"] == protocol)]
    caches = sorted(set(d["cache"]))
    names = strategy_order(d["strategy"])
    hit = d.groupby(["strategy", "cache"])["hit_rate"].mean().unstack("cache") if not d.empty else pd.DataFrame()
    lat = (d.groupby(["strategy", "cache"])["latency_ms_per_step"].mean().unstack("cache") if not d.empty
           else pd.DataFrame())
    rows, text = [], []
    for s in names:
        row, trow = {"strategy": s}, {"strategy": f"`{s}`"}
        for c in caches:
            h = hit.loc[s, c] if s in hit.index and c in hit.columns else np.nan
            lt = lat.loc[s, c] if s in lat.index and c in lat.columns else np.nan
            row[f"hit_rate_C{c}"], row[f"latency_ms_C{c}"] = h, lt
            trow[f"C={c}: hit rate"] = fmt_rate(h)
            trow[f"C={c}: ms/step"] = fmt_ms(lt)
        rows.append(row)
        text.append(trow)
    cap = describe(d, hardware) + " `gpu_only` holds every expert at every cache size (not iso-cache)."
    return Table(f"e4_cache_B{batch}", f"E4. Hit rate and latency by cache size, batch {batch}", cap,
                 pd.DataFrame(rows), pd.DataFrame(text))


# --------------------------------------------------------------------------------------------------------------
# E6: gaps to the bounds
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


def gap_table(sim: pd.DataFrame, value: str, bound: str, hardware: Mapping[str, str] | None = None) -> Table:
    cache = default_cache(sim)
    g = gap_frame(sim, value, bound, cache)
    what = "loads" if value == "loads" else "latency"
    d = sim[(sim["cache"] == cache) & (sim["protocol"] == "batched")]
    if g.empty:
        return Table(f"e6_{what}", f"E6. {what} / `{bound}`", describe(d, hardware) + f" No `{bound}` rows.",
                     pd.DataFrame(), pd.DataFrame())
    per_seed_mean = mean_over_batches(g)
    m = g.groupby(level="strategy", sort=False).mean()
    names = strategy_order(m.index)
    m = m.reindex(names)
    st = seed_stats(per_seed_mean).reindex(names)
    frame = m.copy()
    frame["mean_over_batches"] = st["mean"]
    frame = frame.reset_index()
    text = pd.DataFrame({"strategy": [f"`{s}`" for s in names]})
    for b in m.columns:
        text[f"B={b}"] = [fmt_x(v) for v in m[b]]
    text["mean over batches"] = [fmt_spread(st.loc[s, "mean"], st.loc[s, "min"], st.loc[s, "max"], fmt_x)
                                 for s in names]
    title = (f"E6. Loads / `{bound}` loads" if value == "loads" else f"E6. Latency / `{bound}` latency")
    cap = describe(d, hardware) + " Ratios per seed, then mean over seeds; `gpu_only` is not iso-cache."
    return Table(f"e6_{what}", title, cap, frame, text)


# --------------------------------------------------------------------------------------------------------------
# E5: simulator against engine
# --------------------------------------------------------------------------------------------------------------


def engine_error(engine: pd.DataFrame) -> pd.DataFrame:
    """Per engine row: engine median, min, max, simulator figure and relative error (sim - engine) / engine."""
    d = engine[engine["executor"] == "engine"].copy()
    d["rel_error"] = (d["sim_latency_ms_per_step"] - d["latency_ms_per_step"]) / d["latency_ms_per_step"]
    order = {s: i for i, s in enumerate(strategy_order(d["strategy"]))}
    d["_o"] = d["strategy"].map(order)
    d = d.sort_values(["_o", "batch", "trace_seed", "cache"], kind="mergesort").drop(columns="_o")
    return d.reset_index(drop=True)


def engine_table(engine: pd.DataFrame, hardware: Mapping[str, str] | None = None) -> tuple[Table, Table]:
    """(per strategy x batch, summary) of the simulator against the engine on the same plans."""
    d = engine_error(engine)
    text = pd.DataFrame({
        "strategy": [f"`{s}`" for s in d["strategy"]],
        "batch": [str(b) for b in d["batch"]],
        "engine ms/step, median [min, max]": [f"{fmt_ms(m)} [{fmt_ms(lo)}, {fmt_ms(hi)}]" for m, lo, hi in
                                              zip(d["latency_ms_per_step"], d["latency_ms_per_step_min"],
                                                  d["latency_ms_per_step_max"])],
        "simulator ms/step": [fmt_ms(v) for v in d["sim_latency_ms_per_step"]],
        "relative error": [fmt_signed_pct(v) for v in d["rel_error"]],
    })
    cols = ["strategy", "batch", "trace_seed", "cache", "latency_ms_per_step", "latency_ms_per_step_min",
            "latency_ms_per_step_max", "sim_latency_ms_per_step", "rel_error"]
    cap = describe(d, hardware) + " Relative error = (simulator - engine) / engine on the same plan."
    per = Table("e5_engine", "E5. Simulator against engine, per configuration", cap, d[cols], text)
    a = d["rel_error"].abs()
    ok = a.dropna()
    if ok.empty:
        summary = pd.DataFrame([{"configurations": len(d), "with both figures": 0, "median |error|": np.nan,
                                 "worst |error|": np.nan, "worst at": "", "within 10%": np.nan}])
    else:
        i = int(ok.idxmax())
        summary = pd.DataFrame([{"configurations": len(d), "with both figures": len(ok),
                                 "median |error|": float(ok.median()), "worst |error|": float(ok.max()),
                                 "worst at": f"`{d.loc[i, 'strategy']}`, batch {d.loc[i, 'batch']}",
                                 "within 10%": float((ok <= 0.10).mean())}])
    st = summary.iloc[0]
    stext = pd.DataFrame([{
        "configurations": str(st["configurations"]), "with both figures": str(st["with both figures"]),
        "median abs. relative error": fmt_pct(st["median |error|"]),
        "worst abs. relative error": fmt_pct(st["worst |error|"]),
        "worst at": st["worst at"],
        "share within 10%": fmt_pct(st["within 10%"]),
    }])
    return per, Table("e5_summary", "E5. Simulator against engine, summary", cap, summary, stext)


def fmt_signed_pct(x) -> str:
    return "n/a" if _nan(x) else f"{100.0 * float(x):+.1f}%"


COUNT_CHECK = ["requests", "unique_requests", "hits", "demand_loads", "loads", "prefetch_issued"]


def cpu_engine_table(cpu: pd.DataFrame, replanned: pd.DataFrame, hardware: Mapping[str, str] | None = None) -> Table:
    """The CPU engine check: its decision counts beside the simulator's re-plan of the same configuration (same
    workload, batch, cache, strategy, steps), and its CPU times.

    ``replanned`` has ``point_id`` and the :data:`COUNT_CHECK` columns (see ``build.replan_counts``)."""
    d = cpu.copy()
    order = {s: i for i, s in enumerate(strategy_order(d["strategy"]))}
    d["_o"] = d["strategy"].map(order)
    d = d.sort_values(["batch", "_o"], kind="mergesort").drop(columns="_o").reset_index(drop=True)
    rp = replanned.set_index("point_id") if not replanned.empty else pd.DataFrame(columns=COUNT_CHECK)
    rows, text = [], []
    for _, r in d.iterrows():
        pid = r["point_id"]
        sim_counts = {c: (float(rp.loc[pid, c]) if pid in rp.index else np.nan) for c in COUNT_CHECK}
        eng_counts = {c: float(r[c]) for c in COUNT_CHECK}
        match = (None if any(_nan(v) for v in list(sim_counts.values()) + list(eng_counts.values()))
                 else all(sim_counts[c] == eng_counts[c] for c in COUNT_CHECK))
        row = {"strategy": r["strategy"], "batch": r["batch"], **{f"engine_{c}": eng_counts[c] for c in COUNT_CHECK},
               **{f"sim_{c}": sim_counts[c] for c in COUNT_CHECK}, "match": match,
               "cpu_ms_per_step": r["latency_ms_per_step"]}
        rows.append(row)
        text.append({"strategy": f"`{r['strategy']}`", "batch": str(r["batch"]),
                     "hits (engine / sim)": f"{fmt_int(eng_counts['hits'])} / {fmt_int(sim_counts['hits'])}",
                     "loads (engine / sim)": f"{fmt_int(eng_counts['loads'])} / {fmt_int(sim_counts['loads'])}",
                     "prefetches (engine / sim)": (f"{fmt_int(eng_counts['prefetch_issued'])} / "
                                                   f"{fmt_int(sim_counts['prefetch_issued'])}"),
                     f"all of {', '.join(COUNT_CHECK)} equal": ("n/a" if match is None else
                                                                ("yes" if match else "**no**")),
                     "CPU engine ms/step": fmt_ms(r["latency_ms_per_step"]),
                     "note": r["note"]})
    text = pd.DataFrame(text)
    if not (text["note"] != "").any():
        text = text.drop(columns="note")
    cap = describe(d, hardware) + (" Engine rows: the plan executed on the CPU with scaled-down experts "
                                   f"(model `{_join(sorted(set(d['model'])))}`, same layers, experts and top-k); "
                                   "sim: the same configuration re-planned by the simulator from the CSV row. "
                                   "CPU times say nothing about a GPU.")
    return Table("e5_cpu", "E5. CPU engine check: the same decisions as the simulator", cap, pd.DataFrame(rows),
                 text)


# --------------------------------------------------------------------------------------------------------------
# E7: other models
# --------------------------------------------------------------------------------------------------------------


def models_tables(models: pd.DataFrame, hardware: Mapping[str, str] | None = None,
                  batches=(1, 8, 64)) -> list[Table]:
    """One table per model: every strategy's latency per step and loads at batch 1 / 8 / 64 (those measured)."""
    out = []
    for model in sorted(set(models["model"])):
        d = models[models["model"] == model]
        bs = [b for b in sorted(set(d["batch"])) if b in batches] or sorted(set(d["batch"]))
        names = strategy_order(d["strategy"])
        g = d.groupby(["strategy", "batch"])[["latency_ms_per_step", "loads"]].mean()
        notes = d[d["note"] != ""].groupby("strategy")["note"].first()
        rows, text = [], []
        for s in names:
            row, trow = {"model": model, "strategy": s}, {"strategy": f"`{s}`"}
            for b in bs:
                lt = g.loc[(s, b), "latency_ms_per_step"] if (s, b) in g.index else np.nan
                ld = g.loc[(s, b), "loads"] if (s, b) in g.index else np.nan
                row[f"latency_ms_B{b}"], row[f"loads_B{b}"] = lt, ld
                trow[f"B={b}: ms/step"] = fmt_ms(lt)
                trow[f"B={b}: loads"] = fmt_int(ld)
            row["note"] = notes.get(s, "")
            trow["note"] = row["note"]
            rows.append(row)
            text.append(trow)
        tx = pd.DataFrame(text)
        if not (tx["note"] != "").any():
            tx = tx.drop(columns="note")
        out.append(Table(f"e7_{model}", f"E7. {model}", describe(d, hardware), pd.DataFrame(rows), tx))
    return out


# --------------------------------------------------------------------------------------------------------------
# GPU checks (results/raw/gpu_checks.json, when present)
# --------------------------------------------------------------------------------------------------------------


def gpu_checks_table(checks: Mapping) -> Table:
    rows, text = [], []
    for name, res in checks.get("checks", {}).items():
        if "error" in res:
            rows.append({"check": name, "figure": "crashed", "value": np.nan, "target": "", "met": None})
            text.append({"check": name, "figure": f"crashed: {str(res['error'])[:100]}", "value": "", "target": "",
                         "met": ""})
            continue
        if "skipped" in res:
            text.append({"check": name, "figure": f"skipped: {res['skipped']}", "value": "", "target": "",
                         "met": ""})
        for r in res.get("rows", []):
            met = r.get("met")
            rows.append({"check": name, "figure": r.get("figure", ""), "value": r.get("value", np.nan),
                         "target": r.get("target", ""), "met": met})
            v = r.get("value")
            text.append({"check": name, "figure": str(r.get("figure", "")),
                         "value": "n/a" if v is None or _nan(v) else f"{float(v):.4g}",
                         "target": str(r.get("target", "")), "met": "-" if met is None else ("yes" if met else "no")})
    env = checks.get("environment", {})
    cap = "Engine checks on the GPU (python -m artifact.runtime.gpu_checks); environment: " + _join(
        f"{k} {env[k]}" for k in sorted(env)) + "."
    return Table("gpu_checks", "GPU checks", cap, pd.DataFrame(rows), pd.DataFrame(text))
