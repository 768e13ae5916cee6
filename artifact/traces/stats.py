"""Routing statistics of a trace: the numbers that decide how well an expert cache and a prefetcher can do.

:func:`trace_stats` returns a JSON-serialisable dict (plain ints, floats, lists; ``None`` where a figure is undefined,
e.g. temporal locality of a trace whose sequences are all one token long). Definitions, per MoE layer ``l``:

- ``top10_share``: share of all token-expert selections (every slot of the top-k) taken by the ``ceil(0.1 * E)``
  most selected experts.
- ``gini``: Gini coefficient of the per-expert selection counts, ``sum_i (2i - E - 1) c_(i) / (E sum c)`` with the
  counts sorted ascending: 0 when every expert is used equally, ``1 - 1/E`` when one expert takes everything.
- ``entropy``: entropy of the selection distribution over experts divided by ``log E``: 1 uniform, 0 one expert.
- ``temporal_locality``: over consecutive token pairs ``(t, t+1)`` of one sequence, the mean fraction of token
  ``t+1``'s top-k ids that are also in token ``t``'s top-k. For top-1 this is the fraction of pairs whose expert
  repeats. ``first_choice_repeat`` is the fraction of pairs whose first-choice expert repeats (the figure of Mixtral
  arXiv:2401.04088 Table 5); it equals ``temporal_locality`` for top-1.
- ``reuse_by_rank`` (``[K]``, means over layers): over the same pairs, for each router rank ``k`` of token ``t``'s
  top-k (0 = first choice), the fraction of pairs whose token ``t+1`` picks token ``t``'s rank-``k`` expert again, at
  any rank (what the flagship's rank weight learns online). Its first entry is at least ``first_choice_repeat`` (a
  repeated expert may change rank); its mean over ranks is ``temporal_locality``.
- ``cross_layer_accuracy`` (pairs ``l -> l+1``, "adjacent-layer predictability"): held-out accuracy of a
  first-choice transition table. With 2 or more sequences they are split by a seeded shuffle: the first
  ``floor(S / 2)`` fit, the rest evaluate (``cross_layer_split`` = "sequences"); a single sequence (a real capture
  of one prompt) is split in time: its first half fits, its second half evaluates ("time"). The table maps each
  layer-``l`` first choice to the most frequent layer-``l+1`` first choice among the fit tokens (ties: the lowest
  id); a predecessor unseen in the fit half predicts the fit half's most popular layer-``l+1`` first choice.
  ``cross_layer_note`` warns when fewer than ``MIN_HELD_OUT`` tokens are evaluated (the figure is then rough: with
  64 held-out tokens one pair's accuracy moves by 1/64 per token). Undefined for a single one-token sequence.
- ``lookahead_accuracy`` (layers ``l >= 1``, only if the trace has a lookahead): mean fraction of the true top-k
  ids that the lookahead's top-k contains.
- ``unique_experts``: for each batch size ``B``, the mean number of distinct experts a layer needs for a batch of
  ``B`` tokens, sampled as a lockstep decode batch sees them: the sequences are shuffled (seeded) and cut into
  ``floor(S / B)`` disjoint groups of ``B`` consecutive sequences; within a group, step ``t`` (for every ``t`` below the
  group's shortest length) is the batch of token ``t`` of each of its ``B`` sequences. The mean is over all such
  batches, per layer; ``None`` when ``S < B``.

Means over layers (``*_mean``) are plain means of the defined per-layer values.

Phases: a trace that marks prefill and decode tokens (schema 2) is measured on its decode tokens by default
(``phase="decode"``; ``"prefill"`` or ``"all"`` for the others); ``phases`` in the output counts both.
"""

from __future__ import annotations

import math

import numpy as np

from artifact.traces.trace import DECODE, PREFILL, Trace, phase_tokens

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64)
MIN_HELD_OUT = 200  # held-out tokens below which the adjacent-layer figure carries a note


def _counts(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """Selections per expert and layer, ``[L, E]``, counting every top-k slot."""
    T, L, K = experts.shape
    flat = experts.astype(np.int64).transpose(1, 0, 2).reshape(L, T * K) + (np.arange(L) * num_experts)[:, None]
    return np.bincount(flat.ravel(), minlength=L * num_experts).reshape(L, num_experts)


def _popularity(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-10% share, Gini and normalised entropy per layer from ``[L, E]`` counts."""
    L, E = counts.shape
    total = counts.sum(axis=1).astype(np.float64)  # [L]
    asc = np.sort(counts, axis=1).astype(np.float64)  # [L, E]
    n_top = math.ceil(0.1 * E)
    top = asc[:, E - n_top :].sum(axis=1) / total
    i = np.arange(1, E + 1, dtype=np.float64)
    gini = ((2 * i - E - 1) * asc).sum(axis=1) / (E * total)
    p = counts / total[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    entropy = -plogp.sum(axis=1) / math.log(E) if E > 1 else np.zeros(L)
    return top, gini, entropy


def _pairs(seq_offsets: np.ndarray, num_tokens: int) -> np.ndarray:
    """Indices ``t`` such that ``t`` and ``t+1`` lie in one sequence."""
    nxt_is_start = np.zeros(num_tokens, dtype=bool)
    nxt_is_start[seq_offsets[1:-1] - 1] = True
    nxt_is_start[-1] = True
    return np.nonzero(~nxt_is_start)[0]


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of ``b``'s top-k ids found in ``a``'s, elementwise over ``[N, L, K]``; ``-1`` in ``a`` never matches."""
    hit = (b[..., :, None] == a[..., None, :]).any(axis=-1)  # [N, L, K]
    return hit.mean(axis=-1)  # [N, L]


def _cross_layer(first: np.ndarray, seq_offsets: np.ndarray, num_experts: int,
                 seed: int) -> tuple[list[float] | None, str, int]:
    """Held-out accuracy of the first-choice transition table for each pair l -> l+1, the split used, and the
    number of held-out tokens."""
    S = seq_offsets.shape[0] - 1
    T, L = first.shape
    if S >= 2:
        order = np.random.default_rng(seed).permutation(S)
        seq_of_token = np.repeat(np.arange(S), np.diff(seq_offsets))  # [T]
        in_fit = np.zeros(S, dtype=bool)
        in_fit[order[: S // 2]] = True
        fit, split = in_fit[seq_of_token], "sequences"
    else:
        fit, split = np.arange(T) < T // 2, "time"
    if fit.all() or not fit.any():
        return None, split, 0
    if L < 2:
        return [], split, int((~fit).sum())
    E = num_experts
    acc = []
    for lyr in range(L - 1):
        a, b = first[:, lyr].astype(np.int64), first[:, lyr + 1].astype(np.int64)
        table = np.bincount(a[fit] * E + b[fit], minlength=E * E).reshape(E, E)  # [E, E]
        fallback = int(np.argmax(np.bincount(b[fit], minlength=E)))
        pred = np.where(table.sum(axis=1) > 0, np.argmax(table, axis=1), fallback)  # [E]
        acc.append(float(np.mean(pred[a[~fit]] == b[~fit])))
    return acc, split, int((~fit).sum())


def _unique_per_batch(experts: np.ndarray, seq_offsets: np.ndarray, batch: int, seed: int) -> list[float] | None:
    """Mean distinct experts per layer over lockstep batches of ``batch`` sequences (see the module docstring)."""
    S = seq_offsets.shape[0] - 1
    if S < batch:
        return None
    L, K = experts.shape[1:]
    groups = S // batch
    seqs = np.random.default_rng(seed).permutation(S)[: groups * batch].reshape(groups, batch)  # [G, B]
    lengths = np.diff(seq_offsets)[seqs].min(axis=1)  # [G] steps where the whole group is still decoding
    group_of_step = np.repeat(np.arange(groups), lengths)  # [N]
    step = np.arange(group_of_step.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # [N]
    tok = seq_offsets[seqs[group_of_step]] + step[:, None]  # [N, B]
    out = []
    for lyr in range(L):
        ids = np.sort(experts[tok, lyr].reshape(tok.shape[0], batch * K), axis=1)  # [N, B*K]
        distinct = 1 + (ids[:, 1:] != ids[:, :-1]).sum(axis=1)  # [N]
        out.append(float(distinct.mean()))
    return out


def _mean(values: list[float] | None) -> float | None:
    if not values:
        return None
    return float(np.mean(values))


def trace_stats(trace: Trace, batches: tuple[int, ...] = DEFAULT_BATCHES, seed: int = 0,
                phase: str = "decode") -> dict:
    """Routing statistics of ``trace`` (definitions in the module docstring); JSON-serialisable."""
    if phase not in ("decode", "prefill", "all"):
        raise ValueError(f"trace_stats: phase must be 'decode', 'prefill' or 'all', got {phase!r}")
    phases = trace.phase_counts()
    if phase != "all" and trace.phase is not None:
        trace = phase_tokens(trace, DECODE if phase == "decode" else PREFILL)
    ex = trace.experts
    T, L, K = ex.shape
    E = trace.num_experts
    off = trace.seq_offsets.astype(np.int64)
    lengths = np.diff(off)

    top, gini, entropy = _popularity(_counts(ex, E))

    pairs = _pairs(off, T)
    if pairs.size:
        prev, nxt = ex[pairs], ex[pairs + 1]  # [P, L, K]
        again = (prev[:, :, :, None] == nxt[:, :, None, :]).any(axis=3)  # [P, L, K]: picked again by the next token
        locality = again.mean(axis=(0, 2)).tolist()  # [L] (a top-k holds distinct ids: the overlap is symmetric)
        first_repeat = (prev[:, :, 0] == nxt[:, :, 0]).mean(axis=0).tolist()  # [L]
        reuse_by_rank = [float(v) for v in again.mean(axis=(0, 1))]  # [K]
    else:
        locality = first_repeat = reuse_by_rank = None

    cross, split, held_out = _cross_layer(ex[:, :, 0], off, E, seed)
    note = ""
    if cross is not None and held_out < MIN_HELD_OUT:
        note = (f"only {held_out} held-out tokens ({split} split): a rough figure, each token moves a pair's "
                f"accuracy by {1 / max(held_out, 1):.3f}")

    lookahead = None
    if trace.lookahead is not None and L > 1:
        lookahead = _overlap(trace.lookahead[:, 1:], ex[:, 1:]).mean(axis=0).tolist()  # layers 1..L-1

    unique = {}
    for b in batches:
        if int(b) < 1:
            raise ValueError(f"trace_stats: batch sizes must be >= 1, got {b}")
        per_layer = _unique_per_batch(ex, off, int(b), seed)
        unique[str(int(b))] = {"per_layer": per_layer, "mean": _mean(per_layer)}

    return {
        "model": str(trace.meta.get("model", "")),
        "source": str(trace.meta.get("source", "")),
        "sequences": int(trace.num_sequences),
        "tokens": int(T),
        "layers": int(L),
        "top_k": int(K),
        "num_experts": int(E),
        "seq_length": {"mean": float(lengths.mean()), "min": int(lengths.min()), "max": int(lengths.max())},
        "top10_share": [float(v) for v in top],
        "top10_share_mean": float(top.mean()),
        "gini": [float(v) for v in gini],
        "gini_mean": float(gini.mean()),
        "entropy": [float(v) for v in entropy],
        "entropy_mean": float(entropy.mean()),
        "temporal_locality": locality,
        "temporal_locality_mean": _mean(locality),
        "first_choice_repeat": first_repeat,
        "first_choice_repeat_mean": _mean(first_repeat),
        "reuse_by_rank": reuse_by_rank,
        "cross_layer_accuracy": cross,
        "cross_layer_accuracy_mean": _mean(cross),
        "cross_layer_split": split,
        "cross_layer_held_out_tokens": held_out,
        "cross_layer_note": note,
        "lookahead_accuracy": lookahead,
        "lookahead_accuracy_mean": _mean(lookahead),
        "unique_experts": unique,
        "seed": int(seed),
        "phase": phase if trace.phase is not None else "unknown",
        "phases": phases,
        "top_k_used": int(K),
        "native_top_k": trace.native_top_k,
    }


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render_text(stats: dict) -> str:
    """A readable report of :func:`trace_stats`' output: a header, a per-layer table, the unique-experts curve."""
    import pandas as pd

    s = stats
    L = s["layers"]
    sl = s["seq_length"]
    lines = [
        (
            f"trace: model {s['model'] or '?'} ({s['source'] or '?'}), {s['sequences']} sequences, "
            f"{s['tokens']} tokens (length mean {sl['mean']:.1f}, min {sl['min']}, max {sl['max']})"
        ),
        (f"{L} MoE layers, {s['num_experts']} experts, top-{s['top_k']} used"
         + (f" (model's own top-{s['native_top_k']})" if s.get("native_top_k") not in (None, s["top_k"]) else "")
         + f"; tokens measured: {s.get('phase', 'unknown')} (phases in the file: {s.get('phases', {})})"),
        (
            f"means over layers: top-10% share {_fmt(s['top10_share_mean'])}, gini {_fmt(s['gini_mean'])}, "
            f"entropy/log E {_fmt(s['entropy_mean'])}, temporal locality {_fmt(s['temporal_locality_mean'])}, "
            f"first-choice repeat {_fmt(s['first_choice_repeat_mean'])}, "
            f"cross-layer l->l+1 {_fmt(s['cross_layer_accuracy_mean'])}, "
            f"lookahead {_fmt(s['lookahead_accuracy_mean'])}"
        ),
        *([f"note: adjacent-layer predictability: {s['cross_layer_note']}"] if s.get("cross_layer_note") else []),
        "",
    ]

    def col(key: str, offset: int = 0) -> list[str]:
        vals = s[key]
        if vals is None:
            return ["-"] * L
        out = ["-"] * L
        for i, v in enumerate(vals):
            out[i + offset] = _fmt(v)
        return out

    table = {
        "layer": list(range(L)),
        "top10%": col("top10_share"),
        "gini": col("gini"),
        "entropy": col("entropy"),
        "locality": col("temporal_locality"),
        "1st-repeat": col("first_choice_repeat"),
        "cross l->l+1": col("cross_layer_accuracy"),
        "lookahead": col("lookahead_accuracy", offset=1),
    }
    for b, u in s["unique_experts"].items():
        table[f"uniq@B={b}"] = ["-"] * L if u["per_layer"] is None else [f"{v:.1f}" for v in u["per_layer"]]
    lines.append(pd.DataFrame(table).to_string(index=False))
    lines += ["", "unique experts per layer vs batch size (lockstep batches of B sequences):"]
    for b, u in s["unique_experts"].items():
        if u["mean"] is None:
            lines.append(f"  B={int(b):>4}: -  (fewer than B sequences)")
        else:
            share = u["mean"] / s["num_experts"]
            lines.append(f"  B={int(b):>4}: {u['mean']:7.2f}  ({share:6.1%} of {s['num_experts']} experts)")
    return "\n".join(lines)
