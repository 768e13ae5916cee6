"""The flagship's ablation (``raw/ablation.csv``): each component switched off in turn, or an optional one switched
on, on every workload of the ablation grid; a pure function of the typed CSV rows (``load.prepare``)."""

from __future__ import annotations

import pandas as pd

from artifact.report.flagship import DEV, POINT, TEST, VALUES, synthetic_split, trace_name, trace_split
from artifact.report.tables import Table, fmt_x, joined

# What each variant of the ablation grid switches off (artifact/policies/intelligent_dedup.py); a variant not named
# here is printed by its name.
VARIANTS = {
    "no_adaptive": "recency/frequency balance fixed (beta = 1, no shadow rankings)",
    "no_distance": "no 1/sqrt(distance) term: when the expert's layer comes round is ignored",
    "no_frequency": "uses ignored: the value is recency alone",
    "no_rank": "router rank ignored: every read weighs the same (w = 1)",
    "no_prefetch": "no next-layer prefetch: demand loads only",
    "with_cooccurrence": "the learned co-occurrence forecast on (off by default): prefetch without a lookahead",
    "no_lookahead": "the trace's lookahead ignored (no prefetch unless the co-occurrence forecast is on)",
    "no_hardware_window": "no copy window: the prefetch bar is always the high one",
    "fixed_bar": "fixed prefetch bars (0.9 inside the copy window, 0.95 past it) instead of the break-even one",
    "beta_0": "beta fixed at 0 (frequency only; no shadow caches)",
    "beta_2": "beta fixed at 2 (recency-leaning; no shadow caches)",
    "with_imitation": "Belady imitation on (off by default): the value times the share of intervals MIN, replayed "
                      "on the past, kept when opened at that layer and router rank (Hawkeye's OPTgen)",
}


def _ablation_workloads(abl: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    out = []
    for label, g in abl.groupby("workload", sort=True):
        if label.startswith("trace:"):
            out.append((f"{trace_name(label)} ({trace_split(label)})", label, g))
        else:
            seeds = sorted(set(g["trace_seed"]))
            model = joined(sorted(set(g["model"])))
            split = DEV if all(synthetic_split(model, s) == DEV for s in seeds) else TEST
            out.append((f"synthetic {model}, seed {joined(seeds)} ({split})", label, g))
    return sorted(out, key=lambda t: (not t[1].startswith("synthetic:"), DEV not in t[0], t[1]))


def ablation_table(abl: pd.DataFrame) -> Table:
    """Rows: variant; columns: workload; cells: mean loads and mean latency over the workload's grid points,
    relative to the full flagship on the same points."""
    d = abl[abl["protocol"] == "batched"]
    wls = _ablation_workloads(d)
    variants = [""] + sorted(set(d["variant"]) - {""}, key=lambda v: (list(VARIANTS).index(v) if v in VARIANTS
                                                                      else len(VARIANTS), v))
    rows, text = [], []
    for v in variants:
        row, trow = {"variant": v or "full"}, {"variant": f"`{v}`" if v else "full flagship"}
        trow["what is off"] = VARIANTS.get(v, "nothing" if not v else v.replace("_", " "))
        worst = None
        for name, _, g in wls:
            full = g[(g["variant"] == "") & ~g["refused"]].groupby(POINT)[list(VALUES)].mean()
            var = g[(g["variant"] == v) & ~g["refused"]].groupby(POINT)[list(VALUES)].mean()
            common = full.index.intersection(var.index)
            if g[g["variant"] == v].empty:
                trow[name] = "not run"
                continue
            if not len(common):
                trow[name] = "refused" if g.loc[g["variant"] == v, "refused"].any() else "n/a"
                continue
            rl, rt = (float(var.loc[common, k].mean() / full.loc[common, k].mean()) for k in VALUES)
            row[f"{name}: loads"], row[f"{name}: latency"] = rl, rt
            trow[name] = f"loads {fmt_x(rl)}, latency {fmt_x(rt)}"
            if v and (worst is None or rt > worst[0]):
                worst = (rt, name)
        trow["costs most latency on"] = ("-" if not v or worst is None else
                                         "nowhere: no workload is slower without it" if round(worst[0], 2) <= 1.0
                                         else f"{worst[1]}: {fmt_x(worst[0])}")
        rows.append(row)
        text.append(trow)
    pts = "; ".join(f"{name}: cache {joined(sorted(set(g['cache'])))}, batch {joined(sorted(set(g['batch'])))}"
                    for name, _, g in wls)
    cap = ("The flagship with one component switched off in turn, with its recency/frequency balance fixed, or "
           "with an optional component switched on (raw/ablation.csv), on every workload of the "
           "ablation grid. Each cell: the variant's mean loads and mean latency per step over the workload's grid "
           f"points, over the full flagship's on the same points (above 1.00x: the component pays for itself there). "
           f"Grid points: {pts}. Latency on the hardware profile `{joined(sorted(set(d['hardware'])))}`.")
    return Table("ablation", "Ablation: what each component of the flagship buys, per workload", cap,
                 pd.DataFrame(rows), pd.DataFrame(text))
