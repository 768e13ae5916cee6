"""``moe_infinity``: MoE-Infinity (EfficientMoE/MoE-Infinity, arXiv:2401.14361).

A request-level expert activation matrix (EAM: per layer, how often the request's tokens used each expert) is
matched by cosine similarity to the EAMs of finished requests; the best match predicts the next layers, with
priority decaying with layer distance; the GPU cache evicts the expert with the lowest visit count (counted over the
whole run and kept across evictions, since the count is a property of the expert), ties by LRU (section 5).

Left open by the paper and chosen here: matching runs when a step starts (on the EAM of the request's tokens so
far); the library keeps the ``library`` most recent finished requests; each item prefetches its match's top-k
experts for the next ``horizon`` layers, priority = summed match frequency x ``decay`` ^ (distance - 1).
"""

from __future__ import annotations

import numpy as np

from artifact.core.select import smallest
from artifact.policies import numeric
from artifact.policies.base import Prefetch, Recency, ranked, top_k_rows
from artifact.policies.registry import register


@register("moe_infinity", "activation-matrix matching, evict lowest visit count",
          "EfficientMoE/MoE-Infinity, arXiv:2401.14361", "EAM cosine match", "lowest visit count", order=70)
class MoEInfinity(Recency):
    def __init__(self, ctx, library: int = 128, horizon: int = 2, decay: float = 0.5) -> None:
        super().__init__(ctx)
        self.n_lib = library
        self.horizon = horizon
        self.decay = decay
        d = ctx.L * ctx.E
        self.lib = np.zeros((library, d), np.int64)  # finished requests' EAMs (counts)
        self.lib_norm = np.ones(library)  # their L2 norms
        self.lib_n = 0
        # Live requests' EAMs: one row per batch slot (a slot serves one request at a time).
        self.eam = np.zeros((ctx.B, d), np.int64)
        self.slot_seq = np.full(ctx.B, -1, np.int64)
        self.match: np.ndarray | None = None  # [T, L, E] matched EAM of each token of the step
        self.items = None
        self.visits = np.zeros(d, np.int64)  # reads per expert over the whole run
        self.key = np.zeros(ctx.C, np.int64)

    # --- eviction: lowest visit count, ties by LRU ----------------------------------------------------------------
    def evict(self, cand, n, g, incoming=None):
        return smallest(self.key, cand, n)

    def on_fill(self, slots, gids, g, targets=None):
        self.touch(slots)
        self.key[slots] = (self.visits[gids] << 40) + self.recent[slots]

    def on_use(self, slots, gids, g):
        self.visits[gids] += 1
        self.touch(slots)
        self.key[slots] = (self.visits[gids] << 40) + self.recent[slots]

    # --- predictor ------------------------------------------------------------------------------------------------
    def _retire(self, slots: np.ndarray) -> None:
        for j in slots.tolist():
            v = self.eam[j]
            sq = int(numeric.total(v * v))  # an integer: exact in any order
            if sq > 0:
                k = self.lib_n % self.n_lib
                self.lib[k] = v
                self.lib_norm[k] = np.sqrt(float(sq))
                self.lib_n += 1
            self.eam[j] = 0

    def observe(self, g):
        ctx = self.ctx
        s, layer = divmod(g, ctx.L)
        if layer == 0:
            items, seqs = ctx.step_meta(s)
            items = items.astype(np.int64)
            changed = self.slot_seq[items] != seqs
            if changed.any():
                self._retire(items[changed & (self.slot_seq[items] >= 0)])
                self.slot_seq[items[changed]] = seqs[changed]
            self.items = items
            n = min(self.lib_n, self.n_lib)
            if n:
                cur = self.eam[items]  # [T, L*E]
                # cosine up to the request's own norm (the same for every entry): integer dot / the entry's norm
                best = np.argmax(numeric.matmul(cur, self.lib[:n].T) / self.lib_norm[:n], axis=1)
                self.match = self.lib[best].reshape(-1, ctx.L, ctx.E)
            else:
                self.match = None
        r = ctx.routing(g)  # [T, K]
        cols = layer * ctx.E + np.arange(ctx.E)
        rows = np.repeat(self.items, r.shape[1]) * ctx.E + r.reshape(-1).astype(np.int64)  # item * E + expert
        self.eam[:, cols] += np.bincount(rows, minlength=ctx.B * ctx.E).reshape(ctx.B, ctx.E)

    def prefetch(self, g):
        ctx = self.ctx
        layer = g % ctx.L
        if self.match is None or layer + 1 >= ctx.L:
            return None
        out_g, out_p, out_t, out_c = [], [], [], []
        for m in range(layer + 1, min(layer + 1 + self.horizon, ctx.L)):
            fr = self.match[:, m, :]  # [T, E]
            top = top_k_rows(fr, ctx.K)
            top = np.where(np.take_along_axis(fr, top, axis=1) > 0, top, -1)
            gids, cnt, ic = ranked(top, self.items, m, ctx.E)
            out_g.append(gids)
            out_p.append(cnt * self.decay ** (m - layer - 1))
            out_t.append(np.full(gids.shape[0], g + (m - layer), np.int64))
            out_c.append(ic)
        gids = np.concatenate(out_g)
        pri = np.concatenate(out_p)
        order = np.lexsort((gids, -pri))
        return Prefetch(gids[order], np.concatenate(out_t)[order], np.concatenate(out_c)[order])
