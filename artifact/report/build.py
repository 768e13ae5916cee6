"""Build REPORT.md and the figures from ``RESULTS/raw/*.csv``, ``RESULTS/raw/*.json`` and ``RESULTS/hardware/*.json``
alone.

``build_report(results_dir)`` is a pure function of those files (and of ``claims.json``, the seed's quoted claims):
the same inputs give the same bytes in REPORT.md and in every figure. Nothing reads a clock, the environment or
the git state, and nothing is planned or simulated here: what the report shows beyond the CSV rows (one decode
step's timeline, the simulator's counts beside the CPU engine's) the runner saved with the rows. Numbers are
formatted by fixed rules (see ``tables.fmt_*``).

The modules, bottom up: ``load`` (reading and typing the files), ``metrics`` (derived quantities over rows),
``tables`` (formatting and the Markdown tables), ``claims`` (the seed's claims and the verdict rules), ``figures``
(one colour and marker per strategy), ``flagship`` (the development / test split, the flagship's targets and its
ablation), ``real`` (E8 and the routing statistics), ``sensitivity`` (E9, and the verdicts across its range),
``e10`` (real ``transformers`` models offloaded), ``sections`` (the Markdown of those sections), and this one
(assembling REPORT.md).

``python -m artifact.report.build --results results`` (or ``python -m artifact report``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from artifact.atomicfile import atomic_write_text
from artifact.report import calibration as K
from artifact.report import claims as C
from artifact.report import figures as F
from artifact.report import load as L
from artifact.report import metrics as M
from artifact.report import sections as X
from artifact.report import tables as T
from artifact.report.e10 import load_e10
from artifact.report.load import E10_FILE

ENV_COLUMNS = ["gpu", "driver", "torch", "cuda", "package_version", "git_commit"]


# --------------------------------------------------------------------------------------------------------------
# REPORT.md
# --------------------------------------------------------------------------------------------------------------


_table_md, _figure_md, _section = X.table_md, X.figure_md, X.section


def _plain(v) -> str:
    """A cell as text; whole floats (integer columns read back as float) without the '.0'."""
    if isinstance(v, (float, np.floating)) and not np.isnan(v) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _unique(df: pd.DataFrame, col: str) -> str:
    vals = sorted({_plain(v) for v in df[col] if str(v) not in ("", "nan")})
    return ", ".join(vals) if vals else "-"


def _what_was_run(raw: Mapping[str, pd.DataFrame], profiles, gpu_checks, timelines, results: Path,
                  routing_stats) -> str:
    lines = ["| file | experiment | rows | executor | repeats | seeds | steps | batches | caches | protocols | "
             "hardware profile | GPU | driver | torch | CUDA | package | git commit |",
             "|" + " --- |" * 17]
    exp = {"sim": "E1-E4, E6; flagship targets", "engine": "E5", "cpu_engine": "E5 (CPU check)",
           "models": "E7; flagship target 1", "real": "E8; flagship targets", "sensitivity": "E9",
           "ablation": "flagship ablation", "frontier": "flagship target 1: prefetch bar swept",
           "horizon": "flagship target 2: MIN with a horizon"}
    for name, df in raw.items():
        lines.append("| " + " | ".join([
            f"raw/{name}.csv", exp.get(name, ""), str(len(df)), _unique(df, "executor"), _unique(df, "repeats"),
            _unique(df, "trace_seed"), _unique(df, "steps"), ", ".join(str(b) for b in sorted(set(df["batch"]))),
            ", ".join(str(c) for c in sorted(set(df["cache"]))), _unique(df, "protocol"), _unique(df, "hardware"),
            *[_unique(df, c) for c in ENV_COLUMNS]]) + " |")
    out = "\n".join(lines) + "\n"
    abl = raw.get("ablation")
    if abl is not None and not abl.empty:
        out += ("\nraw/ablation.csv variants (the flagship with one component off, an optional one on, or its "
                "recency/frequency balance fixed; empty = the full flagship): "
                + ", ".join(f"`{v}`" if v else "(full)" for v in sorted(set(abl["variant"]))) + ".\n")
    e10 = Path(results) / "raw" / E10_FILE
    if e10.is_file():
        f = load_e10(e10)
        vers = "; ".join(f"{k} {_unique(f, k)}" for k in ("device", "gpu", "torch", "transformers", "accelerate",
                                                          "git_commit") if k in f)
        out += (f"\nraw/{E10_FILE} (E10, real `transformers` models offloaded): {len(f)} rows; models "
                f"{_unique(f, 'model')}; arms {_unique(f, 'arm')}; {vers}.\n")
    if routing_stats is not None:
        out += (f"\nraw/routing_stats.json (routing statistics): {len(routing_stats.get('real', {}))} real traces, "
                f"{len(routing_stats.get('synthetic', {}))} synthetic presets, "
                f"{len(routing_stats.get('sensitivity', {}))} swept workloads of E9.\n")
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
    if timelines:
        out += (f"\nStep timelines (raw/timelines.json, for the timeline figure): one decode step of each of "
                f"{len(timelines)} runs, saved by the runner.\n")
    return out


REGENERATE = """\
```bash
# on the GPU machine (H200): measure the hardware profile, then run the grids (each resumable)
python -m artifact calibrate --device cuda -o results/hardware/h200.json
python -m artifact grid sim --out results/raw --hardware h200
python -m artifact grid engine --out results/raw --hardware h200
python -m artifact grid models --out results/raw --hardware h200
python -m artifact grid real --out results/raw --hardware h200          # E8: every strategy on the real traces
python -m artifact grid sensitivity --out results/raw --hardware h200   # E9: locality x coupling, lookahead accuracy
python -m artifact grid ablation --out results/raw --hardware h200      # the flagship, one component off at a time
python -m artifact grid frontier --out results/raw --hardware h200      # target 1: the flagship's prefetch bar swept
python -m artifact grid horizon --out results/raw --hardware h200       # target 2: Belady's MIN with a horizon
python -m artifact.experiments.gpu_checks --out results/raw
python -m artifact.experiments.e10 --out results/raw                    # E10: real transformers models offloaded
# on any machine: the routing statistics of the real traces, the synthetic presets and the E9 sweep
python -m artifact.experiments.routing --out results/raw
# without a GPU: the CPU engine check instead of the engine grid
python -m artifact grid cpu_engine --out results/raw --hardware h200
# the report: a pure function of results/raw/*.csv, results/raw/*.json and results/hardware/*.json
python -m artifact report --results results    # or: python -m artifact.report.build --results results
```
"""

SYNTHETIC_ONLY = """\
- **Routing recorded from real checkpoints.** Every workload here is the calibrated synthetic generator (FACTS.md
  section 2: per-layer skew matched to switch-base-128's encoder routing); no model weights are downloaded on
  these machines, so no decode trace of a trained model was recorded. `python -m artifact trace record` exists for
  anyone who can download a checkpoint.
"""

REAL_LIMITS = """\
- **Batches of real routing.** The real traces (E8) are single prompts, one sequence each: no batch can be formed
  honestly from them, so real routing is measured at batch 1 only, and every batch above 1 is on synthetic routing
  (calibrated on them: see the routing statistics). They were captured with quantised weights and fewer experts per
  token than the models' own top-k, on a phone; no trace of a trained checkpoint was recorded on these machines
  (no model weights are downloaded here). E10's models have random weights: their routing is not real routing.
"""

NOT_MEASURED = """\
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


_DEFINITIONS = """\
- **Latency per step** (ms): time of one decode step for the whole batch (every MoE layer, every token of the
  batch): the run's total time divided by its steps. Simulator rows: the calibrated simulator's time of the plan;
  engine rows: the median wall time over timed repeats, with min and max. Per-token latency is latency per step
  divided by the batch size.
- **Requests**: token-expert pairs (each token asks each MoE layer for its top-k experts). **Unique requests**: the
  (COMPUTE, expert) pairs the plan runs: under `batched` the distinct experts of each layer-step; under `per_item`
  the distinct experts of each item and layer-step, unless the strategy is batch-aware (`intelligent_dedup`).
- **Protocols**: `batched` loads each expert once per layer-step for every token of the batch, as every real engine
  does (FACTS.md section 4); `per_item` serves each batch item as if alone (the seed's accounting for its paper
  baselines). Under `per_item` only batch-aware strategies share an expert between items.
- **Memory savings** at batch B (ours): `1 - unique_requests / requests` under `batched`: the share of token-expert
  requests that deduplication folds because several tokens of one layer-step need the same expert. It is a property
  of the routing (the same for every strategy); we read it from the `on_demand` rows at the default cache.
- **Bandwidth savings** at batch B (ours): `1 - bytes_h2d(batched) / bytes_h2d(per_item)` for the same strategy,
  reported for `on_demand` (every miss is a load); and, as the seed compared, `intelligent_dedup`'s bytes against
  the mean bytes of the paper baselines (`on_demand`, `pregated`, `expertflow`) under `per_item`:
  `1 - bytes_h2d(intelligent_dedup) / mean bytes_h2d(paper baselines, per_item)`. Unlike memory savings it depends
  on the cache: a folded request might have been a hit anyway.
- **Expert reuse factor**: the seed does not define it (its column runs from {reuse_first} at batch {b_first} to
  {reuse_last} at batch {b_last}). Ours: `requests / unique_requests` under `batched`: the mean number of tokens
  served by each expert that is loaded or hit in a layer-step; 1.0 means no sharing.
- **Speedup** of strategy S over R: mean latency per step of R divided by that of S, each the mean over the batch
  sizes of the grid, computed per seed; we print the mean over seeds and [min, max]. The seed's Avg Latency is a
  mean over its batch sizes too: its Intelligent+Deduplication figure, {flag_avg} ms, equals the mean of its
  Our Best column over batch {b_first} to {b_last} ({best_mean} ms).
- **Paper Avg** (the seed's term): at each batch, the mean latency of the paper baselines `on_demand`, `pregated`,
  `expertflow`. **Our Best**: the lowest latency among the seed's own methods `topk`, `multi_lookahead`,
  `intelligent_dedup`. **Improvement**: Paper Avg / Our Best.
- **Hit rate**: hits / unique requests (a hit: the expert was resident or already loaded ahead when its COMPUTE
  was decided).
- **Gap to the bounds**: a strategy's loads / `belady`'s loads (Belady's MIN: fewest loads with demand fetch) and
  its latency / `oracle`'s latency (the fastest perfect-prefetch construction), both at the same cache size.
  `gpu_only` holds every expert and is not iso-cache.
- **Relative error** (E5): (simulator - engine) / engine, on the same plan.
- **Same-information strategies** (the flagship's targets): the online strategies of the registry whose `sees` is
  `past`, as the flagship's; those that need a lookahead only where the trace carries one.
- **Gap closed** (to Belady, per real trace and cache): (loads of `on_demand` - loads of the flagship) / (loads of
  `on_demand` - loads of `belady`).
"""


def definitions(claims: Mapping) -> str:
    """The Definitions section; the seed's figures it mentions come from ``claims.json``."""
    reuse = claims["tables"]["savings_by_batch"]["rows"]
    best = claims["tables"]["batch_scaling"]["rows"]
    flag = {r["strategy"]: r for r in claims["tables"]["strategy_summary"]["rows"]}[M.flagship(claims)]
    return _DEFINITIONS.format(reuse_first=f"{reuse[0]['expert_reuse_factor']:.3f}", b_first=reuse[0]["batch"],
                               reuse_last=f"{reuse[-1]['expert_reuse_factor']:.3f}", b_last=reuse[-1]["batch"],
                               flag_avg=T.fmt_seed_num(flag["avg_latency_ms"]),
                               best_mean=T.fmt_seed_num(round(float(np.mean([r["our_best_ms"] for r in best])))))


def build_report(results_dir: str | os.PathLike = "results", out: str | os.PathLike | None = None) -> Path:
    """Write ``results_dir/figures/*.png|pdf`` and ``results_dir/REPORT.md`` (or ``out``); returns its path."""
    results = Path(results_dir)
    out_path = Path(out) if out is not None else results / "REPORT.md"
    base = out_path.parent
    fig_dir = results / "figures"
    raw = L.read_raw(results)
    claims = C.load_claims()
    names = set()
    for df in raw.values():
        names |= set(df["hardware"])
    profiles = L.read_profiles(results, names)
    hw = T.hardware_text(profiles)
    gpu_checks = L.read_gpu_checks(results)
    timelines = L.read_timelines(results)
    sim = raw.get("sim")
    src = claims["source"]

    parts = [f"# MoE expert offloading: measured results against the seed report\n\n"
             f"Generated by `python -m artifact report` from `raw/*.csv`, `raw/*.json` and `hardware/*.json` in this "
             f"folder; every number below comes from those files, except the seed's claims, quoted from "
             f"`{src['file']}` (\"{src['title']}\", {src['date']}) via `artifact/report/claims.json`. Rebuilding from "
             "the same files gives byte-identical output.\n\n"]

    # Executive summary: the claims.
    if sim is not None and not sim.empty:
        ct = C.claims_checked(sim, claims, hw)
        rules = "\n".join(f"{i + 1}. {r}" for i, r in enumerate(ct.frame["rule"]))
        body = (_table_md(ct) + f"\nVerdict rules (tolerance +-{100 * C.TOLERANCE:g}% relative; `batched` decides, "
                "`per_item` only qualifies):\n\n" + rules + "\n\nWhat the seed itself is inconsistent about:\n\n"
                + "\n".join(f"- {c['claim']}: {c['note']}" for c in claims["claims"] if c.get("note")) + "\n")
    else:
        body = "raw/sim.csv is absent: no claim can be checked.\n"
    body += "\n" + X.summary_extra(raw, claims, M.flagship(claims))
    parts.append(_section("Executive summary: the seed's claims checked", body))

    routing_stats = L.read_routing_stats(results)
    parts.append(_section("What was run", _what_was_run(raw, profiles, gpu_checks, timelines, results,
                                                         routing_stats)))
    parts.append(_section("How to regenerate", REGENERATE))
    parts.append(_section("Definitions", definitions(claims)))

    plots: dict[str, F.Plot] = {}
    if sim is not None and not sim.empty:
        plots["fig1"] = F.fig_latency_by_strategy(sim, claims, fig_dir, hw)
        plots["fig2"] = F.fig_dedup_savings(sim, claims, fig_dir, hw)
        plots["fig3"] = F.fig_latency_vs_batch(sim, fig_dir, hw)
        plots["fig4"] = F.fig_cache_sizes(sim, fig_dir, hw)
        trows = M.timeline_rows(sim, timelines)
        plots["fig6"] = F.fig_timeline([timelines[pid] for pid in trows["point_id"]], trows, fig_dir, hw)
        plots["fig7"] = F.fig_gaps(sim, fig_dir, hw)
    engine = raw.get("engine")
    plots["fig5"] = F.fig_sim_vs_engine(engine, fig_dir, hw)

    strategies = "\n".join(f"| `{n}` | {s.summary} | {s.source} | {s.sees} | {'yes' if s.needs_lookahead else 'no'} "
                           f"| {'yes' if s.batch_aware else 'no'} | {s.role} |" for n, s in M.STRATEGIES.items())
    mapping = "; ".join(f"{k} -> `{v}`" for k, v in claims["method_map"].items())
    parts.append(_section("Strategies", "| strategy | what it stands for | source | sees | needs lookahead | "
                                        "batch-aware | role |\n| --- | --- | --- | --- | --- | --- | --- |\n"
                          + strategies + f"\n\nSeed method names map to ours as: {mapping}. `sees`: what a "
                          "strategy may look at (past: the past, the current layer's routing and the trace's "
                          "lookahead, as a real engine could; next_layer, path: a stated oracle arm of a paper's "
                          "predictor; future: a bound). A strategy that needs a lookahead is refused on a trace "
                          "without one. In every figure each strategy keeps one colour and marker; the flagship "
                          f"`{M.flagship(claims)}` is the thick black line."))

    if sim is not None and not sim.empty:
        e1 = [T.strategy_summary(sim, claims, hw)] + [T.latency_per_batch(sim, p, hw) for p in M.PROTOCOLS
                                                      if (sim["protocol"] == p).any()]
        parts.append(_section("E1. Latency and speedup of every strategy, iso-cache",
                              "\n".join(_table_md(t) for t in e1) + "\n" + _figure_md(plots["fig1"], base)
                              + "\n" + _figure_md(plots["fig3"], base) + "\n" + _figure_md(plots["fig6"], base)))
        parts.append(_section("E2. What deduplication saves, by batch size",
                              _table_md(T.savings_table(sim, claims, hw)) + "\n" + _figure_md(plots["fig2"], base)))
        parts.append(_section("E3. How strategies scale with batch size",
                              _table_md(T.scaling_table(sim, claims, hw))))
        bs = sorted(set(sim["batch"]))
        e4_batches = sorted({M.mid_batch(bs), max(bs)})
        parts.append(_section("E4. Hit rate and latency across cache sizes",
                              "\n".join(_table_md(T.cache_table(sim, b, hw)) for b in e4_batches) + "\n"
                              + _figure_md(plots["fig4"], base)))
    else:
        for t in ("E1", "E2", "E3", "E4"):
            parts.append(_section(t, "raw/sim.csv is absent.\n"))

    e5 = []
    if engine is not None and not engine.empty:
        per, summ = T.engine_table(engine, hw)
        e5 += [_table_md(summ)]
        names = sorted({str(h) for h in engine["hardware"] if str(h)})
        agreements = K.read_agreements(results)
        e5.append(K.calibration_text(K.read_profile_json(results, names[0]) if names else None, agreements))
        e5 += [_table_md(K.agreement_table(k, a)) for k, a in agreements.items()]
        e5.append(_table_md(per))
    else:
        e5.append("The engine grid did not run on a GPU for these results (raw/engine.csv is absent), so the "
                  "simulator's times are not checked against measured ones here.")
        cpu = raw.get("cpu_engine")
        if cpu is not None and not cpu.empty:
            ct = T.cpu_engine_table(cpu, hw)
            n_ok = int((ct.frame["match"] == True).sum())  # noqa: E712  (object column: True / False / None)
            n_refused = int(cpu["refused"].sum())
            e5.append(f"The CPU engine check executed real plans: {n_ok} of {len(ct.frame) - n_refused} "
                      "configurations made exactly the decisions the simulator makes on the same configuration"
                      + (f" ({n_refused} more refused to run, see the table)" if n_refused else "") + ".\n")
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

    real = raw.get("real")
    parts.append(_section("Real against synthetic routing", X.routing_stats(routing_stats)))
    parts.append(_section("E8. Every strategy on real decode traces", X.e8(real, fig_dir, base, hw)))
    parts.append(_section("E9. Sensitivity: which strategy wins where", X.e9(raw.get("sensitivity"), routing_stats,
                                                                             M.flagship(claims), fig_dir, base, hw)))
    parts.append(_section("Flagship against its targets", X.flagship_targets(raw, M.flagship(claims))))
    parts.append(_section("E10. A real transformers MoE model offloaded", X.e10(results, fig_dir, base)))
    limits = REAL_LIMITS if real is not None and not real.empty else SYNTHETIC_ONLY
    parts.append(_section("What we did not measure", limits + NOT_MEASURED))
    parts.append(_section("Source of the claims",
                          f"`{src['file']}`: \"{src['title']}\", {src['date']}; model: {src['model']}; framework: "
                          f"{src['framework']}; runs: {src['runs']}. {src['encoding_note']}.\n"))

    atomic_write_text(out_path, "".join(parts).rstrip() + "\n")
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
