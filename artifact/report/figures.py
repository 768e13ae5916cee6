"""The report's figures: one function per figure, each a pure function of CSV rows (and, for the timeline, of the
step timelines the runner saved in ``raw/timelines.json``), written as PNG and PDF with deterministic bytes.

Determinism: figures are built on ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), at a fixed size and
dpi, inside ``rc_context`` with fixed fonts and ``pdf.fonttype = 42`` (TrueType, editable text); PNG metadata
drops ``Software`` and PDF metadata drops ``CreationDate``, ``ModDate``, ``Producer`` and ``Creator``, so nothing
in the files depends on the clock or the matplotlib build string. Every figure colours a strategy with
:data:`STRATEGY_COLORS` (a fixed mapping over the registry order) and returns its caption for REPORT.md; a short
form of it is the figure's suptitle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on the machines that build the report; also what makes the bytes stable

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import LogFormatter, NullLocator  # noqa: E402

from artifact.report import metrics as M  # noqa: E402
from artifact.report import tables as T  # noqa: E402
from artifact.report.load import StepTimeline  # noqa: E402

matplotlib.rcParams["pdf.fonttype"] = 42  # TrueType in PDFs (editable text; required by artifact reviewers)

# One colour and one marker per strategy, the same in every figure. Paper baselines blue/orange/green pairs (the proxy
# arm lighter than the paper arm), MoE-Infinity purple, the deployed policies browns and pinks, the seed's own
# methods olives, the bounds grey and red, gpu_only cyan; the flagship black, drawn thicker than the rest
# (:func:`line_style`). A strategy the table does not name (one registered later) takes the next free colour and
# marker of :data:`_EXTRA_COLORS` / :data:`_EXTRA_MARKERS` in registry order, so no two strategies ever share one.
FLAGSHIP = "intelligent_dedup"
_KNOWN_STYLE = {
    "on_demand": ("#1f77b4", "o"), "prefetch_all": ("#aec7e8", "v"), "pregated": ("#ff7f0e", "s"),
    "pregated_proxy": ("#ffbb78", "D"), "expertflow": ("#2ca02c", "^"), "mixtral_offloading": ("#98df8a", "<"),
    "moe_infinity": ("#9467bd", ">"), "lfu": ("#8c564b", "p"), "lfru": ("#c49c94", "h"), "arc": ("#e377c2", "H"),
    "s3fifo": ("#f7b6d2", "8"), "topk": ("#bcbd22", "d"), "multi_lookahead": ("#dbdb8d", "P"),
    FLAGSHIP: ("#000000", "*"), "belady": ("#7f7f7f", "X"), "oracle": ("#d62728", "x"), "gpu_only": ("#17becf", "+"),
}
_EXTRA_COLORS = ["#393b79", "#843c39", "#7b4173", "#637939", "#8c6d31", "#5254a3", "#ad494a", "#a55194", "#8ca252",
                 "#bd9e39", "#6b6ecf", "#d6616b", "#ce6dbd", "#b5cf6b", "#e7ba52", "#9c9ede", "#e7969c", "#de9ed6"]
_EXTRA_MARKERS = ["1", "2", "3", "4", "|", "_", 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]


def _styles(names) -> tuple[dict[str, str], dict[str, object]]:
    colors, markers = {}, {}
    extra_c = [c for c in _EXTRA_COLORS if c not in {v[0] for v in _KNOWN_STYLE.values()}]
    extra_m = [m for m in _EXTRA_MARKERS if m not in {v[1] for v in _KNOWN_STYLE.values()}]
    k = 0
    for n in names:
        if n in _KNOWN_STYLE:
            colors[n], markers[n] = _KNOWN_STYLE[n]
        else:
            colors[n], markers[n] = extra_c[k % len(extra_c)], extra_m[k % len(extra_m)]
            k += 1
    return colors, markers


STRATEGY_COLORS, STRATEGY_MARKERS = _styles(M.STRATEGIES)
_PALETTE = list(dict.fromkeys(list(STRATEGY_COLORS.values()) + _EXTRA_COLORS))  # every colour a strategy may take
_MARKERS = list(dict.fromkeys(list(STRATEGY_MARKERS.values()) + _EXTRA_MARKERS))
OTHER_COLOR = "#c7c7c7"  # a strategy the registry does not know (never expected)
SERIES_COLOR = "#9edae5"  # a workload property (memory savings): not a strategy, so not a strategy colour
CLAIMED_COLOR = "#555555"  # the seed's claimed figures: dashed, labelled "claimed"

DPI = 150
RC = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "figure.titlesize": 9,
    "legend.fontsize": 7,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.dpi": DPI,
}
PNG_METADATA = {"Software": None}
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}


def color(strategy: str) -> str:
    return STRATEGY_COLORS.get(strategy, OTHER_COLOR)


def marker(strategy: str):
    return STRATEGY_MARKERS.get(strategy, "o")


def line_style(strategy: str, size: float = 3.0) -> dict:
    """Keyword arguments of ``Axes.plot`` for a strategy's line: its colour and marker; the flagship thicker, with a
    larger marker, and drawn above the rest, so it stands out among 17 lines."""
    if strategy == FLAGSHIP:
        return {"color": color(strategy), "marker": marker(strategy), "markersize": size + 4, "linewidth": 2.4,
                "zorder": 5}
    return {"color": color(strategy), "marker": marker(strategy), "markersize": size, "linewidth": 1.0, "zorder": 3}


@dataclass(frozen=True)
class Plot:
    name: str
    title: str
    caption: str
    png: Path
    pdf: Path


def _new(size: tuple[float, float], ncols: int = 1, nrows: int = 1, **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=size, dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Figure, out_dir: Path, name: str, title: str, caption: str) -> Plot:
    out_dir.mkdir(parents=True, exist_ok=True)
    png, pdf = out_dir / f"{name}.png", out_dir / f"{name}.pdf"
    fig.savefig(png, format="png", dpi=DPI, metadata=PNG_METADATA)
    fig.savefig(pdf, format="pdf", dpi=DPI, metadata=PDF_METADATA)
    return Plot(name, title, caption, png, pdf)


def _suptitle(fig: Figure, title: str, short: str) -> None:
    fig.suptitle(f"{title}\n{short}", fontsize=8)


def _short_context(rows: pd.DataFrame, hardware: Mapping[str, str] | None) -> str:
    """The brief caption of a suptitle: model, cache, hardware profile, steps, seeds or repeats."""
    if rows.empty:
        return "no rows"
    seeds = sorted(set(rows["trace_seed"]))
    reps = sorted({int(r) for r in rows["repeats"] if not np.isnan(r)})
    ex = _join(sorted(set(rows["executor"])))
    return (f"{_join(sorted(set(rows['model'])))}, synthetic routing, cache {_join(sorted(set(rows['cache'])))} "
            f"experts, profile {_join(sorted(set(rows['hardware'])))}, {_join(sorted(set(rows['steps'])))} steps, "
            f"seed{'s' if len(seeds) > 1 else ''} {_join(seeds)}, {ex}" + (f" x{_join(reps)} repeats"
                                                                          if ex == "engine" else ""))


def _join(v) -> str:
    return ", ".join(str(x) for x in v)


def _log2_axis(a, values) -> None:
    """A log2 x axis ticked at the measured values, printed as plain numbers (1, 8, 64, not 2^0, 2^3, 2^6)."""
    vals = sorted({int(v) for v in values})
    a.set_xscale("log", base=2)
    a.set_xticks(vals)
    a.set_xticklabels([str(v) for v in vals])
    a.xaxis.set_minor_locator(NullLocator())


def _log_y(a) -> None:
    """A log y axis labelled with plain numbers (20, 50, 100; not 2 x 10^1)."""
    a.set_yscale("log")
    a.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    a.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _legend(fig: Figure, names: list[str], ncol: int = 7, extra: list | None = None, lines: bool = False) -> None:
    if lines:  # line plots: the legend shows each strategy's marker too
        handles = [Line2D([0], [0], label=n, **{**line_style(n, 4.0), "markersize": 7 if n == FLAGSHIP else 4})
                   for n in names]
    else:
        handles = [Patch(facecolor=color(n), edgecolor="none", label=n) for n in names]
    handles += extra or []
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False)


def _placeholder(out_dir: Path, name: str, title: str, message: str) -> Plot:
    with matplotlib.rc_context(RC):
        fig, ax = _new((6.0, 2.5))
        a = ax[0, 0]
        a.axis("off")
        a.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
        fig.suptitle(title)
        return _save(fig, out_dir, name, title, message)


# --------------------------------------------------------------------------------------------------------------
# (1) latency per strategy, both protocols
# --------------------------------------------------------------------------------------------------------------


def fig_latency_by_strategy(sim: pd.DataFrame, claims: Mapping, out_dir: Path,
                            hardware: Mapping[str, str] | None = None) -> Plot:
    """Mean latency per step over batch sizes for every strategy at the default cache: bars = mean over seeds,
    whiskers = min-max over seeds; ``batched`` and ``per_item`` side by side."""
    name, title = "fig1_latency_by_strategy", "Latency per decode step by strategy (iso-cache)"
    cache = M.default_cache(sim)
    d = sim[sim["cache"] == cache]
    names = M.strategy_order(d["strategy"])
    batches = sorted(set(d["batch"]))
    with matplotlib.rc_context(RC):
        fig, ax = _new((10.0, 4.2), ncols=2, sharey=True)
        for a, p in zip(ax[0], M.PROTOCOLS):
            lat = M.latency_by_batch(sim, cache, p)
            st = M.seed_stats(M.mean_over_batches(lat)) if not lat.empty else pd.DataFrame(columns=["mean"])
            x = np.arange(len(names))
            for i, s in enumerate(names):
                if s not in st.index or np.isnan(st.loc[s, "mean"]):
                    why = ("refused" if M.refused(d, s, protocol=p) else "not run" if s not in st.index
                           else "n/a")
                    a.text(i, 0.5, why, ha="center", transform=a.get_xaxis_transform(), fontsize=6)
                    continue
                m, lo, hi = st.loc[s, "mean"], st.loc[s, "min"], st.loc[s, "max"]
                a.bar(i, m, color=color(s), edgecolor="black", linewidth=0.4)
                a.errorbar(i, m, yerr=[[m - lo], [hi - m]], color="black", capsize=2, linewidth=0.8)
            a.set_xticks(x)
            a.set_xticklabels(names, rotation=60, ha="right")
            _log_y(a)
            a.set_title(f"protocol: {p}")
            a.set_xlabel("strategy")
        ax[0, 0].set_ylabel(f"latency per step (ms), mean over batch {_join(batches)}")
        short = _short_context(d, hardware)
        _suptitle(fig, title, short)
        fig.subplots_adjust(left=0.08, right=0.99, top=0.86, bottom=0.3, wspace=0.05)
        cap = (f"{title}: mean over batch sizes {_join(batches)} of the latency per decode step (log scale); bars "
               "are the mean over seeds, whiskers min-max over seeds; left the fair `batched` protocol, right the "
               "seed's `per_item` accounting. " + T.describe(d, hardware))
        return _save(fig, out_dir, name, title, cap)


# --------------------------------------------------------------------------------------------------------------
# (2) dedup savings by batch size, ours and claimed
# --------------------------------------------------------------------------------------------------------------


def fig_dedup_savings(sim: pd.DataFrame, claims: Mapping, out_dir: Path,
                      hardware: Mapping[str, str] | None = None) -> Plot:
    name, title = "fig2_dedup_savings", "What deduplication saves, by batch size"
    cache = M.default_cache(sim)
    sv = M.dedup_savings(sim, cache, claims)
    seed = claims["tables"]["savings_by_batch"]["rows"]
    od, fl = M.baseline(claims), M.flagship(claims)
    d = sim[sim["cache"] == cache]
    with matplotlib.rc_context(RC):
        fig, ax = _new((6.4, 4.4))
        a = ax[0, 0]
        series = [("memory_savings", "memory savings (ours): 1 - unique/requests, batched", SERIES_COLOR, "o"),
                  ("bandwidth_savings_on_demand", f"bandwidth savings (ours): {od}, batched vs per_item bytes",
                   color(od), marker(od)),
                  ("bandwidth_savings_dedup_vs_paper", f"bandwidth savings (ours): {fl} vs paper baselines per_item",
                   color(fl), marker(fl))]
        if not sv.empty:
            for col, label, c, mk in series:
                st = M.over_seeds(sv, col)
                b = st.index.to_numpy(float)
                a.plot(b, 100 * st["mean"], color=c, marker=mk, label=label)
                a.fill_between(b, 100 * st["min"], 100 * st["max"], color=c, alpha=0.2, linewidth=0)
        a.plot([r["batch"] for r in seed], [r["memory_savings_pct"] for r in seed], color=CLAIMED_COLOR,
               linestyle="--", marker="x", label="claimed by the seed report (memory = bandwidth savings)")
        _log2_axis(a, [r["batch"] for r in seed] + ([] if sv.empty else list(sv.index.get_level_values("batch"))))
        a.set_xlabel("batch size (sequences decoded together)")
        a.set_ylabel("savings (%)")
        a.legend(loc="upper left", frameon=False)
        _suptitle(fig, title, _short_context(d, hardware))
        fig.subplots_adjust(left=0.1, right=0.98, top=0.86, bottom=0.12)
        cap = (f"{title}: ours (solid; band = min-max over seeds) against the seed's Memory and Bandwidth Savings "
               "table (dashed, claimed, not measured here). Definitions in the Definitions section. "
               + T.describe(d, hardware, [od, fl, *M.seed_groups(claims)[0]]))
        return _save(fig, out_dir, name, title, cap)


# --------------------------------------------------------------------------------------------------------------
# (3) latency against batch size
# --------------------------------------------------------------------------------------------------------------


def fig_latency_vs_batch(sim: pd.DataFrame, out_dir: Path, hardware: Mapping[str, str] | None = None) -> Plot:
    name, title = "fig3_latency_vs_batch", "Latency per decode step against batch size"
    cache = M.default_cache(sim)
    d = sim[sim["cache"] == cache]
    names = M.strategy_order(d["strategy"])
    with matplotlib.rc_context(RC):
        fig, ax = _new((10.0, 4.4), ncols=2, sharey=True)
        for a, p in zip(ax[0], M.PROTOCOLS):
            m = M.latency_seed_mean(sim, cache, p)
            for s in names:
                if s not in m.index:
                    continue
                y = m.loc[s]
                a.plot(y.index.to_numpy(float), y.to_numpy(float), label=s, **line_style(s))
            _log2_axis(a, d["batch"])
            _log_y(a)
            a.set_xlabel("batch size")
            a.set_title(f"protocol: {p}")
        ax[0, 0].set_ylabel("latency per step (ms), mean over seeds")
        _legend(fig, names, lines=True)
        _suptitle(fig, title, _short_context(d, hardware))
        fig.subplots_adjust(left=0.08, right=0.99, top=0.86, bottom=0.25, wspace=0.05)
        cap = f"{title} (log-log), mean over seeds. " + T.describe(d, hardware)
        return _save(fig, out_dir, name, title, cap)


# --------------------------------------------------------------------------------------------------------------
# (4) cache sizes
# --------------------------------------------------------------------------------------------------------------


def fig_cache_sizes(sim: pd.DataFrame, out_dir: Path, hardware: Mapping[str, str] | None = None,
                    batch: int | None = None) -> Plot:
    name, title = "fig4_cache_sizes", "Hit rate and latency against cache size"
    batch = M.mid_batch(sim["batch"]) if batch is None else batch
    d = sim[(sim["batch"] == batch) & (sim["protocol"] == "batched")]
    names = [s for s in M.strategy_order(d["strategy"]) if s != "gpu_only"]  # not iso-cache: no cache axis
    with matplotlib.rc_context(RC):
        fig, ax = _new((10.0, 4.4), ncols=2)
        for a, col, lab in ((ax[0, 0], "hit_rate", "hit rate (hits / unique requests)"),
                            (ax[0, 1], "latency_ms_per_step", "latency per step (ms)")):
            g = d.groupby(["strategy", "cache"])[col].mean()
            for s in names:
                if s not in g.index.get_level_values("strategy"):
                    continue
                y = g.xs(s, level="strategy")
                a.plot(y.index.to_numpy(float), y.to_numpy(float), **line_style(s))
            _log2_axis(a, d["cache"])
            a.set_xlabel("cache size (GPU expert slots)")
            a.set_ylabel(lab)
            if col == "latency_ms_per_step":
                _log_y(a)
        _legend(fig, names, ncol=6, lines=True)
        _suptitle(fig, f"{title}, batch {batch}, batched", _short_context(d, hardware))
        fig.subplots_adjust(left=0.07, right=0.99, top=0.86, bottom=0.25, wspace=0.22)
        cap = (f"{title} at batch {batch} under `batched`, mean over seeds (`gpu_only` left out: it holds every "
               "expert). " + T.describe(d, hardware))
        return _save(fig, out_dir, name, title, cap)


# --------------------------------------------------------------------------------------------------------------
# (5) simulator against engine
# --------------------------------------------------------------------------------------------------------------


def fig_sim_vs_engine(engine: pd.DataFrame | None, out_dir: Path, hardware: Mapping[str, str] | None = None) -> Plot:
    name, title = "fig5_sim_vs_engine", "Simulator against engine on the same plans"
    if engine is None or engine.empty:
        msg = ("No GPU engine run in these results (raw/engine.csv is absent), so there is nothing to plot: the "
               "simulator's times have not been checked against measured engine times here (no data is shown "
               "rather than made up). The E5 section reports the CPU engine check when there is one.")
        return _placeholder(out_dir, name, title, msg)
    d = M.engine_error(engine)
    d = d[d["sim_latency_ms_per_step"].notna() & d["latency_ms_per_step"].notna()]
    if d.empty:
        return _placeholder(out_dir, name, title, "raw/engine.csv has no row with both an engine and a simulator "
                                                  "figure.")
    names = M.strategy_order(d["strategy"])
    with matplotlib.rc_context(RC):
        fig, ax = _new((6.4, 5.6))
        a = ax[0, 0]
        lo = float(min(d["latency_ms_per_step_min"].min(), d["sim_latency_ms_per_step"].min())) * 0.8
        hi = float(max(d["latency_ms_per_step_max"].max(), d["sim_latency_ms_per_step"].max())) * 1.25
        xs = np.geomspace(lo, hi, 64)
        a.fill_between(xs, xs * 0.9, xs * 1.1, color="#dddddd", linewidth=0, label="within +-10%")
        a.plot(xs, xs, color="black", linewidth=0.8, label="simulator = engine")
        for s in names:
            r = d[d["strategy"] == s]
            x = r["latency_ms_per_step"].to_numpy(float)
            xerr = np.vstack([x - r["latency_ms_per_step_min"].to_numpy(float),
                              r["latency_ms_per_step_max"].to_numpy(float) - x])
            a.errorbar(x, r["sim_latency_ms_per_step"].to_numpy(float), xerr=np.maximum(xerr, 0), fmt=marker(s),
                       color=color(s), markersize=4, elinewidth=0.6, capsize=1.5, label=s)
        a.set_xscale("log")
        _log_y(a)
        a.set_xlim(lo, hi)
        a.set_ylim(lo, hi)
        a.set_xlabel("engine latency per step (ms), median; whiskers min-max over repeats")
        a.set_ylabel("simulator latency per step (ms)")
        a.legend(loc="upper left", frameon=False, ncol=2)
        _suptitle(fig, title, _short_context(d, hardware))
        fig.subplots_adjust(left=0.12, right=0.98, top=0.88, bottom=0.1)
        cap = f"{title}: one point per strategy and batch size; grey band +-10%. " + T.describe(d, hardware)
        return _save(fig, out_dir, name, title, cap)


# --------------------------------------------------------------------------------------------------------------
# (6) one decode step's timeline
# --------------------------------------------------------------------------------------------------------------


def fig_timeline(timelines: list[StepTimeline], rows: pd.DataFrame, out_dir: Path,
                 hardware: Mapping[str, str] | None = None) -> Plot:
    """Gantt bars of one decode step for a few strategies: the copy link (LOADs: demand solid, prefetch hatched)
    and the compute stream (expert FFNs in the strategy's colour, the non-MoE part grey). ``timelines``: the
    runner's saved steps (``load.read_timelines``), in the order to draw; ``rows``: their CSV rows."""
    name, title = "fig6_step_timeline", "One decode step: copies and compute"
    if not timelines:
        return _placeholder(out_dir, name, title, "No step timeline to draw: raw/timelines.json is absent or has "
                                                  "none of the points the sim grid marks for this figure.")
    step, steps = _join(sorted({t.step for t in timelines})), _join(sorted({t.steps for t in timelines}))
    with matplotlib.rc_context(RC):
        fig, ax = _new((10.0, 1.6 + 0.9 * len(timelines)))
        a = ax[0, 0]
        ylabels, yticks = [], []
        width = 0.0
        for k, tl in enumerate(timelines):
            w = tl.step_ms
            width = max(width, w)
            base = (len(timelines) - 1 - k) * 1.0
            y_copy, y_comp = base + 0.5, base + 0.1
            c = color(tl.strategy)
            # Times are ms since the step's start; an operation that overlaps the step's edge is clipped to it.
            for pf, hatch, alpha in ((False, None, 1.0), (True, "////", 0.45)):
                sel = tl.load_prefetch == pf
                if sel.any():
                    st, en = np.maximum(tl.load_start[sel], 0.0), np.minimum(tl.load_end[sel], w)
                    a.broken_barh(list(zip(st, en - st)), (y_copy, 0.3), facecolors=c, alpha=alpha, hatch=hatch,
                                  edgecolor="black", linewidth=0.2)
            if tl.comp_start.size:
                st, en = np.maximum(tl.comp_start, 0.0), np.minimum(tl.comp_end, w)
                a.broken_barh(list(zip(st, en - st)), (y_comp, 0.3), facecolors=c, edgecolor="black", linewidth=0.2)
            if tl.nonmoe_start.size:
                st, en = np.maximum(tl.nonmoe_start, 0.0), np.minimum(tl.nonmoe_end, w)
                a.broken_barh(list(zip(st, en - st)), (y_comp, 0.3), facecolors="#bbbbbb", edgecolor="black",
                              linewidth=0.2)
            yticks += [y_copy + 0.15, y_comp + 0.15]
            ylabels += [f"{tl.strategy}: copy link", f"{tl.strategy}: compute"]
        a.set_yticks(yticks)
        a.set_yticklabels(ylabels)
        a.set_xlim(0, width * 1.02 if width > 0 else 1.0)
        a.set_xlabel(f"time since the start of decode step {step} of {steps} (ms)")
        extra = [Patch(facecolor="white", edgecolor="black", label="demand LOAD (solid)"),
                 Patch(facecolor="white", edgecolor="black", hatch="////", label="prefetch LOAD (hatched)"),
                 Patch(facecolor="#bbbbbb", edgecolor="black", label="non-MoE part (attention, router)")]
        _legend(fig, [tl.strategy for tl in timelines], ncol=6, extra=extra)
        batch = _join(sorted(set(rows["batch"])))
        _suptitle(fig, f"{title}, batch {batch}, batched", _short_context(rows, hardware))
        fig.subplots_adjust(left=0.2, right=0.99, top=0.84, bottom=0.2)
        cap = (f"{title}: decode step {step} of {steps} at batch {batch}, as the simulator timed it in the runs of "
               "these CSV rows (saved by the runner in raw/timelines.json). Copies run in plan order on one link; a "
               "bar that starts before the step is clipped. " + T.describe(rows, hardware))
        return _save(fig, out_dir, name, title, cap)


# --------------------------------------------------------------------------------------------------------------
# (7) gaps to the bounds
# --------------------------------------------------------------------------------------------------------------


def fig_gaps(sim: pd.DataFrame, out_dir: Path, hardware: Mapping[str, str] | None = None) -> Plot:
    name, title = "fig7_gaps_to_bounds", "Gap of each strategy to the bounds"
    cache = M.default_cache(sim)
    d = sim[(sim["cache"] == cache) & (sim["protocol"] == "batched")]
    bounds = {n for n, s in M.STRATEGIES.items() if s.role == 'bound'}
    names = [s for s in M.strategy_order(d["strategy"]) if s not in bounds]
    with matplotlib.rc_context(RC):
        fig, ax = _new((10.0, 4.4), ncols=2)
        for a, value, bound, lab in ((ax[0, 0], "loads", "belady", "loads / belady loads"),
                                     (ax[0, 1], "latency_ms_per_step", "oracle", "latency / oracle latency")):
            g = M.gap_frame(sim, value, bound, cache)
            if g.empty:
                a.text(0.5, 0.5, f"no {bound} rows", ha="center", transform=a.transAxes)
                continue
            m = g.groupby(level="strategy", sort=False).mean()
            for s in names:
                if s not in m.index:
                    continue
                y = m.loc[s]
                a.plot(y.index.to_numpy(float), y.to_numpy(float), **line_style(s))
            a.axhline(1.0, color=color(bound), linewidth=0.8, linestyle=":")
            _log2_axis(a, d["batch"])
            _log_y(a)
            a.set_xlabel("batch size")
            a.set_ylabel(f"{lab} (ratio, mean over seeds)")
            a.set_title(f"dotted: {bound} = 1")
        _legend(fig, names, ncol=5, lines=True)
        _suptitle(fig, title, _short_context(d, hardware))
        fig.subplots_adjust(left=0.07, right=0.99, top=0.84, bottom=0.25, wspace=0.22)
        cap = (f"{title}: loads over Belady's MIN loads (left) and latency over the oracle's (right), per seed then "
               "mean over seeds, `batched`. " + T.describe(d, hardware))
        return _save(fig, out_dir, name, title, cap)
