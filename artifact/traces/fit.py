"""Fit the synthetic generator to a real trace's per-token routing.

What is fitted (the generator's model is in :mod:`artifact.traces.synthetic`):

- **popularity** per layer: a Zipf-Mandelbrot law ``p(r) ∝ (r + q) ** -s`` over all ``E`` ranks, ``(s, q)`` minimising
  KL(real || fit) of the layer's sorted selection shares (every slot of the top-k) on a grid, the same law for the
  first and the other choices;
- **temporal locality** (the probability that a token copies the previous token's routing at a layer): bisection
  until the generated mean ``temporal_locality`` (share of a token's experts the previous token also used at that
  layer, :func:`artifact.traces.stats.trace_stats`) equals the real one;
- **adjacent-layer coupling** (the probability that a token keeps its popularity quantile from layer ``l - 1`` to
  ``l``): bisection until the generated mean adjacent-layer predictability (``cross_layer_accuracy``) equals the
  real one, both measured with the same time-split estimator (the real trace is one sequence, so the generated one
  is a single sequence too, ``repeat`` times longer for a steadier figure). The two bisections alternate twice
  because each parameter moves both figures a little.

What is not fitted, and stays an assumption: the first-choice repeat (the generator copies a token's whole top-k,
so it cannot match the overlap and the first-choice repeat at once: ``first_choice_repeat`` is reported beside the
real one), the lookahead accuracy (real captures have no lookahead field), sequence lengths and gates.

``python -m artifact.traces.fit vendored:qwen3-30b-a3b`` prints the fit as JSON; the synthetic presets of the models
with a vendored trace hold exactly these numbers (a test re-fits and compares).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import numpy as np

from artifact.atomicfile import json_text
from artifact.models import ModelSpec
from artifact.traces.stats import trace_stats
from artifact.traces.trace import DECODE, Trace, phase_tokens

_S_GRID = np.round(np.arange(0.0, 8.0001, 0.02), 4)
_Q_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
ROUNDS = 2  # alternations of the two bisections
STEPS = 14  # bisection steps per parameter (resolution 1/16384 of the unit interval)


@dataclass(frozen=True)
class Fit:
    popularity_exponent: tuple[float, ...]
    popularity_offset: tuple[float, ...]
    locality: float
    cross_layer: float
    real: dict  # the real trace's figures the fit targets, and the first-choice repeat it does not
    achieved: dict  # the same figures on the generated trace

    def to_json(self) -> dict:
        return {"popularity_exponent": list(self.popularity_exponent),
                "popularity_offset": list(self.popularity_offset), "locality": self.locality,
                "cross_layer": self.cross_layer, "real": self.real, "achieved": self.achieved}


def fit_popularity(counts: np.ndarray) -> tuple[float, float]:
    """``(s, q)`` of the Zipf-Mandelbrot law closest (KL of sorted shares) to one layer's selection counts ``[E]``."""
    real = np.sort(counts.astype(np.float64))[::-1]
    real = real / real.sum()
    r = np.arange(1, real.shape[0] + 1, dtype=np.float64)
    best, best_kl = (0.0, 0.0), np.inf
    nz = real > 0
    for q in _Q_GRID:
        logw = -_S_GRID[:, None] * np.log(r + q)[None, :]  # [S, E]
        logw -= logw.max(axis=1, keepdims=True)
        w = np.exp(logw)
        w /= w.sum(axis=1, keepdims=True)
        kl = (real[nz][None, :] * (np.log(real[nz])[None, :] - np.log(w[:, nz]))).sum(axis=1)  # [S]
        i = int(np.argmin(kl))
        if kl[i] < best_kl - 1e-12:
            best, best_kl = (float(_S_GRID[i]), float(q)), float(kl[i])
    return best


def _figures(st: dict) -> dict:
    return {"temporal_locality": st["temporal_locality_mean"], "cross_layer_accuracy": st["cross_layer_accuracy_mean"],
            "first_choice_repeat": st["first_choice_repeat_mean"], "top10_share": st["top10_share_mean"]}


def fit(trace: Trace, seed: int = 0, repeat: int = 8) -> Fit:
    """Fit the generator to ``trace``'s decode tokens (every token when it marks no phase)."""
    from artifact.traces.synthetic import SyntheticParams, generate

    real_trace = phase_tokens(trace, DECODE)
    L, E, K = real_trace.layers, real_trace.num_experts, real_trace.top_k
    real = _figures(trace_stats(real_trace, batches=()))
    if real["temporal_locality"] is None or real["cross_layer_accuracy"] is None:
        raise ValueError("fit: the trace is too short to measure temporal locality and adjacent-layer predictability")
    counts = np.zeros((L, E), np.int64)
    for lyr in range(L):
        counts[lyr] = np.bincount(real_trace.experts[:, lyr, :].reshape(-1).astype(np.int64), minlength=E)
    pop = [fit_popularity(counts[lyr]) for lyr in range(L)]
    model = ModelSpec(f"fit:{trace.meta.get('model', '?')}", L, E, K, 1, 1, "relu")
    tokens = int(real_trace.seq_lengths.max()) * repeat
    base = SyntheticParams(popularity_exponent=tuple(p[0] for p in pop), popularity_offset=tuple(p[1] for p in pop),
                           unused_experts=(0,), lookahead_accuracy=None, length_spread=0.0, locality=0.0,
                           cross_layer=0.0, permutation_seed=seed)

    def measure(params: SyntheticParams) -> dict:
        return _figures(trace_stats(generate(model, 1, tokens, seed, params=params), batches=()))

    def bisect(params: SyntheticParams, field: str, key: str) -> SyntheticParams:
        lo, hi = 0.0, 1.0
        for _ in range(STEPS):
            mid = (lo + hi) / 2
            if measure(replace(params, **{field: mid}))[key] < real[key]:
                lo = mid
            else:
                hi = mid
        return replace(params, **{field: round((lo + hi) / 2, 4)})

    params = base
    for _ in range(ROUNDS):
        params = bisect(params, "locality", "temporal_locality")
        params = bisect(params, "cross_layer", "cross_layer_accuracy")
    return Fit(base.popularity_exponent, base.popularity_offset, float(params.locality), float(params.cross_layer),
               real, measure(params))


def main(argv: list[str] | None = None) -> int:
    from artifact.traces.vendored import open_trace

    p = argparse.ArgumentParser(prog="python -m artifact.traces.fit", description=__doc__.split("\n\n")[0])
    p.add_argument("trace", help="trace file (.npz) or vendored:NAME")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(json_text(fit(open_trace(args.trace), args.seed).to_json(), indent=1))  # strict JSON
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
