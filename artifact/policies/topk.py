"""``topk``: the seed report's Top-K ("frequency-based expert prediction across batch items").

While layer ``l`` runs, prefetch the ``k`` experts of layer ``l + 1`` most frequently routed to so far, counted over
every batch item. The seed gives no ``k``: we take each layer's fair share of the cache, ``max(top_k, C // L)``.
LFU cache (the seed pairs it with a frequency cache; it names none).
"""

from __future__ import annotations

import numpy as np

from artifact.policies.base import Frequency, Prefetch, empty_prefetch
from artifact.policies.registry import register


@register("topk", "seed's Top-K: most frequent experts of the next layer across the batch",
          "seed report (seeds/000), 'Top-K (Ours)'", "per-layer frequency", "LFU", order=130)
class TopKFrequency(Frequency):
    def __init__(self, ctx, k: int | None = None) -> None:
        super().__init__(ctx)
        self.k = k if k is not None else max(ctx.K, ctx.C // ctx.L)
        self.freq = np.zeros((ctx.L, ctx.E), np.int64)

    def observe(self, g):
        ctx = self.ctx
        r = ctx.routing(g)
        self.freq[g % ctx.L] += np.bincount(r.reshape(-1), minlength=ctx.E)

    def prefetch(self, g):
        ctx = self.ctx
        layer = g % ctx.L
        if layer + 1 >= ctx.L:
            return None
        f = self.freq[layer + 1]
        seen = np.nonzero(f)[0]
        if seen.size == 0:
            return empty_prefetch()
        top = seen[np.lexsort((seen, -f[seen]))][: self.k]
        return Prefetch(top + (layer + 1) * ctx.E, np.full(top.shape[0], g + 1, np.int64), None)
