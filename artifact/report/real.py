"""E8 (every strategy on the real decode traces) and the routing statistics of real against synthetic traces: pure
functions of ``raw/real.csv`` (typed rows, ``load.prepare``) and ``raw/routing_stats.json``.

The real traces are single prompts: one sequence each, so no batch can be formed honestly from them. E8 runs them at
batch 1, at caches of 5-40% of the routed experts. A strategy that needs a lookahead the trace does not carry is a
refusal row (the runner writes its reason), shown as "refused", never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from artifact.report.figures import RC, Plot, _legend, _log_y, _new, _placeholder, _save, line_style  # noqa: E402
from artifact.report.flagship import trace_name, trace_split  # noqa: E402
from artifact.report.tables import (  # noqa: E402
    Table,
    _cell,
    describe,
    fmt_int,
    fmt_ms,
    fmt_pct,
    fmt_rate,
    fmt_x,
    is_nan,
    joined,
    refused,
    strategy_order,
)

SINGLE_PROMPT = ("The real traces are single prompts (one sequence each): batches cannot be formed honestly from "
                 "them, so every result on real routing here is at batch 1, and every batch above 1 in this report is "
                 "on synthetic routing.")

# The vendored traces' provenance (artifact/traces/data/bigmoeonedge-2026-07-15/README.md): a notice the license asks
# for, not a result.
TRACES_NOTICE = (
    "The real routing traces are converted copies of BigMoeOnEdge's route-trace session of 2026-07-15: "
    "[github.com/Helldez/BigMoeOnEdge](https://github.com/Helldez/BigMoeOnEdge), commit "
    "`2d4f2b11db128cbe32da738ce114c0479542f458`, folder `docs/bench-data/2026-07-15-route-trace/` (`qwen.route.csv`, "
    "`gemma.route.csv`, `gptoss.route.csv`). License: Apache License 2.0, copied unchanged in "
    "`artifact/traces/data/bigmoeonedge-2026-07-15/LICENSE`; copyright of the data stays with the BigMoeOnEdge "
    "authors, and `artifact/traces/data/bigmoeonedge-2026-07-15/README.md` states what the conversion changed "
    "(prompt positions the engine ran without their last layer are dropped whole; routing is never invented). "
    "Captured by that project's llama.cpp-based engine on a phone (arm64), one prompt per model, greedy decoding, "
    "GGUF Q4_K_M weights, with fewer experts per token than the models' own top-k (the table of routing statistics "
    "gives both).")


FAR = 10.0  # fig_e8 leaves out a strategy whose loads average more than this multiple of Belady's


def _traces(real: pd.DataFrame) -> list[str]:
    """Workload labels of the real traces, development first, then by name."""
    return sorted(set(real["workload"]), key=lambda w: (trace_split(w) != "development", trace_name(w)))


def _fixed(rows: pd.DataFrame) -> dict[str, str]:
    w = trace_name(rows["workload"].iloc[0])
    return {"workload": f"workload real decode trace {w} (one prompt, {trace_split(rows['workload'].iloc[0])} "
                        "split)"}


def _cache_label(c: int, frac) -> str:
    return f"C={c} ({fmt_pct(frac)})" if not is_nan(frac) else f"C={c}"


# --------------------------------------------------------------------------------------------------------------
# E8 tables
# --------------------------------------------------------------------------------------------------------------


def e8_table(rows: pd.DataFrame, hardware: Mapping[str, str] | None = None) -> Table:
    """One trace: every strategy at every cache size: loads, hit rate, latency per step, loads / belady loads."""
    d = rows[rows["protocol"] == "batched"]
    name = trace_name(d["workload"].iloc[0])
    caches = sorted(set(d["cache"]))
    frac = d[d["strategy"] != "gpu_only"].groupby("cache")["cache_fraction"].first()
    names = strategy_order(d["strategy"])
    g = d.groupby(["strategy", "cache"])[["loads", "hit_rate", "latency_ms_per_step"]].mean()
    bel = {c: g.loc[("belady", c), "loads"] if ("belady", c) in g.index else np.nan for c in caches}
    notes = d[d["refused"]].groupby("strategy")["note"].first()
    rows_out, text = [], []
    for s in names:
        row, trow = {"trace": name, "strategy": s}, {"strategy": f"`{s}`"}
        for c in caches:
            have = (s, c) in g.index
            ld, hr, lt = (g.loc[(s, c), k] if have else np.nan for k in ("loads", "hit_rate", "latency_ms_per_step"))
            rel = ld / bel[c] if not is_nan(ld) and not is_nan(bel[c]) and bel[c] > 0 else np.nan
            row.update({f"loads_C{c}": ld, f"hit_rate_C{c}": hr, f"latency_ms_C{c}": lt, f"loads_vs_belady_C{c}": rel})
            ref = refused(d, s, cache=c)
            lab = _cache_label(c, frac.get(c, np.nan))
            trow[f"{lab}: loads"] = _cell(ld, fmt_int, ref)
            trow[f"{lab}: hit rate"] = _cell(hr, fmt_rate, ref)
            trow[f"{lab}: ms/step"] = _cell(lt, fmt_ms, ref)
            trow[f"{lab}: loads / belady"] = _cell(rel, fmt_x, ref)
        trow["note"] = notes.get(s, "")
        rows_out.append(row)
        text.append(trow)
    tx = pd.DataFrame(text)
    if not (tx["note"] != "").any():
        tx = tx.drop(columns="note")
    cap = describe(d, hardware, **_fixed(d)) + (" `gpu_only` holds every expert (not iso-cache). Latency per step "
                                                "on the calibrated hardware profile named. " + SINGLE_PROMPT)
    return Table(f"e8_{name}", f"E8. {name}", cap, pd.DataFrame(rows_out), tx)


def e8_summary(real: pd.DataFrame, hardware: Mapping[str, str] | None = None) -> Table:
    """Every strategy on every trace: loads / belady loads and latency / oracle latency, mean over the caches."""
    d = real[real["protocol"] == "batched"]
    traces = _traces(d)
    names = [s for s in strategy_order(d["strategy"]) if s != "gpu_only"]
    rows, text = [], []
    ratios = {}
    for w in traces:
        g = d[d["workload"] == w].groupby(["strategy", "cache"])[["loads", "latency_ms_per_step"]].mean()
        for k, bound in (("loads", "belady"), ("latency_ms_per_step", "oracle")):
            v = g[k].unstack("cache")
            ratios[(w, k)] = v / v.loc[bound] if bound in v.index else v * np.nan
    for s in names:
        row, trow = {"strategy": s}, {"strategy": f"`{s}`"}
        for w in traces:
            t = f"{trace_name(w)} ({trace_split(w)})"
            for k, lab in (("loads", "loads / belady"), ("latency_ms_per_step", "latency / oracle")):
                r = ratios[(w, k)]
                v = float(r.loc[s].mean(skipna=False)) if s in r.index else np.nan
                row[f"{trace_name(w)}: {lab}"] = v
                trow[f"{t}: {lab}"] = _cell(v, fmt_x, refused(d[d["workload"] == w], s))
        rows.append(row)
        text.append(trow)
    cap = (describe(d, hardware, names, workload="workload the real decode traces "
                    + joined(trace_name(w) for w in traces)) + " Each cell: the ratio at each cache size, then the "
           "mean over the trace's caches. " + SINGLE_PROMPT)
    return Table("e8_summary", "E8. Gap to the bounds on every real trace (mean over cache sizes)", cap,
                 pd.DataFrame(rows), pd.DataFrame(text))


# --------------------------------------------------------------------------------------------------------------
# E8 figure: one per trace
# --------------------------------------------------------------------------------------------------------------


def fig_e8(rows: pd.DataFrame, out_dir: Path, hardware: Mapping[str, str] | None = None) -> Plot:
    d = rows[rows["protocol"] == "batched"]
    name = trace_name(d["workload"].iloc[0])
    fname, title = f"fig8_real_{name}", f"Every strategy on the real trace {name}"
    ran = d[~d["refused"] & (d["strategy"] != "gpu_only")]
    if ran.empty:
        return _placeholder(out_dir, fname, title, f"raw/real.csv has no measured row for {name}.")
    g = ran.groupby(["strategy", "cache"])[["loads", "hit_rate", "latency_ms_per_step", "cache_fraction"]].mean()
    bel = g.xs("belady", level="strategy")["loads"] if "belady" in g.index.get_level_values(0) else None
    # A strategy an order of magnitude off Belady's loads would flatten every other line: the table has it.
    far = []
    if bel is not None:
        rel = (g["loads"] / bel.reindex(g.index.get_level_values("cache")).to_numpy()).groupby(level="strategy").mean()
        far = [s for s in strategy_order(rel.index) if rel[s] > FAR]
    names = [s for s in strategy_order(ran["strategy"]) if s not in far]
    with matplotlib.rc_context(RC):
        fig, ax = _new((12.0, 4.4), ncols=3)
        panels = (("loads_vs_belady", "loads / belady loads (log)"), ("hit_rate", "hit rate (hits / unique requests)"),
                  ("latency_ms_per_step", "latency per step (ms, log)"))
        for a, (col, lab) in zip(ax[0], panels):
            for s in names:
                y = g.xs(s, level="strategy")
                x = 100 * y["cache_fraction"].to_numpy(float)
                if col == "loads_vs_belady":
                    if bel is None:
                        continue
                    v = (y["loads"] / bel.reindex(y.index)).to_numpy(float)
                else:
                    v = y[col].to_numpy(float)
                a.plot(x, v, **line_style(s))
            a.set_xscale("log", base=2)
            xs = sorted({round(100 * float(f), 1) for f in ran["cache_fraction"]})
            a.set_xticks(xs)
            a.set_xticklabels([f"{x:g}" for x in xs])
            a.minorticks_off()
            a.set_xlabel("cache (% of routed experts)")
            a.set_ylabel(lab)
            if col != "hit_rate":
                _log_y(a)
        _legend(fig, names, ncol=8, lines=True)
        hw = joined(sorted(set(d["hardware"])))
        fig.suptitle(f"{title}\n{joined(sorted(set(d['model'])))} preset, batch 1, {joined(sorted(set(d['steps'])))} "
                     f"decode steps, simulator, profile {hw}", fontsize=8)
        fig.subplots_adjust(left=0.06, right=0.99, top=0.86, bottom=0.28, wspace=0.25)
        left_out = "; ".join(["`gpu_only` (it holds every expert)"]
                             + [f"`{s}` (over {FAR:g}x Belady's loads: see the table)" for s in far])
        cap = (f"{title}: loads over Belady's MIN loads (left), hit rate (middle) and latency per decode step "
               f"(right) against the cache size; the flagship is the thick black line. Left out: {left_out}. "
               + describe(d, hardware, **_fixed(d)) + " " + SINGLE_PROMPT)
        return _save(fig, out_dir, fname, title, cap)


# --------------------------------------------------------------------------------------------------------------
# Routing statistics: real against synthetic
# --------------------------------------------------------------------------------------------------------------


def _num(v, f) -> str:
    return "n/a" if v is None or is_nan(v) else f(v)


def _f3(v) -> str:
    return f"{float(v):.3f}"


def _f1(v) -> str:
    return f"{float(v):.1f}"


def _first_last(v) -> str:
    """``[K]`` per-rank figures as 'first / last' (one value for top-1)."""
    return f"{float(v[0]):.3f}" if len(v) == 1 else f"{float(v[0]):.3f} / {float(v[-1]):.3f}"


STAT_COLUMNS = (("top10_share_mean", "top-10% experts' share of requests", _f3),
                ("temporal_locality_mean", "temporal locality", _f3),
                ("first_choice_repeat_mean", "first choice repeated", _f3),
                ("reuse_by_rank", "next-token reuse, first / last choice", _first_last),
                ("cross_layer_accuracy_mean", "adjacent-layer predictability", _f3),
                ("lookahead_accuracy_mean", "lookahead accuracy", _f3),
                ("unique_experts_b1", "unique experts / layer, B=1", _f1),
                ("unique_experts_b8", "unique experts / layer, B=8", _f1))


def stats_row(kind: str, name: str, st: Mapping) -> dict:
    """One row of the statistics table (text cells) from an entry of routing_stats.json."""
    row = {"family": str(st.get("model", "")), "routing": f"{kind}: {name}",
           "tokens x sequences": f"{_num(st.get('tokens'), lambda v: f'{int(v):,d}')} x "
                                 f"{_num(st.get('sequences'), lambda v: str(int(v)))}",
           "layers x experts": f"{st.get('layers', 'n/a')} x {st.get('num_experts', 'n/a')}",
           "top-k used (native)": f"{st.get('top_k_used', 'n/a')} ({st.get('native_top_k', 'n/a')})"}
    for k, lab, f in STAT_COLUMNS:
        v = st.get(k)
        row[lab] = ("none in the trace" if k == "lookahead_accuracy_mean" and v is None
                    else "n/a (one sequence)" if k == "unique_experts_b8" and v is None else _num(v, f))
    return row


def routing_stats_table(stats: Mapping) -> Table:
    """Real against synthetic routing, per model family: each real trace beside the synthetic preset of its model,
    then the synthetic presets no real trace covers."""
    real, syn = stats.get("real", {}), stats.get("synthetic", {})
    text, notes = [], []
    families = sorted({str(v.get("model", "")) for v in real.values()})
    for fam in families:
        for n in sorted(k for k, v in real.items() if str(v.get("model", "")) == fam):
            text.append(stats_row("real", n, real[n]))
            if real[n].get("cross_layer_note"):
                notes.append(f"{n}: adjacent-layer predictability on {real[n]['cross_layer_note']}")
        if fam in syn:
            text.append(stats_row("synthetic", fam, syn[fam]))
    for fam in sorted(set(syn) - set(families)):
        text.append(stats_row("synthetic", fam, syn[fam]))
    cap = (f"{stats.get('about', 'routing statistics')} (raw/routing_stats.json); means over layers. Top-10% share: "
           "share of token-expert selections taken by the 10% most selected experts of a layer; temporal locality: "
           "mean share of a token's experts that the previous token of its sequence also used at that layer; first "
           "choice repeated: the same for the first-choice expert; next-token reuse: the share of a token's "
           "first-choice (and last-choice) experts that the next token of its sequence picks again at that layer, "
           "at any rank; adjacent-layer predictability: held-out accuracy "
           "of a first-choice transition table from layer l to l + 1; lookahead accuracy: share of the true experts "
           "the trace's own next-layer prediction names, where it has one. Real traces carry one sequence each, so "
           "unique experts at batch 8 cannot be measured on them." + (" Notes: " + "; ".join(notes) + "."
                                                                      if notes else ""))
    return Table("routing_stats", "Routing statistics: real traces against the synthetic generator", cap,
                 pd.DataFrame(text), pd.DataFrame(text))
