"""The routing-trace file format.

One ``.npz`` file holds many sequences:

- ``experts``     int16 ``[tokens, layers, top_k]``: each token's top-k expert ids at every MoE layer, in router order.
- ``seq_offsets`` int64 ``[sequences + 1]``: sequence ``i`` is tokens ``seq_offsets[i]:seq_offsets[i + 1]``.
- ``gates``       optional float16, same shape as ``experts``: the router weights of those experts.
- ``lookahead``   optional int16, same shape: for token ``t`` and layer ``l``, the experts predicted for layer ``l``
  *before* layer ``l`` runs (e.g. layer ``l``'s router applied to layer ``l - 1``'s hidden state). Layer 0 has no
  prediction and holds ``-1``.
- ``phase``       optional int8 ``[tokens]`` (schema version 2): ``0`` prefill (the prompt), ``1`` decode (a generated
  token). Within a sequence every prefill token comes before every decode token. Without it (every version-1 file,
  and synthetic traces) the phase is unknown: the workload builders then use every token, as decode and as prefill.
- ``meta``        a JSON object (stored as a 0-d string array, so loading needs no pickle): ``schema_version``,
  ``model`` (a preset name or a model id), ``num_experts``, ``source``, ``generator`` (parameters), and
  ``package_version``. Optional, checked when present: ``top_k_used`` (must equal the experts' last dimension) and
  ``native_top_k`` (the model's own top-k; a trace may route fewer experts per token than its model, e.g. a capture
  run with a reduced ``n_expert_used``, never more). Importers add provenance (``format``, ``source_file``, ...).

Version 1 files (no ``phase``) still load; a version-1 file holding a ``phase`` field is an error.

Files are written atomically (a temporary file in the same folder, then a rename), and loading validates
everything: every problem raises :class:`TraceError` naming the file, the field and the offending value.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from artifact import __version__
from artifact.atomicfile import atomic_write
from artifact.models import PRESETS

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
REQUIRED_META = ("schema_version", "model", "num_experts", "source")
PREFILL, DECODE = 0, 1  # values of the ``phase`` field


class TraceError(ValueError):
    """A trace file (or in-memory trace) that breaks the format; the message names file, field and value."""


@dataclass(frozen=True)
class Trace:
    experts: np.ndarray  # int16 [T, L, K]
    seq_offsets: np.ndarray  # int64 [S + 1]
    meta: dict = field(default_factory=dict)
    gates: np.ndarray | None = None  # float16 [T, L, K]
    lookahead: np.ndarray | None = None  # int16 [T, L, K], -1 = no prediction
    phase: np.ndarray | None = None  # int8 [T]: 0 prefill, 1 decode; None = unknown

    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @property
    def num_sequences(self) -> int:
        return int(self.seq_offsets.shape[0] - 1)

    @property
    def num_experts(self) -> int:
        return int(self.meta["num_experts"])

    @property
    def seq_lengths(self) -> np.ndarray:
        return np.diff(self.seq_offsets)

    def sequence(self, i: int) -> slice:
        return slice(int(self.seq_offsets[i]), int(self.seq_offsets[i + 1]))

    @property
    def native_top_k(self) -> int | None:
        """The model's own top-k: ``meta.native_top_k``, else the preset's, else None (unknown)."""
        nk = self.meta.get("native_top_k")
        if nk is not None:
            return int(nk)
        name = self.meta.get("model")
        return PRESETS[name].top_k if name in PRESETS else None

    def phase_counts(self) -> dict:
        """Tokens per phase: ``{"prefill": n, "decode": n}``, or ``{"unknown": T}`` without a phase field."""
        if self.phase is None:
            return {"unknown": self.num_tokens}
        return {"prefill": int((self.phase == PREFILL).sum()), "decode": int((self.phase == DECODE).sum())}

    def validate(self, origin: str = "<memory>") -> Trace:
        validate(self, origin)
        return self


def _fail(origin: str, fld: str, msg: str) -> TraceError:
    return TraceError(f"trace file {origin}: field '{fld}': {msg}")


def _check_ids(arr: np.ndarray, name: str, origin: str, num_experts: int, allow_missing: bool) -> None:
    lo = -1 if allow_missing else 0
    bad = (arr < lo) | (arr >= num_experts)
    if bad.any():
        t, lyr, k = (int(v) for v in np.argwhere(bad)[0])
        raise _fail(origin, name, f"token {t} layer {lyr} slot {k} has expert id {int(arr[t, lyr, k])} "
                    f"but the model has {num_experts} experts")
    if arr.shape[2] > 1:
        srt = np.sort(arr, axis=2)
        dup = (srt[:, :, 1:] == srt[:, :, :-1]) & (srt[:, :, 1:] >= 0)
        if dup.any():
            t, lyr, _ = (int(v) for v in np.argwhere(dup)[0])
            twice = int(srt[t, lyr][np.nonzero(dup[t, lyr])[0][0]])
            raise _fail(origin, name, f"token {t} layer {lyr} lists expert {twice} twice in its top-k "
                        f"{arr[t, lyr].tolist()}")


def validate(tr: Trace, origin: str = "<memory>") -> None:
    """Raise :class:`TraceError` on the first problem found; return None when the trace is well formed."""
    meta = tr.meta
    if not isinstance(meta, dict):
        raise _fail(origin, "meta", f"must be a JSON object, got {type(meta).__name__}")
    for key in REQUIRED_META:
        if key not in meta:
            raise _fail(origin, f"meta.{key}", "required field is missing")
    version = meta["schema_version"]
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise _fail(origin, "meta.schema_version", f"unknown schema version {version!r} (this version reads "
                    f"{', '.join(str(v) for v in READABLE_VERSIONS)})")
    ne = meta["num_experts"]
    if not isinstance(ne, int) or isinstance(ne, bool) or ne < 1:
        raise _fail(origin, "meta.num_experts", f"must be a positive integer, got {ne!r}")

    ex = tr.experts
    if not isinstance(ex, np.ndarray) or ex.dtype != np.int16:
        raise _fail(origin, "experts", f"dtype must be int16, got {getattr(ex, 'dtype', type(ex).__name__)}")
    if ex.ndim != 3 or ex.shape[1] < 1 or ex.shape[2] < 1:
        raise _fail(origin, "experts", f"shape must be [tokens, layers, top_k], got {list(ex.shape)}")
    off = tr.seq_offsets
    if not isinstance(off, np.ndarray) or off.dtype != np.int64:
        raise _fail(origin, "seq_offsets", f"dtype must be int64, got {getattr(off, 'dtype', type(off).__name__)}")
    if off.ndim != 1 or off.shape[0] < 2:
        raise _fail(origin, "seq_offsets", f"shape must be [sequences + 1] with at least one sequence, "
                    f"got {list(off.shape)}")
    if off[0] != 0:
        raise _fail(origin, "seq_offsets", f"must start at 0, got {int(off[0])}")
    steps = np.diff(off)
    if (steps <= 0).any():
        i = int(np.nonzero(steps <= 0)[0][0])
        raise _fail(origin, "seq_offsets", f"must be strictly increasing: entry {i + 1} is {int(off[i + 1])} "
                    f"after {int(off[i])}")
    if off[-1] != ex.shape[0]:
        raise _fail(origin, "seq_offsets", f"last offset {int(off[-1])} must equal the number of tokens "
                    f"{ex.shape[0]}")
    k = ex.shape[2]
    used = meta.get("top_k_used")
    if used is not None and used != k:
        raise _fail(origin, "meta.top_k_used", f"is {used!r} but the experts hold top-{k}")
    native = meta.get("native_top_k")
    if native is not None and (not isinstance(native, int) or isinstance(native, bool) or native < k):
        raise _fail(origin, "meta.native_top_k", f"is {native!r} but the experts hold top-{k}: a trace may use "
                    f"fewer experts per token than its model, never more")
    name = meta["model"]
    if name in PRESETS:
        spec = PRESETS[name]
        for what, got, want in (("num_experts", ne, spec.experts), ("layers", ex.shape[1], spec.moe_layers)):
            if got != want:
                raise _fail(origin, "experts" if what != "num_experts" else "meta.num_experts",
                            f"{what} is {got} but model preset {name} has {want}")
        if k > spec.top_k:
            raise _fail(origin, "experts", f"top_k is {k} but model preset {name} routes top-{spec.top_k}: a trace "
                        f"may use fewer experts per token than its model, never more")
        if native is not None and native != spec.top_k:
            raise _fail(origin, "meta.native_top_k", f"is {native} but model preset {name} routes top-{spec.top_k}")
    _check_ids(ex, "experts", origin, ne, allow_missing=False)

    if tr.gates is not None:
        g = tr.gates
        if not isinstance(g, np.ndarray) or g.dtype != np.float16:
            raise _fail(origin, "gates", f"dtype must be float16, got {getattr(g, 'dtype', type(g).__name__)}")
        if g.shape != ex.shape:
            raise _fail(origin, "gates", f"shape {list(g.shape)} differs from experts {list(ex.shape)}")
        if not np.isfinite(g).all():
            t, lyr, k = (int(v) for v in np.argwhere(~np.isfinite(g))[0])
            raise _fail(origin, "gates", f"token {t} layer {lyr} slot {k} holds {float(g[t, lyr, k])}")
    if tr.lookahead is not None:
        la = tr.lookahead
        if not isinstance(la, np.ndarray) or la.dtype != np.int16:
            raise _fail(origin, "lookahead", f"dtype must be int16, got {getattr(la, 'dtype', type(la).__name__)}")
        if la.shape != ex.shape:
            raise _fail(origin, "lookahead", f"shape {list(la.shape)} differs from experts {list(ex.shape)}")
        if (la[:, 0] != -1).any():
            t = int(np.nonzero((la[:, 0] != -1).any(axis=1))[0][0])
            raise _fail(origin, "lookahead", f"layer 0 has no prediction and must hold -1, token {t} holds "
                        f"{la[t, 0].tolist()}")
        _check_ids(la, "lookahead", origin, ne, allow_missing=True)
    if tr.phase is not None:
        _check_phase(tr.phase, off, ex.shape[0], version, origin)


def _check_phase(ph, off: np.ndarray, tokens: int, version, origin: str) -> None:
    if version < 2:
        raise _fail(origin, "phase", f"needs schema version 2, the file says {version}")
    if not isinstance(ph, np.ndarray) or ph.dtype != np.int8:
        raise _fail(origin, "phase", f"dtype must be int8, got {getattr(ph, 'dtype', type(ph).__name__)}")
    if ph.shape != (tokens,):
        raise _fail(origin, "phase", f"shape {list(ph.shape)} differs from [tokens] = [{tokens}]")
    bad = (ph != PREFILL) & (ph != DECODE)
    if bad.any():
        t = int(np.nonzero(bad)[0][0])
        raise _fail(origin, "phase", f"token {t} holds {int(ph[t])} (0 prefill, 1 decode)")
    # prefill before decode within each sequence: the phase never drops inside a sequence
    drop = np.nonzero(np.diff(ph.astype(np.int64)) < 0)[0] + 1  # tokens whose phase is lower than the previous
    starts = np.zeros(tokens, dtype=bool)
    starts[off[:-1]] = True
    drop = drop[~starts[drop]]
    if drop.size:
        t = int(drop[0])
        s = int(np.searchsorted(off, t, side="right") - 1)
        raise _fail(origin, "phase", f"sequence {s}: token {t} is prefill after a decode token (prefill comes "
                    f"first)")


def make_meta(model: str, num_experts: int, source: str, generator: dict | None = None, **extra) -> dict:
    """The required meta fields (the current schema version) plus ``extra`` (e.g. provenance of an import)."""
    meta = {"schema_version": SCHEMA_VERSION, "model": model, "num_experts": int(num_experts), "source": source,
            "generator": generator or {}, "package_version": __version__}
    meta.update(extra)
    return meta


def save(tr: Trace, path: str | os.PathLike) -> Path:
    """Validate, then write ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    validate(tr, str(path))
    arrays = {"experts": tr.experts, "seq_offsets": tr.seq_offsets,
              "meta": np.array(json.dumps(tr.meta, sort_keys=True))}
    if tr.gates is not None:
        arrays["gates"] = tr.gates
    if tr.lookahead is not None:
        arrays["lookahead"] = tr.lookahead
    if tr.phase is not None:
        arrays["phase"] = tr.phase
    atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays), binary=True)
    return path


def load(path: str | os.PathLike) -> Trace:
    """Read and validate a trace file; any problem raises :class:`TraceError` naming file, field and value."""
    origin = str(path)
    if not Path(path).is_file():
        raise TraceError(f"trace file {origin}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise TraceError(f"trace file {origin}: truncated or corrupt ({type(exc).__name__}: {exc})") from None
    for req in ("experts", "seq_offsets", "meta"):
        if req not in data:
            raise _fail(origin, req, "required field is missing")
    for name, arr in data.items():
        if not isinstance(arr, np.ndarray):  # NpzFile hands back raw bytes for a member that is no .npy array
            raise _fail(origin, name, "truncated or corrupt: not a numpy array")
    raw = data["meta"]
    try:
        meta = json.loads(str(raw[()]))
    except (json.JSONDecodeError, TypeError, IndexError, ValueError) as exc:
        raise _fail(origin, "meta", f"is not a JSON object ({exc})") from None
    tr = Trace(experts=data["experts"], seq_offsets=data["seq_offsets"], meta=meta,
               gates=data.get("gates"), lookahead=data.get("lookahead"), phase=data.get("phase"))
    validate(tr, origin)
    return tr


def concat(traces: list[Trace]) -> Trace:
    """Join traces of the same model (metadata of the first, lookahead/gates/phase kept only if all have them)."""
    if not traces:
        raise TraceError("concat: no traces given")
    ex = np.concatenate([t.experts for t in traces])
    lens = np.concatenate([t.seq_lengths for t in traces])
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    gates = np.concatenate([t.gates for t in traces]) if all(t.gates is not None for t in traces) else None
    la = np.concatenate([t.lookahead for t in traces]) if all(t.lookahead is not None for t in traces) else None
    ph = np.concatenate([t.phase for t in traces]) if all(t.phase is not None for t in traces) else None
    meta = dict(traces[0].meta)
    if ph is not None:
        meta["schema_version"] = SCHEMA_VERSION
    return Trace(ex, off, meta, gates, la, ph).validate()


def select(tr: Trace, keep: np.ndarray) -> Trace:
    """The tokens where ``keep [T]`` is true, sequences in order; a sequence left without tokens is dropped."""
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (tr.num_tokens,):
        raise ValueError(f"select: mask shape {list(keep.shape)} differs from [tokens] = [{tr.num_tokens}]")
    seq = np.repeat(np.arange(tr.num_sequences), tr.seq_lengths)  # [T]
    lengths = np.bincount(seq[keep], minlength=tr.num_sequences)
    lengths = lengths[lengths > 0]
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def cut(a):
        return None if a is None else a[keep]

    return Trace(tr.experts[keep], off, dict(tr.meta), cut(tr.gates), cut(tr.lookahead), cut(tr.phase))


def phase_tokens(tr: Trace, phase: int) -> Trace:
    """The trace's tokens of ``phase`` (PREFILL or DECODE); a trace without a phase field is returned whole."""
    if tr.phase is None:
        return tr
    keep = tr.phase == phase
    if not keep.any():
        what = "prefill" if phase == PREFILL else "decode"
        raise ValueError(f"trace ({tr.meta.get('model')}, {tr.meta.get('source')}): no {what} tokens "
                         f"(phases: {tr.phase_counts()})")
    return select(tr, keep)
