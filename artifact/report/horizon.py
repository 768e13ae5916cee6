"""Target 2 in context: how much of the future Belady's MIN needs to close the gap, a pure function of the typed rows
(``load.prepare``) of ``raw/horizon.csv`` and ``raw/real.csv``.

``raw/horizon.csv`` holds ``belady`` seeing only the next ``H`` decode steps (variant ``horizon_H``) on every real trace
at the caches of ``raw/real.csv``; each one's share of the ``on_demand`` -> ``belady`` gap closed is computed as
target 2's is (:func:`artifact.report.flagship.gap_closed`: per cache, then the mean over the caches with a gap), and
set beside the flagship's. These are references in hindsight, neither policies nor bounds on them: they say what a
given amount of exact knowledge of the future buys.
"""

from __future__ import annotations

import pandas as pd

from artifact.report.flagship import GAP_TARGET, gap_closed, gap_summary, trace_name, trace_split
from artifact.report.tables import Table, fmt_pct, is_nan, joined

PREFIX = "horizon_"


def _horizons(h: pd.DataFrame) -> list[int]:
    return sorted({int(v[len(PREFIX):]) for v in h["variant"] if str(v).startswith(PREFIX)})


def horizon_table(horizon: pd.DataFrame | None, real: pd.DataFrame | None, flagship: str) -> Table:
    """Rows: real trace; columns: the flagship's mean share of the gap closed, then MIN's at each horizon, and the
    shortest horizon whose MIN closes at least the target."""
    title = "Target 2 in context: the gap MIN closes when it sees only the next H decode steps"
    if horizon is None or horizon.empty or real is None or real.empty:
        return Table("horizon", title, "raw/horizon.csv or raw/real.csv is absent.", pd.DataFrame(), pd.DataFrame())
    hs = _horizons(horizon)
    rows, text = [], []
    for label, g in sorted(real[real["protocol"] == "batched"].groupby("workload"),
                           key=lambda kv: (trace_split(kv[0]) != "development", kv[0])):
        hz = horizon[(horizon["workload"] == label) & (horizon["protocol"] == "batched") & ~horizon["refused"]]
        flag, _ = gap_summary(gap_closed(g, flagship))
        row = {"workload": trace_name(label), "split": trace_split(label), "flagship": flag}
        trow = {"trace": f"{trace_name(label)} ({trace_split(label)})", f"`{flagship}` (online)": fmt_pct(flag)}
        enough = None
        for h in hs:
            v = hz[hz["variant"] == f"{PREFIX}{h}"].assign(strategy=f"h{h}")
            mean, _ = gap_summary(gap_closed(pd.concat([g, v]), f"h{h}")) if not v.empty else (float("nan"), 0)
            row[f"h{h}"] = mean
            trow[f"MIN, next {h} step{'s' if h > 1 else ''}"] = "-" if is_nan(mean) else fmt_pct(mean)
            if enough is None and not is_nan(mean) and mean >= GAP_TARGET:
                enough = h
        row["enough"] = enough
        trow[f"shortest horizon swept closing {fmt_pct(GAP_TARGET)}"] = "-" if enough is None else f"{enough} steps"
        rows.append(row)
        text.append(trow)
    cap = ("Belady's MIN limited to a horizon (raw/horizon.csv): it knows exactly which experts the next H decode "
           "steps read, and nothing beyond (an expert whose next use lies further counts as unknown; the unknown "
           "ones are evicted first, least recently read first, then the known ones, furthest first). Each cell: "
           "the share of the gap between `on_demand` and the full `belady` closed in loads, as target 2 computes it "
           "(per cache, batch 1, then the mean over the caches with a gap), beside the flagship's, which sees only "
           f"the past. Horizons {joined(hs)} decode steps. These are references in hindsight, neither policies nor "
           "bounds on them (a policy that learns from the past can beat a short horizon): they say what a given "
           "amount of exact knowledge of the future buys.")
    return Table("horizon", title, cap, pd.DataFrame(rows), pd.DataFrame(text))


def summary_line(t: Table, flagship: str) -> str:
    """One bullet for the executive summary: where the online flagship stands against MIN with a horizon of one step,
    and the shortest horizon that reaches the target on each trace."""
    f = t.frame
    if f.empty or "h1" not in f:
        return ""
    beats = [r["workload"] for _, r in f.iterrows() if not is_nan(r["h1"]) and r["flagship"] >= r["h1"]]
    parts = [f"{r['workload']} {'-' if r['enough'] is None or is_nan(r['enough']) else int(r['enough'])}"
             for _, r in f.iterrows()]
    return (f"- **Target 2 in context** (references in hindsight): Belady's MIN that sees exactly the next decode step "
            f"closes {joined(fmt_pct(v) for v in f['h1'])} of the gap ({joined(f['workload'])}); `{flagship}`, from "
            f"the past alone, closes at least as much on {len(beats)} of {len(f)} traces"
            + (f" ({joined(beats)})" if beats else "")
            + f". The shortest horizon swept (decode steps) whose MIN closes {fmt_pct(GAP_TARGET)}: "
            + "; ".join(parts) + ".")
