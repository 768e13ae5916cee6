"""What every importer shares: errors that name file, place, field and value; routing records assembled into a
trace with every check a routing dump needs; provenance; reading JSON documents.

A *record* is one routing decision: a sequence, a token position, a layer and that token's top-k at that layer
(and optionally the gates and the phase). :func:`assemble` turns records in file order into the ``[T, L, K]``
arrays of :class:`~artifact.traces.trace.Trace`, refusing, with the record's line:

- a layer or expert id out of range, the same expert twice in one top-k;
- positions that do not increase within a sequence and layer (a repeated position is a duplicate record);
- a token whose layers disagree on its phase, a prefill token after a decode token;
- a position with no records inside a sequence's range (a missing token);
- a token that lacks a layer. One exception, ``incomplete_prefill="drop"``: a *prefill* token whose records are
  exactly the layers ``0 .. m-1`` (the last layers skipped, as an engine does for prompt tokens whose logits it
  does not need) is dropped whole, counted in the result and reported as a warning. Routing is never invented.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from artifact.models import PRESETS
from artifact.traces.trace import DECODE, PREFILL, TraceError

INCOMPLETE_PREFILL = ("drop", "error")


def fail(origin: str, where: str, fld: str, msg: str) -> TraceError:
    """``trace file ORIGIN: WHERE: field 'FLD': MSG`` (``where`` is e.g. ``line 1234``; empty leaves it out)."""
    place = f": {where}" if where else ""
    return TraceError(f"trace file {origin}{place}: field '{fld}': {msg}")


def file_provenance(path: str | os.PathLike, fmt: str) -> dict:
    """Meta fields naming the source: its file name (not the folder, so an import is the same on every machine),
    its SHA-256 and the format."""
    p = Path(path)
    return {"format": fmt, "source_file": p.name, "source_sha256": hashlib.sha256(p.read_bytes()).hexdigest()}


def read_text(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file {p}: no such file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TraceError(f"trace file {p}: not UTF-8 text ({exc})") from None


def json_documents(path: str | os.PathLike) -> list[tuple[str, object]]:
    """The JSON values of a file: one document (an object, or an array of them: ``item i``) or JSON lines (one
    value per line: ``line n``). Returns ``(where, value)`` pairs."""
    text = read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    else:
        if isinstance(doc, list):
            return [(f"item {i}", v) for i, v in enumerate(doc)]
        return [("", doc)]
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise TraceError(f"trace file {path}: line {n}: not JSON ({exc.msg} at column {exc.colno})") from None
    if not out:
        raise TraceError(f"trace file {path}: empty (no JSON document, no JSON lines)")
    return out


@dataclass
class Records:
    """Routing records in file order (``N`` records of top-``K``)."""

    seq: np.ndarray  # int64 [N]: sequence index, in order of first appearance
    pos: np.ndarray  # int64 [N]: token position in its sequence
    layer: np.ndarray  # int64 [N]
    experts: np.ndarray  # int64 [N, K]
    line: np.ndarray  # int64 [N, K]: file line of each expert id (a CSV row per slot; JSON lines: one per record)
    seq_names: list[str]  # how a message names each sequence, e.g. "turn 0"
    gates: np.ndarray | None = None  # float64 [N, K]
    phase: np.ndarray | None = None  # int64 [N]: 0 prefill, 1 decode


@dataclass
class Limits:
    """Bounds and how messages phrase them: ``layer_note`` e.g. ``the header says n_layer=48``."""

    layers: int
    num_experts: int
    layer_note: str
    expert_note: str
    fields: dict = field(default_factory=lambda: {"layer": "layer", "expert": "expert", "position": "position",
                                                  "phase": "phase"})


@dataclass
class Assembled:
    experts: np.ndarray  # int16 [T, L, K]
    seq_offsets: np.ndarray  # int64 [S + 1]
    gates: np.ndarray | None  # float16 [T, L, K]
    phase: np.ndarray | None  # int8 [T]
    tokens_in_file: dict  # tokens per phase before dropping ("prefill"/"decode", or "unknown")
    dropped_prefill_tokens: int
    warnings: list[str]


def _line(rec: Records, i: int, k: int = 0) -> str:
    return f"line {int(rec.line[i, k])}"


def assemble(rec: Records, origin: str, lim: Limits, incomplete_prefill: str = "drop") -> Assembled:
    """Check the records (module docstring) and build the trace arrays; the first problem raises TraceError."""
    if incomplete_prefill not in INCOMPLETE_PREFILL:
        raise ValueError(f"incomplete_prefill must be one of {INCOMPLETE_PREFILL}, got {incomplete_prefill!r}")
    n, K = rec.experts.shape
    if n == 0:
        raise TraceError(f"trace file {origin}: no routing records")
    L, E, f = lim.layers, lim.num_experts, lim.fields
    bad = (rec.layer < 0) | (rec.layer >= L)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise fail(origin, _line(rec, i), f["layer"], f"layer {int(rec.layer[i])} but {lim.layer_note} "
                   f"(layers 0..{L - 1})")
    bad = (rec.experts < 0) | (rec.experts >= E)
    if bad.any():
        rows, slots = np.nonzero(bad)
        j = int(np.argmin(rec.line[rows, slots]))
        i, k = int(rows[j]), int(slots[j])
        raise fail(origin, _line(rec, i, k), f["expert"], f"expert id {int(rec.experts[i, k])} but {lim.expert_note}")
    if K > 1:
        order = np.argsort(rec.experts, axis=1, kind="stable")
        srt = np.take_along_axis(rec.experts, order, axis=1)
        dup = srt[:, 1:] == srt[:, :-1]
        if dup.any():
            rows, cols = np.nonzero(dup)
            second = order[rows, cols + 1]
            j = int(np.argmin(rec.line[rows, second]))
            i, k = int(rows[j]), int(second[j])
            raise fail(origin, _line(rec, i, k), f["expert"],
                       f"expert {int(rec.experts[i, k])} twice in the top-k of {rec.seq_names[rec.seq[i]]} "
                       f"position {int(rec.pos[i])} layer {int(rec.layer[i])}: {rec.experts[i].tolist()}")

    # each (sequence, position, layer) once
    dup_order = np.lexsort((np.arange(n), rec.pos, rec.layer, rec.seq))
    a, b = dup_order[1:], dup_order[:-1]
    d_same = (rec.seq[a] == rec.seq[b]) & (rec.layer[a] == rec.layer[b]) & (rec.pos[a] == rec.pos[b])
    if d_same.any():
        cand = dup_order[1:][d_same]
        j = int(np.argmin(rec.line[cand, 0]))
        i, prev = int(cand[j]), int(dup_order[:-1][d_same][j])
        raise fail(origin, _line(rec, i), f["position"], f"{rec.seq_names[rec.seq[i]]} position {int(rec.pos[i])} "
                   f"layer {int(rec.layer[i])} appears twice (first at {_line(rec, prev)})")
    # positions increase within (sequence, layer), in file order
    idx = np.lexsort((np.arange(n), rec.layer, rec.seq))
    same = (rec.seq[idx[1:]] == rec.seq[idx[:-1]]) & (rec.layer[idx[1:]] == rec.layer[idx[:-1]])
    step = rec.pos[idx[1:]] - rec.pos[idx[:-1]]
    bad = same & (step <= 0)
    if bad.any():
        cand = idx[1:][bad]
        j = int(np.argmin(rec.line[cand, 0]))
        i, prev = int(cand[j]), int(idx[:-1][bad][j])
        where, p, lyr, s = _line(rec, i), int(rec.pos[i]), int(rec.layer[i]), rec.seq_names[rec.seq[i]]
        raise fail(origin, where, f["position"], f"{s} layer {lyr}: position {p} comes after position "
                   f"{int(rec.pos[prev])} ({_line(rec, prev)}); positions must increase")

    # tokens: (sequence, position), sorted
    tok_order = np.lexsort((rec.layer, rec.pos, rec.seq))
    s_sorted, p_sorted = rec.seq[tok_order], rec.pos[tok_order]
    new_tok = np.ones(n, dtype=bool)
    new_tok[1:] = (s_sorted[1:] != s_sorted[:-1]) | (p_sorted[1:] != p_sorted[:-1])
    tok_of_sorted = np.cumsum(new_tok) - 1
    tok = np.empty(n, dtype=np.int64)
    tok[tok_order] = tok_of_sorted  # token index of each record
    T = int(tok_of_sorted[-1]) + 1
    first = tok_order[new_tok]  # one record of each token (its lowest layer), [T]
    t_seq, t_pos = rec.seq[first], rec.pos[first]

    # no missing positions inside a sequence
    same_seq = t_seq[1:] == t_seq[:-1]
    gap = same_seq & (t_pos[1:] - t_pos[:-1] != 1)
    if gap.any():
        t = int(np.nonzero(gap)[0][0]) + 1
        raise fail(origin, _line(rec, int(first[t])), f["position"],
                   f"{rec.seq_names[t_seq[t]]}: positions jump from {int(t_pos[t - 1])} to {int(t_pos[t])} "
                   f"(no records for position {int(t_pos[t - 1]) + 1})")

    t_phase = None
    if rec.phase is not None:
        bad = (rec.phase != PREFILL) & (rec.phase != DECODE)
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise fail(origin, _line(rec, i), f["phase"], f"{int(rec.phase[i])} is no phase (0 prefill, 1 decode)")
        lo = np.full(T, 2, np.int64)
        hi = np.full(T, -1, np.int64)
        np.minimum.at(lo, tok, rec.phase)
        np.maximum.at(hi, tok, rec.phase)
        if (lo != hi).any():
            t = int(np.nonzero(lo != hi)[0][0])
            i = int(np.nonzero((tok == t) & (rec.phase != rec.phase[first[t]]))[0][0])
            raise fail(origin, _line(rec, i), f["phase"], f"{rec.seq_names[t_seq[t]]} position {int(t_pos[t])}: "
                       f"phase {int(rec.phase[i])} but {_line(rec, int(first[t]))} says {int(rec.phase[first[t]])}")
        t_phase = lo
        back = same_seq & (t_phase[1:] < t_phase[:-1])
        if back.any():
            t = int(np.nonzero(back)[0][0]) + 1
            raise fail(origin, _line(rec, int(first[t])), f["phase"],
                       f"{rec.seq_names[t_seq[t]]} position {int(t_pos[t])} is prefill after decode position "
                       f"{int(t_pos[t - 1])} (prefill comes first)")

    # every token has every layer (prefill tokens missing only their last layers may be dropped)
    present = np.zeros((T, L), dtype=bool)
    present[tok, rec.layer] = True
    count = present.sum(axis=1)
    incomplete = count < L
    is_tail = present.argmin(axis=1) == count  # the present layers are exactly 0 .. count-1
    droppable = incomplete & is_tail & (count > 0)
    if t_phase is not None and incomplete_prefill == "drop":
        droppable &= t_phase == PREFILL
    else:
        droppable[:] = False
    fatal = incomplete & ~droppable
    if fatal.any():
        t = int(np.nonzero(fatal)[0][0])
        miss = int(np.nonzero(~present[t])[0][0])
        what = "" if t_phase is None else (" (prefill)" if t_phase[t] == PREFILL else " (decode)")
        raise fail(origin, _line(rec, int(first[t])), f["layer"],
                   f"{rec.seq_names[t_seq[t]]} position {int(t_pos[t])}{what} has no record for layer {miss} "
                   f"({int(count[t])} of {L} layers; {lim.layer_note})")

    keep_tok = ~droppable
    new_index = np.cumsum(keep_tok) - 1
    T_out = int(keep_tok.sum())
    keep_rec = keep_tok[tok]
    ti, li = new_index[tok[keep_rec]], rec.layer[keep_rec]
    experts = np.empty((T_out, L, K), dtype=np.int16)
    experts[ti, li] = rec.experts[keep_rec]
    gates = None
    if rec.gates is not None:
        gates = np.empty((T_out, L, K), dtype=np.float16)
        gates[ti, li] = rec.gates[keep_rec]
    lengths = np.bincount(t_seq[keep_tok], minlength=len(rec.seq_names))
    lengths = lengths[lengths > 0]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if t_phase is None:
        in_file = {"unknown": T}
    else:
        in_file = {"prefill": int((t_phase == PREFILL).sum()), "decode": int((t_phase == DECODE).sum())}
    dropped = int(droppable.sum())
    warnings = []
    if dropped:
        warnings.append(f"{origin}: dropped {dropped} of {in_file['prefill']} prefill tokens that lack their last "
                        f"layer(s) (the capturing engine skipped them); no routing is invented")
    return Assembled(experts, offsets, gates, None if t_phase is None else t_phase[keep_tok].astype(np.int8),
                     in_file, dropped, warnings)


def check_block(ids: np.ndarray, origin: str, where: str, fld: str, num_experts: int, expert_note: str) -> None:
    """Range and duplicate checks of a dense ``[tokens, layers, top_k]`` block of expert ids."""
    bad = (ids < 0) | (ids >= num_experts)
    if bad.any():
        t, lyr, k = (int(v) for v in np.argwhere(bad)[0])
        raise fail(origin, where, fld, f"[{t}][{lyr}][{k}] is expert id {int(ids[t, lyr, k])} but {expert_note}")
    if ids.shape[2] > 1:
        srt = np.sort(ids, axis=2)
        dup = srt[:, :, 1:] == srt[:, :, :-1]
        if dup.any():
            t, lyr, _ = (int(v) for v in np.argwhere(dup)[0])
            raise fail(origin, where, fld, f"[{t}][{lyr}] lists an expert twice in its top-k: {ids[t, lyr].tolist()}")


def expert_count(origin: str, model: str | None, num_experts: int | None):
    """``(preset or None, experts per layer)`` from ``num_experts`` or the preset ``model``; an error naming the
    file when neither says."""
    spec = PRESETS.get(model) if model else None
    E = num_experts if num_experts is not None else (spec.experts if spec else None)
    if E is None:
        raise TraceError(f"trace file {origin}: the expert count is unknown: give num_experts (--num-experts) or "
                         f"a preset model (--model)")
    return spec, E

