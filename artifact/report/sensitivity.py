"""E9, sensitivity: switch-base-128's synthetic workload with the generator's temporal locality and adjacent-layer
coupling swept (``raw/sensitivity.csv``; the measured statistics of each swept workload from
``raw/routing_stats.json``): which strategy wins where, and whether each seed claim's verdict and the flagship's
targets hold across that range. Pure functions of the typed rows (``load.prepare``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from artifact.report import claims as C  # noqa: E402
from artifact.report import flagship as FL  # noqa: E402
from artifact.report import metrics as M  # noqa: E402
from artifact.report.figures import RC, Plot, _new, _placeholder, _save, color  # noqa: E402
from artifact.report.tables import Table, describe, fmt_x, is_nan, joined, strategy_order  # noqa: E402

MET, NOT_MET = "met", "not met"


def knob(label: str, name: str) -> float:
    """A generator override of a workload label (``...:locality=0.2:cross_layer=0.5``); NaN when absent."""
    m = re.search(rf":{name}=([^:]+)", label)
    return float(m.group(1)) if m else float("nan")


def _g(v: float) -> str:
    return "n/a" if is_nan(v) else f"{v:g}"


def _dark(hex_color: str) -> bool:
    """Whether text on this fill should be white (relative luminance below one half)."""
    r, g, b = (int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5


LOOKAHEAD = "lookahead_accuracy"


def split_sweeps(sens: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the locality x coupling sweep's rows, the lookahead-accuracy sweep's rows) of ``raw/sensitivity.csv``."""
    la = sens["workload"].map(lambda w: not is_nan(knob(w, LOOKAHEAD)))
    return sens[~la], sens[la]


def lookahead_table(rows: pd.DataFrame, flagship: str, hardware: Mapping[str, str] | None = None) -> Table:
    """Per lookahead accuracy and batch: latency over the oracle's of the flagship, of its fastest same-information
    peer, of ``pregated`` (the next layer's exact routing) and of ``belady`` (fewest loads, no prefetch)."""
    cols = ["accuracy", "batch", "flagship", "peer", "peer_name", "pregated", "belady", "flag_loads"]
    d = rows[(rows["protocol"] == "batched") & ~rows["refused"]]
    g = d.groupby(["workload", "batch", "strategy"], sort=True)[["latency_ms_per_step", "loads"]].mean()
    peers = FL.same_information(flagship)
    out, text = [], []
    for (w, b), s in g.groupby(level=["workload", "batch"], sort=True):
        s = s.droplevel(["workload", "batch"])
        if "oracle" not in s.index or flagship not in s.index:
            continue
        lat = s["latency_ms_per_step"] / s.loc["oracle", "latency_ms_per_step"]
        pr = lat.reindex([p for p in peers if p in lat.index])
        pname = str(pr.idxmin()) if len(pr) else ""
        r = {"accuracy": knob(w, LOOKAHEAD), "batch": int(b), "flagship": float(lat[flagship]),
             "peer": float(pr.min()) if len(pr) else np.nan, "peer_name": pname,
             "pregated": float(lat.get("pregated", np.nan)), "belady": float(lat.get("belady", np.nan)),
             "flag_loads": float(s.loc[flagship, "loads"] / s.loc["belady", "loads"]) if "belady" in s.index
             else np.nan}
        out.append(r)
        text.append({"lookahead accuracy": _g(r["accuracy"]), "batch": str(r["batch"]),
                     f"`{flagship}` / oracle": fmt_x(r["flagship"]),
                     "fastest same-information peer / oracle": "n/a" if not pname else f"{fmt_x(r['peer'])} "
                     f"(`{pname}`)", "`pregated` (exact next layer) / oracle": fmt_x(r["pregated"]),
                     "`belady` (fewest loads) / oracle": fmt_x(r["belady"]),
                     f"`{flagship}` loads / `belady` loads": fmt_x(r["flag_loads"])})
    f = pd.DataFrame(out, columns=cols).sort_values(["accuracy", "batch"], kind="mergesort")
    t = pd.DataFrame(text).reindex(f.index) if text else pd.DataFrame()
    cap = (describe(rows, hardware, workload=f"workload synthetic {joined(sorted(set(rows['model'])))} routing with "
                                             "the accuracy of its lookahead swept (the generator assumes 0.85)")
           + " Latency per step over the oracle's at the same point: the flagship, the fastest of its same-"
           "information peers in the sweep (they read the same lookahead), `pregated` (which reads the next layer's "
           "exact routing whatever the accuracy) and `belady` (the fewest loads, demand fetch only); last column the "
           "flagship's loads over Belady's MIN. An accuracy of 1 names every expert the next layer will use: whatever "
           "stays above the target of 1.3x there is not the predictor's accuracy, for these strategies.")
    return Table("e9_lookahead", "E9. How far a better next-layer predictor goes: the lookahead's accuracy swept", cap,
                 f.reset_index(drop=True), t.reset_index(drop=True))


def sweep(sens: pd.DataFrame) -> pd.DataFrame:
    """The swept workloads: label, locality, cross_layer (sorted by the two knobs)."""
    labels = sorted(set(sens["workload"]))
    f = pd.DataFrame({"workload": labels, "locality": [knob(w, "locality") for w in labels],
                      "cross_layer": [knob(w, "cross_layer") for w in labels]})
    return f.sort_values(["locality", "cross_layer", "workload"], kind="mergesort").reset_index(drop=True)


def measured(stats: Mapping | None, loc: float, coup: float) -> Mapping:
    """The routing statistics measured on the swept workload with these knobs (any pool size), or {}."""
    for v in ((stats or {}).get("sensitivity") or {}).values():
        if v.get("locality") == loc and v.get("cross_layer") == coup:
            return v
    return {}


def online(names) -> list[str]:
    return [s for s in names if s in M.STRATEGIES and M.STRATEGIES[s].role == "online"]


def winners(rows: pd.DataFrame, value: str, flagship: str) -> pd.DataFrame:
    """Per (workload, batch): the online strategy with the lowest ``value`` (ties: table order) and the flagship's
    ratio to it."""
    d = rows[(rows["protocol"] == "batched") & ~rows["refused"]]
    g = d.groupby(["workload", "batch", "strategy"], sort=True)[value].mean()
    out = []
    fl = flagship
    for (w, b), s in g.groupby(level=["workload", "batch"], sort=True):
        s = s.droplevel(["workload", "batch"])
        cand = s.reindex(online(strategy_order(s.index))).dropna()
        if cand.empty:
            continue
        best = cand.index[int(np.argmin(cand.to_numpy()))]
        ratio = float(s[fl] / cand[best]) if fl in s.index else np.nan
        out.append({"workload": w, "batch": int(b), "winner": best, "flagship_ratio": ratio})
    return pd.DataFrame(out, columns=["workload", "batch", "winner", "flagship_ratio"])


def e9_table(sens: pd.DataFrame, stats: Mapping | None, flagship: str,
             hardware: Mapping[str, str] | None = None) -> Table:
    sw = sweep(sens)
    fast = winners(sens, "latency_ms_per_step", flagship).set_index(["workload", "batch"])
    few = winners(sens, "loads", flagship).set_index(["workload", "batch"])
    batches = sorted(set(sens["batch"]))
    rows, text = [], []
    for _, r in sw.iterrows():
        st = measured(stats, r["locality"], r["cross_layer"])
        row = {"locality": r["locality"], "cross_layer": r["cross_layer"],
               "measured_locality": st.get("temporal_locality_mean", np.nan),
               "measured_predictability": st.get("cross_layer_accuracy_mean", np.nan)}
        trow = {"locality knob": _g(r["locality"]), "coupling knob": _g(r["cross_layer"]),
                "measured temporal locality": "n/a" if st.get("temporal_locality_mean") is None
                else f"{st['temporal_locality_mean']:.3f}",
                "measured adjacent-layer predictability": "n/a" if st.get("cross_layer_accuracy_mean") is None
                else f"{st['cross_layer_accuracy_mean']:.3f}"}
        for b in batches:
            for lab, f in (("fastest", fast), ("fewest loads", few)):
                k = (r["workload"], b)
                if k in f.index:
                    w, ratio = f.loc[k, "winner"], f.loc[k, "flagship_ratio"]
                    row[f"{lab}_B{b}"], row[f"{lab}_ratio_B{b}"] = w, ratio
                    trow[f"B={b}: {lab} (flagship / it)"] = f"`{w}` ({fmt_x(ratio)})"
                else:
                    trow[f"B={b}: {lab} (flagship / it)"] = "n/a"
        rows.append(row)
        text.append(trow)
    real = [v.get("cross_layer_accuracy_mean") for v in ((stats or {}).get("real") or {}).values()]
    real = [v for v in real if v is not None]
    rng = (f" The real traces measure an adjacent-layer predictability of {min(real):.2f}-{max(real):.2f} "
           "(routing statistics table)." if real else "")
    cap = (describe(sens, hardware, workload=f"workload synthetic {joined(sorted(set(sens['model'])))} routing, "
                                             "temporal locality and adjacent-layer coupling of the generator swept")
           + " Winners among the online strategies of the sweep (bounds and `gpu_only` excluded): the lowest latency "
           "per step and the fewest loads at each batch; in brackets the flagship's latency (resp. loads) over the "
           "winner's (1.00x: the flagship wins). Measured figures: raw/routing_stats.json on a pool of the same "
           "generator settings." + rng)
    return Table("e9", "E9. Which strategy wins where, as temporal locality and layer coupling vary", cap,
                 pd.DataFrame(rows), pd.DataFrame(text))


def fig_e9(sens: pd.DataFrame, stats: Mapping | None, flagship: str, out_dir: Path,
           hardware: Mapping[str, str] | None = None) -> Plot:
    name, title = "fig9_sensitivity", "Which strategy is fastest as routing locality and layer coupling vary"
    fast = winners(sens, "latency_ms_per_step", flagship)
    if fast.empty:
        return _placeholder(out_dir, name, title, "raw/sensitivity.csv has no measured row.")
    sw = sweep(sens)
    locs, coups = sorted(set(sw["locality"])), sorted(set(sw["cross_layer"]))
    batches = sorted(set(fast["batch"]))
    fast = fast.merge(sw, on="workload")
    with matplotlib.rc_context(RC):
        width = 3.6 * len(batches) + 1.2
        fig, ax = _new((width, 3.9), ncols=len(batches))
        for a, b in zip(ax[0], batches):
            sub = fast[fast["batch"] == b]
            for _, r in sub.iterrows():
                i, j = locs.index(r["locality"]), coups.index(r["cross_layer"])
                a.add_patch(matplotlib.patches.Rectangle((i - 0.5, j - 0.5), 1, 1, facecolor=color(r["winner"]),
                                                         edgecolor="white"))
                ink = "white" if _dark(color(r["winner"])) else "black"
                a.text(i, j, fmt_x(r["flagship_ratio"]), ha="center", va="center", fontsize=7, color=ink)
            a.set_xlim(-0.5, len(locs) - 0.5)
            a.set_ylim(-0.5, len(coups) - 0.5)
            a.set_xticks(range(len(locs)))
            a.set_xticklabels([_g(v) for v in locs])
            a.set_yticks(range(len(coups)))
            ylab = []
            for c in coups:
                ps = [measured(stats, loc, c).get("cross_layer_accuracy_mean") for loc in locs]
                ps = [p for p in ps if p is not None]
                ylab.append(f"{_g(c)}" + (f"\n({min(ps):.2f}-{max(ps):.2f})" if ps else ""))
            a.set_yticklabels(ylab)
            a.grid(False)
            a.set_xlabel("temporal locality knob")
            a.set_title(f"batch {b}")
        ax[0, 0].set_ylabel("adjacent-layer coupling knob\n(measured predictability)")
        won = strategy_order(set(fast["winner"]))
        fig.legend(handles=[Patch(facecolor=color(s), label=s) for s in won], loc="lower center", ncol=6,
                   frameon=False)
        fig.suptitle(f"{title}\ncell colour: the fastest online strategy; number: flagship latency / its latency",
                     fontsize=8)
        fig.subplots_adjust(left=1.3 / width, right=0.99, top=0.82, bottom=0.27, wspace=0.35)
        cap = (f"{title}: each cell one swept workload (x: the generator's temporal locality; y: its adjacent-layer "
               "coupling, with the range of the measured adjacent-layer predictability over the row), coloured by "
               "the fastest online strategy there, labelled with the flagship's latency over that strategy's. "
               + describe(sens, hardware, workload="workload synthetic routing with the generator's knobs swept"))
        return _save(fig, out_dir, name, title, cap)


# --------------------------------------------------------------------------------------------------------------
# Across the range: the seed's claims and the flagship's targets at every swept workload
# --------------------------------------------------------------------------------------------------------------


def _where(sw: pd.DataFrame, labels) -> str:
    s = sw[sw["workload"].isin(list(labels))]
    return "; ".join(f"locality {_g(r['locality'])}, coupling {_g(r['cross_layer'])}" for _, r in s.iterrows())


def _across(verdicts: dict[str, str], reasons: dict[str, str], sw: pd.DataFrame, want: str) -> tuple[str, str]:
    """(the verdicts over the sweep, whether every swept workload gives ``want``)."""
    n = len(verdicts)
    meas = {w: v for w, v in verdicts.items() if v != C.NOT_MEASURED}
    if not meas:
        return f"not measurable in the sweep ({'; '.join(sorted(set(reasons.values())))})", "n/a"
    counts = pd.Series(list(meas.values())).value_counts()
    txt = "; ".join(f"{v} at {k} of {n}" for v, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if len(meas) < n:
        txt += f"; not measured at {n - len(meas)}"
    if set(meas.values()) == {want}:
        return txt, "yes" if len(meas) == n else "yes, where measured"
    other = [w for w, v in meas.items() if v != want]
    if len(other) == len(meas):
        return txt, f"**no**: {want} at none of the swept workloads"
    return txt, f"**no**: not {want} at {_where(sw, other)}"


def _reason(text: str, sens: pd.DataFrame, claims: Mapping) -> str:
    """Why a claim's rule could not be applied to a swept workload, in the sweep's terms."""
    paper, ours = M.seed_groups(claims)
    missing = [s for s in [*paper, *ours] if s not in set(sens["strategy"])]
    if "per_item" not in set(sens["protocol"]) and text.startswith("n/a"):
        return "it needs `per_item` rows; the sweep runs `batched` only"
    named = [int(x) for pair in re.findall(r"\bbatch (\d+)|\band (\d+) rows", text) for x in pair if x]
    if text.startswith("no batch") and named and set(named) <= set(sens["batch"]) and missing:
        return f"the sweep does not run {joined(f'`{s}`' for s in missing)}"
    if text in ("no rows", "missing strategies") or "paper baseline" in text:
        return f"{text}: the sweep does not run {joined(f'`{s}`' for s in missing)}" if missing else text
    return text


def across_range(sim: pd.DataFrame | None, sens: pd.DataFrame, claims: Mapping, flagship: str) -> Table:
    """For each seed claim and for the flagship's targets: the verdict on the E1 grid, and the verdicts at every
    swept workload of E9 (same rules; a rule that needs strategies or protocols the sweep did not run is 'not
    measured' there)."""
    sw = sweep(sens)
    base = C.claims_checked(sim, claims).frame if sim is not None and not sim.empty else None
    rows, text = [], []
    per = {w: C.claims_checked(sens[sens["workload"] == w], claims).frame.set_index("id") for w in sw["workload"]}
    for i, c in enumerate(claims["claims"]):
        v0 = base.loc[base["id"] == c["id"], "verdict"].iloc[0] if base is not None else C.NOT_MEASURED
        verdicts = {w: f.loc[c["id"], "verdict"] for w, f in per.items()}
        reasons = {w: _reason(str(f.loc[c["id"], "batched"]), sens, claims) for w, f in per.items()}
        txt, holds = _across(verdicts, reasons, sw, v0)
        rows.append({"item": c["id"], "default": v0, "across": txt, "holds_across": holds})
        text.append({"#": str(i + 1), "claim or target": c["claim"], "verdict on the E1 grid": v0,
                     f"verdicts over the {len(sw)} swept workloads": txt, "same verdict across the range": holds})
    peers = FL.same_information(flagship)
    for key, label in (("t1", "flagship: fewer loads and lower latency than every same-information strategy "
                             "(target 1)"),
                       ("t3", f"flagship: within {FL.ORACLE_TARGET:g}x of the oracle at every batch (target 3)")):
        verdicts, reasons = {}, {}
        for w in sw["workload"]:
            rows_w = sens[sens["workload"] == w]
            if key == "t1":
                m = FL.same_information_check(rows_w, flagship, peers)["met"]
                reasons[w] = "no same-information peer or no flagship rows"
            else:
                d = rows_w[(rows_w["protocol"] == "batched") & ~rows_w["refused"]]
                g = d.groupby(["strategy", "batch"])["latency_ms_per_step"].mean()
                have = set(g.index.get_level_values(0))
                m = None
                if flagship in have and "oracle" in have:
                    r = (g.xs(flagship, level="strategy") / g.xs("oracle", level="strategy")).dropna()
                    m = None if r.empty else bool((r <= FL.ORACLE_TARGET).all())
                reasons[w] = "no oracle or flagship rows"
            verdicts[w] = C.NOT_MEASURED if m is None else MET if m else NOT_MET
        txt, holds = _across(verdicts, reasons, sw, MET)
        rows.append({"item": key, "default": "", "across": txt, "holds_across": holds})
        text.append({"#": "F1" if key == "t1" else "F3", "claim or target": label,
                     "verdict on the E1 grid": "see the flagship section",
                     f"verdicts over the {len(sw)} swept workloads": txt, "same verdict across the range": holds})
    knobs = (f"temporal locality {joined(_g(v) for v in sorted(set(sw['locality'])))} x adjacent-layer coupling "
             f"{joined(_g(v) for v in sorted(set(sw['cross_layer'])))}")
    cap = (f"Each seed claim's verdict rule (and the flagship's targets 1 and 3) applied at every workload of the E9 "
           f"sweep ({knobs}; batch {joined(sorted(set(sens['batch'])))}; cache "
           f"{joined(sorted(set(sens['cache'])))}; `batched` only; strategies "
           f"{joined(f'`{s}`' for s in strategy_order(set(sens['strategy'])))}). A rule that needs a strategy, "
           "batch or protocol the sweep did not run is 'not measured' there, with the reason. 'Same verdict across "
           "the range': whether every swept workload gives the verdict of the E1 grid (targets: whether each is met).")
    return Table("across_range", "Across the E9 range", cap, pd.DataFrame(rows), pd.DataFrame(text))
