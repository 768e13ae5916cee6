"""``jsonl``: one JSON object per line, one line per token and layer, so dumps of other tools map without code.

Each object holds a sequence id (any JSON string or integer), the token's position in its sequence, the MoE layer
and the token's top-k expert ids at that layer, under field names the caller gives (defaults: ``sequence``,
``token``, ``layer``, ``experts``). Optional: gates (``gates``, one weight per expert, on every line or on none)
and a phase field (``0``/``"prefill"``, ``1``/``"decode"``; only read when its name is given). Blank lines are
skipped. Sequences take the order of their first line; lines may come token by token or layer by layer, but within
a sequence and layer the positions must increase.

Shape: the top-k is the first line's list length (every line must match); the expert count and the layer count
come from the options, else from the preset ``model``, else (layers only) from the highest layer seen. Every token
needs every layer; with a phase field, a prefill token that has only its first layers is dropped
(``incomplete_prefill="drop"``, the default) or refused (``"error"``), as for ``route-csv``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from artifact.traces.importers.common import (
    Limits,
    Records,
    assemble,
    expert_count,
    fail,
    file_provenance,
    read_text,
)
from artifact.traces.trace import DECODE, PREFILL, Trace, TraceError, make_meta

PHASES = {0: PREFILL, 1: DECODE, "prefill": PREFILL, "decode": DECODE}


def _int_field(obj: dict, name: str, origin: str, where: str) -> int:
    if name not in obj:
        raise fail(origin, where, name, "missing")
    v = obj[name]
    if not isinstance(v, int) or isinstance(v, bool):
        raise fail(origin, where, name, f"{json.dumps(v)} is not an integer")
    return v


def read(path: str | os.PathLike, model: str | None = None, num_experts: int | None = None,
         layers: int | None = None, seq_field: str = "sequence", token_field: str = "token",
         layer_field: str = "layer", experts_field: str = "experts", gates_field: str | None = "gates",
         phase_field: str | None = None, incomplete_prefill: str = "drop") -> tuple[Trace, list[str]]:
    """Import a JSON-lines routing dump; returns (trace, warnings)."""
    origin = str(path)
    spec, E = expert_count(origin, model, num_experts)
    seq_ids: dict[str, int] = {}
    seq, pos, lyr, ex, gt, ph, ln = [], [], [], [], [], [], []
    K = None
    with_gates = None
    for n, raw in enumerate(read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"line {n}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TraceError(f"trace file {origin}: {where}: not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise TraceError(f"trace file {origin}: {where}: not a JSON object")
        if seq_field not in obj:
            raise fail(origin, where, seq_field, "missing")
        sid = obj[seq_field]
        if not isinstance(sid, (str, int)) or isinstance(sid, bool):
            raise fail(origin, where, seq_field, f"{json.dumps(sid)} is not a string or an integer")
        key = json.dumps(sid)
        seq.append(seq_ids.setdefault(key, len(seq_ids)))
        pos.append(_int_field(obj, token_field, origin, where))
        lyr.append(_int_field(obj, layer_field, origin, where))
        if experts_field not in obj:
            raise fail(origin, where, experts_field, "missing")
        ids = obj[experts_field]
        if (not isinstance(ids, list) or not ids
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in ids)):
            raise fail(origin, where, experts_field, f"{json.dumps(ids)[:80]} is not a non-empty list of integers")
        if K is None:
            K = len(ids)
        elif len(ids) != K:
            raise fail(origin, where, experts_field, f"{len(ids)} experts but the first line has {K} (one top-k "
                       f"per trace)")
        ex.append(ids)
        has = gates_field is not None and gates_field in obj
        if with_gates is None:
            with_gates = has
        elif has != with_gates:
            raise fail(origin, where, gates_field, "present on some lines only (on every line or on none)")
        if has:
            g = obj[gates_field]
            if (not isinstance(g, list) or len(g) != K
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in g)):
                raise fail(origin, where, gates_field, f"{json.dumps(g)[:80]} is not a list of {K} numbers")
            gt.append(g)
        if phase_field is not None:
            if phase_field not in obj:
                raise fail(origin, where, phase_field, "missing")
            v = obj[phase_field]
            if isinstance(v, bool) or v not in PHASES:
                raise fail(origin, where, phase_field, f"{json.dumps(v)} is no phase (0 or \"prefill\", 1 or "
                           f"\"decode\")")
            ph.append(PHASES[v])
        ln.append(n)
    if not seq:
        raise TraceError(f"trace file {origin}: no routing records")
    layer_arr = np.asarray(lyr, dtype=np.int64)
    L = layers if layers is not None else (spec.moe_layers if spec else int(layer_arr.max()) + 1)
    layer_note = (f"layers is {L}" if layers is not None else
                  f"model preset {model} has {L} MoE layers" if spec else f"the highest layer seen is {L - 1}")
    expert_note = (f"num_experts is {E}" if num_experts is not None else f"model preset {model} has {E} experts")
    rec = Records(seq=np.asarray(seq, dtype=np.int64), pos=np.asarray(pos, dtype=np.int64), layer=layer_arr,
                  experts=np.asarray(ex, dtype=np.int64),
                  line=np.repeat(np.asarray(ln, dtype=np.int64)[:, None], K, axis=1),
                  seq_names=[f"sequence {k}" for k in seq_ids],
                  gates=np.asarray(gt, dtype=np.float64) if with_gates else None,
                  phase=np.asarray(ph, dtype=np.int64) if phase_field is not None else None)
    lim = Limits(L, E, layer_note, expert_note, {"layer": layer_field, "expert": experts_field,
                                                 "position": token_field, "phase": phase_field or "phase"})
    if rec.gates is not None and not np.isfinite(rec.gates).all():
        i = int(np.nonzero(~np.isfinite(rec.gates).all(axis=1))[0][0])
        raise fail(origin, f"line {ln[i]}", gates_field, "holds a value that is not finite")
    a = assemble(rec, origin, lim, incomplete_prefill)
    if a.experts.shape[0] == 0:
        raise TraceError(f"trace file {origin}: no complete token left ({a.dropped_prefill_tokens} incomplete "
                         f"prefill tokens dropped)")
    name = model or "unknown"
    warnings = [] if model else [f"{origin}: no --model given: the trace's model is 'unknown' (name a preset "
                                 f"with --model to simulate it)"]
    meta = make_meta(name, E, f"jsonl:{os.path.basename(path)}", {}, **file_provenance(path, "jsonl"),
                     native_top_k=spec.top_k if spec else None, top_k_used=K,
                     jsonl={"fields": {"sequence": seq_field, "token": token_field, "layer": layer_field,
                                       "experts": experts_field, "gates": gates_field if with_gates else None,
                                       "phase": phase_field},
                            "records": len(seq), "tokens_in_file": a.tokens_in_file,
                            "dropped_prefill_tokens": a.dropped_prefill_tokens})
    tr = Trace(a.experts, a.seq_offsets, meta, a.gates, None, a.phase).validate(origin)
    return tr, warnings + a.warnings
