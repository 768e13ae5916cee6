"""Build REPORT.md and the figures from ``RESULTS/raw/*.csv`` and ``RESULTS/hardware/*.json`` alone.

``build_report(results_dir)`` is a pure function of those files (and of ``claims.json``, the seed's quoted claims):
the same inputs give the same bytes in REPORT.md and in every figure. Nothing reads a clock, the environment or
the git state; numbers are formatted by fixed rules (see ``tables.fmt_*``); the only computation that is not a
group-by over CSV rows is the re-plan of a few rows for the timeline figure and the CPU engine check, which the
deterministic simulator does from the rows' own configuration and the hardware profile they name.

``python -m artifact.report.build --results results`` (or ``python -m artifact report``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from artifact.planner import strategies as _strategies
from artifact.report import figures as F
from artifact.report import tables as T
from artifact.runtime.hardware import HardwareProfile, load_profile

RAW_FILES = ("sim", "engine", "cpu_engine", "models")
ENV_COLUMNS = ["gpu", "driver", "torch", "cuda", "package_version", "git_commit"]

STRATEGIES = _strategies()


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------


def read_raw(results: Path) -> dict[str, pd.DataFrame]:
    """The grids' CSV files that exist, typed (see ``tables.prepare``)."""
    out = {}
    for name in RAW_FILES:
        p = results / "raw" / f"{name}.csv"
        if p.is_file():
            # Read every cell as text and convert once in prepare(): the same bytes give the same frame whatever
            # pandas would have guessed per column.
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
            out[name] = T.prepare(df)
    return out


def read_profiles(results: Path, names) -> dict[str, tuple[HardwareProfile, str]]:
    """Each profile the rows name: ``results/hardware/NAME.json`` first, else the built-in of that name."""
    out = {}
    for n in sorted(set(names)):
        if not n:
            continue
        p = results / "hardware" / f"{n}.json"
        try:
            if p.is_file():
                out[n] = (load_profile(str(p)), f"{p.parent.name}/{p.name}")
            else:
                out[n] = (load_profile(n), "artifact's results/hardware")
        except (KeyError, ValueError):
            continue
    return out


def hardware_text(profiles: Mapping[str, tuple[HardwareProfile, str]]) -> dict[str, str]:
    """Caption text per profile name: what the profile measured and where it came from."""
    out = {}
    for n, (prof, src) in profiles.items():
        ex = prof.extra if isinstance(prof.extra, dict) else {}
        bits = [prof.description]
        if ex.get("date"):
            bits.append(f"calibrated {ex['date']}")
        out[n] = f"profile `{n}` ({'; '.join(bits)}; {src})"
    return out


def read_gpu_checks(results: Path) -> dict | None:
    for p in (results / "raw" / "gpu_checks.json", results / "gpu_checks.json"):
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError:
                return {"checks": {"gpu_checks.json": {"error": "unreadable JSON"}}}
    return None


# --------------------------------------------------------------------------------------------------------------
# Re-plans (the timeline figure and the CPU engine check)
# --------------------------------------------------------------------------------------------------------------


_SYNTHETIC = re.compile(r"^synthetic:(?P<model>[^:]+):(?P<s>\d+)x(?P<t>\d+):seed(?P<seed>\d+)$")


def workload_spec(label: str, model: str):
    """The WorkloadSpec a CSV row's ``workload`` label names."""
    from artifact.experiments.runs import WorkloadSpec

    m = _SYNTHETIC.match(label)
    if m:
        return WorkloadSpec(m["model"], None, int(m["s"]), int(m["t"]), int(m["seed"]))
    if label.startswith("trace:"):
        return WorkloadSpec(model, label[len("trace:"):])
    raise ValueError(f"workload label {label!r}: neither synthetic:MODEL:SxT:seedN nor trace:PATH")


def replay_rows(rows: pd.DataFrame, profiles: Mapping[str, tuple[HardwareProfile, str]]) -> list[tuple]:
    """Re-plan and re-simulate CSV rows as the runner did (one task = one workload, batch, cache, protocol and
    steps; strategies in the rows' order, sharing requests and the plans the oracle reuses).

    Returns ``(row, counts, plan, timeline)`` per row; ``counts`` is None where the configuration cannot run."""
    from artifact.core.requests import build_requests
    from artifact.experiments.runs import load_trace, make_workload, simulate_one
    from artifact.runtime.simulator import simulate

    out = []
    traces: dict = {}
    keys = ["workload", "model", "batch", "cache", "protocol", "steps", "hardware"]
    for key, task in rows.groupby(keys, sort=True):
        label, model, batch, cache, protocol, steps, hw_name = key
        if hw_name not in profiles:
            out += [(r, None, None, None) for _, r in task.iterrows()]
            continue
        hw = profiles[hw_name][0]
        ws = workload_spec(label, model)
        if ws not in traces:
            traces[ws] = load_trace(ws)
        w = make_workload(ws, int(batch), int(steps), traces[ws])
        req = build_requests(w)
        plans: dict = {}
        for _, r in task.iterrows():
            try:
                metrics, plan = simulate_one(w, r["strategy"], int(cache), protocol, ws.seed, hw, req, plans)
            except ValueError:
                out.append((r, None, None, None))
                continue
            plans[r["strategy"]] = plan
            out.append((r, metrics, plan, simulate(plan, w, hw)))
    return out


def replan_counts(cpu: pd.DataFrame, profiles) -> pd.DataFrame:
    """The simulator's decision counts for each CPU engine row's configuration."""
    rec = []
    for r, counts, _, _ in replay_rows(cpu, profiles):
        row = {"point_id": r["point_id"]}
        row.update({c: (float(counts[c]) if counts is not None else np.nan) for c in T.COUNT_CHECK})
        rec.append(row)
    return pd.DataFrame(rec, columns=["point_id"] + T.COUNT_CHECK)


def timeline_rows(sim: pd.DataFrame) -> pd.DataFrame:
    """The rows the timeline figure re-plans: on_demand, Pre-gated MoE (as built, else the proxy) and
    intelligent_dedup at the default cache, batch 8 (or the nearest measured), batched, the first seed."""
    if sim.empty:
        return sim
    cache = T.default_cache(sim)
    d = sim[(sim["cache"] == cache) & (sim["protocol"] == "batched")]
    if d.empty:
        return d
    d = d[(d["batch"] == T.mid_batch(d["batch"])) & (d["trace_seed"] == d["trace_seed"].min())]
    have = set(d["strategy"])
    pick = ["on_demand", "pregated" if "pregated" in have else "pregated_proxy", "intelligent_dedup"]
    d = d[d["strategy"].isin(pick) & d["latency_ms_per_step"].notna()]
    order = {s: i for i, s in enumerate(pick)}
    return d.assign(_o=d["strategy"].map(order)).sort_values("_o", kind="mergesort").drop(columns="_o")


def replay_for_timeline(sim: pd.DataFrame, profiles) -> tuple[list[F.Replayed], pd.DataFrame]:
    rows = timeline_rows(sim)
    out = []
    for r, counts, plan, tl in replay_rows(rows, profiles):
        if counts is None:
            continue
        match = all(float(counts[c]) == float(r[c]) for c in T.COUNT_CHECK)
        out.append(F.Replayed(r["strategy"], plan, tl, match))
    order = {s: i for i, s in enumerate(rows["strategy"])}
    out.sort(key=lambda x: order[x.strategy])
    return out, rows


# --------------------------------------------------------------------------------------------------------------
# REPORT.md
# --------------------------------------------------------------------------------------------------------------


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _table_md(t: T.Table) -> str:
    return f"**{t.title}.** {t.caption}\n\n{t.markdown()}\n"


def _figure_md(p: F.Plot, base: Path) -> str:
    return (f"![{p.title}]({_rel(p.png, base)})\n\n*Figure: {p.caption}* ([PDF]({_rel(p.pdf, base)}))\n")


def _plain(v) -> str:
    """A cell as text; whole floats (integer columns read back as float) without the '.0'."""
    if isinstance(v, (float, np.floating)) and not np.isnan(v) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _unique(df: pd.DataFrame, col: str) -> str:
    vals = sorted({_plain(v) for v in df[col] if str(v) not in ("", "nan")})
    return ", ".join(vals) if vals else "-"


def _what_was_run(raw: Mapping[str, pd.DataFrame], profiles, gpu_checks) -> str:
    lines = ["| file | experiment | rows | executor | repeats | seeds | steps | batches | caches | protocols | "
             "hardware profile | GPU | driver | torch | CUDA | package | git commit |",
             "|" + " --- |" * 17]
    exp = {"sim": "E1-E4, E6", "engine": "E5", "cpu_engine": "E5 (CPU check)", "models": "E7"}
    for name, df in raw.items():
        lines.append("| " + " | ".join([
            f"raw/{name}.csv", exp.get(name, ""), str(len(df)), _unique(df, "executor"), _unique(df, "repeats"),
            _unique(df, "trace_seed"), _unique(df, "steps"), ", ".join(str(b) for b in sorted(set(df["batch"]))),
            ", ".join(str(c) for c in sorted(set(df["cache"]))), _unique(df, "protocol"), _unique(df, "hardware"),
            *[_unique(df, c) for c in ENV_COLUMNS]]) + " |")
    out = "\n".join(lines) + "\n"
    if profiles:
        out += "\nHardware profiles the simulator timed plans with:\n\n"
        for n, (prof, src) in profiles.items():
            ex = prof.extra if isinstance(prof.extra, dict) else {}
            keys = [k for k in ("device_name", "driver", "torch", "cuda", "date", "dtype", "ffn_path") if k in ex]
            extra = "; ".join(f"{k} {ex[k]}" for k in keys)
            out += (f"- `{n}` ({src}): {prof.description}. Pinned H2D copy fit: {prof.copy_bandwidth_gbps:.1f} GB/s, "
                    f"{prof.copy_latency_ms * 1e3:.1f} us per copy. Source: {prof.source or '-'}"
                    + (f". Calibration: {extra}" if extra else "") + ".\n")
    if gpu_checks is not None:
        env = gpu_checks.get("environment", {})
        out += ("\nGPU checks (raw/gpu_checks.json): " + ", ".join(f"{k} {env[k]}" for k in sorted(env)) + ".\n")
    return out


REGENERATE = """\
```bash
# on the GPU machine (H200): measure the hardware profile, then run the grids (each resumable)
python -m artifact calibrate --device cuda -o results/hardware/h200.json
python -m artifact grid sim --out results/raw --hardware h200
python -m artifact grid engine --out results/raw --hardware h200
python -m artifact grid models --out results/raw --hardware h200
python -m artifact.runtime.gpu_checks --out results/raw
# without a GPU: the CPU engine check instead of the engine grid
python -m artifact grid cpu_engine --out results/raw --hardware h200
# the report: a pure function of results/raw/*.csv and results/hardware/*.json
python -m artifact report --results results    # or: python -m artifact.report.build --results results
```
"""

NOT_MEASURED = """\
- **Routing recorded from real checkpoints.** Every workload here is the calibrated synthetic generator (FACTS.md
  section 2: per-layer skew matched to switch-base-128's encoder routing); no model weights are downloaded on
  these machines, so no decode trace of a trained model was recorded. `python -m artifact trace record` exists for
  anyone who can download a checkpoint.
- **The seed's own runs.** The seed's latencies are in units and on a workload it does not state (its Avg Latency
  column is neither a per-token nor a per-step figure we can reproduce); we compare its ratios, not its
  milliseconds.
- **The `per_item` protocol as a system.** It is the seed's accounting for its paper baselines (each batch item's
  experts loaded separately), not how any engine works: Pre-gated MoE, mixtral-offloading, MoE-Infinity and
  Hugging Face's Switch layer all load an expert once per layer for the whole batch (FACTS.md section 4). It is
  here to reproduce the seed's tables and to show which of its gains come from batching alone.
- **Trained predictors.** Pre-gated MoE's fine-tuned pre-gate is not public: `pregated` uses the exact next layer's
  routing (the pre-gate as designed, never wrong) and `pregated_proxy` the training-free stand-in. ExpertFlow's
  routing-path predictor is not public either: `expertflow` uses the true path degraded to a stated accuracy.
- **Prefill, beam search, multi-GPU, quantised experts, other interconnects.** Decode steps only, one GPU, bf16
  experts over PCIe.
- **Energy and host memory.** Neither is recorded.
"""


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body.rstrip()}\n\n"


def build_report(results_dir: str | os.PathLike = "results", out: str | os.PathLike | None = None) -> Path:
    """Write ``results_dir/figures/*.png|pdf`` and ``results_dir/REPORT.md`` (or ``out``); returns its path."""
    results = Path(results_dir)
    out_path = Path(out) if out is not None else results / "REPORT.md"
    base = out_path.parent
    fig_dir = results / "figures"
    raw = read_raw(results)
    claims = T.load_claims()
    names = set()
    for df in raw.values():
        names |= set(df["hardware"])
    profiles = read_profiles(results, names)
    hw = hardware_text(profiles)
    gpu_checks = read_gpu_checks(results)
    sim = raw.get("sim")
    src = claims["source"]

    parts = [f"# MoE expert offloading: measured results against the seed report\n\n"
             f"Generated by `python -m artifact report` from `raw/*.csv` and `hardware/*.json` in this folder; "
             f"every number below comes from those rows, except the seed's claims, quoted from "
             f"`{src['file']}` (\"{src['title']}\", {src['date']}) via `artifact/report/claims.json`. Rebuilding from "
             "the same files gives byte-identical output.\n\n"]

    # Executive summary: the claims.
    if sim is not None and not sim.empty:
        ct = T.claims_checked(sim, claims, hw)
        rules = "\n".join(f"{i + 1}. {r}" for i, r in enumerate(ct.frame["rule"]))
        body = (_table_md(ct) + f"\nVerdict rules (tolerance +-{100 * T.TOLERANCE:g}% relative; `batched` decides, "
                "`per_item` only qualifies):\n\n" + rules + "\n\nWhat the seed itself is inconsistent about:\n\n"
                + "\n".join(f"- {c['claim']}: {c['note']}" for c in claims["claims"] if c.get("note")) + "\n")
    else:
        body = "raw/sim.csv is absent: no claim can be checked.\n"
    parts.append(_section("Executive summary: the seed's claims checked", body))

    parts.append(_section("What was run", _what_was_run(raw, profiles, gpu_checks)))
    parts.append(_section("How to regenerate", REGENERATE))
    parts.append(_section("Definitions", T.definitions(claims)))

    plots: dict[str, F.Plot] = {}
    if sim is not None and not sim.empty:
        plots["fig1"] = F.fig_latency_by_strategy(sim, claims, fig_dir, hw)
        plots["fig2"] = F.fig_dedup_savings(sim, claims, fig_dir, hw)
        plots["fig3"] = F.fig_latency_vs_batch(sim, fig_dir, hw)
        plots["fig4"] = F.fig_cache_sizes(sim, fig_dir, hw)
        replayed, trows = replay_for_timeline(sim, profiles)
        plots["fig6"] = F.fig_timeline(replayed, trows, fig_dir, hw)
        plots["fig7"] = F.fig_gaps(sim, fig_dir, hw)
    engine = raw.get("engine")
    plots["fig5"] = F.fig_sim_vs_engine(engine, fig_dir, hw)

    strategies = "\n".join(f"| `{n}` | {s.summary} | {s.source} | {s.sees} | {'yes' if s.batch_aware else 'no'} "
                           f"| {'yes' if s.role == 'bound' else 'no'} |" for n, s in STRATEGIES.items())
    mapping = "; ".join(f"{k} -> `{v}`" for k, v in claims["method_map"].items())
    parts.append(_section("Strategies", "| strategy | what it stands for | source | sees | batch-aware | bound |\n"
                                        "| --- | --- | --- | --- | --- | --- |\n" + strategies
                          + f"\n\nSeed method names map to ours as: {mapping}."))

    if sim is not None and not sim.empty:
        e1 = [T.strategy_summary(sim, claims, hw)] + [T.latency_per_batch(sim, p, hw) for p in T.PROTOCOLS
                                                      if (sim["protocol"] == p).any()]
        parts.append(_section("E1. Latency and speedup of every strategy, iso-cache",
                              "\n".join(_table_md(t) for t in e1) + "\n" + _figure_md(plots["fig1"], base)
                              + "\n" + _figure_md(plots["fig3"], base) + "\n" + _figure_md(plots["fig6"], base)))
        parts.append(_section("E2. What deduplication saves, by batch size",
                              _table_md(T.savings_table(sim, claims, hw)) + "\n" + _figure_md(plots["fig2"], base)))
        parts.append(_section("E3. How strategies scale with batch size",
                              _table_md(T.scaling_table(sim, claims, hw))))
        bs = sorted(set(sim["batch"]))
        e4_batches = sorted({T.mid_batch(bs), max(bs)})
        parts.append(_section("E4. Hit rate and latency across cache sizes",
                              "\n".join(_table_md(T.cache_table(sim, b, hw)) for b in e4_batches) + "\n"
                              + _figure_md(plots["fig4"], base)))
    else:
        for t in ("E1", "E2", "E3", "E4"):
            parts.append(_section(t, "raw/sim.csv is absent.\n"))

    e5 = []
    if engine is not None and not engine.empty:
        per, summ = T.engine_table(engine, hw)
        e5 += [_table_md(summ), _table_md(per)]
    else:
        e5.append("The engine grid did not run on a GPU for these results (raw/engine.csv is absent), so the "
                  "simulator's times are not checked against measured ones here.")
        cpu = raw.get("cpu_engine")
        if cpu is not None and not cpu.empty:
            ct = T.cpu_engine_table(cpu, replan_counts(cpu, profiles), hw)
            n_ok = int((ct.frame["match"] == True).sum())  # noqa: E712  (object column: True / False / None)
            e5.append(f"The CPU engine check executed real plans: {n_ok} of {len(ct.frame)} configurations made "
                      "exactly the decisions the simulator makes on the same configuration.\n")
            e5.append(_table_md(ct))
        else:
            e5.append("raw/cpu_engine.csv is absent too.")
    e5.append(_figure_md(plots["fig5"], base))
    if gpu_checks is not None:
        e5.append(_table_md(T.gpu_checks_table(gpu_checks)))
    parts.append(_section("E5. Simulator against engine on the same plans", "\n\n".join(x.rstrip() for x in e5)))

    if sim is not None and not sim.empty:
        e6 = [T.gap_table(sim, "loads", "belady", hw), T.gap_table(sim, "latency_ms_per_step", "oracle", hw)]
        parts.append(_section("E6. Gap of each strategy to the bounds",
                              "\n".join(_table_md(t) for t in e6) + "\n" + _figure_md(plots["fig7"], base)))
    else:
        parts.append(_section("E6", "raw/sim.csv is absent.\n"))

    models = raw.get("models")
    if models is not None and not models.empty:
        e7 = "\n".join(_table_md(t) for t in T.models_tables(models, hw))
        parts.append(_section("E7. Other models' presets", e7))
    else:
        parts.append(_section("E7. Other models' presets", "raw/models.csv is absent.\n"))

    parts.append(_section("What we did not measure", NOT_MEASURED))
    parts.append(_section("Source of the claims",
                          f"`{src['file']}`: \"{src['title']}\", {src['date']}; model: {src['model']}; framework: "
                          f"{src['framework']}; runs: {src['runs']}. {src['encoding_note']}.\n"))

    text = "".join(parts).rstrip() + "\n"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out_path)
    return out_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m artifact.report.build", description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="results folder (raw/, hardware/)")
    ap.add_argument("--out", default=None, help="REPORT.md path (default: RESULTS/REPORT.md)")
    args = ap.parse_args(argv)
    print(f"wrote {build_report(args.results, args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
