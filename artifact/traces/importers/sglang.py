"""``sglang``: the routed experts SGLang returns for a request with ``return_routed_experts``.

Defined by SGLang's documentation (github.com/sgl-project/sglang):

- ``docs_new/docs/basic_usage/openai_api_completions.mdx`` (docs.sglang.ai, "OpenAI APIs - Completions", section
  "Returning Routed Experts (MoE Models)"): with ``return_routed_experts: true`` (server flag
  ``--enable-return-routed-experts``) "the ``routed_experts`` field will be returned in the ``sgl_ext`` object on
  each choice, containing base64-encoded int32 expert IDs as a flattened array with logical shape
  ``[num_tokens, num_layers, top_k]``";
- ``docs_new/docs/basic_usage/sampling_params.mdx`` (``/generate`` parameters ``return_routed_experts`` and
  ``routed_experts_start_len``): the rows cover the positions ``[routed_experts_start_len, seqlen - 1)``, by default
  ``[0, seqlen - 1)``: row ``i`` is the token at position ``start + i`` (the last generated token never runs
  through the model).

The documentation gives the payload but not the number of layers or the top-k (``layers``/``top_k`` options, by
default the preset ``model``'s MoE layers and top-k), and, for the native ``/generate`` endpoint, not the key that
holds it: that key, ``meta_info["routed_experts"]`` beside ``meta_info["prompt_tokens"]`` and
``["completion_tokens"]``, is taken from SGLang's own code, not its documentation: the decoder
``sglang.srt.state_capturer.routed_experts.extract_routed_experts_from_meta_info``, its speculative-decoding
routed-experts test (``test_decode_routing_matches_prefill_routing``: ``rows = prompt_tokens + completion_tokens -
1``, "row i is the routing for the token at position i, so decode rows start at prompt_len") and PR #17434, which
added the OpenAI-endpoint field with "the response format ... identical to the /generate endpoint". Gate weights are
not returned.

Input: one response, a JSON array of them, or JSON lines; each response either OpenAI-style (``choices[i].sgl_ext
.routed_experts`` with ``usage.prompt_tokens``) or ``/generate`` style (``meta_info.routed_experts`` with
``meta_info.prompt_tokens``). Each choice (or ``/generate`` response) becomes one sequence: rows before
``prompt_tokens`` are prefill, the rest decode. Where the response gives the token counts for exactly that
sequence (``/generate``, or one choice) the row count must be ``prompt_tokens + completion_tokens - 1 - start``.
"""

from __future__ import annotations

import base64
import binascii
import os

import numpy as np

from artifact.models import PRESETS
from artifact.traces.importers.common import check_block, fail, file_provenance, json_documents
from artifact.traces.trace import DECODE, PREFILL, Trace, TraceError, make_meta


def _decode(payload, origin: str, where: str, L: int, K: int) -> np.ndarray:
    if not isinstance(payload, str):
        raise fail(origin, where, "routed_experts", "missing or not a base64 string (was the request made with "
                   "return_routed_experts and the server started with --enable-return-routed-experts?)")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise fail(origin, where, "routed_experts", f"not base64 ({exc})") from None
    if len(raw) % 4:
        raise fail(origin, where, "routed_experts", f"{len(raw)} bytes is not a whole number of int32 ids")
    flat = np.frombuffer(raw, dtype="<i4").astype(np.int64)
    if flat.size % (L * K):
        raise fail(origin, where, "routed_experts", f"{flat.size} ids is not a multiple of layers x top_k = "
                   f"{L} x {K}")
    return flat.reshape(-1, L, K)


def _count(v, origin: str, where: str, fld: str) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise fail(origin, where, fld, f"{v!r} is not a token count")
    return v


def read(path: str | os.PathLike, model: str | None = None, num_experts: int | None = None,
         layers: int | None = None, top_k: int | None = None, start_len: int = 0,
         incomplete_prefill: str = "drop") -> tuple[Trace, list[str]]:
    """Import SGLang responses; returns (trace, warnings). ``start_len``: the request's ``routed_experts_start_len``
    (the absolute position of the first row). ``incomplete_prefill`` is accepted for a uniform API (unused: every
    row holds every layer)."""
    origin = str(path)
    spec = PRESETS.get(model) if model else None
    E = num_experts if num_experts is not None else (spec.experts if spec else None)
    L = layers if layers is not None else (spec.moe_layers if spec else None)
    K = top_k if top_k is not None else (spec.top_k if spec else None)
    if E is None or L is None or K is None:
        raise TraceError(f"trace file {origin}: the payload is a flat list of ids: give num_experts, layers and "
                         f"top_k (--num-experts, --layers, --top-k) or a preset model (--model)")
    if start_len < 0:
        raise ValueError(f"sglang import: start_len must be >= 0, got {start_len}")
    note = f"num_experts is {E}" if num_experts is not None else f"model preset {model} has {E} experts"
    blocks, phases = [], []
    for where, resp in json_documents(path):
        if not isinstance(resp, dict):
            raise TraceError(f"trace file {origin}: {where or 'document'}: not a JSON object (an SGLang response)")
        items = []  # (where, payload, prompt_tokens, completion_tokens or None)
        if isinstance(resp.get("meta_info"), dict):
            mi = resp["meta_info"]
            items.append((where, mi.get("routed_experts"), _count(mi.get("prompt_tokens"), origin, where,
                          "meta_info.prompt_tokens"), _count(mi.get("completion_tokens"), origin, where,
                          "meta_info.completion_tokens"), "meta_info.prompt_tokens"))
        elif isinstance(resp.get("choices"), list) and resp["choices"]:
            usage = resp.get("usage") if isinstance(resp.get("usage"), dict) else {}
            prompt = _count(usage.get("prompt_tokens"), origin, where, "usage.prompt_tokens")
            single = len(resp["choices"]) == 1
            completion = _count(usage.get("completion_tokens"), origin, where, "usage.completion_tokens")
            for c, ch in enumerate(resp["choices"]):
                ext = ch.get("sgl_ext") if isinstance(ch, dict) else None
                payload = ext.get("routed_experts") if isinstance(ext, dict) else None
                items.append((f"{where + ': ' if where else ''}choice {c}", payload, prompt,
                              completion if single else None, "usage.prompt_tokens"))
        else:
            raise TraceError(f"trace file {origin}: {where or 'document'}: neither an OpenAI-style response "
                             f"(choices) nor a /generate response (meta_info)")
        for w, payload, prompt, completion, pfield in items:
            rows = _decode(payload, origin, w, L, K)
            if prompt is None:
                raise fail(origin, w, pfield, "missing: needed to tell prefill rows from decode rows")
            n_pre = prompt - start_len
            if n_pre < 0:
                raise fail(origin, w, pfield, f"{prompt} is less than start_len {start_len}")
            if completion is not None and rows.shape[0] != prompt + completion - 1 - start_len:
                raise fail(origin, w, "routed_experts", f"{rows.shape[0]} rows but the response says prompt_tokens "
                           f"{prompt} + completion_tokens {completion} - 1 - start {start_len} = "
                           f"{prompt + completion - 1 - start_len}")
            if rows.shape[0] < n_pre:
                raise fail(origin, w, "routed_experts", f"{rows.shape[0]} rows, fewer than the {n_pre} prompt rows")
            if rows.shape[0] == 0:
                raise fail(origin, w, "routed_experts", "no rows")
            check_block(rows, origin, w, "routed_experts", E, note)
            blocks.append(rows)
            phases.append(np.where(np.arange(rows.shape[0]) < n_pre, PREFILL, DECODE).astype(np.int8))
    if spec is not None and K > spec.top_k:
        raise TraceError(f"trace file {origin}: top_k {K} but model preset {model} routes top-{spec.top_k}")
    warnings = [] if model else [f"{origin}: no --model given: the trace's model is 'unknown' (name a preset with "
                                 f"--model to simulate it)"]
    phase = np.concatenate(phases)
    lengths = [b.shape[0] for b in blocks]
    meta = make_meta(model or "unknown", E, f"sglang:{os.path.basename(path)}", {},
                     **file_provenance(path, "sglang"), native_top_k=spec.top_k if spec else None, top_k_used=K,
                     sglang={"sequences": len(blocks), "layers": L, "start_len": start_len,
                             "tokens": {"prefill": int((phase == PREFILL).sum()),
                                        "decode": int((phase == DECODE).sum())}})
    tr = Trace(np.concatenate(blocks).astype(np.int16), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
               meta, phase=phase)
    return tr.validate(origin), warnings
