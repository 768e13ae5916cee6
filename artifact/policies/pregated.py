"""``pregated``: Pre-gated MoE as built (Hwang et al., ISCA 2024, arXiv:2308.12066).

Its fine-tuned pre-gate in block N *is* block N+1's router, so the fetched set is the set used (no misprediction
path): while layer ``l`` runs we prefetch the true experts of layer ``l + 1``, most requested first. Exactly one
layer ahead; the first MoE layer of each step is fetched on demand. The paper's artifact caches with LFU
(``scripts/eval_all.py``); it does not say whether counts survive eviction: we count since the expert entered the
cache, as libCacheSim's LFU.

:class:`NextLayerSet` is also the predictor of ``pregated_proxy`` and ``mixtral_offloading`` (the training-free
stand-in: layer ``l + 1``'s router on layer ``l``'s hidden state, the trace's ``lookahead``).
"""

from __future__ import annotations

import numpy as np

from artifact.core.errors import Unrunnable
from artifact.policies.base import Frequency, Prefetch, ranked
from artifact.policies.registry import register


class NextLayerSet:
    """Mixin: prefetch, while layer ``l`` runs, the experts predicted for layer ``l + 1``, most requested first.

    ``source="exact"``: the true routing of layer ``l + 1`` (needs ``sees="next_layer"``); ``source="lookahead"``:
    the trace's lookahead, which can mispredict (a miss falls back to an on-demand fetch).
    """

    def __init__(self, ctx, source: str = "lookahead") -> None:
        super().__init__(ctx)
        if source not in ("exact", "lookahead"):
            raise ValueError(f"next-layer prefetch: source must be 'exact' or 'lookahead', got {source!r}")
        if source == "lookahead" and not ctx.has_lookahead:
            raise Unrunnable("needs a trace with a 'lookahead' field (generate or record one with it)")
        self.source = source

    def prefetch(self, g):
        ctx = self.ctx
        layer = g % ctx.L
        if layer + 1 >= ctx.L:
            return None
        pred = ctx.routing(g + 1) if self.source == "exact" else ctx.lookahead(g + 1)
        items, _ = ctx.step_meta(g // ctx.L)
        gids, _, icount = ranked(pred, items, layer + 1, ctx.E)
        return Prefetch(gids, np.full(gids.shape[0], g + 1, np.int64), icount)


@register("pregated", "Pre-gated MoE as built: the next layer's exact experts, one layer ahead",
          "Hwang et al., ISCA 2024, arXiv:2308.12066", "exact layer l+1", "LFU", sees="next_layer",
          params={"source": "exact"}, order=30)
class Pregated(NextLayerSet, Frequency):
    """Exact next-layer prefetch with an LFU cache."""
