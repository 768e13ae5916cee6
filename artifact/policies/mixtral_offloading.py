"""``mixtral_offloading``: dvmazur/mixtral-offloading (arXiv:2312.17238): each layer owns a fixed share of the
slots, LRU within it, and the paper's speculative next-layer prefetch (the trace's lookahead; in the paper, not in
the repo).

The repo gives every layer the same number of slots; with ``C`` slots and ``L`` layers we give ``C // L`` to each
layer and the remainder to the first ones.
"""

from __future__ import annotations

import numpy as np

from artifact.core.errors import Unrunnable
from artifact.policies.base import Recency
from artifact.policies.pregated import NextLayerSet
from artifact.policies.registry import register


def layer_shares(C: int, L: int, K: int) -> list[np.ndarray]:
    """Per layer, the mask of its slots: ``C // L`` each, the remainder to the first layers."""
    share = np.full(L, C // L)
    share[: C % L] += 1
    if (share < K).any():
        raise Unrunnable(f"per-layer slots: {C} slots over {L} layers leaves a layer fewer than top-{K} slots")
    owner = np.repeat(np.arange(L), share)
    return [owner == m for m in range(L)]


@register("mixtral_offloading", "per-layer LRU slots + speculative next-layer prefetch",
          "dvmazur/mixtral-offloading, arXiv:2312.17238", "trace lookahead", "per-layer LRU", needs_lookahead=True,
          params={"source": "lookahead"}, order=60)
class MixtralOffloading(NextLayerSet, Recency):
    def __init__(self, ctx, source: str = "lookahead") -> None:
        super().__init__(ctx, source)
        self.masks = layer_shares(ctx.C, ctx.L, ctx.K)

    def partition(self, layer):
        return self.masks[layer]
