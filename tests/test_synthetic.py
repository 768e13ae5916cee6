"""The synthetic generator: calibration against the cited real figures, determinism, format, and each effect's knob."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifact.models import PRESETS, ModelSpec
from artifact.traces import synthetic
from artifact.traces.stats import trace_stats
from artifact.traces.synthetic import PRESET_PARAMS, SyntheticParams, generate
from artifact.traces.trace import load, save, validate

# Uniform popularity, no cross-layer coupling, no repeats: the baseline where every effect's expected value is closed
# form (chance repeat 1/E, chance held-out transition accuracy ~1/E).
FLAT = {
    "popularity_exponent": (0.0,),
    "popularity_offset": (0.0,),
    "unused_experts": (0,),
    "other_exponent": None,
    "other_offset": None,
    "locality": 0.0,
    "cross_layer": 0.0,
    "length_spread": 0.0,
}


def _first_repeat(tr) -> np.ndarray:
    return np.asarray(trace_stats(tr, batches=())["first_choice_repeat"])


def test_every_preset_has_params():
    assert set(PRESET_PARAMS) == set(PRESETS)


def test_switch_top10_share_matches_real_counts():
    """Generated per-layer top-10% share within 0.05 of the real encoder figures (decoder layers repeat them)."""
    stats = trace_stats(generate("switch-base-128", 64, 128, 0), batches=())
    real = synthetic.SWITCH_TOP10_SHARE * 2
    got = np.asarray(stats["top10_share"])
    assert got.shape == (12,)
    np.testing.assert_allclose(got, real, atol=0.05)


def test_switch_cited_constants_match_facts():
    # FACTS.md section 2 rounds the exact shares to two places.
    assert [round(v, 2) for v in synthetic.SWITCH_TOP10_SHARE] == [0.27, 0.64, 0.45, 0.49, 0.51, 0.71]
    assert min(synthetic.SWITCH_UNUSED) == 1 and max(synthetic.SWITCH_UNUSED) == 7


def test_olmoe_topk_share_and_crosslayer_match_real():
    """OLMoE: top-8 selection share (layers 0/7/15) and the 7-layer first-choice lookup the presets were fitted to."""
    tr = generate("olmoe-1b-7b", 200, 128, 0, lookahead_accuracy=None)
    stats = trace_stats(tr, batches=())
    got = np.asarray(stats["top10_share"])[list(synthetic.OLMOE_MEASURED_LAYERS)]
    np.testing.assert_allclose(got, synthetic.OLMOE_TOP10_SHARE_TOPK, atol=0.03)
    first = tr.experts[:, :, 0].astype(np.int64)
    E = tr.num_experts
    for (a, b), want in zip(((0, 7), (7, 15)), synthetic.OLMOE_CROSSLAYER_ACCURACY, strict=True):
        table = np.bincount(first[:, a] * E + first[:, b], minlength=E * E).reshape(E, E)
        assert table.max(axis=1).sum() / table.sum() == pytest.approx(want, abs=0.04)


def test_mixtral_first_choice_repeat_in_published_range():
    """Mixtral arXiv:2401.04088 Table 5: the first choice repeats for the next token 14-28% of the time by layer."""
    lo, hi = synthetic.MIXTRAL_FIRST_CHOICE_REPEAT
    assert lo <= _first_repeat(generate("mixtral-8x7b", 64, 128, 0)).mean() <= hi


def test_switch_first_choice_repeat_in_facts_range():
    """FACTS.md: within a sequence the Switch top-1 expert repeats for the next token 1-10% of the time."""
    assert 0.01 <= _first_repeat(generate("switch-base-128", 64, 128, 0)).mean() <= 0.10


def test_same_seed_same_bytes_different_seed_differs():
    a, b = generate("olmoe-1b-7b", 8, 32, 7), generate("olmoe-1b-7b", 8, 32, 7)
    for name in ("experts", "seq_offsets", "gates", "lookahead"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.meta == b.meta
    c = generate("olmoe-1b-7b", 8, 32, 8)
    assert not np.array_equal(
        a.experts[: min(a.num_tokens, c.num_tokens)], c.experts[: min(a.num_tokens, c.num_tokens)]
    )


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_validates_and_round_trips(name, tmp_path):
    tr = generate(name, 4, 16, 0)
    validate(tr)
    spec = PRESETS[name]
    assert tr.experts.shape[1:] == (spec.moe_layers, spec.top_k)
    assert tr.experts.dtype == np.int16 and tr.gates.dtype == np.float16 and tr.lookahead.dtype == np.int16
    back = load(save(tr, tmp_path / f"{name}.npz"))
    for field in ("experts", "seq_offsets", "gates", "lookahead"):
        assert np.array_equal(getattr(tr, field), getattr(back, field)), field
    assert back.meta == tr.meta
    gen = tr.meta["generator"]
    assert gen["seed"] == 0 and gen["sequences"] == 4 and gen["tokens"] == 16
    assert {f.name for f in fields(SyntheticParams)} <= set(gen)
    json.dumps(tr.meta)


def test_custom_model_uses_generic_params():
    spec = ModelSpec("tiny-moe", 3, 16, 2, 64, 128, "swiglu")
    tr = generate(spec, 5, 10, 1)
    validate(tr)
    assert tr.meta["model"] == "tiny-moe" and tr.experts.shape[1:] == (3, 2)


def test_locality_moves_the_repeat_rate():
    """Without cross-layer coupling the first-choice repeat rate is locality + (1 - locality) / E on flat popularity."""
    for a in (0.0, 0.3):
        got = _first_repeat(generate("switch-base-128", 64, 128, 0, **{**FLAT, "locality": a}))
        want = a + (1 - a) / 128
        assert got.mean() == pytest.approx(want, abs=0.01)
        np.testing.assert_allclose(got, want, atol=0.03)


def test_locality_copies_the_whole_topk():
    """Top-2 of 8, flat: a copy repeats both ids; a fresh draw overlaps by k/E = 0.25 on average."""
    tr = generate("mixtral-8x7b", 64, 128, 0, **{**FLAT, "locality": 0.5})
    stats = trace_stats(tr, batches=())
    assert stats["first_choice_repeat_mean"] == pytest.approx(0.5 + 0.5 / 8, abs=0.015)
    assert stats["temporal_locality_mean"] == pytest.approx(0.5 + 0.5 * 0.25, abs=0.015)


def test_cross_layer_moves_the_transition_accuracy():
    """Flat, identically shaped layers: the rank map is exact, so held-out accuracy is c + (1 - c) / E."""
    for c in (0.0, 0.6, 0.9):
        stats = trace_stats(generate("switch-base-128", 64, 128, 0, **{**FLAT, "cross_layer": c}), batches=())
        got = np.asarray(stats["cross_layer_accuracy"])
        assert got.mean() == pytest.approx(c + (1 - c) / 128, abs=0.03)


def test_cross_layer_keeps_each_layers_popularity():
    """The quantile coupling leaves every layer's marginal law alone: top-10% share is the same with c = 0 and 0.95."""
    shares = []
    for c in (0.0, 0.95):
        tr = generate("switch-base-128", 256, 128, 0, cross_layer=c, lookahead_accuracy=None, length_spread=0.0)
        shares.append(np.asarray(trace_stats(tr, batches=())["top10_share"]))
    np.testing.assert_allclose(shares[0], shares[1], atol=0.04)
    np.testing.assert_allclose(shares[1], synthetic.SWITCH_TOP10_SHARE * 2, atol=0.05)


@pytest.mark.parametrize("name", ["switch-base-128", "olmoe-1b-7b"])
def test_lookahead_accuracy_knob(name):
    base = generate(name, 32, 64, 0, lookahead_accuracy=None)
    assert base.lookahead is None
    for acc in (0.0, 0.7, 1.0):
        tr = generate(name, 32, 64, 0, lookahead_accuracy=acc)
        # The routing stream is independent of the lookahead: same experts whatever the accuracy.
        assert np.array_equal(tr.experts, base.experts)
        assert (tr.lookahead[:, 0] == -1).all()
        got = trace_stats(tr, batches=())["lookahead_accuracy_mean"]
        assert got == pytest.approx(acc, abs=0.02)
    exact = generate(name, 32, 64, 0, lookahead_accuracy=1.0)
    assert np.array_equal(exact.lookahead[:, 1:], exact.experts[:, 1:])


def test_lengths_vary_around_the_mean():
    fixed = generate("switch-base-128", 50, 40, 0, length_spread=0.0)
    assert (fixed.seq_lengths == 40).all()
    varied = generate("switch-base-128", 400, 40, 0, length_spread=0.5)
    lengths = varied.seq_lengths
    assert lengths.min() >= 1 and lengths.std() > 5
    assert lengths.mean() == pytest.approx(40, rel=0.08)
    short = generate("switch-base-128", 50, 1, 0, length_spread=1.0)
    assert short.seq_lengths.min() >= 1


@pytest.mark.parametrize("name", ["switch-base-128", "mixtral-8x7b", "olmoe-1b-7b"])
def test_gates(name):
    tr = generate(name, 8, 32, 0)
    g = tr.gates.astype(np.float32)
    E = tr.num_experts
    if tr.top_k == 1:
        assert ((g >= 1.0 / E - 1e-3) & (g <= 1.0)).all()
    else:
        np.testing.assert_allclose(g.sum(axis=2), 1.0, atol=5e-3)
        assert (np.diff(g, axis=2) <= 0).all()


def test_popular_experts_differ_by_layer_but_not_by_seed():
    tops = []
    for seed in (0, 1):
        tr = generate("switch-base-128", 32, 64, seed)
        counts = np.stack([np.bincount(tr.experts[:, lyr, 0], minlength=128) for lyr in range(12)])
        tops.append(counts.argmax(axis=1))
    assert len(set(tops[0].tolist())) > 6
    # The expert permutation belongs to the model (permutation_seed), so another prompt seed keeps the popular ones.
    assert (tops[0] == tops[1]).mean() > 0.5
    other = generate("switch-base-128", 32, 64, 0, permutation_seed=5)
    assert not np.array_equal(other.experts, generate("switch-base-128", 32, 64, 0).experts)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"locality": 1.5}, "locality must be in [0, 1]"),
        ({"cross_layer": -0.1}, "cross_layer must be in [0, 1]"),
        ({"lookahead_accuracy": 2.0}, "lookahead_accuracy must be in [0, 1]"),
        ({"unused_experts": (200,)}, "unused_experts must be whole numbers"),
        ({"popularity_exponent": (-1.0,)}, "popularity_exponent must be finite"),
        ({"length_spread": -1.0}, "length_spread"),
        ({"gate_concentration": 0.0}, "gate_concentration"),
        ({"no_such_knob": 1}, "unknown parameter"),
    ],
)
def test_bad_parameters_name_the_problem(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        generate("switch-base-128", 2, 4, 0, **override)


def test_bad_sizes_name_the_problem():
    with pytest.raises(ValueError, match="sequences must be an integer >= 1"):
        generate("switch-base-128", 0, 4, 0)
    with pytest.raises(ValueError, match="tokens must be an integer >= 1"):
        generate("switch-base-128", 2, 0, 0)
    with pytest.raises(KeyError, match="unknown model preset"):
        generate("no-such-model", 2, 4, 0)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(PRESETS)),
    sequences=st.integers(1, 6),
    tokens=st.integers(1, 12),
    seed=st.integers(0, 2**31),
    locality=st.floats(0, 1),
    cross=st.floats(0, 1),
    acc=st.one_of(st.none(), st.floats(0, 1)),
)
def test_any_parameters_give_a_valid_trace(name, sequences, tokens, seed, locality, cross, acc):
    tr = generate(name, sequences, tokens, seed, locality=locality, cross_layer=cross, lookahead_accuracy=acc)
    validate(tr)
    assert tr.num_sequences == sequences


def test_fitted_presets_are_what_the_fit_gives_on_the_vendored_traces():
    """The presets of the models with a real trace hold exactly the numbers `python -m artifact.traces.fit` prints,
    and the generated routing matches the real temporal locality and adjacent-layer predictability."""
    from artifact.traces import synthetic as syn
    from artifact.traces.fit import fit
    from artifact.traces.vendored import load

    f = fit(load("gpt-oss-120b"))
    assert f.popularity_exponent == syn.GPTOSS_EXPONENT and f.popularity_offset == syn.GPTOSS_OFFSET
    assert f.locality == syn.GPTOSS_LOCALITY and f.cross_layer == syn.GPTOSS_CROSS_LAYER
    for key in ("temporal_locality", "cross_layer_accuracy"):
        assert abs(f.achieved[key] - f.real[key]) < 0.01, key
    assert abs(f.achieved["top10_share"] - f.real["top10_share"]) < 0.05


def test_fit_popularity_recovers_a_known_law():
    from artifact.traces.fit import fit_popularity

    r = np.arange(1, 129, dtype=np.float64)
    p = (r + 4.0) ** -1.3
    counts = np.round(p / p.sum() * 1e7).astype(np.int64)
    s, q = fit_popularity(counts)
    assert (s, q) == (1.3, 4.0)
