"""``lfru``: the LFRU expert cache of vLLM's expert-offloading PR #37190 (vllm-project/vllm,
``vllm/model_executor/layers/fused_moe/expert_weight_provider.py``): "LFU and LRU combined".

As the PR defines it:
- one cache per MoE layer with the same number of slots each (``--moe-expert-cache-size N`` is per layer): here
  ``C // L`` slots per layer, the remainder to the first layers;
- per layer, an integer clock that advances by one per expert access (hit or miss); each resident expert keeps
  ``freq`` (accesses since it was loaded, 1 at load) and ``last`` (the clock at its last access);
- on a miss with no free slot, evict the resident expert with the lowest ``freq / (clock - last + 1)``; the
  evicted entry is deleted (counts do not survive eviction); ties go to the earliest inserted;
- the experts the same forward requests are never evicted (the PR's later revision; the scheduler pins them).

Left open and chosen here: the PR walks a forward's experts in id order, interleaving hits and the eviction of each
miss; we choose all victims of a layer-step together, on the clock before its accesses (the ages of the
non-requested experts then differ by at most the layer-step's own accesses), then count the accesses in expert-id
order. Scores are compared as integers ``(freq << 40) // age`` (platform-exact). Demand fetch, no prediction.
"""

from __future__ import annotations

import numpy as np

from artifact.core.select import smallest_lex
from artifact.policies.base import Strategy
from artifact.policies.mixtral_offloading import layer_shares
from artifact.policies.registry import register


@register("lfru", "vLLM PR #37190 LFRU: per-layer caches, evict the lowest freq / (clock - last + 1)",
          "vllm-project/vllm PR #37190 (expert_weight_provider.py)", "none", "LFRU, per layer", order=90)
class LFRU(Strategy):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.masks = layer_shares(ctx.C, ctx.L, ctx.K)
        self.clock = np.zeros(ctx.L, np.int64)  # per layer: accesses so far
        self.freq = np.zeros(ctx.C, np.int64)
        self.last = np.zeros(ctx.C, np.int64)
        self.inserted = np.zeros(ctx.C, np.int64)  # insertion order (ties: earliest inserted first)
        self.n_inserted = 0
        self.filled_at = np.full(ctx.C, -1, np.int64)  # layer-step of the demand load that filled the slot

    def partition(self, layer):
        return self.masks[layer]

    def evict(self, cand, n, g, incoming=None):
        layer = g % self.ctx.L  # victims are taken in the layer's own share
        age = self.clock[layer] - self.last[cand] + 1
        score = (self.freq[cand] << 40) // age
        return smallest_lex(cand, n, score, self.inserted[cand])

    def on_fill(self, slots, gids, g, targets=None):
        self.filled_at[slots] = g
        k = slots.shape[0]
        self.inserted[slots] = np.arange(self.n_inserted, self.n_inserted + k)
        self.n_inserted += k

    def on_use(self, slots, gids, g):
        order = np.argsort(gids, kind="stable")  # the PR counts a forward's experts in id order
        slots, gids = slots[order], gids[order]
        layer = int(gids[0] // self.ctx.E)
        k = slots.shape[0]
        tick = self.clock[layer] + np.arange(1, k + 1)  # one clock step per access, in expert-id order
        new = self.filled_at[slots] == g
        self.freq[slots] = np.where(new, 1, self.freq[slots] + 1)
        self.last[slots] = tick
        self.clock[layer] += k
        self.filled_at[slots[new]] = -1
