"""The seed's claims: ``claims.json`` (every figure the seed report states, quoted and cited), the verdict rules and
the checks that hold our measured numbers against each claim.

A claim's verdict comes from two checks, one per protocol: ``batched`` is the fair test (every real engine loads
an expert once per layer-step for the whole batch) and decides; ``per_item`` (the seed's own accounting) only
qualifies a claim that fails under ``batched``. Every numeric rule allows :data:`TOLERANCE`; the rules are printed
in the report beside the verdicts (:func:`rule_text`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from artifact.report.metrics import (
    PROTOCOLS,
    batch_aware,
    dedup_savings,
    default_cache,
    flagship,
    latency_by_batch,
    latency_seed_mean,
    mean_over_batches,
    over_seeds,
    scaling,
    seed_groups,
)
from artifact.report.tables import Table, describe, fmt_pct, fmt_spread, fmt_x, is_nan, joined

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


def load_claims(path: str | Path = CLAIMS_PATH) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


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
    return None if is_nan(measured) else bool(measured >= (1.0 - TOLERANCE) * claimed)


def _close(measured: float, claimed: float) -> bool | None:
    return None if is_nan(measured) else bool(abs(measured - claimed) <= TOLERANCE * abs(claimed))


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
    cap = describe(d, hardware, [*paper, *ours, *batch_aware()]) + (
        " Verdict: `batched` is the fair protocol (every engine dedups); a claim that holds only with the seed's "
        "`per_item` accounting says so.")
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
    return {"batched": (f"{fmt_pct(val)} (largest, at batch {b}; batches {joined(st.index)})",
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
                      f"batch {joined(b for b in (lo_b, hi_b) if b not in have)} not in the grid", None)
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
            ok = None if is_nan(r0) or is_nan(r1) else bool(r1 > (1.0 + DEGRADE_MARGIN) * r0)
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

