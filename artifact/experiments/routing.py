"""Routing statistics the report sets side by side: every vendored real trace against the synthetic preset of its
model family, and the workloads of the E9 sweep as measured (``python -m artifact.experiments.routing --out DIR``
writes ``DIR/routing_stats.json``; ``reproduce`` runs it).

Each entry is the output of :func:`artifact.traces.stats.trace_stats` (decode tokens) reduced to the figures a cache
cares about: top-10% share, temporal locality, first-choice repeat, next-token reuse by router rank, adjacent-layer
predictability (with its note), lookahead accuracy, unique experts per layer at batch 1 and 8, and the trace's shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from artifact.atomicfile import atomic_write_text
from artifact.experiments import grids
from artifact.experiments.runs import WorkloadSpec, load_trace
from artifact.traces.stats import trace_stats
from artifact.traces.vendored import load as load_vendored
from artifact.traces.vendored import names as vendored_names

SYNTHETIC_SEQUENCES, SYNTHETIC_TOKENS = 64, 128  # the pool the synthetic figures are measured on (seed 0)
_KEYS = ("top10_share_mean", "temporal_locality_mean", "first_choice_repeat_mean", "reuse_by_rank",
         "cross_layer_accuracy_mean",
         "cross_layer_split", "cross_layer_note", "lookahead_accuracy_mean", "tokens", "sequences", "layers",
         "num_experts", "top_k_used", "native_top_k", "model", "source")


def _summary(st: dict) -> dict:
    out = {k: st.get(k) for k in _KEYS}
    for b in ("1", "8"):
        u = st["unique_experts"].get(b)
        out[f"unique_experts_b{b}"] = None if u is None else u["mean"]
    return out


def routing_stats() -> dict:
    real = {}
    for name in vendored_names():
        tr = load_vendored(name)
        real[name] = _summary(trace_stats(tr, batches=(1, 8)))
    synthetic = {}
    models = sorted({real[n]["model"] for n in real} | {grids.DEFAULT_MODEL, "mixtral-8x7b", "olmoe-1b-7b"})
    for model in models:
        ws = WorkloadSpec(model, None, SYNTHETIC_SEQUENCES, SYNTHETIC_TOKENS, 0)
        synthetic[model] = _summary(trace_stats(load_trace(ws), batches=(1, 8)))
    sweep = {}
    for loc in grids.SENSITIVITY_LOCALITY:
        for coup in grids.SENSITIVITY_COUPLING:
            ws = WorkloadSpec(grids.DEFAULT_MODEL, None, SYNTHETIC_SEQUENCES, SYNTHETIC_TOKENS, 0,
                              (("locality", loc), ("cross_layer", coup)))
            sweep[ws.label] = {"locality": loc, "cross_layer": coup,
                               **_summary(trace_stats(load_trace(ws), batches=(1, 8)))}
    return {"about": "routing statistics of decode tokens (artifact.traces.stats.trace_stats); synthetic figures "
                     f"on a pool of {SYNTHETIC_SEQUENCES} x {SYNTHETIC_TOKENS} tokens, seed 0",
            "real": real, "synthetic": synthetic, "sensitivity": sweep}


def write(out_dir: str | Path) -> Path:
    path = Path(out_dir) / "routing_stats.json"
    atomic_write_text(path, json.dumps(routing_stats(), indent=1, sort_keys=True, allow_nan=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m artifact.experiments.routing", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/raw", help="folder of routing_stats.json")
    args = p.parse_args(argv)
    print(f"wrote {write(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
