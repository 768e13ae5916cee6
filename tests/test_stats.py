"""Trace statistics on hand-built traces with known answers, and against plain-Python references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from artifact.traces.stats import render_text, trace_stats
from artifact.traces.synthetic import generate
from artifact.traces.trace import Trace, make_meta


def _trace(experts, lengths, num_experts, lookahead=None) -> Trace:
    ex = np.asarray(experts, dtype=np.int16)
    if ex.ndim == 1:
        ex = ex[:, None, None]
    elif ex.ndim == 2:
        ex = ex[:, :, None]
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    la = None if lookahead is None else np.asarray(lookahead, dtype=np.int16)
    return Trace(ex, off, make_meta("hand-built", num_experts, "test"), lookahead=la).validate()


def test_shape_fields():
    s = trace_stats(_trace([0, 1, 2, 3, 4], [3, 2], 10), batches=(1,))
    assert (s["sequences"], s["tokens"], s["layers"], s["top_k"], s["num_experts"]) == (2, 5, 1, 1, 10)
    assert s["seq_length"] == {"mean": 2.5, "min": 2, "max": 3}


def test_top10_share():
    # E = 10: the top 10% is 1 expert. Expert 7 takes 6 of 10 selections.
    s = trace_stats(_trace([7] * 6 + [1, 2, 3, 4], [10], 10), batches=())
    assert s["top10_share"] == [pytest.approx(0.6)]
    # E = 20: the top 10% is 2 experts; counts 5, 3, 1, 1.
    s = trace_stats(_trace([0] * 5 + [1] * 3 + [2, 3], [10], 20), batches=())
    assert s["top10_share"] == [pytest.approx(0.8)]
    # E = 11: ceil(1.1) = 2 experts.
    s = trace_stats(_trace([0] * 4 + [1] * 4 + [2] * 2, [10], 11), batches=())
    assert s["top10_share"] == [pytest.approx(0.8)]


def test_gini_and_entropy_uniform_one_hot_and_half():
    E = 8
    uniform = trace_stats(_trace(list(range(E)) * 3, [3 * E], E), batches=())
    assert uniform["gini"] == [pytest.approx(0.0)] and uniform["entropy"] == [pytest.approx(1.0)]
    one_hot = trace_stats(_trace([5] * 20, [20], E), batches=())
    assert one_hot["gini"] == [pytest.approx(1 - 1 / E)] and one_hot["entropy"] == [pytest.approx(0.0)]
    # Two of four experts, equally: entropy log 2 / log 4; Gini (2*3-5)*1/2 + (2*4-5)*1/2 over 4 = 0.5.
    half = trace_stats(_trace([0, 1] * 5, [10], 4), batches=())
    assert half["entropy"] == [pytest.approx(0.5)] and half["gini"] == [pytest.approx(0.5)]


def test_temporal_locality_ignores_sequence_boundaries():
    # Sequence A: 1 1 2 2 (pairs: same, different, same); B: 2 3 (different). A's last and B's first are both 2,
    # which is not a pair. 2 repeats of 4 pairs.
    s = trace_stats(_trace([1, 1, 2, 2, 2, 3], [4, 2], 5), batches=())
    assert s["temporal_locality"] == [pytest.approx(0.5)]
    assert s["first_choice_repeat"] == [pytest.approx(0.5)]
    # Only one-token sequences: no pairs, so undefined.
    s = trace_stats(_trace([1, 2, 3], [1, 1, 1], 5), batches=())
    assert s["temporal_locality"] is None and s["temporal_locality_mean"] is None


def test_temporal_locality_topk_overlap():
    # K = 2. Pairs: [0,1]->[1,2] shares 1 of 2 (first choice changes 0->1); [1,2]->[2,1] shares 2 of 2 (1->2).
    tr = _trace([[[0, 1]], [[1, 2]], [[2, 1]]], [3], 4)
    s = trace_stats(tr, batches=())
    assert s["temporal_locality"] == [pytest.approx(0.75)]
    assert s["first_choice_repeat"] == [pytest.approx(0.0)]


def test_reuse_by_rank():
    # K = 2, one layer. Pairs: [0,1]->[1,2]: rank 0 (0) gone, rank 1 (1) back (as a first choice); [1,2]->[2,3]:
    # rank 0 (1) gone, rank 1 (2) back; [2,3]->[2,0]: rank 0 back, rank 1 gone. A second sequence [5,6]->[6,5]: both.
    tr = _trace([[[0, 1]], [[1, 2]], [[2, 3]], [[2, 0]], [[5, 6]], [[6, 5]]], [4, 2], 7)
    s = trace_stats(tr, batches=())
    assert s["reuse_by_rank"] == [pytest.approx(2 / 4), pytest.approx(3 / 4)]
    assert s["first_choice_repeat"] == [pytest.approx(1 / 4)]  # only [2,3]->[2,0] keeps its first choice first
    assert trace_stats(_trace([1, 2, 3], [1, 1, 1], 5), batches=())["reuse_by_rank"] is None  # no pairs


def test_cross_layer_deterministic_map_is_perfect():
    # Two identical sequences; layer 1 = layer 0 + 4 everywhere. Whichever half fits, the table is exact.
    seq = [[0, 4], [1, 5], [2, 6], [0, 4]]
    s = trace_stats(_trace(seq + seq, [4, 4], 8), batches=())
    assert s["cross_layer_accuracy"] == [pytest.approx(1.0)]


def test_cross_layer_majority_and_fallback():
    # Four identical sequences: 0 -> 3 twice, 0 -> 4 once. The table says 3; held out, 2 of 3 are right.
    seq = [[0, 3], [0, 3], [0, 4]]
    s = trace_stats(_trace(seq * 4, [3] * 4, 5), batches=())
    assert s["cross_layer_accuracy"] == [pytest.approx(2 / 3)]
    # Two sequences with different predecessors: the held-out one is unseen, so the fit half's most popular
    # layer-1 expert is predicted: right when both sequences go to 5, wrong when they differ.
    same = trace_stats(_trace([[0, 5]] * 3 + [[1, 5]] * 3, [3, 3], 8), batches=())
    assert same["cross_layer_accuracy"] == [pytest.approx(1.0)]
    differ = trace_stats(_trace([[0, 5]] * 3 + [[1, 6]] * 3, [3, 3], 8), batches=())
    assert differ["cross_layer_accuracy"] == [pytest.approx(0.0)]
    # One sequence (a real capture of one prompt): split in time, first half fits, second half evaluates, with a
    # note that the figure rests on few tokens. 0 -> 5, 0 -> 5 | 0 -> 6, 1 -> 5: the table says 5 after 0 and,
    # for the unseen 1, the fit half's most popular 5: right on the last token only.
    one = trace_stats(_trace([[0, 5], [0, 5], [0, 6], [1, 5]], [4], 8), batches=())
    assert one["cross_layer_accuracy"] == [pytest.approx(0.5)] and one["cross_layer_split"] == "time"
    assert one["cross_layer_held_out_tokens"] == 2 and "only 2 held-out tokens" in one["cross_layer_note"]
    assert same["cross_layer_split"] == "sequences"
    # A single one-token sequence: nothing to hold out.
    assert trace_stats(_trace([[0, 5]], [1], 8), batches=())["cross_layer_accuracy"] is None


def test_lookahead_accuracy():
    # K = 2, two layers. Layer 1 truth [2, 3]; predictions [3, 5] (1 of 2) and [2, 3] (2 of 2).
    experts = [[[0, 1], [2, 3]], [[0, 1], [2, 3]]]
    lookahead = [[[-1, -1], [3, 5]], [[-1, -1], [2, 3]]]
    s = trace_stats(_trace(experts, [2], 6, lookahead=lookahead), batches=())
    assert s["lookahead_accuracy"] == [pytest.approx(0.75)]
    assert s["lookahead_accuracy_mean"] == pytest.approx(0.75)
    assert trace_stats(_trace(experts, [2], 6), batches=())["lookahead_accuracy"] is None


def test_unique_experts_per_batch_known_answers():
    # Sequence i always routes to expert i: a batch of B sequences needs B experts, however it is grouped.
    tr = _trace([i for i in range(6) for _ in range(4)], [4] * 6, 8)
    u = trace_stats(tr, batches=(1, 2, 4, 8))["unique_experts"]
    assert u["1"]["mean"] == 1.0 and u["2"]["mean"] == 2.0 and u["4"]["mean"] == 4.0
    assert u["8"] == {"per_layer": None, "mean": None}
    # Top-2 where every sequence shares expert 0: B sequences need B + 1 experts.
    tr = _trace([[[0, i + 1]] for i in range(4) for _ in range(3)], [3] * 4, 8)
    u = trace_stats(tr, batches=(1, 2, 4))["unique_experts"]
    assert [u[b]["mean"] for b in ("1", "2", "4")] == [2.0, 3.0, 5.0]


def _reference_unique(tr: Trace, batch: int, seed: int) -> list[float]:
    """The documented sampling, written as plain loops."""
    S = tr.num_sequences
    order = np.random.default_rng(seed).permutation(S)
    sums, n = np.zeros(tr.layers), 0
    for g in range(S // batch):
        group = order[g * batch : (g + 1) * batch]
        for t in range(min(int(tr.seq_lengths[i]) for i in group)):
            toks = [int(tr.seq_offsets[i]) + t for i in group]
            for lyr in range(tr.layers):
                sums[lyr] += len({int(e) for tok in toks for e in tr.experts[tok, lyr]})
            n += 1
    return (sums / n).tolist()


def _reference_cross(tr: Trace, seed: int) -> list[float]:
    S = tr.num_sequences
    fit_seqs = set(np.random.default_rng(seed).permutation(S)[: S // 2].tolist())
    acc = []
    for lyr in range(tr.layers - 1):
        table: dict[int, dict[int, int]] = {}
        nxt_counts: dict[int, int] = {}
        evals = []
        for i in range(S):
            for tok in range(*tr.seq_offsets[i : i + 2]):
                a, b = int(tr.experts[tok, lyr, 0]), int(tr.experts[tok, lyr + 1, 0])
                if i in fit_seqs:
                    table.setdefault(a, {}).setdefault(b, 0)
                    table[a][b] += 1
                    nxt_counts[b] = nxt_counts.get(b, 0) + 1
                else:
                    evals.append((a, b))
        fallback = max(sorted(nxt_counts), key=lambda e: nxt_counts[e])
        pred = {a: max(sorted(row), key=lambda e: row[e]) for a, row in table.items()}
        acc.append(sum(pred.get(a, fallback) == b for a, b in evals) / len(evals))
    return acc


def test_against_plain_references_on_a_synthetic_trace():
    tr = generate("olmoe-1b-7b", 12, 20, 3, length_spread=0.6)
    s = trace_stats(tr, batches=(1, 3, 4), seed=5)
    for b in (1, 3, 4):
        np.testing.assert_allclose(s["unique_experts"][str(b)]["per_layer"], _reference_unique(tr, b, 5))
    np.testing.assert_allclose(s["cross_layer_accuracy"], _reference_cross(tr, 5))
    # Locality, reuse by rank and lookahead by loops.
    loc, la = np.zeros(tr.layers), np.zeros(tr.layers)
    by_rank = np.zeros(tr.top_k)
    pairs = 0
    for i in range(tr.num_sequences):
        lo, hi = int(tr.seq_offsets[i]), int(tr.seq_offsets[i + 1])
        for t in range(lo, hi - 1):
            for lyr in range(tr.layers):
                loc[lyr] += len(set(tr.experts[t, lyr]) & set(tr.experts[t + 1, lyr])) / tr.top_k
                for k in range(tr.top_k):
                    by_rank[k] += int(tr.experts[t, lyr, k] in set(tr.experts[t + 1, lyr])) / tr.layers
            pairs += 1
    for t in range(tr.num_tokens):
        for lyr in range(1, tr.layers):
            la[lyr] += len(set(tr.experts[t, lyr]) & set(tr.lookahead[t, lyr])) / tr.top_k
    np.testing.assert_allclose(s["temporal_locality"], loc / pairs)
    np.testing.assert_allclose(s["reuse_by_rank"], by_rank / pairs)
    np.testing.assert_allclose(s["lookahead_accuracy"], la[1:] / tr.num_tokens)


def test_json_and_render():
    tr = generate("switch-base-128", 8, 16, 0)
    s = trace_stats(tr, batches=(1, 2, 4, 8, 16))
    back = json.loads(json.dumps(s, allow_nan=False))
    assert back == s
    assert s["unique_experts"]["16"]["mean"] is None
    text = render_text(s)
    assert "switch-base-128" in text and "12 MoE layers, 128 experts, top-1" in text
    lines = text.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.split()[:2] == ["layer", "top10%"])
    table_rows = [ln for ln in lines[header + 1 :] if ln.strip() and ln.split()[0].isdigit()]
    assert len(table_rows) == 12
    assert "B=   8" in text and "B=  16: -" in text
    assert all(isinstance(v, float) and math.isfinite(v) for v in s["top10_share"])


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch sizes must be >= 1"):
        trace_stats(_trace([0, 1], [2], 4), batches=(0,))
