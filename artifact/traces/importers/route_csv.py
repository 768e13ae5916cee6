"""``route-csv``: the ``route_trace v1`` CSV of BigMoeOnEdge's llama.cpp-based engine (``--route-trace``).

Format (github.com/Helldez/BigMoeOnEdge, ``docs/bench-data/2026-07-15-route-trace/``): a ``#`` header block, then
CSV rows::

    # route_trace v1
    # model=PATH arch=ARCH n_layer=N n_expert=E n_expert_used=K
    # layer=L expert_bytes=B dense_bytes=D          (one line per layer)
    turn,phase,step,layer,slot,expert,weight,residency,expert_bytes
    0,0,0,0,0,49,0.221297,0,3059712

``turn``: one prompt and its answer (each turn becomes one sequence, its tokens in step order); ``phase`` 0
prefill, 1 decode; ``step`` the absolute token position; ``slot`` the rank in the token's top-k (rows of one token
and layer run slot 0..K-1); ``expert``; ``weight`` the applied gate (stored as the trace's float16 ``gates``);
``residency`` 1 when that engine's own expert cache held the expert; ``expert_bytes`` the bytes that engine
loaded for the row (0, or the header's figure for the layer).

What is kept: the routing (experts, gates, phase); the header's ``n_expert_used`` is the trace's top-k (these
captures reduced it below the model's own: the model's is ``native_top_k`` in meta). The engine's per-layer
``expert_bytes``/``dense_bytes`` (quantised GGUF experts) and its residency counts go to ``meta.route_csv`` as
provenance only: workloads use the preset's bf16 expert bytes.

Known quirk: in prefill, that engine skips the last layer for every prompt position but the last (their logits are
not needed). Such a prompt position is dropped whole (counted in ``meta.route_csv.dropped_prefill_tokens`` and
reported as a warning); ``incomplete_prefill="error"`` refuses the file instead. Any other missing layer is an
error. The header's ``arch`` with its layer and expert counts picks the preset (:data:`ARCH_PRESETS`); an arch with
no preset keeps the arch as the model name, with a warning.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from artifact.models import PRESETS
from artifact.traces.importers.common import Limits, Records, assemble, fail, file_provenance, read_text
from artifact.traces.trace import Trace, TraceError, make_meta

MAGIC = "# route_trace v1"
COLUMNS = ("turn", "phase", "step", "layer", "slot", "expert", "weight", "residency", "expert_bytes")
# (arch, n_layer, n_expert) -> preset, from each GGUF's general.architecture and its block and expert counts.
ARCH_PRESETS = {("qwen3moe", 48, 128): "qwen3-30b-a3b", ("gemma4", 30, 128): "gemma-4-26b-a4b",
                ("gpt-oss", 36, 128): "gpt-oss-120b", ("gpt-oss", 24, 32): "gpt-oss-20b"}


def _kv(text: str) -> dict[str, str]:
    return dict(tok.split("=", 1) for tok in text.split() if "=" in tok)


def _int(origin: str, where: str, fld: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise fail(origin, where, fld, f"{raw!r} is not an integer") from None


def _header(lines: list[str], origin: str) -> tuple[dict, dict, int]:
    """Parse the ``#`` block: (model line fields, {layer: (line, expert_bytes, dense_bytes)}, index of the CSV
    header line)."""
    if not lines or lines[0].strip() != MAGIC:
        first = lines[0][:60] if lines else ""
        raise TraceError(f"trace file {origin}: line 1: not a route_trace v1 file (expected {MAGIC!r}, got "
                         f"{first!r})")
    model, layers, csv_at = None, {}, None
    for n, raw in enumerate(lines[1:], start=2):
        text = raw.strip()
        if not text:
            continue
        if not text.startswith("#"):
            csv_at = n - 1
            break
        kv = _kv(text[1:])
        if "arch" in kv or "n_layer" in kv:
            if model is not None:
                raise fail(origin, f"line {n}", "model", "a second model line in the header")
            for key in ("arch", "n_layer", "n_expert", "n_expert_used"):
                if key not in kv:
                    raise fail(origin, f"line {n}", key, "missing from the header's model line")
            model = {"line": n, "path": kv.get("model", ""), "arch": kv["arch"]}
            for key in ("n_layer", "n_expert", "n_expert_used"):
                model[key] = _int(origin, f"line {n}", key, kv[key])
                if model[key] < 1:
                    raise fail(origin, f"line {n}", key, f"{model[key]} must be positive")
        elif "layer" in kv:
            lyr = _int(origin, f"line {n}", "layer", kv["layer"])
            if lyr in layers:
                raise fail(origin, f"line {n}", "layer", f"header line for layer {lyr} again (first at line "
                           f"{layers[lyr][0]})")
            eb = _int(origin, f"line {n}", "expert_bytes", kv.get("expert_bytes", "missing"))
            db = _int(origin, f"line {n}", "dense_bytes", kv.get("dense_bytes", "missing"))
            layers[lyr] = (n, eb, db)
        # any other comment line (e.g. a summary) is not routing: skipped
    if model is None:
        raise fail(origin, "header", "arch", "no model line (# model=... arch=... n_layer=... n_expert=... "
                   "n_expert_used=...)")
    if csv_at is None:
        raise TraceError(f"trace file {origin}: no CSV rows after the header")
    L = model["n_layer"]
    for lyr, (n, _, _) in sorted(layers.items()):
        if not 0 <= lyr < L:
            raise fail(origin, f"line {n}", "layer", f"header line for layer {lyr} but n_layer={L} (line "
                       f"{model['line']})")
    missing = [lyr for lyr in range(L) if lyr not in layers]
    if missing:
        raise fail(origin, "header", "layer", f"no '# layer={missing[0]} expert_bytes=...' line but n_layer={L}")
    return model, layers, csv_at


def read(path: str | os.PathLike, model: str | None = None, incomplete_prefill: str = "drop") -> tuple[Trace, list]:
    """Import a route-csv file; returns (trace, warnings). ``model`` (a preset) overrides the arch mapping."""
    origin = str(path)
    lines = read_text(path).splitlines()
    head, layer_lines, csv_at = _header(lines, origin)
    L, E, K = head["n_layer"], head["n_expert"], head["n_expert_used"]
    warnings = []
    name = model or ARCH_PRESETS.get((head["arch"], L, E))
    if name is None:
        name = head["arch"]
        warnings.append(f"{origin}: no preset for arch {head['arch']!r} with {L} layers x {E} experts; the trace "
                        f"keeps model {name!r} (name a preset with --model to simulate it)")
    if name in PRESETS:
        spec = PRESETS[name]
        if (spec.moe_layers, spec.experts) != (L, E):
            raise fail(origin, f"line {head['line']}", "n_layer", f"the header says n_layer={L} n_expert={E} but "
                       f"model preset {name} has {spec.moe_layers} MoE layers x {spec.experts} experts")
        if K > spec.top_k:
            raise fail(origin, f"line {head['line']}", "n_expert_used", f"{K} but model preset {name} routes "
                       f"top-{spec.top_k}: a trace may use fewer experts per token than its model, never more")

    names = [c.strip() for c in lines[csv_at].split(",")]
    for col in COLUMNS:
        if col not in names:
            raise fail(origin, f"line {csv_at + 1}", col, f"column missing from the CSV header {names}")
    rows, row_line = [], []
    for n in range(csv_at + 1, len(lines)):
        text = lines[n].strip()
        if not text or text.startswith("#"):
            continue
        cells = text.split(",")
        if len(cells) != len(names):
            raise fail(origin, f"line {n + 1}", names[min(len(cells), len(names)) - 1],
                       f"{len(cells)} values but the CSV header has {len(names)} columns")
        rows.append(cells)
        row_line.append(n + 1)
    if not rows:
        raise TraceError(f"trace file {origin}: no CSV rows after the header")
    line = np.asarray(row_line, dtype=np.int64)
    c = _parse(rows, names, line, origin)

    def at(i: int) -> str:
        return f"line {int(line[i])}"

    for col, lo, hi, note in (("phase", 0, 1, "0 prefill, 1 decode"), ("residency", 0, 1, "0 or 1")):
        bad = (c[col] < lo) | (c[col] > hi)
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise fail(origin, at(i), col, f"{int(c[col][i])} ({note})")
    bad = (c["slot"] < 0) | (c["slot"] >= K)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise fail(origin, at(i), "slot", f"slot {int(c['slot'][i])} but the header says n_expert_used={K} "
                   f"(slots 0..{K - 1})")
    if not np.isfinite(c["weight"]).all():
        i = int(np.nonzero(~np.isfinite(c["weight"]))[0][0])
        raise fail(origin, at(i), "weight", f"{rows[i][names.index('weight')]!r} is not a finite number")
    layer_ok = (c["layer"] >= 0) & (c["layer"] < L)
    if not layer_ok.all():
        i = int(np.nonzero(~layer_ok)[0][0])
        raise fail(origin, at(i), "layer", f"layer {int(c['layer'][i])} but the header says n_layer={L} "
                   f"(layers 0..{L - 1})")
    hdr_bytes = np.array([layer_lines[lyr][1] for lyr in range(L)], dtype=np.int64)
    eb = c["expert_bytes"]
    bad = (eb != 0) & (eb != hdr_bytes[c["layer"]])
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        lyr = int(c["layer"][i])
        raise fail(origin, at(i), "expert_bytes", f"{int(eb[i])} but the header says layer {lyr} expert_bytes="
                   f"{int(hdr_bytes[lyr])} (line {layer_lines[lyr][0]}); a row loads 0 or that")

    # rows of one (turn, phase, step, layer) are consecutive, slots 0..K-1 in order
    key = np.stack([c["turn"], c["phase"], c["step"], c["layer"]], axis=1)  # [R, 4]
    same = np.zeros(len(rows), dtype=bool)
    same[1:] = (key[1:] == key[:-1]).all(axis=1)
    expected = np.zeros(len(rows), dtype=np.int64)
    expected[1:] = c["slot"][:-1] + 1
    expected[~same] = 0
    bad = c["slot"] != expected
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        s = int(c["slot"][i])
        if expected[i] == 0:
            msg = f"slot {s} starts turn {int(c['turn'][i])} step {int(c['step'][i])} layer {int(c['layer'][i])}"
        else:
            msg = f"slot {s} follows slot {int(expected[i]) - 1} of the same token and layer"
        raise fail(origin, at(i), "slot", f"{msg} (each token and layer lists slots 0..{K - 1} in order)")
    starts = np.nonzero(~same)[0]
    sizes = np.diff(np.append(starts, len(rows)))
    if (sizes != K).any():
        i = int(starts[np.nonzero(sizes != K)[0][0]])
        raise fail(origin, at(i), "slot", f"turn {int(c['turn'][i])} step {int(c['step'][i])} layer "
                   f"{int(c['layer'][i])} has {int(sizes[np.nonzero(sizes != K)[0][0]])} slots but the header says "
                   f"n_expert_used={K}")

    grp = starts  # first row of each record
    turns, first_row, seq = np.unique(c["turn"][grp], return_index=True, return_inverse=True)
    by_appearance = np.argsort(first_row)  # sequences in order of first appearance
    rank = np.empty_like(by_appearance)
    rank[by_appearance] = np.arange(len(turns))
    rec = Records(seq=rank[seq].astype(np.int64), pos=c["step"][grp], layer=c["layer"][grp],
                  experts=c["expert"].reshape(-1, K), line=line.reshape(-1, K),
                  seq_names=[f"turn {int(t)}" for t in turns[by_appearance]],
                  gates=c["weight"].reshape(-1, K), phase=c["phase"][grp])
    lim = Limits(L, E, f"the header says n_layer={L}", f"the header says n_expert={E}",
                 {"layer": "layer", "expert": "expert", "position": "step", "phase": "phase"})
    a = assemble(rec, origin, lim, incomplete_prefill)
    if a.experts.shape[0] == 0:
        raise TraceError(f"trace file {origin}: no complete token left ({a.dropped_prefill_tokens} incomplete "
                         f"prefill tokens dropped)")
    hits = {}
    for ph, what in ((0, "prefill"), (1, "decode")):
        m = c["phase"] == ph
        hits[what] = [int(c["residency"][m].sum()), int(m.sum())]
    native = PRESETS[name].top_k if name in PRESETS else None
    meta = make_meta(name, E, f"route-csv:{Path(path).name}", {}, **file_provenance(path, "route-csv"),
                     arch=head["arch"], model_path=head["path"], native_top_k=native, top_k_used=K,
                     route_csv={
                         "n_layer": L, "n_expert": E, "n_expert_used": K, "rows": len(rows),
                         "turns": len(turns), "tokens_in_file": a.tokens_in_file,
                         "dropped_prefill_tokens": a.dropped_prefill_tokens,
                         "dropped_prefill_rule": "prefill positions lacking their last layer(s) are dropped whole",
                         "expert_bytes": hdr_bytes.tolist(),
                         "dense_bytes": [layer_lines[lyr][2] for lyr in range(L)],
                         "residency_hits_rows": hits,
                         "note": "expert_bytes, dense_bytes and residency are the capturing engine's (quantised "
                                 "GGUF experts, its own cache): provenance only; workloads use the preset's bf16 "
                                 "expert bytes",
                     })
    tr = Trace(a.experts, a.seq_offsets, meta, a.gates, None, a.phase).validate(origin)
    return tr, warnings + a.warnings


def _parse(rows: list[list[str]], names: list[str], line: np.ndarray, origin: str) -> dict[str, np.ndarray]:
    out = {}
    for col in COLUMNS:
        j = names.index(col)
        cells = [r[j].strip() for r in rows]
        if col == "weight":
            try:
                out[col] = np.array(cells, dtype=np.float64)
            except ValueError:
                for i, v in enumerate(cells):
                    try:
                        float(v)
                    except ValueError:
                        raise fail(origin, f"line {int(line[i])}", col, f"{v!r} is not a number") from None
                raise
            continue
        arr = np.array(cells, dtype=str)
        neg = np.char.startswith(arr, "-")
        ok = np.char.isdigit(np.where(neg, np.char.replace(arr, "-", "", count=1), arr))
        if not ok.all():
            i = int(np.nonzero(~ok)[0][0])
            raise fail(origin, f"line {int(line[i])}", col, f"{cells[i]!r} is not an integer")
        out[col] = np.array(cells, dtype=np.int64)
    return out
