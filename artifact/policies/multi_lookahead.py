"""``multi_lookahead``: the seed report's Multi-Look-Ahead ("pattern prediction with multi-step lookahead").

An online table of cross-layer transitions (layer ``l`` expert -> layer ``l + 1`` experts, counted over past
tokens) is chained ``depth`` layers ahead from each token's current experts; each token's top-k per predicted layer
are unioned over the batch and fetched nearest layer first, most requested first. The seed gives no depth: 2. LRU.

Platform-exact: transition probabilities are held in fixed point (2^-20) and chained by an integer matrix product,
so the chosen experts are the same on every platform (ties: the lower expert id).
"""

from __future__ import annotations

import numpy as np

from artifact.policies import numeric
from artifact.policies.base import Prefetch, Recency, ranked, top_k_rows
from artifact.policies.registry import register


@register("multi_lookahead", "seed's Multi-Look-Ahead: chained cross-layer transitions",
          "seed report (seeds/000), 'Multi-Look-Ahead (Ours)'", "transitions, 2 layers", "LRU", order=140)
class MultiLookAhead(Recency):
    def __init__(self, ctx, depth: int = 2) -> None:
        super().__init__(ctx)
        self.depth = depth
        self.trans = np.zeros((ctx.L, ctx.E, ctx.E), np.int64)  # [L, E, E]: l -> l+1 counts
        self.norm = np.zeros_like(self.trans)  # row-normalised in fixed point, refreshed lazily (once per layer-step)
        self.dirty_rows: list[list[np.ndarray]] = [[] for _ in range(ctx.L)]  # rows counted since the last refresh
        self._prev: np.ndarray | None = None

    def observe(self, g):
        ctx = self.ctx
        layer = g % ctx.L
        cur = ctx.routing(g)  # [T, K]
        if layer > 0 and self._prev is not None:
            first = self._prev[:, 0].astype(np.int64)
            src = np.repeat(first, cur.shape[1])
            E = ctx.E
            self.trans[layer - 1] += np.bincount(src * E + cur.reshape(-1), minlength=E * E).reshape(E, E)
            self.dirty_rows[layer - 1].append(first)
        self._prev = cur

    def _normalised(self, m: int) -> np.ndarray:
        """Row-normalised transitions of layer ``m`` in fixed point (int64 of 2^-20): exact, one division each.
        Only the rows counted since the last call change (a row's figures depend on that row alone)."""
        if self.dirty_rows[m]:
            rows = np.unique(np.concatenate(self.dirty_rows[m]))
            t = self.trans[m][rows]  # [R, E]
            tot = numeric.total(t, axis=1, keepdims=True)  # integers: exact in any order
            self.norm[m][rows] = np.where(tot > 0, numeric.fixed(t / np.maximum(tot, 1)), 0)
            self.dirty_rows[m] = []
        return self.norm[m]

    def prefetch(self, g):
        ctx = self.ctx
        layer = g % ctx.L
        cur = ctx.routing(g)
        items, _ = ctx.step_meta(g // ctx.L)
        out_g, out_t, out_c = [], [], []
        dist = None
        # A token's chain depends only on its current first expert: chain each distinct one once ([U, E] rows),
        # then give every token its expert's row (``inv``).
        first, inv = np.unique(cur[:, 0], return_inverse=True)
        inv = inv.reshape(-1)
        for m in range(layer + 1, min(layer + 1 + self.depth, ctx.L)):
            tn = self._normalised(m - 1)
            # [U, E]: each distinct expert's predicted distribution over layer m's experts (the first hop is a row
            # lookup; the second an integer product, rescaled to 2^-20 so the chain keeps one fixed-point scale)
            dist = tn[first] if dist is None else numeric.matmul(dist, tn) >> numeric.FIXED_BITS
            if not dist.any():
                break
            top = top_k_rows(dist, ctx.K)
            top = np.where(np.take_along_axis(dist, top, axis=1) > 0, top, -1)[inv]  # [T, K]
            gids, _, ic = ranked(top, items, m, ctx.E)
            out_g.append(gids)
            out_t.append(np.full(gids.shape[0], g + (m - layer), np.int64))
            out_c.append(ic)
        if not out_g:
            return None
        return Prefetch(np.concatenate(out_g), np.concatenate(out_t), np.concatenate(out_c))
