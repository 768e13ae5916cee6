"""The report's Markdown pieces for real routing, the sensitivity sweep, the flagship's targets and E10: each function
takes what :mod:`artifact.report.build` read and returns the text of one section (and writes its figures). Also the
small Markdown helpers every section shares.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from artifact.report import ablation as AB
from artifact.report import e10 as E10
from artifact.report import flagship as FL
from artifact.report import frontier as FR
from artifact.report import horizon as HZ
from artifact.report import real as R
from artifact.report import sensitivity as S
from artifact.report.figures import Plot
from artifact.report.load import E10_FILE
from artifact.report.tables import Table, joined


def rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def table_md(t: Table) -> str:
    return f"**{t.title}.** {t.caption}\n\n{t.markdown()}\n"


def figure_md(p: Plot, base: Path) -> str:
    return f"![{p.title}]({rel(p.png, base)})\n\n*Figure: {p.caption}* ([PDF]({rel(p.pdf, base)}))\n"


def section(title: str, body: str) -> str:
    return f"## {title}\n\n{body.rstrip()}\n\n"


def _join(parts: list[str]) -> str:
    return "\n".join(p.rstrip() + "\n" for p in parts if p)


# --------------------------------------------------------------------------------------------------------------
# Executive summary additions
# --------------------------------------------------------------------------------------------------------------


def summary_extra(raw: Mapping[str, pd.DataFrame], claims: Mapping, flagship: str) -> str:
    """The executive summary's part on the E9 range and on the flagship's targets."""
    parts = []
    sens = raw.get("sensitivity")
    if sens is not None and not sens.empty:
        t = S.across_range(raw.get("sim"), S.split_sweeps(sens)[0], claims, flagship)
        parts.append(f"**{t.title}.** Do the verdicts above, and the flagship's targets, hold as the routing's "
                     f"temporal locality and adjacent-layer coupling span the range real models show? {t.caption}"
                     f"\n\n{t.markdown()}\n")
    else:
        parts.append("**Across the E9 range.** raw/sensitivity.csv is absent: whether the verdicts hold across the "
                     "range of routing that real models show is not measured here.\n")
    wls = FL.workloads(raw)
    t1, t2, t3 = (FL.target_same_information(wls, flagship), FL.target_gap(wls, flagship, raw.get("ablation")),
                  FL.target_oracle(raw.get("sim"), flagship))
    para = FL.summary(t1, t2, t3, flagship)
    if para:
        parts.append(para)
    bar = FR.summary_line(FR.bar_frontier(raw.get("frontier"), raw.get("sim"), flagship))
    hz = HZ.summary_line(HZ.horizon_table(raw.get("horizon"), raw.get("real"), flagship), flagship)
    for line in (bar, hz):
        if line and para:
            parts[-1] = parts[-1].rstrip("\n") + "\n" + line + "\n"
    parts.append("**Split.** " + FL.SPLIT_TEXT + "\n")
    return _join(parts)


# --------------------------------------------------------------------------------------------------------------
# Routing statistics, E8, E9
# --------------------------------------------------------------------------------------------------------------


def routing_stats(stats: Mapping | None) -> str:
    if stats is None:
        return ("raw/routing_stats.json is absent (`python -m artifact.experiments.routing --out results/raw` writes "
                "it): no statistics of real against synthetic routing here.\n")
    return table_md(R.routing_stats_table(stats))


def e8(real: pd.DataFrame | None, fig_dir: Path, base: Path, hardware: Mapping[str, str]) -> str:
    if real is None or real.empty:
        return "raw/real.csv is absent: no strategy was run on real routing for these results.\n"
    parts = [R.TRACES_NOTICE + "\n", R.SINGLE_PROMPT + "\n", table_md(R.e8_summary(real, hardware))]
    for w in R._traces(real):
        rows = real[real["workload"] == w]
        parts.append(table_md(R.e8_table(rows, hardware)))
        parts.append(figure_md(R.fig_e8(rows, fig_dir, hardware), base))
    return _join(parts)


def e9(sens: pd.DataFrame | None, stats: Mapping | None, flagship: str, fig_dir: Path, base: Path,
       hardware: Mapping[str, str]) -> str:
    if sens is None or sens.empty:
        return "raw/sensitivity.csv is absent: the sensitivity sweep did not run for these results.\n"
    sens, la = S.split_sweeps(sens)
    return _join([table_md(S.e9_table(sens, stats, flagship, hardware)),
                  figure_md(S.fig_e9(sens, stats, flagship, fig_dir, hardware), base)]
                 + ([table_md(S.lookahead_table(la, flagship, hardware))] if not la.empty else []))


# --------------------------------------------------------------------------------------------------------------
# The flagship against its targets, and its ablation
# --------------------------------------------------------------------------------------------------------------


def flagship_targets(raw: Mapping[str, pd.DataFrame], flagship: str) -> str:
    wls = FL.workloads(raw)
    parts = [FL.SPLIT_TEXT + "\n"]
    if wls:
        parts.append("Workloads: " + "; ".join(f"{w.name} ({w.split})" for w in wls) + ".\n")
    parts += [table_md(FL.target_same_information(wls, flagship)), table_md(FL.peer_tradeoff(raw.get("sim"), flagship)),
              table_md(FR.bar_frontier(raw.get("frontier"), raw.get("sim"), flagship)),
              table_md(FL.target_gap(wls, flagship, raw.get("ablation")))
              if any(w.key.startswith("real:") for w in wls) else "**Target 2.** raw/real.csv is absent: no real "
              "trace to close the gap on.\n",
              table_md(HZ.horizon_table(raw.get("horizon"), raw.get("real"), flagship)),
              table_md(FL.target_oracle(raw.get("sim"), flagship))]
    abl = raw.get("ablation")
    if abl is not None and not abl.empty:
        parts.append(table_md(AB.ablation_table(abl)))
    else:
        parts.append("**Ablation.** raw/ablation.csv is absent: no component of the flagship was switched off.\n")
    return _join(parts)


# --------------------------------------------------------------------------------------------------------------
# E10
# --------------------------------------------------------------------------------------------------------------

RANDOM_ROUTING = (
    "The models of E10 are real `transformers` model definitions at full size, built with **random weights**: their "
    "routers are random projections, so the routing here (which experts a token picks, how often they repeat, how "
    "layers couple) is not real routing, and its hit rates and loads say nothing about a trained checkpoint's. "
    "What E10 measures is the offloading engine and the strategies deciding live inside a real model's forward "
    "pass: tokens/s against the resident model and against `accelerate`, and whether the tokens stay the same.")


def e10(results: Path, fig_dir: Path, base: Path) -> str:
    path = Path(results) / "raw" / E10_FILE
    if not path.is_file():
        return (f"raw/{E10_FILE} is absent: no real `transformers` model was offloaded for these results "
                "(`python -m artifact.experiments.e10 --out results/raw` runs it on a GPU).\n\n"
                + RANDOM_ROUTING + "\n")
    frame = E10.load_e10(path)
    if frame.empty:
        return f"raw/{E10_FILE} has no rows.\n\n" + RANDOM_ROUTING + "\n"
    devices = sorted({d for d in frame.get("device", pd.Series(dtype=str)) if d})
    note = ""
    if devices and "cuda" not in devices:
        note = (f"These rows ran on {joined(devices)} without a GPU (the `--quick` code path): their times say "
                "nothing about offloading over PCIe.\n")
    return _join([RANDOM_ROUTING + "\n", note, table_md(E10.e10_table(frame)),
                  figure_md(E10.fig_e10(frame, fig_dir), base)])
