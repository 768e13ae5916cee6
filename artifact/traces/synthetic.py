"""Seeded synthetic routing traces, calibrated to real router statistics.

The generator is a small probabilistic model of a router, one effect per parameter of :class:`SyntheticParams`:

- **Popularity skew** (per layer). Each layer has a first-choice popularity over the experts *ranked* by popularity,
  a Zipf-Mandelbrot law ``p(r) ∝ (r + q) ** -s`` over ranks ``r = 1 .. E - z`` with the last ``z`` ranks never used.
  A seeded per-layer permutation maps ranks to expert ids, so the popular experts differ from layer to layer. The
  permutation is a property of the model, not of the prompt: by default it comes from ``permutation_seed`` (not
  ``seed``), so traces made with different seeds look like different prompts to the same model.
- **Temporal locality** ``locality``: with this probability a token copies the previous token's routing at the same
  layer (its whole top-k, in order); the first token of a sequence never copies. The measured repeat rate is higher
  than ``locality``: a fresh draw repeats by chance (``sum p(r)**2`` for the first choice), and with ``cross_layer > 0``
  a repeat at layer ``l - 1`` propagates to layer ``l``. With ``cross_layer = 0`` the first-choice repeat rate is
  ``locality + (1 - locality) * sum p(r)**2``.
- **Cross-layer correlation** ``cross_layer``: each token carries a popularity quantile ``u`` per layer and takes
  the expert whose rank interval of the layer's cumulative popularity contains ``u``. With probability ``cross_layer``
  the token keeps layer ``l - 1``'s ``u`` at layer ``l``, else it draws a fresh one. This is a fixed, rank-preserving
  transition map (the r-th most popular expert of layer ``l - 1`` leads to the r-th most popular of layer ``l`` when
  the two layers are shaped alike; in general it is the monotone transport between their popularities), and because
  ``u`` stays Uniform(0, 1) whichever way it was chosen, every layer's marginal popularity is exactly its own law.
- **Top-k > 1**: the first choice comes from ``u`` as above; the other ``k - 1`` are drawn without replacement from a
  second per-layer law (``other_exponent``/``other_offset``; the same law as the first choice when those are None)
  with the Gumbel-top-k trick in its exponential form (the ``k - 1`` smallest ``X_r / p(r)``, ``X_r ~ Exp(1)``),
  excluding the first choice. That is Plackett-Luce sampling: ``k`` distinct experts per token, in router order. Real
  routers' first choice is more skewed than their top-k selections (OLMoE: top-10% share 0.33-0.44 of first choices
  against 0.20-0.24 of top-8 selections), hence the two laws. The ``X`` vector is carried across layers and tokens
  exactly as ``u`` is, so the cross-layer and temporal effects apply to the whole top-k.
- **Lookahead** ``lookahead_accuracy``: the trace's optional ``lookahead`` field. For layer ``l >= 1`` each true top-k
  id is kept with this probability, else replaced by a distractor drawn from the layer's popularity among experts not
  in the true top-k; so the prediction holds ``k`` distinct ids and contains, in expectation, this fraction of the
  true ones. Layer 0 holds -1. None leaves the field out.
- **Sequence lengths** ``length_spread``: lengths are ``max(1, round(tokens * exp(sigma * Z - sigma**2 / 2)))``, a
  lognormal around the mean ``tokens`` with log-spread ``sigma``; 0 makes every sequence ``tokens`` long.
- **Gates** (float16): for top-1 the router probability of the chosen expert, ``1/E + (1 - 1/E) * Beta(a, a)``; for
  top-k > 1 weights summing to 1, ``Dirichlet(a, ..., a)`` sorted in descending (router) order; ``a`` is
  ``gate_concentration``. Gates are drawn independently of the routing (nothing downstream reads their correlation).

Random streams: lengths, routing, lookahead and gates each have their own stream spawned from ``seed``, and the
routing stream draws the same numbers whatever the parameter values (common random numbers). So changing
``lookahead_accuracy`` leaves the ``experts`` array unchanged, and a sweep over ``locality`` or ``cross_layer`` is not
confounded with resampling noise. Only layers are looped over; every token-level step is a numpy array operation.

Per-layer parameters are tuples; a tuple whose length differs from the model's layer count is stretched by relative
depth (layer ``l`` of ``L`` uses entry ``floor(l * n / L)``), so a 1-tuple applies to every layer.

Calibration (the one-off fits were run outside the package, which never reads the calibration data at run time):

- google/switch-base-128: top-1 expert counts of the 6 encoder MoE layers 1,3,5,7,9,11 (128 experts, 206,866 tokens
  per layer, HF SwitchTransformers forward pass over 60+ HF datasets, max length 100), from specMoE (MIT,
  github.com/cyanmishra92/specMoE) ``expert_statistics_3d.json`` ``expert_usage_by_layer``. Per layer, ``z`` is the
  number of never-used experts; ``(s, q)`` minimise KL(real || fit) of the sorted shares subject to the fit's top-13
  share equalling the real one. The preset has 12 MoE layers (6 encoder + 6 decoder); real counts exist only for the
  encoder, so decoder layers 6-11 repeat the encoder fits of layers 0-5 (**assumption**).
- allenai/OLMoE-1B-7B and Mixtral-8x7B: ``expert_counts_top1`` (first choice) and ``expert_counts`` (all top-k
  selections) of layers 0, 7, 15, pooled over the pretraining domains arxiv, book, c4, github, wikipedia (~208,896
  prefill tokens each), from allenai/OLMoE (Apache-2.0, arXiv:2409.02060) ``scripts/routing_output``. The first-choice
  law is fitted as for Switch; the other-choices law so that the simulated top-k selections match the real top-10%
  share (min KL otherwise). Layers without data take the nearest measured layer (0-3 -> 0, 4-11 -> 7, 12+ -> 15).
  ``cross_layer`` is set so the generated in-sample first-choice lookup accuracy L0->L7 / L7->L15 matches the pooled
  ``expert_counts_crosslayer_top1`` figures (OLMoE 0.21 / 0.31, Mixtral 0.20 / 0.23), jointly with Mixtral's
  ``locality`` (arXiv:2401.04088 Table 5). Qwen1.5-MoE and DeepSeek-V2-Lite have no data: they reuse OLMoE's fits
  by relative depth (**assumption**).
- Everything else (lookahead accuracy, length spread, gate concentration, Switch's cross-layer coupling, OLMoE's
  temporal locality) is an **assumption**, marked as such beside its value.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from artifact.models import ModelSpec, get_model
from artifact.traces.trace import Trace, make_meta

# --- Real figures the fits are checked against (cited constants) ---------------------------------------------------

# google/switch-base-128 encoder MoE layers 1,3,5,7,9,11: share of the 206,866 top-1 selections taken by the 13
# (ceil 10% of 128) most used experts, exact from specMoE (MIT) expert_statistics_3d.json expert_usage_by_layer.
# FACTS.md rounds these to 0.27/0.64/0.45/0.49/0.51/0.71.
SWITCH_ENCODER_LAYERS = (1, 3, 5, 7, 9, 11)
SWITCH_TOP10_SHARE = (
    55342 / 206866,  # 0.2675
    133053 / 206866,  # 0.6432
    92627 / 206866,  # 0.4478
    101935 / 206866,  # 0.4928
    105467 / 206866,  # 0.5098
    147471 / 206866,  # 0.7129
)
# Never-used experts per encoder layer, same counts (FACTS.md: "1-7 experts per layer never used").
SWITCH_UNUSED = (1, 2, 4, 4, 4, 7)
# Zipf-Mandelbrot fit per encoder layer (s, q); KL(real || fit) 0.024/0.016/0.009/0.014/0.020/0.033 nats; fitted
# top-13 share equals the real one; normalised entropy within 0.024 and Gini within 0.04 of the real counts.
SWITCH_EXPONENT = (0.4774, 1.0882, 1.3405, 1.3857, 1.4481, 1.5823)
SWITCH_OFFSET = (0.0, 0.0, 7.8930, 6.4495, 6.6383, 2.2824)

# OLMoE-1B-7B (64 experts, top-8), layers 0, 7, 15, pooled over arxiv/book/c4/github/wikipedia, allenai/OLMoE
# scripts/routing_output (arXiv:2409.02060): top-10% (7 of 64) share of first choices and of all top-8 selections.
OLMOE_MEASURED_LAYERS = (0, 7, 15)
OLMOE_TOP10_SHARE_FIRST = (0.3276, 0.4130, 0.4421)
OLMOE_TOP10_SHARE_TOPK = (0.1964, 0.2376, 0.2372)
# First-choice fit (KL 0.046/0.014/0.024) and other-choices fit (selection KL 0.003/0.002/0.001), no unused experts.
OLMOE_EXPONENT = (0.6474, 0.9634, 1.0467)
OLMOE_OFFSET = (0.3482, 1.5040, 1.6244)
OLMOE_OTHER_EXPONENT = (0.3981, 0.5675, 0.9775)
OLMOE_OTHER_OFFSET = (3.1623, 3.1623, 14.6780)
# Pooled in-sample first-choice lookup accuracy (expert_counts_crosslayer_top1), L0->L7 and L7->L15, and the per-step
# cross_layer that reproduces each with the generator at the preset's locality (bisection on 3 seeds x 400 x 128
# tokens, +-0.005): layers 1-7 take the first, layers 8+ the second. The data constrain only 7-8-layer distances;
# under this Markov model the coupling decays geometrically with distance, so if real routing keeps a longer memory
# the adjacent-layer predictability implied here is on the high side: trace_stats' held-out l->l+1 accuracy is
# 0.64-0.89 by layer pair, mean 0.83 (Mixtral: 0.66-0.80, mean 0.78).
OLMOE_CROSSLAYER_ACCURACY = (0.2085, 0.3087)
OLMOE_CROSS_LAYER = (0.843, 0.915)

# Mixtral-8x7B (8 experts, top-2), layers 0, 7, 15, same source and pooling; the top-10% of 8 experts is 1 expert.
MIXTRAL_MEASURED_LAYERS = (0, 7, 15)
MIXTRAL_TOP10_SHARE_FIRST = (0.1571, 0.1433, 0.1439)
MIXTRAL_TOP10_SHARE_TOPK = (0.1479, 0.1338, 0.1437)
# Near-uniform layers: the fit runs to the edge of the offset grid (q = 100), where Zipf-Mandelbrot approaches an
# exponential decay over ranks. First-choice KL 0.007/0.0002/0.009, selection KL 0.0002/0.0001/0.008.
MIXTRAL_EXPONENT = (7.1178, 4.1608, 4.2860)
MIXTRAL_OFFSET = (100.0, 100.0, 100.0)
MIXTRAL_OTHER_EXPONENT = (0.1041, 0.0098, 4.8697)
MIXTRAL_OTHER_OFFSET = (0.0, 0.0, 100.0)
MIXTRAL_CROSSLAYER_ACCURACY = (0.1951, 0.2297)
MIXTRAL_CROSS_LAYER = (0.748, 0.798)  # calibrated as OLMoE's; layers 16-31 (no data) keep the second
# Mixtral arXiv:2401.04088 Table 5: the next token repeats the first-choice expert 14-28% of the time by layer.
MIXTRAL_FIRST_CHOICE_REPEAT = (0.14, 0.28)


@dataclass(frozen=True)
class SyntheticParams:
    """One field per modelled effect; see the module docstring for the model and the presets for sources.

    The defaults here are the generic ones used for a model without a preset: all are **assumptions**.
    """

    # (a) popularity of the first choice per layer: Zipf-Mandelbrot exponent s, offset q, never-used experts z.
    popularity_exponent: tuple[float, ...] = (1.0,)  # assumption: plain Zipf
    popularity_offset: tuple[float, ...] = (0.0,)
    unused_experts: tuple[int, ...] = (0,)
    # law of the other k - 1 choices (top-k > 1); None = the first choice's law (plain Plackett-Luce).
    other_exponent: tuple[float, ...] | None = None
    other_offset: tuple[float, ...] | None = None
    # (b) probability a token copies the previous token's routing at the same layer.
    locality: float | tuple[float, ...] = 0.05  # assumption
    # (c) probability layer l keeps layer l-1's popularity quantile (entry 0 of a per-layer tuple is unused).
    cross_layer: float | tuple[float, ...] = 0.5  # assumption
    # (d) fraction of the true top-k ids the lookahead prediction contains; None = no lookahead field.
    lookahead_accuracy: float | None = 0.8  # assumption
    # (e) log-spread sigma of the lognormal sequence lengths around the mean.
    length_spread: float = 0.25  # assumption
    # Beta / Dirichlet concentration of the gates.
    gate_concentration: float = 1.0  # assumption: uniform on the simplex
    # seed of the per-layer rank -> expert id permutations; None = derive from the generator's seed.
    permutation_seed: int | None = 0


def _nearest_measured(measured_layers: tuple[int, ...], values: tuple, layers: int) -> tuple:
    """Give each of ``layers`` layers the value of the nearest measured layer (ties go to the earlier one)."""
    ml = np.asarray(measured_layers)
    return tuple(values[int(np.argmin(np.abs(ml - lyr)))] for lyr in range(layers))


def _two_segments(layers: int, boundary: int, values: tuple[float, float]) -> tuple[float, ...]:
    """``cross_layer`` per layer: entry 0 unused, layers 1..boundary take values[0], later layers values[1]."""
    return tuple([0.0] + [values[0]] * boundary + [values[1]] * (layers - 1 - boundary))


def _olmoe_like(layers: int) -> dict:
    """OLMoE's fits on a model of ``layers`` layers, its measured layers 0, 7, 15 of 16 mapped by relative depth."""
    measured = tuple(round(m * layers / 16) for m in OLMOE_MEASURED_LAYERS)
    return {
        "popularity_exponent": _nearest_measured(measured, OLMOE_EXPONENT, layers),
        "popularity_offset": _nearest_measured(measured, OLMOE_OFFSET, layers),
        "unused_experts": (0,),
        "other_exponent": _nearest_measured(measured, OLMOE_OTHER_EXPONENT, layers),
        "other_offset": _nearest_measured(measured, OLMOE_OTHER_OFFSET, layers),
        "cross_layer": _two_segments(layers, measured[1], OLMOE_CROSS_LAYER),
    }


# Lookahead accuracy of the presets, an **assumption**: a training-free pre-gate (the next router applied to this
# layer's hidden state) mispredicts some experts; a third-party summary of mixtral-offloading (arXiv:2312.17238)
# reports speculative next-layer recall of 80-90% for Mixtral (unverified against the paper's figure).
_LOOKAHEAD_ACCURACY = 0.85
# Lengths, an **assumption**: the switch-base-128 counts come from sequences up to 100 tokens of mixed datasets; no
# length distribution is published with them.
_LENGTH_SPREAD = 0.25
# Temporal locality of the top-k presets: Mixtral arXiv:2401.04088 Table 5 (first choice repeats 14-28% by layer,
# random 12.5%). Calibrated jointly with MIXTRAL_CROSS_LAYER (the coupling propagates repeats between layers): the
# mixtral preset's generated first-choice repeat is 0.21 on average, the middle of that range, 0.17-0.22 by layer
# (64 x 128 tokens, seeds 0-2; locality 0 gives 0.125, chance alone). No published temporal figure exists for OLMoE,
# Qwen or DeepSeek: they take the same value (**assumption**); olmoe's generated repeat is then 0.07-0.22 by layer.
LOCALITY_TOPK = 0.043
# Switch: FACTS.md section 2, within a ~100-token sequence the top-1 expert repeats for the next token 1-10% of the
# time (uniform 0.8%). The fitted popularity alone repeats 1.2-7.4% by chance (sum p^2 per layer) and the cross-layer
# coupling propagates repeats between layers, so a small copy probability suffices: the generated repeat is
# 0.02-0.105 by layer, mean 0.063 (64 x 128 tokens, seeds 0-2; locality 0 gives 0.011-0.075, mean 0.038).
LOCALITY_SWITCH = 0.01

# --- Presets fitted to real per-token decode routing (artifact.traces.fit on the vendored traces) ---------------------
# Qwen3-30B-A3B, gemma-4-26B-A4B and gpt-oss-120b decode traces (BigMoeOnEdge, Apache-2.0, one prompt each; see
# artifact/traces/data/bigmoeonedge-2026-07-15/README.md), decode tokens, the captures' top-k (6, 6, 2). Per layer,
# (s, q) of the Zipf-Mandelbrot law over all selections; one temporal locality and one adjacent-layer coupling per
# model, bisected until the generated temporal locality and adjacent-layer predictability equal the real ones
# (`python -m artifact.traces.fit vendored:NAME` prints these numbers and the figures; a test re-fits them).
# qwen3-30b-a3b: real temporal locality 0.380, adjacent-layer predictability 0.214, first-choice repeat 0.201 (not
# fitted: generated 0.241), top-10% share 0.580 (generated 0.591).
QWEN3_EXPONENT = (
    4.72, 5.98, 7.4, 7.7, 8.0, 6.12, 7.82, 5.26, 6.58, 6.58, 5.62, 5.44, 6.78, 8.0, 5.7, 6.84, 5.7, 5.96, 6.48,
    6.34, 7.62, 6.9, 6.36, 5.66, 7.04, 8.0, 6.46, 6.92, 6.26, 5.82, 7.58, 6.58, 7.96, 6.96, 6.16, 5.38, 6.5, 7.22,
    5.98, 6.38, 8.0, 8.0, 8.0, 7.34, 7.46, 5.2, 6.5, 8.0
)
QWEN3_OFFSET = (
    128.0, 128.0, 128.0, 128.0, 128.0, 64.0, 64.0, 32.0, 64.0, 64.0, 64.0, 64.0, 64.0, 128.0, 64.0, 64.0, 64.0,
    64.0, 32.0, 32.0, 64.0, 64.0, 64.0, 64.0, 64.0, 128.0, 64.0, 64.0, 64.0, 64.0, 32.0, 32.0, 64.0, 64.0, 64.0,
    64.0, 64.0, 128.0, 64.0, 64.0, 128.0, 128.0, 128.0, 64.0, 64.0, 32.0, 64.0, 128.0
)
QWEN3_LOCALITY = 0.1892
QWEN3_CROSS_LAYER = 0.3838
# gemma-4-26b-a4b: real temporal locality 0.357, adjacent-layer predictability 0.326, first-choice repeat 0.191 (not
# fitted: generated 0.212), top-10% share 0.596 (generated 0.593).
GEMMA4_EXPONENT = (
    5.44, 5.66, 5.44, 2.94, 7.2, 7.0, 4.6, 5.56, 2.26, 6.48, 5.42, 4.88, 7.84, 6.5, 7.24, 5.74, 6.68, 6.86, 5.52,
    5.78, 5.94, 6.48, 6.9, 3.22, 7.6, 6.54, 8.0, 8.0, 6.62, 8.0
)
GEMMA4_OFFSET = (
    64.0, 128.0, 64.0, 16.0, 64.0, 64.0, 32.0, 64.0, 8.0, 64.0, 32.0, 32.0, 64.0, 64.0, 64.0, 64.0, 64.0, 64.0,
    64.0, 64.0, 64.0, 64.0, 64.0, 16.0, 64.0, 64.0, 128.0, 128.0, 128.0, 128.0
)
GEMMA4_LOCALITY = 0.144
GEMMA4_CROSS_LAYER = 0.5453
# gpt-oss-120b: real temporal locality 0.179, adjacent-layer predictability 0.241, first-choice repeat 0.151 (not
# fitted: generated 0.120), top-10% share 0.736 (generated 0.764).
GPTOSS_EXPONENT = (
    7.96, 5.72, 7.1, 5.8, 8.0, 6.86, 7.4, 7.0, 6.54, 7.78, 6.74, 6.68, 6.46, 4.26, 7.82, 8.0, 8.0, 5.48, 7.5, 8.0,
    8.0, 5.96, 7.8, 5.48, 7.34, 6.86, 6.6, 2.6, 6.58, 6.32, 5.3, 7.34, 4.56, 6.06, 6.36, 5.52
)
GPTOSS_OFFSET = (
    128.0, 64.0, 64.0, 32.0, 64.0, 64.0, 64.0, 64.0, 64.0, 64.0, 32.0, 32.0, 32.0, 16.0, 64.0, 64.0, 64.0, 32.0,
    64.0, 64.0, 64.0, 32.0, 64.0, 32.0, 32.0, 32.0, 32.0, 2.0, 32.0, 32.0, 16.0, 64.0, 16.0, 32.0, 32.0, 32.0
)
GPTOSS_LOCALITY = 0.0551
GPTOSS_CROSS_LAYER = 0.3451


def _fitted(exponent: tuple, offset: tuple, locality: float, cross_layer: float) -> SyntheticParams:
    """A fitted preset (on a model of another depth the per-layer tuples stretch by relative depth)."""
    return SyntheticParams(popularity_exponent=exponent, popularity_offset=offset, unused_experts=(0,),
                           locality=locality, cross_layer=cross_layer, lookahead_accuracy=_LOOKAHEAD_ACCURACY,
                           length_spread=_LENGTH_SPREAD)


PRESET_PARAMS: dict[str, SyntheticParams] = {
    "switch-base-128": SyntheticParams(
        # 12 MoE layers: encoder fits for layers 0-5, repeated for decoder layers 6-11 (assumption, see above).
        popularity_exponent=SWITCH_EXPONENT * 2,
        popularity_offset=SWITCH_OFFSET * 2,
        unused_experts=SWITCH_UNUSED * 2,
        locality=LOCALITY_SWITCH,
        # No cross-layer data for Switch: assumption, OLMoE's calibrated per-step coupling of layers 1-7. Implied
        # adjacent-layer held-out accuracy 0.29-0.73 by layer pair (low where a flat layer follows a peaked one).
        cross_layer=OLMOE_CROSS_LAYER[0],
        lookahead_accuracy=_LOOKAHEAD_ACCURACY,
        length_spread=_LENGTH_SPREAD,
    ),
    "mixtral-8x7b": SyntheticParams(
        popularity_exponent=_nearest_measured(MIXTRAL_MEASURED_LAYERS, MIXTRAL_EXPONENT, 32),
        popularity_offset=_nearest_measured(MIXTRAL_MEASURED_LAYERS, MIXTRAL_OFFSET, 32),
        unused_experts=(0,),
        other_exponent=_nearest_measured(MIXTRAL_MEASURED_LAYERS, MIXTRAL_OTHER_EXPONENT, 32),
        other_offset=_nearest_measured(MIXTRAL_MEASURED_LAYERS, MIXTRAL_OTHER_OFFSET, 32),
        locality=LOCALITY_TOPK,
        cross_layer=_two_segments(32, 7, MIXTRAL_CROSS_LAYER),
        lookahead_accuracy=_LOOKAHEAD_ACCURACY,
        length_spread=_LENGTH_SPREAD,
    ),
    "olmoe-1b-7b": SyntheticParams(
        **_olmoe_like(16), locality=LOCALITY_TOPK, lookahead_accuracy=_LOOKAHEAD_ACCURACY, length_spread=_LENGTH_SPREAD
    ),
    # No routing data for Qwen1.5-MoE or DeepSeek-V2-Lite: assumption, OLMoE's fits and cross-layer coupling (same
    # size class: 60-64 fine-grained experts, 2048 wide), mapped by relative depth.
    "qwen1.5-moe-a2.7b": SyntheticParams(
        **_olmoe_like(24), locality=LOCALITY_TOPK, lookahead_accuracy=_LOOKAHEAD_ACCURACY, length_spread=_LENGTH_SPREAD
    ),
    "deepseek-v2-lite": SyntheticParams(
        **_olmoe_like(26), locality=LOCALITY_TOPK, lookahead_accuracy=_LOOKAHEAD_ACCURACY, length_spread=_LENGTH_SPREAD
    ),
    # Fitted to real decode routing (above). The fits come from the captures' reduced top-k (6, 6, 2); the presets
    # draw their model's own top-k (8, 8, 4) from the same per-layer law (assumption). The lookahead is an
    # assumption (no real capture has one): the presets' 0.85.
    "qwen3-30b-a3b": _fitted(QWEN3_EXPONENT, QWEN3_OFFSET, QWEN3_LOCALITY, QWEN3_CROSS_LAYER),
    "gemma-4-26b-a4b": _fitted(GEMMA4_EXPONENT, GEMMA4_OFFSET, GEMMA4_LOCALITY, GEMMA4_CROSS_LAYER),
    "gpt-oss-120b": _fitted(GPTOSS_EXPONENT, GPTOSS_OFFSET, GPTOSS_LOCALITY, GPTOSS_CROSS_LAYER),
    # No real trace: assumption, the nearest fitted model of the family, stretched by relative depth: gpt-oss-20b
    # (24 layers, 32 experts) takes gpt-oss-120b's fit; DeepSeek-V3 (58 MoE layers, 256 fine-grained experts)
    # takes Qwen3-30B-A3B's (fine-grained experts, top-8).
    "gpt-oss-20b": _fitted(GPTOSS_EXPONENT, GPTOSS_OFFSET, GPTOSS_LOCALITY, GPTOSS_CROSS_LAYER),
    "deepseek-v3": _fitted(QWEN3_EXPONENT, QWEN3_OFFSET, QWEN3_LOCALITY, QWEN3_CROSS_LAYER),
}


# --- The model ------------------------------------------------------------------------------------------------------


def _per_layer(value, layers: int, name: str) -> np.ndarray:
    """A scalar or tuple parameter as one float per layer; tuples of another length are stretched by depth."""
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"synthetic: {name} must be a number or a non-empty tuple of numbers, got {value!r}")
    return arr[(np.arange(layers) * arr.size) // layers]


def _zipf_mandelbrot(exponent: float, offset: float, used: int, experts: int) -> np.ndarray:
    """Probabilities over ranks 1..experts: ``(r + q) ** -s`` on the first ``used`` ranks, 0 after."""
    r = np.arange(1, used + 1, dtype=np.float64)
    # Normalised by rank 1 in log space: large (s, q) pairs (the Mixtral fits) would underflow otherwise.
    w = np.exp(-exponent * (np.log(r + offset) - np.log(1.0 + offset)))
    p = np.zeros(experts)
    p[:used] = w / w.sum()
    return p


def _check_unit(value: np.ndarray, name: str) -> None:
    if not ((value >= 0.0) & (value <= 1.0)).all():
        raise ValueError(f"synthetic: {name} must be in [0, 1], got {value.tolist()}")


def _resolve(spec: ModelSpec, params: SyntheticParams) -> dict:
    """Check the parameters against the model; return the per-layer arrays the sampler reads."""
    L, E, K = spec.moe_layers, spec.experts, spec.top_k
    s = _per_layer(params.popularity_exponent, L, "popularity_exponent")
    q = _per_layer(params.popularity_offset, L, "popularity_offset")
    z = _per_layer(params.unused_experts, L, "unused_experts")
    so = s if params.other_exponent is None else _per_layer(params.other_exponent, L, "other_exponent")
    qo = q if params.other_offset is None else _per_layer(params.other_offset, L, "other_offset")
    for name, arr in (
        ("popularity_exponent", s),
        ("popularity_offset", q),
        ("other_exponent", so),
        ("other_offset", qo),
    ):
        if not (np.isfinite(arr) & (arr >= 0)).all():
            raise ValueError(f"synthetic: {name} must be finite and >= 0, got {arr.tolist()}")
    if not ((z == np.round(z)) & (z >= 0) & (z <= E - K)).all():
        raise ValueError(
            f"synthetic: unused_experts must be whole numbers in 0..{E - K} (model {spec.name} has "
            f"{E} experts, top-{K}), got {z.tolist()}"
        )
    locality = _per_layer(params.locality, L, "locality")
    cross = _per_layer(params.cross_layer, L, "cross_layer")
    _check_unit(locality, "locality")
    _check_unit(cross, "cross_layer")
    if params.lookahead_accuracy is not None:
        _check_unit(np.asarray([params.lookahead_accuracy], dtype=np.float64), "lookahead_accuracy")
    if not (math.isfinite(params.length_spread) and params.length_spread >= 0):
        raise ValueError(f"synthetic: length_spread must be finite and >= 0, got {params.length_spread}")
    if not (math.isfinite(params.gate_concentration) and params.gate_concentration > 0):
        raise ValueError(f"synthetic: gate_concentration must be finite and > 0, got {params.gate_concentration}")

    used = (E - z).astype(np.int64)
    first = np.stack([_zipf_mandelbrot(s[i], q[i], used[i], E) for i in range(L)])  # [L, E] over ranks
    other = np.stack([_zipf_mandelbrot(so[i], qo[i], used[i], E) for i in range(L)])  # [L, E]
    cdf = np.cumsum(first, axis=1)  # [L, E]
    # u < 1 must land on a used rank: close each layer's CDF at exactly 1 from its last used rank on.
    cdf[np.arange(E)[None, :] >= (used - 1)[:, None]] = 1.0
    # 1/p as the exponential-race rate; never-used ranks get a huge finite key (not inf, so 0 * it is no NaN).
    inv_other = np.where(other > 0, 1.0 / np.where(other > 0, other, 1.0), 1e30).astype(np.float32)  # [L, E]
    return {"first": first, "other": other, "cdf": cdf, "inv_other": inv_other, "locality": locality, "cross": cross}


def _lengths(rng: np.random.Generator, sequences: int, tokens: int, spread: float) -> np.ndarray:
    z = rng.standard_normal(sequences)
    return np.maximum(1, np.rint(tokens * np.exp(spread * z - 0.5 * spread * spread))).astype(np.int64)


def _route(rng: np.random.Generator, model: dict, starts: np.ndarray, layers: int, experts: int, top_k: int):
    """Expert ranks ``[T, L, K]`` (int64, rank space) for every token and layer; a loop over layers only."""
    T = starts.shape[0]
    idx = np.arange(T)
    ranks = np.empty((T, layers, top_k), dtype=np.int64)
    u_prev = x_prev = None
    for lyr in range(layers):
        # Drawn unconditionally so that changing one parameter leaves the others' random numbers in place.
        u = rng.random(T)  # [T] fresh popularity quantiles
        follow = rng.random(T) < model["cross"][lyr]  # [T] keep layer l-1's quantile
        repeat = (rng.random(T) < model["locality"][lyr]) & ~starts  # [T] copy the previous token
        x = rng.standard_exponential((T, experts), dtype=np.float32) if top_k > 1 else None  # [T, E]
        if lyr > 0:
            u = np.where(follow, u_prev, u)
            if x is not None:
                x = np.where(follow[:, None], x_prev, x)
        # A run of copies resolves to the last token that did not copy; sequence starts never copy, so the running
        # maximum never crosses into the previous sequence.
        src = np.maximum.accumulate(np.where(repeat, 0, idx))  # [T]
        u = u[src]
        first = np.searchsorted(model["cdf"][lyr], u, side="right")  # [T]
        ranks[:, lyr, 0] = first
        if x is not None:
            x = x[src]
            keys = x * model["inv_other"][lyr]  # [T, E]: the k-1 smallest X_r / p_r are a Plackett-Luce draw
            keys[idx, first] = np.inf
            rest = np.argpartition(keys, top_k - 2, axis=1)[:, : top_k - 1]  # [T, K-1]
            order = np.argsort(np.take_along_axis(keys, rest, axis=1), axis=1, kind="stable")
            ranks[:, lyr, 1:] = np.take_along_axis(rest, order, axis=1)
        u_prev, x_prev = u, x
    return ranks


def _lookahead(rng: np.random.Generator, model: dict, ranks: np.ndarray, accuracy: float, experts: int) -> np.ndarray:
    """Predicted ranks ``[T, L, K]``: true ids kept with probability ``accuracy``, else distinct distractors."""
    T, L, K = ranks.shape
    pred = np.full((T, L, K), -1, dtype=np.int64)
    keep = rng.random((T, L, K)) < accuracy  # [T, L, K]
    # With fewer than K experts outside the true top-k, slots past that count cannot be wrong.
    n_distract = min(K, experts - K)
    keep[:, :, n_distract:] = True
    sel = model["other"] if K > 1 else model["first"]
    # Distractors follow the layer's selection popularity: a mispredicting pre-gate picks plausible experts.
    inv = np.where(sel > 0, 1.0 / np.where(sel > 0, sel, 1.0), 1e30).astype(np.float32)  # [L, E]
    for lyr in range(1, L):
        true = ranks[:, lyr]  # [T, K]
        rows = np.nonzero(~keep[:, lyr].all(axis=1))[0]
        layer_pred = true.copy()
        if rows.size:
            keys = rng.standard_exponential((rows.size, experts), dtype=np.float32) * inv[lyr]  # [R, E]
            np.put_along_axis(keys, true[rows], np.inf, axis=1)
            if n_distract == 1:
                distract = np.argmin(keys, axis=1)[:, None]  # [R, 1], cheaper than a partition
            else:
                distract = np.argpartition(keys, n_distract - 1, axis=1)[:, :n_distract]  # [R, n]
            wrong = ~keep[rows, lyr, :n_distract]
            layer_pred[rows, :n_distract] = np.where(wrong, distract, true[rows, :n_distract])
        pred[:, lyr] = layer_pred
    return pred


def _gates(rng: np.random.Generator, shape: tuple[int, int, int], experts: int, alpha: float) -> np.ndarray:
    k = shape[2]
    if k == 1:
        g = 1.0 / experts + (1.0 - 1.0 / experts) * rng.beta(alpha, alpha, size=shape)
    else:
        w = rng.standard_gamma(alpha, size=shape, dtype=np.float32)
        # A Gamma draw can underflow to 0 for small alpha; flooring keeps the normalisation finite.
        w = np.maximum(w, 1e-12)
        g = -np.sort(-(w / w.sum(axis=2, keepdims=True)), axis=2)  # descending = router order
    return g.astype(np.float16)


def generate(
    model: str | ModelSpec,
    sequences: int,
    tokens: int,
    seed: int,
    params: SyntheticParams | None = None,
    lengths=None,
    **overrides,
) -> Trace:
    """Generate ``sequences`` sequences of mean length ``tokens`` for ``model`` (a preset name or a ModelSpec).

    ``params`` defaults to the model's preset in :data:`PRESET_PARAMS` (or the generic :class:`SyntheticParams`);
    ``overrides`` replace single fields, e.g. ``generate("switch-base-128", 8, 64, 0, locality=0.3)``. ``lengths``
    (a sequence of ``sequences`` positive integers) fixes every sequence's length instead of drawing them. The
    result is deterministic in all its arguments: the same call gives the same bytes.
    """
    spec = get_model(model) if isinstance(model, str) else model
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"synthetic: model must be a preset name or a ModelSpec, got {type(model).__name__}")
    if params is None:
        params = PRESET_PARAMS.get(spec.name, SyntheticParams())
    if overrides:
        known = {f.name for f in fields(SyntheticParams)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"synthetic: unknown parameter(s) {unknown}; parameters: {sorted(known)}")
        params = replace(params, **overrides)
    for name, value, lo in (("sequences", sequences, 1), ("tokens", tokens, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"synthetic: {name} must be an integer >= {lo}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"synthetic: seed must be a non-negative integer, got {seed!r}")
    L, E, K = spec.moe_layers, spec.experts, spec.top_k
    if E > np.iinfo(np.int16).max:
        raise ValueError(f"synthetic: model {spec.name} has {E} experts; the trace format stores ids as int16")
    resolved = _resolve(spec, params)

    rng_len, rng_route, rng_la, rng_gate = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    drawn = _lengths(rng_len, int(sequences), int(tokens), params.length_spread)  # [S]
    if lengths is not None:
        fixed = np.asarray(lengths, np.int64)
        if fixed.shape != (int(sequences),) or (fixed < 1).any():
            raise ValueError(f"synthetic: lengths must be {sequences} positive integers, got {list(fixed)}")
        drawn = fixed
    lengths = drawn
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [S + 1]
    T = int(offsets[-1])
    starts = np.zeros(T, dtype=bool)
    starts[offsets[:-1]] = True

    perm_seed = seed if params.permutation_seed is None else params.permutation_seed
    # Rank r of layer l is expert perm[l, r]: a seeded shuffle per layer, so popular experts differ by layer.
    perm = np.argsort(np.random.default_rng(perm_seed).random((L, E)), axis=1).astype(np.int16)  # [L, E]
    layer_idx = np.arange(L)[None, :, None]

    ranks = _route(rng_route, resolved, starts, L, E, K)  # [T, L, K]
    experts = perm[layer_idx, ranks]  # [T, L, K] int16
    lookahead = None
    if params.lookahead_accuracy is not None:
        pred = _lookahead(rng_la, resolved, ranks, float(params.lookahead_accuracy), E)  # [T, L, K]
        lookahead = np.where(pred >= 0, perm[layer_idx, np.maximum(pred, 0)], -1).astype(np.int16)
    gates = _gates(rng_gate, (T, L, K), E, float(params.gate_concentration))

    generator = {
        "name": "artifact.traces.synthetic",
        "seed": int(seed),
        "sequences": int(sequences),
        "tokens": int(tokens),
        **asdict(params),
    }
    # Through JSON once so the in-memory metadata equals what save/load gives back (tuples become lists).
    generator = json.loads(json.dumps(generator))
    meta = make_meta(spec.name, E, "synthetic", generator=generator)
    return Trace(experts=experts, seq_offsets=offsets, meta=meta, gates=gates, lookahead=lookahead)
