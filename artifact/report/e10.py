"""E10 in the report: real ``transformers`` MoE models offloaded, tokens/s by strategy and cache size, against every
expert resident and against ``accelerate``. Pure functions of ``raw/e10.csv`` (written by
:mod:`artifact.experiments.e10`): :func:`load_e10` reads it, :func:`e10_table` and :func:`fig_e10` draw it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from artifact.report.figures import _MARKERS, _PALETTE, RC, Plot, _log_y, _new, _placeholder, _save, color, marker  # noqa: E402,E501
from artifact.report.tables import Table, fmt_ms, fmt_pct, fmt_signed_pct, is_nan, joined  # noqa: E402

NUMERIC = ["cache_experts", "cache_fraction", "routed_experts", "batch", "prompt_tokens", "new_tokens_asked",
           "prefill_tokens", "prefill_ms", "prefill_tokens_per_s", "decode_tokens", "decode_ms", "decode_tokens_per_s",
           "ms_per_token", "ms_per_token_p90", "runs", "requests", "unique_requests", "hits", "hit_rate", "loads",
           "demand_loads", "prefetch_issued", "prefetch_used", "bytes_h2d", "bytes_copied", "bytes_per_forward",
           "sync_us_per_layer", "plan_us_per_layer", "issue_us_per_layer", "d2h_idle_us", "sim_prefill_ms",
           "sim_ms_per_token", "sim_error", "setup_s", "wall_s"]
# Arms that are not a strategy of the registry: a fixed colour and line style each, in every E10 figure.
ARM_STYLE = {"resident": ("#000000", "-", "every weight resident (transformers)"),
             "accelerate_device_map": ("#8c8c8c", "--", "accelerate device_map (experts on cpu)"),
             "accelerate_cpu_offload": ("#8c8c8c", ":", "accelerate cpu_offload")}
ARM_ORDER = {"resident": 0, "offload": 1, "accelerate_device_map": 2, "accelerate_cpu_offload": 3}


def styles(names: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) of each strategy: the report's own (one per strategy in every figure), except where two
    strategies drawn here share one (the palette is shorter than the registry): the later one takes the first free
    colour and marker."""
    out: dict[str, tuple[str, str]] = {}
    used_c, used_m = set(), set()
    for n in names:
        c, m = color(n), marker(n)
        if c in used_c:
            c = next((p for p in _PALETTE if p not in used_c), c)
        if m in used_m:
            m = next((q for q in _MARKERS if q not in used_m), m)
        used_c.add(c)
        used_m.add(m)
        out[n] = (c, m)
    return out


def load_e10(path: str | Path) -> pd.DataFrame:
    """``raw/e10.csv`` with numbers as floats (NaN where a row has none) and text as strings."""
    d = pd.read_csv(path, dtype=str, keep_default_na=False)
    for c in NUMERIC:
        if c in d:
            d[c] = pd.to_numeric(d[c].replace("", np.nan), errors="coerce")
    return d


def _label(r) -> str:
    if r["arm"] == "offload":
        return f"offload `{r['strategy']}`"
    return {"resident": "resident (transformers)", "accelerate_device_map": "accelerate device_map",
            "accelerate_cpu_offload": "accelerate cpu_offload"}.get(r["arm"], r["arm"])


def _sorted(d: pd.DataFrame) -> pd.DataFrame:
    d = d.copy()
    d["_a"] = d["arm"].map(ARM_ORDER).fillna(9)
    d["_s"] = d["strategy"].map({"gpu_only": 0}).fillna(1)
    d["_c"] = d["cache_experts"].fillna(0)
    d = d.sort_values(["model", "_a", "_s", "_c", "strategy"], kind="mergesort")
    return d.drop(columns=["_a", "_s", "_c"]).reset_index(drop=True)


def _hardware(d: pd.DataFrame) -> str:
    gpus = sorted({g for g in d.get("gpu", pd.Series(dtype=str)) if g and g != "none"})
    dev = sorted(set(d.get("device", pd.Series(dtype=str))))
    where = joined(gpus) if gpus else f"{joined(dev) or 'unknown device'} (no GPU)"
    vers = []
    for k in ("torch", "transformers", "accelerate"):
        v = sorted({x for x in d.get(k, pd.Series(dtype=str)) if x})
        if v:
            vers.append(f"{k} {joined(v)}")
    return f"{where}; {', '.join(vers)}" if vers else where


def caption(d: pd.DataFrame) -> str:
    if d.empty:
        return "No E10 rows."
    def ints(col, rows=d) -> str:
        return joined(sorted({int(v) for v in rows[col].dropna()})) or "-"

    acc = d[d["arm"].str.startswith("accelerate")]
    ours = d[~d["arm"].str.startswith("accelerate")]
    parts = [f"Models {joined(sorted(set(d['model'])))} (random weights, {joined(sorted(set(d['dtype'])))}), batch "
             f"{ints('batch')}, prompt {ints('prompt_tokens')} tokens (prefill = the first forward pass), greedy "
             f"decoding; offload and resident arms generate {ints('new_tokens_asked', ours)} tokens, accelerate arms "
             f"{ints('new_tokens_asked', acc)}. Hardware: {_hardware(d)}."]
    runs = ints("runs", ours) if "runs" in d else "1"
    parts.append("Decode tok/s = decoded tokens / decode time; ms/token = median decode step"
                 + ("" if runs == "1" else f" over the {runs} runs of each offload and resident arm (the offload "
                    "arms' later sweeps in alternating order, the resident ones back to back), each run's median in "
                    "brackets") + ". Offload: every routed "
                 "expert in a pinned host slab, the strategy deciding live at every layer; `gpu_only` keeps every "
                 "expert in a device slot (the engine's own overhead). sim: the simulator on the run's own plan "
                 "replayed from its recorded trace, NON-MoE time per layer fitted to the `gpu_only` run"
                 + ("." if runs == "1" else " with the lowest median decode step."))
    parts.append("Host us per layer (offload rows): the medians per MoE layer of the sync that reads the routing to "
                 "the host (it waits for the device work queued before it), the strategy's decision, and the issue "
                 "of the copies and kernels; at batch 1 the host is the bottleneck, so these show where a strategy's "
                 "time goes beyond the simulator's, which does not model them.")
    if "warmup_ms_per_token" in d and d["warmup_ms_per_token"].notna().any():
        parts.append("Before its timed runs, each model's resident model and its offloaded one ran untimed "
                     "generations of the timed length until two in a row agreed within 5% (at most 4): "
                     + "; ".join(f"{m} {arm} {_warm(v)} ms/token" for (m, arm), v in
                                 ours.groupby(["model", "arm"])["warmup_ms_per_token"].first().items()
                                 if _warm(v)) + ".")
    skipped = d[d["note"].str.startswith(("skipped", "refused", "error"))]
    if not skipped.empty:
        def where(r) -> str:
            c = "" if is_nan(r["cache_experts"]) else f" c={int(r['cache_experts'])}"
            return f"{_label(r)} {r['model']}{c}: {r['note']}"

        parts.append("Not run: " + "; ".join(where(r) for _, r in skipped.iterrows()) + ".")
    return " ".join(parts)


def moved_bytes(r) -> float:
    """Host-to-device bytes of a row's whole run: what the offload engine copied, or accelerate's bytes per forward
    pass times its forward passes (prefill and every decode step); NaN for the resident model."""
    if not is_nan(r["bytes_copied"]):
        return float(r["bytes_copied"])
    if is_nan(r["bytes_per_forward"]) or is_nan(r["decode_tokens"]):
        return float("nan")
    return float(r["bytes_per_forward"]) * (float(r["decode_tokens"]) / max(float(r["batch"]), 1.0) + 1.0)


def _num(x, f) -> str:
    return "n/a" if is_nan(x) else f(x)


def _ms_values(v) -> list[float]:
    """The ms figures of a ``;``-separated cell (``ms_per_token_runs``, ``warmup_ms_per_token``); [] if empty."""
    return [float(x) for x in str("" if v is None or is_nan(v) else v).split(";") if x.strip()]


def _warm(v) -> str:
    """``a, b, c``: each warm-up run's median decode step."""
    return ", ".join(f"{m:.1f}" for m in _ms_values(v))


def _per_run(runs: str) -> str:
    """`` (a, b)``: each run's median decode step, where a row pooled several runs."""
    ms = _ms_values(runs)
    return f" ({', '.join(fmt_ms(v) for v in ms)})" if len(ms) > 1 else ""


def _host(r) -> str:
    """The medians per MoE layer of the host's three costs (offload rows): the sync that reads the routing, the
    strategy's decision, the issue of copies and kernels."""
    vals = [r.get(k) for k in ("sync_us_per_layer", "plan_us_per_layer", "issue_us_per_layer")]
    return "n/a" if any(v is None or is_nan(v) for v in vals) else ", ".join(f"{float(v):.0f}" for v in vals)


def e10_table(frame: pd.DataFrame) -> Table:
    """One row per (model, arm, strategy, cache): decode and prefill tokens/s, latency, hits, bytes, simulator."""
    d = _sorted(frame)
    text = pd.DataFrame({
        "model": list(d["model"]),
        "arm": [_label(r) for _, r in d.iterrows()],
        "cache (experts, share)": ["all" if r["arm"] == "resident" or r["strategy"] == "gpu_only" else
                                   ("-" if is_nan(r["cache_experts"]) else
                                    f"{int(r['cache_experts'])} ({fmt_pct(r['cache_fraction'])})")
                                   for _, r in d.iterrows()],
        "decode tok/s": [_num(v, lambda x: f"{x:,.1f}") for v in d["decode_tokens_per_s"]],
        "ms/token": [_num(r["ms_per_token"], fmt_ms) + _per_run(r.get("ms_per_token_runs", "")) for _, r in
                     d.iterrows()],
        "prefill tok/s": [_num(v, lambda x: f"{x:,.0f}") for v in d["prefill_tokens_per_s"]],
        "hit rate": [_num(v, fmt_pct) for v in d["hit_rate"]],
        "GB moved (run)": [_num(moved_bytes(r), lambda x: f"{x / 1e9:,.2f}") for _, r in d.iterrows()],
        "host us per layer: sync, decision, issue": [_host(r) for _, r in d.iterrows()],
        "sim ms/token (error)": ["n/a" if is_nan(s) else f"{fmt_ms(s)} ({fmt_signed_pct(e)})"
                                 for s, e in zip(d["sim_ms_per_token"], d["sim_error"])],
        "same tokens": [{"true": "yes", "false": "**no**"}.get(v, "n/a") for v in d["tokens_match_resident"]],
    })
    notes = [n if n.startswith(("skipped", "refused", "error")) else "" for n in d["note"]]
    if any(notes):
        text["note"] = notes
    cols = ["model", "arm", "strategy", "cache_experts", "cache_fraction", "decode_tokens_per_s", "ms_per_token",
            "prefill_tokens_per_s", "hit_rate", "loads", "bytes_copied", "sync_us_per_layer", "plan_us_per_layer",
            "issue_us_per_layer", "sim_ms_per_token", "sim_error",
            "tokens_match_resident", "note"]
    return Table("e10", "E10. Real transformers MoE models offloaded: tokens/s against resident and accelerate",
                 caption(d), d[[c for c in cols if c in d]], text)


def fig_e10(frame: pd.DataFrame, out_dir: Path) -> Plot:
    """Tokens/s against cache size (share of routed experts), one line per strategy and a level per reference arm;
    decode above, prefill below, one column per model."""
    name, title = "fig_e10_offload", "Real MoE models offloaded: tokens/s against cache size"
    d = frame[frame["decode_tokens_per_s"].notna() | frame["prefill_tokens_per_s"].notna()]
    if d.empty:
        return _placeholder(out_dir, name, title, "raw/e10.csv has no measured row: nothing to plot.")
    models = sorted(set(d["model"]))
    strategies = [s for s in ("on_demand", "intelligent_dedup") if s in set(d["strategy"])] + \
        sorted({s for s in d[d["arm"] == "offload"]["strategy"] if s not in ("on_demand", "intelligent_dedup",
                                                                           "gpu_only")})
    sty = styles(strategies + ["gpu_only"])
    with matplotlib.rc_context(RC):
        fig, ax = _new((max(7.5, 4.2 * len(models) + 1.0), 6.4), ncols=len(models), nrows=2)
        for j, m in enumerate(models):
            dm = d[d["model"] == m]
            off = dm[(dm["arm"] == "offload") & (dm["strategy"] != "gpu_only")]
            xs_all = sorted({float(x) for x in off["cache_fraction"].dropna()}) or [0.1, 0.5]
            for i, (col, what) in enumerate((("decode_tokens_per_s", "decode"), ("prefill_tokens_per_s",
                                                                                    "prefill"))):
                a = ax[i, j]
                for s in strategies:
                    r = off[off["strategy"] == s].sort_values("cache_fraction")
                    r = r[r[col].notna()]
                    if not r.empty:
                        a.plot(100 * r["cache_fraction"].to_numpy(float), r[col].to_numpy(float), color=sty[s][0],
                               marker=sty[s][1], markersize=4, linewidth=1.2)
                levels = [("gpu_only", dm[(dm["arm"] == "offload") & (dm["strategy"] == "gpu_only")])]
                levels += [(arm, dm[dm["arm"] == arm]) for arm in ARM_STYLE]
                for key, r in levels:
                    v = r[col].dropna()
                    if v.empty:
                        continue
                    c, ls = (sty["gpu_only"][0], "-.") if key == "gpu_only" else ARM_STYLE[key][:2]
                    a.axhline(float(v.iloc[0]), color=c, linestyle=ls, linewidth=1.0)
                a.set_xlim(100 * min(xs_all) * 0.8, 100 * max(xs_all) * 1.1)
                _log_y(a)
                a.set_xlabel("device expert cache (% of routed experts)")
                a.set_ylabel(f"{what} tokens/s (batch {joined(sorted({int(b) for b in dm['batch'].dropna()}))})")
                a.set_title(f"{m}: {what}")
        handles = [Line2D([0], [0], color=sty[s][0], marker=sty[s][1], markersize=4, label=f"offload {s}")
                   for s in strategies]
        handles.append(Line2D([0], [0], color=sty["gpu_only"][0], linestyle="-.",
                              label="offload engine, every expert in a slot"))
        handles += [Line2D([0], [0], color=c, linestyle=ls, label=lab) for c, ls, lab in ARM_STYLE.values()]
        fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
        hw = _hardware(d)
        fig.suptitle(f"{title}\n{hw}", fontsize=8)
        fig.subplots_adjust(left=0.09, right=0.98, top=0.88, bottom=0.2, hspace=0.45, wspace=0.28)
        cap = (f"{title}: decode (top) and prefill (bottom) tokens/s, log scale; lines: offloading strategies at "
               f"each cache size; horizontal levels: the reference arms, which have no cache axis. " + caption(d))
        return _save(fig, out_dir, name, title, cap)
