"""The report's tables: formatting numbers and building each Markdown table with its caption.

Every table function takes typed rows (``load.prepare``) and returns a :class:`Table`: the numbers (``frame``, NaN
where a configuration did not run), the same table formatted for print (``text``: strings, so Markdown is
byte-stable) and a caption that names model, workload, cache size, hardware, steps, seeds or repeats and protocol,
and lists the refusals among its rows. The numbers come from :mod:`artifact.report.metrics`; nothing here is typed
by hand except what ``claims.json`` quotes from the seed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from artifact.report.load import COUNT_CHECK, Profile, refusal_reason
from artifact.report.metrics import (
    PROTOCOLS,
    baseline,
    dedup_savings,
    default_cache,
    engine_error,
    flagship,
    gap_frame,
    latency_by_batch,
    latency_seed_mean,
    mean_over_batches,
    over_seeds,
    refused,
    scaling,
    seed_groups,
    seed_stats,
    speedups,
    strategy_order,
)

# --------------------------------------------------------------------------------------------------------------
# Formatting
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


def is_nan(x) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))


def fmt_ms(x) -> str:
    return "n/a" if is_nan(x) else f"{float(x):,.2f}"


def fmt_x(x) -> str:
    return "n/a" if is_nan(x) else f"{float(x):.2f}x"


def fmt_pct(x) -> str:
    """A fraction as a percentage."""
    return "n/a" if is_nan(x) else f"{100.0 * float(x):.1f}%"


def fmt_rate(x) -> str:
    return "n/a" if is_nan(x) else f"{float(x):.3f}"


def fmt_int(x) -> str:
    return "n/a" if is_nan(x) else f"{int(round(float(x))):,d}"


def fmt_seed_num(x) -> str:
    """The seed's numbers as it printed them (thousands separators, no unit change)."""
    if is_nan(x):
        return ""
    return f"{x:,.0f}" if float(x) == int(x) and abs(x) >= 100 else f"{x:g}"


def fmt_spread(mean, lo, hi, f: Callable[[object], str]) -> str:
    """``mean [min, max]``; the range is left out when every seed gave the same figure."""
    if is_nan(mean):
        return "n/a"
    if is_nan(lo) or is_nan(hi) or f(lo) == f(hi):
        return f(mean)
    return f"{f(mean)} [{f(lo)}, {f(hi)}]"


def fmt_signed_pct(x) -> str:
    return "n/a" if is_nan(x) else f"{100.0 * float(x):+.1f}%"


# --------------------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------------------


def _workload_kind(label: str) -> str:
    m = re.match(r"^synthetic:(?P<model>[^:]+):(?P<s>\d+)x(?P<t>\d+):seed\d+$", label)
    if m:
        return f"synthetic {m['model']} routing (pool of {m['s']} sequences x {m['t']} tokens)"
    return label


def joined(values) -> str:
    return ", ".join(str(v) for v in values)


def describe(rows: pd.DataFrame, hardware: Mapping[str, str] | None = None, strategies=None, **fixed: str) -> str:
    """The caption line: model, workload, cache size, batches, protocol, steps, seeds, executor and repeats,
    hardware; then the refusals among ``rows`` of ``strategies`` (default: every strategy; those a table or figure
    uses). ``fixed`` overrides a part (e.g. ``batch="8"``)."""
    hardware = hardware or {}
    parts = {}
    if rows.empty:
        return "no rows"
    parts["model"] = "model " + joined(sorted(set(rows["model"])))
    parts["workload"] = "workload " + joined(sorted({_workload_kind(w) for w in rows["workload"]}))
    caches = sorted(set(rows["cache"]))
    frac = rows.loc[rows["strategy"] != "gpu_only", ["cache", "cache_fraction"]].drop_duplicates("cache")
    fr = {int(c): f for c, f in zip(frac["cache"], frac["cache_fraction"])}
    parts["cache"] = "cache " + joined(f"{c} experts" + (f" ({100 * fr[c]:.1f}% of routed experts)"
                                                          if c in fr and not is_nan(fr[c]) else "") for c in caches)
    parts["batch"] = "batch " + joined(sorted(set(rows["batch"])))
    parts["protocol"] = "protocol " + joined(_ordered_protocols(rows["protocol"]))
    parts["steps"] = joined(sorted(set(rows["steps"]))) + " decode steps"
    seeds = sorted(set(rows["trace_seed"]))
    parts["seeds"] = (f"seeds {joined(seeds)} (mean [min, max] over seeds)" if len(seeds) > 1
                      else f"seed {joined(seeds)}")
    execs = []
    for ex in sorted(set(rows["executor"])):
        reps = sorted({int(r) for r in rows.loc[rows["executor"] == ex, "repeats"] if not is_nan(r)})
        if ex == "simulator":
            execs.append("simulator (deterministic, 1 run)")
        else:
            gpus = sorted({g for g in rows.loc[rows["executor"] == ex, "gpu"] if g})
            where = f" on {joined(gpus)}" if gpus and gpus != ["none"] else " on the CPU" if gpus == ["none"] else ""
            execs.append(f"{ex}{where}, {joined(reps)} timed repeat(s) (median [min, max])")
    parts["executor"] = joined(execs)
    hw_names = sorted(set(rows["hardware"]))
    parts["hardware"] = "hardware " + joined(hardware.get(h, f"profile `{h}`") for h in hw_names)
    parts.update(fixed)
    return "; ".join(parts.values()) + "." + refusals_note(rows, strategies)


def refusals_note(rows: pd.DataFrame, strategies=None) -> str:
    """The caption's footnote on the refusal rows among ``rows`` (configurations that cannot run) of ``strategies``
    (default: all): which, where, and why; empty when there is none."""
    r = rows[rows["refused"]]
    if strategies is not None:
        r = r[r["strategy"].isin(list(strategies))]
    if r.empty:
        return ""
    several_caches = len(set(rows["cache"])) > 1
    items = []
    for s in strategy_order(r["strategy"]):
        rs = r[r["strategy"] == s]
        for (proto, note), g in rs.groupby(["protocol", "note"], sort=True):
            where = f"batch {joined(sorted(set(g['batch'])))}"
            if several_caches:
                where += f", cache {joined(sorted(set(g['cache'])))}"
            items.append(f"`{s}` under `{proto}` at {where}: {refusal_reason(note)}")
    return " Refused (cannot run, so no figures; a cell that needs one says 'refused'): " + "; ".join(items) + "."


def _cell(value, f: Callable[[object], str], is_refused: bool) -> str:
    """``f(value)``, or 'refused' where the value is missing because its configuration was refused."""
    return "refused" if is_refused and is_nan(value) else f(value)


def _ordered_protocols(col) -> list[str]:
    present = set(col)
    return [p for p in PROTOCOLS if p in present] + sorted(present - set(PROTOCOLS))


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
                trow[f"{p}: {label}"] = ("refused" if is_nan(mean) and refused(d, s, protocol=p) else "not run"
                                         if s not in st.index else fmt_spread(mean, lo, hi, f))
        rows.append(row)
        text.append(trow)
    batches = joined(sorted(set(d["batch"])))
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
    d = sim[(sim["cache"] == cache) & (sim["protocol"] == protocol)]
    text = pd.DataFrame({"strategy": [f"`{s}`" for s in names]})
    for b in m.columns:
        text[f"B={b}"] = [_cell(v, fmt_ms, refused(d, s, batch=b)) for s, v in zip(names, m[b])]
    frame = m.reset_index()
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
    paper, _ = seed_groups(claims)
    used = [baseline(claims), flagship(claims), *paper]
    cap = describe(d, hardware, used) + " Memory savings and reuse factor from `batched` rows; bandwidth savings " \
        "compare `batched` with `per_item` rows (see Definitions). Blank: batch size not in our grid."
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
    cap = (describe(d, hardware, paper + ours) + f" Paper Avg: mean of {joined(f'`{s}`' for s in paper)}; Our Best: "
           f"the fastest of {joined(f'`{s}`' for s in ours)} (the most frequent over seeds in brackets); latencies "
           "mean over seeds. The seed's milliseconds are in its own units.")
    return Table("e3_scaling", "E3. Performance Across Batch Sizes", cap, pd.DataFrame(rows), pd.DataFrame(text))


def _mode(s: pd.Series) -> str:
    vc = s.astype(str).value_counts()
    if vc.empty:
        return ""
    top = vc[vc == vc.max()].index
    return sorted(top, key=lambda n: strategy_order(top).index(n))[0]


# --------------------------------------------------------------------------------------------------------------
# E4: cache sizes
# --------------------------------------------------------------------------------------------------------------


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
            is_refused = refused(d, s, cache=c)
            trow[f"C={c}: hit rate"] = _cell(h, fmt_rate, is_refused)
            trow[f"C={c}: ms/step"] = _cell(lt, fmt_ms, is_refused)
        rows.append(row)
        text.append(trow)
    cap = describe(d, hardware) + " `gpu_only` holds every expert at every cache size (not iso-cache)."
    return Table(f"e4_cache_B{batch}", f"E4. Hit rate and latency by cache size, batch {batch}", cap,
                 pd.DataFrame(rows), pd.DataFrame(text))


# --------------------------------------------------------------------------------------------------------------
# E6: gaps to the bounds
# --------------------------------------------------------------------------------------------------------------


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
        text[f"B={b}"] = [_cell(v, fmt_x, refused(d, s, batch=b)) for s, v in zip(names, m[b])]
    text["mean over batches"] = [_cell(st.loc[s, "mean"], lambda v, s=s: fmt_spread(v, st.loc[s, "min"],
                                                                                      st.loc[s, "max"], fmt_x),
                                       refused(d, s)) for s in names]
    title = (f"E6. Loads / `{bound}` loads" if value == "loads" else f"E6. Latency / `{bound}` latency")
    cap = describe(d, hardware) + " Ratios per seed, then mean over seeds; `gpu_only` is not iso-cache."
    return Table(f"e6_{what}", title, cap, frame, text)


# --------------------------------------------------------------------------------------------------------------
# E5: simulator against engine
# --------------------------------------------------------------------------------------------------------------


def engine_table(engine: pd.DataFrame, hardware: Mapping[str, str] | None = None) -> tuple[Table, Table]:
    """(per strategy x batch, summary) of the simulator against the engine on the same plans."""
    d = engine_error(engine)
    text = pd.DataFrame({
        "strategy": [f"`{s}`" for s in d["strategy"]],
        "batch": [str(b) for b in d["batch"]],
        "engine ms/step, median [min, max]": ["refused" if ref else f"{fmt_ms(m)} [{fmt_ms(lo)}, {fmt_ms(hi)}]"
                                              for m, lo, hi, ref in
                                              zip(d["latency_ms_per_step"], d["latency_ms_per_step_min"],
                                                  d["latency_ms_per_step_max"], d["refused"])],
        "simulator ms/step": [_cell(v, fmt_ms, ref) for v, ref in zip(d["sim_latency_ms_per_step"], d["refused"])],
        "relative error": [_cell(v, fmt_signed_pct, ref) for v, ref in zip(d["rel_error"], d["refused"])],
    })
    if (d["note"] != "").any():
        text["note"] = list(d["note"])
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


def cpu_engine_table(cpu: pd.DataFrame, hardware: Mapping[str, str] | None = None) -> Table:
    """The CPU engine check: its decision counts beside the simulator's for the same configuration (same workload,
    batch, cache, strategy, steps: the ``sim_*`` columns the runner wrote), and its CPU times."""
    d = cpu.copy()
    order = {s: i for i, s in enumerate(strategy_order(d["strategy"]))}
    d["_o"] = d["strategy"].map(order)
    d = d.sort_values(["batch", "_o"], kind="mergesort").drop(columns="_o").reset_index(drop=True)
    rows, text = [], []
    for _, r in d.iterrows():
        sim_counts = {c: float(r[f"sim_{c}"]) for c in COUNT_CHECK}
        eng_counts = {c: float(r[c]) for c in COUNT_CHECK}
        match = (None if any(is_nan(v) for v in list(sim_counts.values()) + list(eng_counts.values()))
                 else all(sim_counts[c] == eng_counts[c] for c in COUNT_CHECK))
        row = {"strategy": r["strategy"], "batch": r["batch"], **{f"engine_{c}": eng_counts[c] for c in COUNT_CHECK},
               **{f"sim_{c}": sim_counts[c] for c in COUNT_CHECK}, "match": match,
               "cpu_ms_per_step": r["latency_ms_per_step"]}
        rows.append(row)
        pair = {c: "refused" if r["refused"] else f"{fmt_int(eng_counts[c])} / {fmt_int(sim_counts[c])}"
                for c in ("hits", "loads", "prefetch_issued")}
        text.append({"strategy": f"`{r['strategy']}`", "batch": str(r["batch"]),
                     "hits (engine / sim)": pair["hits"], "loads (engine / sim)": pair["loads"],
                     "prefetches (engine / sim)": pair["prefetch_issued"],
                     f"all of {', '.join(COUNT_CHECK)} equal": ("refused" if r["refused"] else "n/a" if match is None
                                                                else "yes" if match else "**no**"),
                     "CPU engine ms/step": _cell(r["latency_ms_per_step"], fmt_ms, r["refused"]),
                     "note": r["note"]})
    text = pd.DataFrame(text)
    if not (text["note"] != "").any():
        text = text.drop(columns="note")
    cap = describe(d, hardware) + (" Engine rows: the plan executed on the CPU with scaled-down experts "
                                   f"(model `{joined(sorted(set(d['model'])))}`, same layers, experts and top-k); "
                                   "sim: the same configuration planned again and simulated by the runner (the "
                                   "row's `sim_*` columns). CPU times say nothing about a GPU.")
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
                is_refused = refused(d, s, batch=b)
                trow[f"B={b}: ms/step"] = _cell(lt, fmt_ms, is_refused)
                trow[f"B={b}: loads"] = _cell(ld, fmt_int, is_refused)
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
                         "value": "n/a" if v is None or is_nan(v) else f"{float(v):.4g}",
                         "target": str(r.get("target", "")), "met": "-" if met is None else ("yes" if met else "no")})
    env = checks.get("environment", {})
    cap = "Engine checks on the GPU (python -m artifact.experiments.gpu_checks); environment: " + joined(
        f"{k} {env[k]}" for k in sorted(env)) + "."
    return Table("gpu_checks", "GPU checks", cap, pd.DataFrame(rows), pd.DataFrame(text))


# --------------------------------------------------------------------------------------------------------------
# Hardware profiles (captions)
# --------------------------------------------------------------------------------------------------------------


def hardware_text(profiles: Mapping[str, tuple[Profile, str]]) -> dict[str, str]:
    """Caption text per profile name: what the profile measured and where it came from."""
    out = {}
    for n, (prof, src) in profiles.items():
        ex = prof.extra if isinstance(prof.extra, dict) else {}
        bits = [prof.description]
        if ex.get("date"):
            bits.append(f"calibrated {ex['date']}")
        out[n] = f"profile `{n}` ({'; '.join(bits)}; {src})"
    return out
