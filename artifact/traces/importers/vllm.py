"""``vllm``: the routed experts vLLM returns with ``--enable-return-routed-experts``.

Defined by vLLM's documentation, "Routed Experts Replay" (docs.vllm.ai/en/v0.21.0/training/routed_experts_replay/,
``docs/training/routed_experts_replay.md`` in github.com/vllm-project/vllm), section "API Reference": a
``/v1/completions`` or ``/v1/chat/completions`` response carries

- ``prompt_routed_experts`` (response level, shared by every choice): ``list[list[list[int]]]`` or ``null``, shape
  ``[prompt_len, num_moe_layers, top_k]``, the expert ids of the prompt tokens;
- ``choices[i].routed_experts``: ``list[list[list[int]]]`` or ``null``, shape ``[gen_len, num_moe_layers, top_k]``,
  the expert ids of the generated tokens.

Ids are in ``[0, num_experts)``; with prefix caching, prompt positions served from the cache hold the ``-1``
sentinel (same page, "Supported Configurations"). Gate weights are not returned.

Input: a file holding one such response, a JSON array of them, or JSON lines (one response per line). Each choice
becomes one sequence: the prompt rows (phase prefill) then its generated rows (phase decode); with ``n > 1`` every
choice repeats the shared prompt. A prompt row that is all ``-1`` (a cached position: routing not recorded, and no
expert ran) is dropped and counted; any other ``-1`` is an error. The expert count comes from ``num_experts`` or
the preset ``model``; layers and top-k from the arrays.

The offline Python API returns the same arrays as numpy (``RequestOutput.prompt_routed_experts``,
``CompletionOutput.routed_experts``): dump them to this JSON shape to import them. Later vLLM versions ("Routed
Experts Return", docs.vllm.ai/en/latest/training/routed_experts/) change how routing is stored, not this response
shape as far as their documentation says.
"""

from __future__ import annotations

import os

import numpy as np

from artifact.traces.importers.common import check_block, expert_count, fail, file_provenance, json_documents
from artifact.traces.trace import DECODE, PREFILL, Trace, TraceError, make_meta


def _array(v, origin: str, where: str, fld: str) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.int64)
    except (ValueError, TypeError):
        raise fail(origin, where, fld, "is not a rectangular [tokens][layers][top_k] list of integers") from None
    if a.ndim != 3 or a.shape[1] < 1 or a.shape[2] < 1:
        raise fail(origin, where, fld, f"shape {list(a.shape)} is not [tokens, layers, top_k]")
    return a


def read(path: str | os.PathLike, model: str | None = None, num_experts: int | None = None,
         incomplete_prefill: str = "drop") -> tuple[Trace, list[str]]:
    """Import vLLM responses; returns (trace, warnings). ``incomplete_prefill`` is accepted for a uniform API (an
    all-``-1`` cached prompt row is always dropped: it holds no routing)."""
    origin = str(path)
    spec, E = expert_count(origin, model, num_experts)
    note = f"num_experts is {E}" if num_experts is not None else f"model preset {model} has {E} experts"
    blocks, phases, shape, dropped, no_prompt = [], [], None, 0, 0
    for where, resp in json_documents(path):
        if not isinstance(resp, dict):
            raise TraceError(f"trace file {origin}: {where or 'document'}: not a JSON object (a vLLM response)")
        choices = resp.get("choices")
        if not isinstance(choices, list) or not choices:
            raise fail(origin, where, "choices", "missing or empty (not a completions response)")
        prompt = resp.get("prompt_routed_experts")
        if prompt is not None:
            prompt = _array(prompt, origin, where, "prompt_routed_experts")
            cached = (prompt == -1).all(axis=(1, 2))
            dropped += int(cached.sum())
            prompt = prompt[~cached]
        for c, ch in enumerate(choices):
            cw = f"{where + ': ' if where else ''}choice {c}"
            gen = ch.get("routed_experts") if isinstance(ch, dict) else None
            if gen is None:
                raise fail(origin, cw, "routed_experts", "missing or null (was the server started with "
                           "--enable-return-routed-experts?)")
            gen = _array(gen, origin, cw, "routed_experts")
            parts = [(gen, DECODE, "routed_experts", cw)]
            if prompt is not None:
                parts.insert(0, (prompt, PREFILL, "prompt_routed_experts", where))
            else:
                no_prompt += 1
            for arr, _, fld, w in parts:
                if shape is None:
                    shape = arr.shape[1:]
                elif arr.shape[1:] != shape:
                    raise fail(origin, w, fld, f"[layers, top_k] = {list(arr.shape[1:])} but the first block has "
                               f"{list(shape)}")
                check_block(arr, origin, w, fld, E, note)
            seq = np.concatenate([a for a, _, _, _ in parts])
            if seq.shape[0] == 0:
                raise fail(origin, cw, "routed_experts", "no tokens in this choice")
            blocks.append(seq)
            phases.append(np.concatenate([np.full(a.shape[0], ph, np.int8) for a, ph, _, _ in parts]))
    L, K = shape
    if spec is not None and L != spec.moe_layers:
        raise fail(origin, "", "routed_experts", f"{L} layers but model preset {model} has {spec.moe_layers} MoE "
                   f"layers")
    warnings = []
    if dropped:
        warnings.append(f"{origin}: dropped {dropped} prompt positions served from vLLM's prefix cache (all -1: "
                        f"no routing recorded)")
    if no_prompt:
        warnings.append(f"{origin}: {no_prompt} choices have no prompt_routed_experts: decode tokens only")
    if not model:
        warnings.append(f"{origin}: no --model given: the trace's model is 'unknown' (name a preset with --model "
                        f"to simulate it)")
    lengths = [b.shape[0] for b in blocks]
    phase = np.concatenate(phases)
    meta = make_meta(model or "unknown", E, f"vllm:{os.path.basename(path)}", {}, **file_provenance(path, "vllm"),
                     native_top_k=spec.top_k if spec else None, top_k_used=int(K),
                     vllm={"sequences": len(blocks), "dropped_cached_prompt_tokens": dropped,
                           "tokens": {"prefill": int((phase == PREFILL).sum()),
                                      "decode": int((phase == DECODE).sum())}})
    tr = Trace(np.concatenate(blocks).astype(np.int16), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
               meta, phase=phase)
    return tr.validate(origin), warnings
