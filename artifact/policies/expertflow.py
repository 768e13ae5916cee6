"""``expertflow``: ExpertFlow (He et al., arXiv:2410.17954) with its PLEC cache (predictive locality-aware expert
caching).

- Path predictor: before a step's MoE layers run, it predicts every token's experts at every layer. The trained
  predictor is not public; this arm uses the TRUE path degraded at random to ``accuracy`` (each token-layer choice
  replaced by another expert with probability ``1 - accuracy``; default 0.9, the paper's in-domain figure), and the
  report labels it so.
- Slots are given to layers in proportion to predicted demand (unique predicted experts per layer, largest
  remainder), where LRU gives every layer the same; each layer prefetches its most-likely experts first, up to its
  share.
- Real-time correction: misses load at once (demand); predicted-but-unused experts are evicted first, then experts
  of layers already computed this step, then LRU (a reading of the author's blog: the paper's formula was not
  found). Prefetches never evict an expert predicted for a layer still to come in this step.
"""

from __future__ import annotations

import numpy as np

from artifact.core.select import smallest_of
from artifact.policies import numeric
from artifact.policies.base import Prefetch, Recency, ranked
from artifact.policies.registry import register


@register("expertflow", "ExpertFlow PLEC: path predictor (true path at a stated accuracy), per-layer slots",
          "He et al., arXiv:2410.17954", "path predictor @accuracy", "PLEC", sees="path", order=50)
class ExpertFlowPLEC(Recency):
    def __init__(self, ctx, accuracy: float = 0.9) -> None:
        super().__init__(ctx)
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"expertflow: accuracy must be in [0, 1], got {accuracy}")
        self.accuracy = accuracy
        self.rng = np.random.default_rng([ctx.seed, 0xEF])
        self.pred = np.zeros(ctx.L * ctx.E, bool)  # predicted for this step
        self.plan: list[tuple[np.ndarray, np.ndarray]] = []

    def observe(self, g):
        ctx = self.ctx
        s, layer = divmod(g, ctx.L)
        if layer != 0:
            return
        path = ctx.step_routing(s).astype(np.int64)  # [T, L, K]
        wrong = self.rng.random(path.shape) >= self.accuracy
        shift = self.rng.integers(1, ctx.E, size=path.shape)
        path = np.where(wrong, (path + shift) % ctx.E, path)
        items, _ = ctx.step_meta(s)
        per_layer = [ranked(path[:, m, :], items, m, ctx.E) for m in range(ctx.L)]
        demand = np.array([p[0].shape[0] for p in per_layer], float)
        share = demand / numeric.total(demand) * ctx.C  # integer total: exact; then elementwise, correctly rounded
        quota = np.floor(share).astype(np.int64)
        rest = ctx.C - quota.sum()
        quota[np.argsort(-(share - quota), kind="stable")[:rest]] += 1
        self.plan = [(p[0][:q], p[2][:q]) for p, q in zip(per_layer, quota)]
        self.pred[:] = False
        for gids, _ in self.plan:
            self.pred[gids] = True

    def prefetch(self, g):
        ctx = self.ctx
        s, layer = divmod(g, ctx.L)
        if layer + 1 >= ctx.L:
            return None
        gl = [self.plan[m][0] for m in range(layer + 1, ctx.L)]
        tl = [np.full(self.plan[m][0].shape[0], s * ctx.L + m, np.int64) for m in range(layer + 1, ctx.L)]
        cl = [self.plan[m][1] for m in range(layer + 1, ctx.L)]
        return Prefetch(np.concatenate(gl), np.concatenate(tl), np.concatenate(cl))

    def tier(self, slots: np.ndarray, g: int) -> np.ndarray:
        """0 unused prediction, 1 layer already computed this step, 2 other, 3 predicted for a layer to come."""
        cache = self.ctx.cache
        gids = cache.slot_gid[slots]
        layer = g % self.ctx.L
        glayer = gids // self.ctx.E
        t = np.full(slots.shape[0], 2, np.int64)
        t[glayer <= layer] = 1
        t[cache.prefetched[slots] & (cache.protected_until[slots] < g)] = 0
        t[(glayer > layer) & self.pred[np.maximum(gids, 0)]] = 3
        return t

    def evict(self, cand, n, g, incoming=None):
        return smallest_of((self.tier(cand, g) << 40) + self.recent[cand], cand, n)

    def admit(self, gids, targets, victims, g):
        return (self.ctx.cache.slot_gid[victims] < 0) | (self.tier(victims, g) < 3)
