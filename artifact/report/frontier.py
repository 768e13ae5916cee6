"""Target 1 at small batch: the flagship's prefetch bar swept against the peers' two corners, a pure function of the
typed rows (``load.prepare``) of ``raw/frontier.csv`` and ``raw/sim.csv``.

At each grid point (development seed, cache, batch 1-4) of the frontier grid, a variant's loads are taken over the
fewest loads of any same-information peer there (``raw/sim.csv``, same workload, cache, batch, ``batched``) and its
latency over the fastest peer's. Target 1 asks for both at most 1.02 at every point; the table says, per batch and
variant, the mean and worst of each ratio over the points and at how many points both hold.
"""

from __future__ import annotations

import pandas as pd

from artifact.report.flagship import MARGIN, is_default_synthetic, same_information
from artifact.report.tables import Table, fmt_x, joined

POINT = ["workload", "cache", "batch"]


def _bar(variant: str) -> float:
    """Sort key: no prefetch first, then the fixed bars from the lowest, the default break-even bar last."""
    if variant == "no_prefetch":
        return -1.0
    if variant.startswith("bar_"):
        return float(variant[4:])
    return 2.0


def _label(variant: str) -> str:
    if variant == "":
        return "break-even bar (the default)"
    if variant == "no_prefetch":
        return "no prefetch"
    return f"fixed bar {variant[4:]}" if variant.startswith("bar_") else variant


def bar_frontier(frontier: pd.DataFrame | None, sim: pd.DataFrame | None, flagship: str) -> Table:
    """Rows: batch x variant of the frontier grid; loads over the fewest-loads peer and latency over the fastest
    peer at the same point (mean and worst over the points), and the points where both are within the margin."""
    cols = ["batch", "variant", "points", "loads_mean", "loads_worst", "latency_mean", "latency_worst", "both_within"]
    title = "Target 1 at small batch: the flagship's prefetch bar swept between the peers' two corners"
    if frontier is None or frontier.empty or sim is None or sim.empty:
        return Table("bar_frontier", title, "raw/frontier.csv or raw/sim.csv is absent.",
                     pd.DataFrame(columns=cols), pd.DataFrame())
    f = frontier[(frontier["protocol"] == "batched") & ~frontier["refused"] & (frontier["strategy"] == flagship)]
    s = sim[(sim["protocol"] == "batched") & sim["workload"].map(is_default_synthetic) & ~sim["refused"]]
    s = s[s["strategy"].isin(same_information(flagship))]
    best = s.groupby(POINT).agg(fewest=("loads", "min"), fastest=("latency_ms_per_step", "min"))
    d = f.join(best, on=POINT, how="inner")
    d = d.assign(lr=d["loads"] / d["fewest"], tr=d["latency_ms_per_step"] / d["fastest"])
    rows, text = [], []
    for (b, v), g in sorted(d.groupby(["batch", "variant"]), key=lambda t: (t[0][0], _bar(t[0][1]))):
        within = int(((g["lr"] <= 1.0 + MARGIN) & (g["tr"] <= 1.0 + MARGIN)).sum())  # target 1's own rule
        row = {"batch": int(b), "variant": v, "points": len(g), "loads_mean": float(g["lr"].mean()),
               "loads_worst": float(g["lr"].max()), "latency_mean": float(g["tr"].mean()),
               "latency_worst": float(g["tr"].max()), "both_within": within}
        rows.append(row)
        text.append({"batch": str(int(b)), "prefetch": _label(v),
                     "loads / fewest of any peer: mean (worst)": f"{fmt_x(row['loads_mean'])} "
                                                                 f"({fmt_x(row['loads_worst'])})",
                     "latency / fastest peer: mean (worst)": f"{fmt_x(row['latency_mean'])} "
                                                             f"({fmt_x(row['latency_worst'])})",
                     f"points with both within {MARGIN:.0%}": f"{within} of {len(g)}"})
    seeds = joined(sorted({int(x) for x in d["trace_seed"]})) if not d.empty else "-"
    caches = joined(sorted({int(x) for x in d["cache"]})) if not d.empty else "-"
    cap = (f"`{flagship}` with its prefetch bar swept (raw/frontier.csv, the development split: synthetic "
           f"switch-base-128 seeds {seeds}, caches {caches}, `batched`): no prefetch; fixed bars (a forecast "
           "probability the next layer's expert must clear, inside the copy window; past it at least 0.95); and the "
           "default break-even bar. Each ratio at a grid point is over the best same-information peer there "
           "(raw/sim.csv, the same point): the fewest loads of any peer, and the fastest peer's latency. Target 1 "
           f"needs both within {MARGIN:.0%} at every point. The bar trades the two: each setting swept gives up one "
           "to gain the other; the last column counts the points where one setting reaches both. Latency on the "
           "hardware profile "
           f"`{joined(sorted(set(d['hardware']))) if not d.empty else '-'}`.")
    return Table("bar_frontier", title, cap, pd.DataFrame(rows, columns=cols), pd.DataFrame(text))



def summary_line(t: Table) -> str:
    """One bullet for the executive summary: per batch, the most points at which one setting of the bar has both
    ratios within the margin, and which settings reach it; empty without rows."""
    f = t.frame
    if f.empty:
        return ""
    parts, full = [], []
    for b, g in f.groupby("batch", sort=True):
        best, n = int(g["both_within"].max()), int(g["points"].max())
        if best == n:
            full.append(str(int(b)))
        who = "" if best == 0 else " (" + joined(_label(v) for v in g.loc[g["both_within"] == best, "variant"]) + ")"
        parts.append(f"batch {int(b)}: {best} of {n}{who}")
    return ("- **Target 1 at small batch, the prefetch bar swept** (development split; points where one setting has "
            f"loads and latency both within {MARGIN:.0%} of the best peers, at most): " + "; ".join(parts) + ". "
            + ("The bar trades one for the other: no setting meets target 1 at every point of any of these batches."
               if not full else f"One setting meets target 1 at every point at batch {joined(full)}."))
