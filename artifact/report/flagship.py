"""The flagship against its targets and the development / test split: pure functions of the typed CSV rows
(``load.prepare``) of ``raw/sim.csv``, ``raw/real.csv``, ``raw/models.csv`` and ``raw/ablation.csv`` (the best variant
in hindsight; the ablation's own table is :mod:`artifact.report.ablation`).

The targets (the issue "A flagship that wins on real routing"), each checked per workload from the rows, never typed:

1. Same information: on each workload, averaged over its grid points (cache sizes and batches), fewer loads and a
   lower latency than every strategy with the same information, and at no grid point more than 2% worse than the
   best of them in either. "Same information": registry ``sees == "past"`` and ``role == "online"`` (the past, the
   current layer, the trace's lookahead), the flagship excluded; one that needs a lookahead the trace lacks is
   refused there (its rows say so) and listed, not compared.
2. Gap to Belady: on every real trace, ``(on_demand - flagship) / (on_demand - belady)`` in loads at each cache,
   averaged over the caches, at least a third. A cache where ``on_demand`` needs no more loads than ``belady`` has no
   gap to close: it is left out of the mean (the table says how many).
3. Oracle: on the synthetic switch-base-128 workload, flagship latency / ``oracle`` latency at every batch, at most
   1.3 on every seed at the grid's default cache.

Split: parameters were fixed on development (switch-base-128 seeds 0-2, the Qwen3-30B-A3B trace); the rest is test.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from artifact.report import metrics as M
from artifact.report.load import refusal_reason
from artifact.report.tables import Table, fmt_pct, fmt_spread, fmt_x, is_nan, joined

DEV_MODEL = "switch-base-128"  # the synthetic development workload: this preset, these seeds, the generator's defaults
DEV_SEEDS = (0, 1, 2)
DEV_TRACES = ("qwen3-30b-a3b",)  # the real development trace
DEV, TEST = "development", "test"

MARGIN = 0.02  # target 1: at no grid point more than 2% worse than the best same-information peer
GAP_TARGET = 1.0 / 3.0  # target 2: a third of the on_demand -> belady gap in loads
ORACLE_TARGET = 1.3  # target 3: flagship latency / oracle latency

SPLIT_TEXT = (f"Parameters of the flagship were fixed on the **development** split: synthetic {DEV_MODEL} seeds "
              f"{joined(DEV_SEEDS)} (the generator's defaults) and the {joined(DEV_TRACES)} real trace. Every other "
              "workload is **test**: other seeds, the other real traces, the other presets of E7, and the E9 sweep. "
              "Each target table below labels its rows; both splits are shown. One default changed after test "
              "numbers had been seen: the learned co-occurrence prefetch (used only where a trace has no lookahead) "
              "was switched off. The development trace alone supports it (there it bought no latency and cost up "
              "to 0.2% more loads), but the ablation on the test traces (gpt-oss: 5.5% more loads) had been read "
              "first; the ablation table shows the component on every workload. The router-rank weight (`no_rank` "
              "in the ablation) came last, decided on the development split alone: it learns from every expert read "
              "before, not only from those read at the previous visit (on the development trace, in a development "
              "replay of demand fetches with beta fixed at 1: 25.9% of the gap closed, against 23.7% learning from "
              "the previous visit only and 24.3% without the weight); no top-1 workload changes. It was kept as "
              "decided, whatever the test workloads then showed: the ablation and target tables show them. The "
              "prefetch bar followed, also decided on the development split alone: the fixed bars (0.9 inside the "
              "copy window) sat above the synthetic lookahead's learned precision (about 0.85), so the flagship "
              "never prefetched at small batch; the break-even bar, derived from the hardware profile with no "
              "parameter of its own, trades loads for latency there (`fixed_bar` in the ablation shows the old bars "
              "on every workload). Imitating Belady's MIN on the past (Hawkeye's OPTgen and a kept-rate per layer and "
              "router rank, `with_imitation`) was tried last and left off on the development split alone, before "
              "any test workload ran with it: +0.2 point of the gap on the development trace, up to 0.6% more loads "
              "on switch-base-128.")


# --------------------------------------------------------------------------------------------------------------
# Workloads and the split
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    key: str  # "sim:seed0", "real:qwen3-30b-a3b", "models:olmoe-1b-7b"
    name: str  # as printed
    split: str  # DEV | TEST
    rows: pd.DataFrame  # its batched rows


def trace_name(label: str) -> str:
    """``trace:vendored:qwen3-30b-a3b`` -> ``qwen3-30b-a3b``; ``trace:path/to/x.npz`` -> ``x``."""
    t = label.split(":", 1)[1] if label.startswith("trace:") else label
    t = t.split(":", 1)[1] if t.startswith("vendored:") else t
    return re.sub(r"\.npz$", "", t.replace("\\", "/").rsplit("/", 1)[-1])


def is_default_synthetic(label: str) -> bool:
    """A synthetic workload with the generator's defaults (no E9 override such as ``:locality=0.2``)."""
    return label.startswith("synthetic:") and "=" not in label


def synthetic_split(model: str, seed: int) -> str:
    return DEV if model == DEV_MODEL and seed in DEV_SEEDS else TEST


def trace_split(label: str) -> str:
    return DEV if trace_name(label) in DEV_TRACES else TEST


def workloads(raw: Mapping[str, pd.DataFrame]) -> list[Workload]:
    """Every workload the targets are checked on: each seed of ``sim`` (default generator), each real trace of
    ``real``, each preset of ``models``; batched rows only."""
    out = []
    sim = raw.get("sim")
    if sim is not None and not sim.empty:
        d = sim[(sim["protocol"] == "batched") & sim["workload"].map(is_default_synthetic)]
        for (model, seed), g in d.groupby(["model", "trace_seed"], sort=True):
            out.append(Workload(f"sim:{model}:seed{seed}", f"synthetic {model}, seed {seed}",
                                synthetic_split(model, int(seed)), g))
    real = raw.get("real")
    if real is not None and not real.empty:
        d = real[real["protocol"] == "batched"]
        for label, g in sorted(d.groupby("workload", sort=True), key=lambda kv: (trace_split(kv[0]) != DEV, kv[0])):
            out.append(Workload(f"real:{trace_name(label)}", f"real trace {trace_name(label)}", trace_split(label),
                                g))
    models = raw.get("models")
    if models is not None and not models.empty:
        d = models[models["protocol"] == "batched"]
        for (model, seed), g in d.groupby(["model", "trace_seed"], sort=True):
            out.append(Workload(f"models:{model}:seed{seed}", f"synthetic {model} (E7), seed {seed}",
                                synthetic_split(model, int(seed)), g))
    return out


def same_information(flagship: str) -> list[str]:
    """The flagship's peers: registry ``sees == "past"`` and ``role == "online"``, itself excluded (table order)."""
    return [n for n, s in M.STRATEGIES.items() if s.sees == "past" and s.role == "online" and n != flagship]


# --------------------------------------------------------------------------------------------------------------
# Target 1: against every strategy with the same information
# --------------------------------------------------------------------------------------------------------------

POINT = ["cache", "batch"]
VALUES = ("loads", "latency_ms_per_step")


def _per_point(rows: pd.DataFrame, strategy: str) -> pd.DataFrame:
    d = rows[(rows["strategy"] == strategy) & ~rows["refused"]]
    return d.groupby(POINT, sort=True)[list(VALUES)].mean()


def _where(point) -> str:
    c, b = point
    return f"cache {c}, batch {b}"


def same_information_check(rows: pd.DataFrame, flagship: str, peers: list[str]) -> dict:
    """Target 1 on one workload's rows. Returns ``compared`` (peer -> flagship mean / peer mean of loads and of
    latency over the points both ran, and how many), ``refused`` (peer -> reason: every row refused), ``not_run``,
    ``worst`` (value -> (flagship / best peer at the worst point, that point)), ``points`` and ``met`` (None: the
    flagship or every peer has no figure here)."""
    f = _per_point(rows, flagship)
    out = {"compared": {}, "refused": {}, "not_run": [], "worst": {}, "points": len(f), "met": None}
    best = {}
    for p in peers:
        pr = rows[rows["strategy"] == p]
        if pr.empty:
            out["not_run"].append(p)
            continue
        v = _per_point(rows, p)
        if v.empty:
            out["refused"][p] = refusal_reason(str(pr.loc[pr["refused"], "note"].iloc[0])) if pr["refused"].any() \
                else "no figures"
            continue
        common = f.index.intersection(v.index)
        if not len(common):
            continue
        ratios = {k: float(f.loc[common, k].mean() / v.loc[common, k].mean()) for k in VALUES}
        out["compared"][p] = {**ratios, "points": len(common), "of": len(f)}
        for k in VALUES:
            cur = best.get(k)
            col = v[k].reindex(f.index)
            best[k] = col if cur is None else pd.concat([cur, col], axis=1).min(axis=1)
    if f.empty or not out["compared"]:
        return out
    ok = True
    for k in VALUES:
        r = (f[k] / best[k]).dropna()
        if r.empty:
            continue
        i = r.idxmax()
        out["worst"][k] = (float(r[i]), i)
        ok &= bool(r[i] <= 1.0 + MARGIN)
    ok &= all(c[k] < 1.0 for c in out["compared"].values() for k in VALUES)
    out["met"] = bool(ok)
    return out


def _closest(compared: dict, k: str) -> tuple[str, float]:
    """The peer the flagship does worst against in ``k`` (largest flagship / peer ratio; ties: table order)."""
    name = max(compared, key=lambda p: (compared[p][k], -list(compared).index(p)))
    return name, compared[name][k]


def _met(m) -> str:
    return "n/a" if m is None else "yes" if m else "**no**"


def target_same_information(wls: list[Workload], flagship: str) -> Table:
    peers = same_information(flagship)
    rows, text = [], []
    for w in wls:
        r = same_information_check(w.rows, flagship, peers)
        row = {"workload": w.name, "split": w.split, "points": r["points"], "met": r["met"],
               "peers": len(r["compared"])}
        cells = {}
        for k, what in (("loads", "loads"), ("latency_ms_per_step", "latency")):
            if r["compared"]:
                p, v = _closest(r["compared"], k)
                c = r["compared"][p]
                row[f"{what}_closest"], row[f"{what}_ratio"] = p, v
                part = "" if c["points"] == c["of"] else f" (on {c['points']} of {c['of']} points)"
                cells[f"mean {what}: flagship / closest peer"] = f"{fmt_x(v)} vs `{p}`{part}"
            else:
                row[f"{what}_closest"], row[f"{what}_ratio"] = "", np.nan
                cells[f"mean {what}: flagship / closest peer"] = "n/a"
            wv = r["worst"].get(k)
            row[f"{what}_worst"] = wv[0] if wv else np.nan
            cells[f"worst point, {what}: flagship / best peer"] = (f"{fmt_x(wv[0])} ({_where(wv[1])})" if wv
                                                                   else "n/a")
        notes = [f"`{p}` refused: {why}" for p, why in r["refused"].items()]
        notes += [f"`{p}` not run" for p in r["not_run"]]
        rows.append(row)
        text.append({"workload": w.name, "split": w.split, "grid points": str(r["points"]),
                     "peers compared": str(len(r["compared"])), **cells,
                     "target": f"< 1.00x on means; <= {fmt_x(1 + MARGIN)} at every point", "met": _met(r["met"]),
                     "not compared": "; ".join(notes)})
    cap = (f"Target 1: on each workload, `{flagship}` against every strategy with the same information "
           f"({joined(f'`{p}`' for p in peers)}: registry `sees` = past, role online). Means over the workload's grid "
           "points (every cache size and batch it ran, `batched`) that both strategies ran; 'closest peer' is the "
           "one the flagship does worst against. Met if every mean ratio, loads and latency, is below 1.00x and at "
           f"no grid point the flagship's loads or latency exceed the best peer's there by more than "
           f"{100 * MARGIN:g}%. A peer that needs a lookahead the trace lacks is refused on it and listed, not "
           "compared. Latency on the hardware profile of the rows.")
    return Table("target_same_info", "Target 1. Fewer loads and lower latency than every same-information strategy",
                 cap, pd.DataFrame(rows), pd.DataFrame(text))


# --------------------------------------------------------------------------------------------------------------
# Target 2: the gap between on_demand and belady closed, per real trace
# --------------------------------------------------------------------------------------------------------------


def gap_closed(rows: pd.DataFrame, flagship: str, base: str = "on_demand", bound: str = "belady") -> pd.DataFrame:
    """Per cache of one workload: loads of ``base``, ``flagship`` and ``bound``, the gap and the share closed
    ``(base - flagship) / (base - bound)`` (NaN where the gap is not positive), and the cache fraction."""
    d = rows[(rows["protocol"] == "batched") & ~rows["refused"]]
    g = d.groupby(["strategy", "cache"], sort=True)["loads"].mean()
    frac = d.groupby("cache", sort=True)["cache_fraction"].first()
    caches = sorted(set(d["cache"]))
    out = pd.DataFrame(index=pd.Index(caches, name="cache"))

    def col(s):
        return g.xs(s, level="strategy").reindex(out.index) if s in g.index.get_level_values(0) else np.nan

    out["base"], out["flagship"], out["bound"] = col(base), col(flagship), col(bound)
    out["gap"] = out["base"] - out["bound"]
    out["closed"] = ((out["base"] - out["flagship"]) / out["gap"]).where(out["gap"] > 0)
    out["fraction"] = frac.reindex(out.index)
    return out


def gap_summary(frame: pd.DataFrame) -> tuple[float, int]:
    """(mean share closed over the caches with a gap, number of caches without one)."""
    has = frame["gap"] > 0
    no_gap = int((~has & frame["gap"].notna()).sum())
    vals = frame.loc[has, "closed"]
    return (float(vals.mean()) if len(vals) and vals.notna().all() else np.nan), no_gap


def hindsight_closed(rows: pd.DataFrame, ablation: pd.DataFrame | None, flagship: str) -> pd.Series:
    """Per cache of one real workload: the gap share closed by the best ablation variant (or the flagship) there,
    chosen knowing the loads: how far switching its parts could go, not a policy. Empty without ablation rows."""
    if ablation is None or ablation.empty:
        return pd.Series(dtype=float)
    a = ablation[ablation["workload"].isin(set(rows["workload"])) & (ablation["protocol"] == "batched")
                 & ~ablation["refused"] & (ablation["strategy"] == flagship)]
    if a.empty:
        return pd.Series(dtype=float)
    fr = gap_closed(rows, flagship)
    best = a.groupby(["variant", "cache"], sort=True)["loads"].mean().groupby(level="cache").min()
    best = np.minimum(best.reindex(fr.index), fr["flagship"])
    return ((fr["base"] - best) / fr["gap"]).where(fr["gap"] > 0)


def target_gap(wls: list[Workload], flagship: str, ablation: pd.DataFrame | None = None) -> Table:
    real = [w for w in wls if w.key.startswith("real:")]
    per = {w.key: gap_closed(w.rows, flagship) for w in real}
    hind = {w.key: hindsight_closed(w.rows, ablation, flagship) for w in real}
    fracs = sorted({round(float(f), 3) for fr in per.values() for f in fr["fraction"] if not is_nan(f)})
    rows, text = [], []
    for w in real:
        fr = per[w.key]
        mean, no_gap = gap_summary(fr)
        met = None if is_nan(mean) else bool(mean >= GAP_TARGET)
        row = {"workload": w.name, "split": w.split, "mean_closed": mean, "caches_without_gap": no_gap, "met": met}
        trow = {"workload": w.name, "split": w.split}
        by_frac = {round(float(f), 3): c for c, f in zip(fr.index, fr["fraction"]) if not is_nan(f)}
        for f in fracs:
            c = by_frac.get(f)
            label = f"cache {fmt_pct(f)}"
            if c is None:
                trow[label] = "-"
                continue
            v, gap = fr.loc[c, "closed"], fr.loc[c, "gap"]
            row[f"closed_C{c}"] = v
            trow[label] = f"no gap (C={c})" if not is_nan(gap) and gap <= 0 else f"{fmt_pct(v)} (C={c})"
        trow["mean over caches"] = fmt_pct(mean) + (f" ({no_gap} cache(s) without a gap left out)" if no_gap else "")
        trow["target"] = f">= {fmt_pct(GAP_TARGET)}"
        trow["met"] = _met(met)
        h = hind[w.key].dropna()
        row["hindsight_mean"] = float(h.mean()) if len(h) else np.nan
        if any(len(v) for v in hind.values()):
            trow["best variant per cache, in hindsight"] = fmt_pct(row["hindsight_mean"]) if len(h) else "-"
        rows.append(row)
        text.append(trow)
    cap = (f"Target 2: on every real trace, the share of the gap between `on_demand` and `belady` in loads that "
           f"`{flagship}` closes, (on_demand - flagship) / (on_demand - belady), at each cache size (batch 1), then "
           "the mean over the caches. A cache where `on_demand` needs no more loads than `belady` has no gap to "
           f"close and is left out of the mean. Met if the mean is at least {fmt_pct(GAP_TARGET)}.")
    if any(len(v) for v in hind.values()):
        cap += (" Last column: the same mean when, at each cache, the fewest loads of any variant of the ablation "
                "grid (a component off or on, or the recency/frequency balance fixed) or of the flagship itself is "
                "taken, chosen knowing the result: how far switching the flagship's parts could go, not a policy.")
    return Table("target_gap", "Target 2. The gap to Belady closed on every real trace", cap, pd.DataFrame(rows),
                 pd.DataFrame(text))


# --------------------------------------------------------------------------------------------------------------
# Target 3: within 1.3x of the oracle at every batch, synthetic switch-base-128
# --------------------------------------------------------------------------------------------------------------


def oracle_ratio(sim: pd.DataFrame, flagship: str, bound: str = "oracle") -> pd.Series:
    """flagship latency / oracle latency, indexed by (trace_seed, cache, batch), default-generator batched rows."""
    d = sim[(sim["protocol"] == "batched") & sim["workload"].map(is_default_synthetic) & ~sim["refused"]]
    g = d.groupby(["strategy", "trace_seed", "cache", "batch"], sort=True)["latency_ms_per_step"].mean()
    if flagship not in g.index.get_level_values(0) or bound not in g.index.get_level_values(0):
        return pd.Series(dtype=float)
    f, o = g.xs(flagship, level="strategy"), g.xs(bound, level="strategy")
    return (f / o.reindex(f.index)).dropna()


def peer_tradeoff(sim: pd.DataFrame | None, flagship: str) -> Table:
    """Per batch (default synthetic workload, ``batched``, mean over seeds and caches): the loads of the fastest
    same-information peer over the fewest loads any peer needs, and the fastest latency over the latency of the
    peer with the fewest loads. Where both exceed 1.02, no single peer is within 2% of both bests (target 1)."""
    cols = ["batch", "fastest_loads_over_fewest", "fewest_latency_over_fastest", "flag_loads", "flag_latency"]
    title = "Target 1, what the peers trade: the fastest peer against the one with the fewest loads"
    if sim is None or sim.empty:
        return Table("peer_tradeoff", title, "raw/sim.csv is absent.", pd.DataFrame(columns=cols), pd.DataFrame())
    d = sim[(sim["protocol"] == "batched") & sim["workload"].map(is_default_synthetic) & ~sim["refused"]]
    peers = [p for p in same_information(flagship) if p in set(d["strategy"])]
    rows, text = [], []
    for b, at_b in d.groupby("batch", sort=True):
        acc = {k: [] for k in cols[1:]}
        for _, pt in at_b.groupby(["trace_seed", "cache"]):
            pr = pt[pt["strategy"].isin(peers)]
            fl = pt[pt["strategy"] == flagship]
            if pr.empty or fl.empty:
                continue
            fast = pr.loc[pr["latency_ms_per_step"].idxmin()]
            few = pr.loc[pr["loads"].idxmin()]
            acc["fastest_loads_over_fewest"].append(fast["loads"] / few["loads"])
            acc["fewest_latency_over_fastest"].append(few["latency_ms_per_step"] / fast["latency_ms_per_step"])
            acc["flag_loads"].append(float(fl["loads"].iloc[0]) / few["loads"])
            acc["flag_latency"].append(float(fl["latency_ms_per_step"].iloc[0]) / fast["latency_ms_per_step"])
        if not acc["flag_loads"]:
            continue
        row = {"batch": int(b), **{k: float(np.mean(v)) for k, v in acc.items()}}
        rows.append(row)
        text.append({"batch": str(int(b)),
                     "fastest peer's loads / fewest loads of any peer": fmt_x(row["fastest_loads_over_fewest"]),
                     "latency of the fewest-loads peer / fastest latency": fmt_x(row["fewest_latency_over_fastest"]),
                     f"`{flagship}`: loads / fewest, latency / fastest":
                         f"{fmt_x(row['flag_loads'])}, {fmt_x(row['flag_latency'])}"})
    cap = ("Synthetic default workload, `batched`, mean over seeds and cache sizes; at each point the fastest and the "
           "fewest-loads strategy among the flagship's same-information peers (they differ at small batch: a "
           "prefetcher that accepts wrong guesses buys latency with loads). Target 1 asks for both within 2% at "
           "every point, so where the two columns of the peers both exceed 1.02x a strategy must out-predict every "
           "peer to meet it.")
    return Table("peer_tradeoff", title, cap, pd.DataFrame(rows, columns=cols), pd.DataFrame(text))


def peer_oracle_ratio(sim: pd.DataFrame, peers: list[str], bound: str = "oracle") -> pd.Series:
    """The fastest of ``peers`` (per point) over the oracle, indexed like :func:`oracle_ratio`: how close anything
    with the flagship's information came."""
    d = sim[(sim["protocol"] == "batched") & sim["workload"].map(is_default_synthetic) & ~sim["refused"]]
    g = d.groupby(["strategy", "trace_seed", "cache", "batch"], sort=True)["latency_ms_per_step"].mean()
    have = [p for p in peers if p in g.index.get_level_values(0)]
    if not have or bound not in g.index.get_level_values(0):
        return pd.Series(dtype=float)
    best = pd.concat([g.xs(p, level="strategy") for p in have], axis=1).min(axis=1)
    o = g.xs(bound, level="strategy")
    return (best / o.reindex(best.index)).dropna()


def target_oracle(sim: pd.DataFrame | None, flagship: str) -> Table:
    cols = ["workload", "split", "batch", "mean", "min", "max", "worst_any_cache", "worst_cache", "met",
            "peer_mean", "exact_mean"]
    if sim is None or sim.empty:
        return Table("target_oracle", "Target 3. Within 1.3x of the oracle", "raw/sim.csv is absent.",
                     pd.DataFrame(columns=cols), pd.DataFrame())
    r = oracle_ratio(sim, flagship)
    peer, exact = (peer_oracle_ratio(sim, p) for p in (same_information(flagship), ["pregated"]))  # exact: next layer
    cache = M.default_cache(sim)
    model = joined(sorted(set(sim["model"])))
    rows, text = [], []
    if not r.empty:
        seeds = sorted(set(r.index.get_level_values("trace_seed")))
        groups = [(DEV, [s for s in seeds if synthetic_split(model, s) == DEV]),
                  (TEST, [s for s in seeds if synthetic_split(model, s) == TEST])]
        for split, ss in groups:
            if not ss:
                continue
            sub = r[r.index.get_level_values("trace_seed").isin(ss)]
            for b in sorted(set(sub.index.get_level_values("batch"))):
                at_b = sub.xs(b, level="batch")
                dc = at_b.xs(cache, level="cache") if cache in set(at_b.index.get_level_values("cache")) else \
                    pd.Series(dtype=float)
                mean, lo, hi = (float(dc.mean()), float(dc.min()), float(dc.max())) if len(dc) else (np.nan,) * 3
                i = at_b.idxmax()
                met = None if is_nan(hi) else bool(hi <= ORACLE_TARGET)
                wl = f"synthetic {model}, seed{'s' if len(ss) > 1 else ''} {joined(ss)}"
                pmean, emean = (float(q.reindex([(s, cache, b) for s in ss]).mean()) for q in (peer, exact))
                rows.append({"workload": wl, "split": split, "batch": b, "mean": mean, "min": lo, "max": hi,
                             "worst_any_cache": float(at_b[i]), "worst_cache": int(i[1]), "met": met,
                             "peer_mean": pmean, "exact_mean": emean})
                text.append({"workload": wl, "split": split, "batch": str(b),
                             f"flagship / oracle latency, cache {cache}: mean [min, max] over seeds":
                                 fmt_spread(mean, lo, hi, fmt_x),
                             "worst over every cache and seed": f"{fmt_x(at_b[i])} (cache {i[1]}, seed {i[0]})",
                             f"fastest same-information peer / oracle, cache {cache}, mean over seeds":
                                 "n/a" if is_nan(pmean) else fmt_x(pmean),
                             "`pregated` (the next layer's exact routing) / oracle": "n/a" if is_nan(emean) else
                                 fmt_x(emean), "target": f"<= {fmt_x(ORACLE_TARGET)} on every seed", "met": _met(met)})
    cap = (f"Target 3: `{flagship}` latency per step over `oracle` latency per step on the same seed, cache and batch "
           f"(synthetic {model}, `batched`). Met at a batch if every seed's ratio at the grid's default cache "
           f"({cache} experts) is at most {fmt_x(ORACLE_TARGET)}; the worst ratio over every cache size of the grid "
           "is shown beside it, and so is the fastest strategy with the flagship's information at each point (over "
           "the oracle): where that is above the target too, no strategy of the grid with this information reaches "
           "it; `pregated` knows the next layer's routing exactly (more than any lookahead) and shows how far that "
           "knowledge goes with its own eviction and prefetch (not a bound for every use of it).")
    return Table("target_oracle", f"Target 3. Within {ORACLE_TARGET:g}x of the oracle at every batch", cap,
                 pd.DataFrame(rows, columns=cols), pd.DataFrame(text))


# --------------------------------------------------------------------------------------------------------------
# The executive summary's paragraph
# --------------------------------------------------------------------------------------------------------------


def _count(frame: pd.DataFrame, split: str | None = None) -> tuple[int, int]:
    f = frame if split is None else frame[frame["split"] == split]
    f = f[f["met"].notna()]
    return int((f["met"] == True).sum()), len(f)  # noqa: E712  (object column: True / False / None)


def _split_counts(frame: pd.DataFrame) -> str:
    parts = []
    for sp in (DEV, TEST):
        k, n = _count(frame, sp)
        if n:
            parts.append(f"{sp} {k} of {n}")
    return "; ".join(parts)


def summary(t1: Table, t2: Table, t3: Table, flagship: str) -> str:
    """Where the flagship meets its targets, where not, and by how much: generated from the target tables."""
    out = []
    f1 = t1.frame
    if not f1.empty and f1["met"].notna().any():
        k, n = _count(f1)
        line = (f"- **Against every same-information strategy** (target 1): met on {k} of {n} workloads "
                f"({_split_counts(f1)}).")
        won = f1[f1["met"] == True]  # noqa: E712
        lost = f1[f1["met"] == False]  # noqa: E712
        if len(won):
            line += " Met on " + "; ".join(
                f"{r['workload']} (latency {fmt_x(r['latency_ratio'])} of `{r['latency_closest']}`, loads "
                f"{fmt_x(r['loads_ratio'])} of `{r['loads_closest']}`)"
                for _, r in won.iterrows()) + "."
        if len(lost):
            line += " Not met on " + "; ".join(
                f"{r['workload']} (loads {fmt_x(r['loads_ratio'])} of `{r['loads_closest']}`, latency "
                f"{fmt_x(r['latency_ratio'])} of `{r['latency_closest']}`; worst point {fmt_x(r['loads_worst'])} in "
                f"loads, {fmt_x(r['latency_worst'])} in latency)" for _, r in lost.iterrows()) + "."
        syn = f1[f1["workload"].str.startswith(f"synthetic {DEV_MODEL}, seed") & f1["latency_ratio"].notna()]
        if len(syn) > 1:
            line += (f" Over the {len(syn)} synthetic {DEV_MODEL} seeds, mean latency against the closest peer: "
                     + fmt_spread(syn["latency_ratio"].mean(), syn["latency_ratio"].min(), syn["latency_ratio"].max(),
                                  fmt_x)
                     + ", loads: " + fmt_spread(syn["loads_ratio"].mean(), syn["loads_ratio"].min(),
                                                syn["loads_ratio"].max(), fmt_x) + " (mean [min, max] over seeds).")
        out.append(line)
    f2 = t2.frame
    if not f2.empty and f2["met"].notna().any():
        k, n = _count(f2)
        line = (f"- **Gap to Belady closed on real traces** (target 2, at least {fmt_pct(GAP_TARGET)}): met on {k} "
                f"of {n}: " + "; ".join(f"{r['workload']} {fmt_pct(r['mean_closed'])} ({r['split']})"
                                       for _, r in f2.iterrows()) + ".")
        if "hindsight_mean" in f2 and f2["hindsight_mean"].notna().any():
            line += (" The best of the flagship's ablation variants at each cache, chosen in hindsight: "
                     + ", ".join(fmt_pct(v) for v in f2["hindsight_mean"]) + " (the same order).")
        out.append(line)
    f3 = t3.frame
    if not f3.empty and f3["met"].notna().any():
        parts = []
        for sp in (DEV, TEST):
            s = f3[(f3["split"] == sp) & f3["met"].notna()]
            if s.empty:
                continue
            i = s["max"].idxmax()
            peer = s.loc[i, "peer_mean"] if "peer_mean" in s else np.nan
            reach = s[s["peer_mean"] > ORACLE_TARGET]["batch"].tolist() if "peer_mean" in s else []
            parts.append(f"{sp}: {int((s['met'] == True).sum())} of {len(s)} batches, worst "  # noqa: E712
                         f"{fmt_x(s.loc[i, 'max'])} at batch {s.loc[i, 'batch']}"
                         + ("" if is_nan(peer) else f" (the fastest same-information peer at each point: "
                            f"{fmt_x(peer)} there)")
                         + (f"; at the default cache no same-information strategy of the grid is within it at batch "
                            f"{joined(reach)}" if reach else ""))
        out.append(f"- **Within {ORACLE_TARGET:g}x of the oracle** (target 3, synthetic {DEV_MODEL}): "
                   + "; ".join(parts) + ".")
    if not out:
        return ""
    return (f"**Our flagship `{flagship}` against its targets** (details in the section \"Flagship against its "
            "targets\"; development and test workloads as defined there):\n\n" + "\n".join(out) + "\n")
