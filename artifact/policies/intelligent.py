"""``intelligent_dedup``: our flagship, designed from what the routing traces show.

What the traces show (``python -m artifact trace inspect``), and what each fact asks of a cache:

1. Layers are visited in a fixed cycle. An expert of layer ``m`` is needed again only when layer ``m`` comes round,
   ``((m - l - 1) mod L) + 1`` layer-steps after layer ``l``. Plain LRU keeps the layer that just ran (needed again
   in ``L`` layer-steps) and evicts the layer coming next (needed in 1): exactly the wrong way round.
2. Popularity is skewed per layer (the top 10% of experts take 27-71% of Switch's tokens), and a batch of ``B``
   tokens touches expert ``e`` with probability ``1 - (1 - p_e)^B``: the same expert is worth more at batch 64 than
   at batch 1.
3. Within a sequence the next token rarely repeats its expert (1-10% for Switch), so recency says little; the
   layer-wise frequency says much more.
4. The router of layer ``l + 1`` applied to layer ``l``'s hidden state (the trace's ``lookahead``) names most of
   layer ``l + 1``'s experts one layer ahead.

Hence, with only what a real engine has (the past, the current layer's routing, the lookahead):

- Dedup: each expert is loaded once per layer-step for the whole batch, whatever the protocol.
- Eviction by expected time to next use: ``d + L (1 - q) / q`` layer-steps, where ``d`` is the cyclic distance to
  the expert's layer and ``q`` the probability that the next visit of that layer uses it: ``1 - (1 - p)^B`` from
  the layer's running frequency ``p`` (a Bayesian count with a uniform prior), or, for an expert the lookahead
  names for the next layer, the learned precision of the lookahead. The expert with the largest expected time is
  evicted: an estimate of Belady's MIN.
- Prefetch: the lookahead's experts for layer ``l + 1`` (the union over the batch, most-requested first); each is
  admitted only if its expected next use (1 layer-step, at the lookahead's precision) comes before the victim's.
"""

from __future__ import annotations

import numpy as np

from artifact.policies.base import Strategy, ranked
from artifact.policies.eviction import EvictionPolicy

_SCALE = 1000.0  # expected-use keys are compared as integers of 1/1000 layer-step


class IntelligentDedup(Strategy):
    def __init__(self, ctx, eviction, prior: float = 1.0, prefetch_lookahead: bool = True) -> None:
        super().__init__(ctx, eviction)
        L, E = ctx.L, ctx.E
        self.counts = np.full((L, E), prior * ctx.K / E)  # routed tokens per expert (with a uniform prior)
        self.tokens = np.full(L, prior)  # tokens seen per layer (with the prior's weight)
        self.la_hit = 1.0  # lookahead precision: predicted-and-used / predicted (Beta(1, 1) prior)
        self.la_n = 2.0
        self.prefetch_lookahead = prefetch_lookahead and ctx.workload.lookahead is not None
        self.predicted_next = np.zeros(L * E, bool)  # named by the lookahead for the next layer-step
        self._pending: np.ndarray | None = None
        self.batch_tokens = float(ctx.B)
        eviction.strategy = self

    def observe(self, g):
        ctx = self.ctx
        layer = g % ctx.L
        r = ctx.routing(g)  # [T, K]
        self.batch_tokens = float(r.shape[0])
        self.counts[layer] += np.bincount(r.reshape(-1), minlength=ctx.E)
        self.tokens[layer] += r.shape[0]
        if self._pending is not None:
            used = np.zeros(ctx.E, bool)
            used[r.reshape(-1)] = True
            pe = self._pending % ctx.E
            self.la_hit += float(used[pe].sum())
            self.la_n += float(pe.shape[0])
            self._pending = None
        self.predicted_next[:] = False

    def expected_next_use(self, gids: np.ndarray, g: int) -> np.ndarray:
        """Expected layer-steps from ``g`` until each expert is next used (floats)."""
        ctx = self.ctx
        L, E = ctx.L, ctx.E
        layer = g % L
        gl = gids // E
        d = ((gl - layer - 1) % L) + 1
        p = self.counts[gl, gids % E] / self.tokens[gl]
        q = 1.0 - (1.0 - np.clip(p, 1e-9, 1.0)) ** self.batch_tokens
        named = self.predicted_next[gids] & (d == 1)
        if named.any():
            q = np.where(named, np.maximum(q, self.la_hit / self.la_n), q)
        return d + L * (1.0 - q) / q

    def prefetch(self, g):
        ctx = self.ctx
        layer = g % ctx.L
        if not self.prefetch_lookahead or layer + 1 >= ctx.L:
            return None
        la = ctx.lookahead(g + 1)
        items, _ = ctx.step_meta(g // ctx.L)
        gids, _, _ = ranked(la, items, layer + 1, ctx.E)
        self._pending = gids
        self.predicted_next[gids] = True
        return gids, np.full(gids.shape[0], g + 1, np.int64), None

    def admit(self, gids, targets, victims, g):
        st = self.ctx.state
        mine = self.expected_next_use(gids, g)
        vg = st.slot_gid[victims]
        theirs = np.where(vg < 0, np.inf, self.expected_next_use(np.maximum(vg, 0), g))
        return mine < theirs


class ExpectedReuse(EvictionPolicy):
    """Evict the largest expected time to next use (see :class:`IntelligentDedup`)."""

    name = "expected_reuse"
    strategy: IntelligentDedup

    def choose(self, cand, n, g):
        if n <= 0 or cand.shape[0] == 0:
            return cand[:0]
        t = self.strategy.expected_next_use(self.ctx.state.slot_gid[cand], g)
        key = -(t * _SCALE).astype(np.int64)
        order = np.lexsort((cand, key))
        return cand[order[:n]]
