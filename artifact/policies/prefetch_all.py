"""``prefetch_all``: MoE-Prefetch (SE-MoE style; a baseline in Pre-gated MoE's artifact, arXiv:2308.12066).

While layer ``l`` runs, fetch every expert of layer ``l + 1``. With fewer slots than experts, as many as the
unprotected slots allow, in expert-id order (the source fetches them all; it never runs with a cache smaller than a
layer). The first MoE layer of a step is fetched on demand (no layer before it in the step). LRU.
"""

from __future__ import annotations

import numpy as np

from artifact.policies.base import Prefetch, Recency
from artifact.policies.registry import register


@register("prefetch_all", "MoE-Prefetch: fetch every expert of the next layer",
          "SE-MoE; Pre-gated MoE artifact baseline", "all of layer l+1", "LRU", order=20)
class PrefetchAll(Recency):
    def prefetch(self, g):
        ctx = self.ctx
        layer = g % ctx.L
        if layer + 1 >= ctx.L:
            return None
        gids = (layer + 1) * ctx.E + np.arange(ctx.E, dtype=np.int64)
        return Prefetch(gids, np.full(ctx.E, g + 1, np.int64), None)
