"""Workloads: sequences of a trace composed into lockstep decode (or prefill) steps.

Decode with continuous batching: ``batch`` slots each decode one token of their sequence per step; a slot whose
sequence finished takes the next sequence of the pool at the next step. Every batch size draws the pool in the same
order, so a smaller batch sees a prefix of the tokens a larger one sees, and a workload run until the pool drains
(``steps=None``) decodes exactly the same tokens at every batch size. When the pool runs dry, slots go idle; the
last steps then hold fewer than ``batch`` tokens.

Prefill: each step runs ``batch`` whole sequences at once (many tokens per sequence).

Phases: a trace with a ``phase`` field (schema version 2) gives its decode tokens to :func:`decode_workload` and its
prefill tokens to :func:`prefill_workload` (``all_tokens=True`` takes every token); a sequence without tokens of the
phase drops out of the pool, and positions count from the sequence's first token of that phase. A trace without
the field (phase unknown: version-1 files, synthetic traces) gives every token to both.

A workload is flat: tokens of step ``s`` are ``step_offsets[s]:step_offsets[s + 1]`` of the ``[T, L, K]`` arrays,
in slot order, with the slot (``item``), pool sequence (``seq``) and position (``pos``) of each token beside them.
"""

from __future__ import annotations

import numpy as np

from artifact.core.workload import Workload
from artifact.models import PRESETS, ModelSpec, get_model
from artifact.traces.trace import DECODE, PREFILL, Trace, phase_tokens


def _resolve_model(trace: Trace, model: ModelSpec | str | None) -> ModelSpec:
    """The model a workload of ``trace`` runs: ``model`` (a preset name or a spec), by default the trace's own.

    The trace's top-k is authoritative: a trace that routes fewer experts per token than the model's config (a
    capture run with a reduced top-k) gets the spec ``with_top_k(trace.top_k)``, which keeps the config's figure as
    ``native_top_k``; more than the config's top-k is an error. Expert bytes always come from the spec (bf16
    experts of the model's config): the bytes a capture's own engine moved (e.g. the quantised GGUF experts of the
    route-csv traces, kept in the trace's ``meta`` as provenance) are not used.
    """
    if model is None:
        model = trace.meta["model"]
        if model not in PRESETS:
            raise ValueError(f"workload: the trace's model {model!r} ({trace.meta.get('source')}) is no preset; "
                             f"name one (--model): {', '.join(PRESETS)}")
    spec = get_model(model) if isinstance(model, str) else model
    if spec.experts != trace.num_experts:
        raise ValueError(f"workload: trace ({trace.meta.get('model')}) has {trace.num_experts} experts, "
                         f"model {spec.name} has {spec.experts}")
    if trace.top_k > spec.config_top_k:
        raise ValueError(f"workload: trace ({trace.meta.get('model')}) routes top-{trace.top_k}, more than model "
                         f"{spec.name}'s top-{spec.config_top_k}: a trace may use fewer experts per token than its "
                         f"model, never more")
    if trace.top_k != spec.top_k:
        spec = spec.with_top_k(trace.top_k)
    if spec.moe_layers != trace.layers:
        # A recorded trace may run fewer MoE layers than the preset frames (e.g. Switch decoder layers only).
        from dataclasses import replace

        spec = replace(spec, moe_layers=trace.layers)
    return spec


def decode_workload(trace: Trace, batch: int, steps: int | None = None,
                    model: ModelSpec | str | None = None, all_tokens: bool = False) -> Workload:
    """Continuous-batching decode: ``batch`` slots, each taking the pool's sequences in order (the trace's decode
    tokens when it has a phase field, unless ``all_tokens``)."""
    if batch < 1:
        raise ValueError(f"workload: batch must be >= 1, got {batch}")
    if steps is not None and steps < 1:
        raise ValueError(f"workload: steps must be >= 1, got {steps}")
    spec = _resolve_model(trace, model)
    if not all_tokens:
        trace = phase_tokens(trace, DECODE)
    lengths = trace.seq_lengths
    n_seq = lengths.shape[0]
    # Each slot serves a queue of sequences; a sequence goes to the slot that frees first (ties: lowest slot),
    # which is what a FIFO admission queue does. The assignment is cheap (one pass over sequences).
    free_at = np.zeros(batch, dtype=np.int64)
    starts = np.empty(n_seq, dtype=np.int64)
    slots = np.empty(n_seq, dtype=np.int64)
    for i in range(n_seq):
        j = int(np.argmin(free_at))
        starts[i] = free_at[j]
        slots[i] = j
        free_at[j] += lengths[i]
    # Token t of sequence i runs at step starts[i] + t in slot slots[i].
    tok_seq = np.repeat(np.arange(n_seq, dtype=np.int64), lengths)  # [T]
    tok_pos = np.arange(trace.num_tokens, dtype=np.int64) - trace.seq_offsets[tok_seq]
    tok_step = starts[tok_seq] + tok_pos
    tok_slot = slots[tok_seq]
    keep = np.ones(trace.num_tokens, dtype=bool) if steps is None else tok_step < steps
    order = np.lexsort((tok_slot[keep], tok_step[keep]))
    idx = np.nonzero(keep)[0][order]  # token indices of the trace, in (step, slot) order
    n_steps = int(tok_step[idx].max()) + 1 if idx.size else 0
    counts = np.bincount(tok_step[idx], minlength=n_steps)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Workload(spec, batch, "decode", trace.experts[idx], offsets, tok_slot[idx].astype(np.int32),
                    tok_seq[idx].astype(np.int32), tok_pos[idx].astype(np.int32),
                    None if trace.lookahead is None else trace.lookahead[idx],
                    None if trace.gates is None else trace.gates[idx], str(trace.meta.get("source", "")))


def prefill_workload(trace: Trace, batch: int, steps: int | None = None,
                     model: ModelSpec | str | None = None, all_tokens: bool = False) -> Workload:
    """Prefill: step ``s`` runs sequences ``s*batch .. s*batch + batch - 1`` whole (their prefill tokens when the
    trace has a phase field, unless ``all_tokens``)."""
    if batch < 1:
        raise ValueError(f"workload: batch must be >= 1, got {batch}")
    spec = _resolve_model(trace, model)
    if not all_tokens:
        trace = phase_tokens(trace, PREFILL)
    n_seq = trace.num_sequences
    n_steps = -(-n_seq // batch)
    if steps is not None:
        n_steps = min(n_steps, steps)
    last_seq = min(n_seq, n_steps * batch)
    end = int(trace.seq_offsets[last_seq])
    lengths = trace.seq_lengths[:last_seq]
    tok_seq = np.repeat(np.arange(last_seq, dtype=np.int64), lengths)
    tok_pos = np.arange(end, dtype=np.int64) - trace.seq_offsets[tok_seq]
    step_of_seq = np.arange(last_seq) // batch
    counts = np.bincount(step_of_seq, weights=lengths, minlength=n_steps).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cut = slice(0, end)
    return Workload(spec, batch, "prefill", trace.experts[cut], offsets, (tok_seq % batch).astype(np.int32),
                    tok_seq.astype(np.int32), tok_pos.astype(np.int32),
                    None if trace.lookahead is None else trace.lookahead[cut],
                    None if trace.gates is None else trace.gates[cut], str(trace.meta.get("source", "")))
