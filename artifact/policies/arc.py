"""``arc``: Adaptive Replacement Cache (Megiddo and Modha, FAST'03), as FATE (arXiv:2502.12224) runs it for MoE
experts: one ARC per MoE layer (``mindspore-lab/models``, ``research/SYSU/Fate/expert_ARC_cache.py``: each MoE
block owns an ``ARC_Cache`` of its resident experts), fed with the experts the layer actually ran.

Per layer, with ``c`` slots (``C // L``, the remainder to the first layers): resident lists T1 (seen once
recently) and T2 (seen at least twice), ghost lists B1 and B2 (ids only), and the target size ``p`` of T1. On a
request for ``x``:
- hit in T1 or T2: ``x`` moves to the MRU end of T2;
- ghost hit in B1: ``p = min(c, p + max(|B2| / |B1|, 1))``, REPLACE, ``x`` to MRU of T2;
- ghost hit in B2: ``p = max(0, p - max(|B1| / |B2|, 1))``, REPLACE, ``x`` to MRU of T2;
- full miss: if ``|T1| + |B1| = c``: if ``|T1| < c`` drop the LRU of B1 and REPLACE, else evict the LRU of T1
  (no ghost); otherwise, if ``|T1| + |T2| + |B1| + |B2| >= c``: drop the LRU of B2 when the total is ``2c``, then
  REPLACE; ``x`` goes to the MRU end of T1;
- REPLACE: if ``|T1| >= 1`` and (``|T1| > p`` or (``x`` in B2 and ``|T1| = p``)), the LRU of T1 moves to B1,
  else the LRU of T2 moves to B2 (the evicted expert).
This is the paper's algorithm (and libCacheSim's ``ARC.c``), with ``p`` a float as libCacheSim keeps it. FATE
changes two details (``p`` moves by ``min(|T1|, c)`` on a B1 hit, and its REPLACE drops the ``x`` in B2 case); we
keep the paper's, as the issue asks for ARC as published.

Left open and chosen here: a request is one expert per layer-step (FATE feeds every token's choice, so repeats
within a prefill count as hits; at batch 1 the two are the same); REPLACE takes the LRU end among the experts the
layer-step does not pin (the ones it reads), and the other list when that end is pinned; the ARC bookkeeping runs
when the scheduler asks for victims (demand misses always use them: no prefetch here). Demand fetch.
"""

from __future__ import annotations

import numpy as np

from artifact.policies.base import Strategy
from artifact.policies.mixtral_offloading import layer_shares
from artifact.policies.registry import register

_NONE, _T1, _T2, _B1, _B2 = 0, 1, 2, 3, 4


@register("arc", "ARC (FAST'03), one per layer as FATE runs it: recency and frequency lists with ghost lists",
          "Megiddo and Modha, FAST'03; FATE arXiv:2502.12224", "none", "ARC, per layer", order=100)
class ARC(Strategy):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        L, E = ctx.L, ctx.E
        self.masks = layer_shares(ctx.C, L, ctx.K)
        self.c = np.array([int(m.sum()) for m in self.masks], np.int64)
        self.p = np.zeros(L)  # target size of T1, per layer
        self.lst = np.zeros(L * E, np.int8)  # which list each expert is in
        self.size = np.zeros((L, 5), np.int64)  # per layer, the length of each list (index: _NONE .. _B2)
        self.size[:, _NONE] = E
        self.stamp = np.zeros(L * E, np.int64)  # time it entered the MRU end of its list
        self.now = 0
        self.new_at = np.full(L * E, -1, np.int64)  # layer-step at which a miss inserted it

    def partition(self, layer):
        return self.masks[layer]

    def _to(self, gid: int, lst: int) -> None:
        layer = gid // self.ctx.E
        self.size[layer, self.lst[gid]] -= 1
        self.size[layer, lst] += 1
        self.lst[gid] = lst
        self.now += 1
        self.stamp[gid] = self.now

    def _drop(self, gid: int) -> None:
        self._to(gid, _NONE)

    def _lru(self, layer: int, lst: int, allowed: np.ndarray | None = None) -> int:
        """The LRU end of list ``lst`` of ``layer`` (restricted to the gids ``allowed`` marks), or -1."""
        E = self.ctx.E
        sl = slice(layer * E, (layer + 1) * E)
        ok = self.lst[sl] == lst
        if allowed is not None:
            ok &= allowed[sl]
        ids = np.nonzero(ok)[0]
        return int(layer * E + ids[np.argmin(self.stamp[sl][ids])]) if ids.size else -1

    def _count(self, layer: int, lst: int) -> int:
        return int(self.size[layer, lst])

    def _replace(self, layer: int, x: int, allowed: np.ndarray) -> int:
        t1 = self._count(layer, _T1)
        take_t1 = t1 >= 1 and (t1 > self.p[layer] or (self.lst[x] == _B2 and t1 == self.p[layer]))
        first, second = ((_T1, _B1), (_T2, _B2)) if take_t1 else ((_T2, _B2), (_T1, _B1))
        for src, ghost in (first, second):
            v = self._lru(layer, src, allowed)
            if v >= 0:
                self._to(v, ghost)
                return v
        raise RuntimeError(f"arc: layer {layer} has no evictable expert")

    def _request(self, x: int, allowed: np.ndarray | None) -> int:
        """ARC's handling of a miss on ``x``; ``allowed``: the evictable experts when the layer's slots are full
        (REPLACE runs), None when a free slot takes ``x``. Returns the evicted expert, or -1."""
        layer = x // self.ctx.E
        c, lst = int(self.c[layer]), int(self.lst[x])
        b1, b2 = self._count(layer, _B1), self._count(layer, _B2)
        v = -1
        if lst in (_B1, _B2):
            if lst == _B1:
                self.p[layer] = min(c, self.p[layer] + max(b2 / b1, 1.0))
            else:
                self.p[layer] = max(0.0, self.p[layer] - max(b1 / b2, 1.0))
            if allowed is not None:
                v = self._replace(layer, x, allowed)
            self._to(x, _T2)
            return v
        t1, t2 = self._count(layer, _T1), self._count(layer, _T2)
        if t1 + b1 == c:
            if t1 < c:
                self._drop(self._lru(layer, _B1))
                if allowed is not None:
                    v = self._replace(layer, x, allowed)
            else:  # T1 fills the layer's share: its LRU end leaves without a ghost
                v = self._lru(layer, _T1, allowed)
                if v < 0:  # the whole of T1 is pinned: take T2's end
                    v = self._lru(layer, _T2, allowed)
                self._drop(v)
        elif t1 + t2 + b1 + b2 >= c:
            if t1 + t2 + b1 + b2 >= 2 * c:
                self._drop(self._lru(layer, _B2))
            if allowed is not None:
                v = self._replace(layer, x, allowed)
        self._to(x, _T1)
        return v

    def evict(self, cand, n, g, incoming=None):
        cache = self.ctx.cache
        allowed = np.zeros(self.lst.shape[0], bool)  # the evictable experts
        allowed[cache.slot_gid[cand]] = True
        k = incoming.shape[0] - n
        for x in incoming[:k].tolist():  # they take free slots, in order before the evictions
            self._request(x, None)
            self.new_at[x] = g
        victims = []
        for x in incoming[k:].tolist():
            v = self._request(x, allowed)
            self.new_at[x] = g
            victims.append(v)
            allowed[v] = False
        return cache.where[np.array(victims, np.int64)]

    def on_fill(self, slots, gids, g, targets=None):
        for x in gids.tolist():
            if self.new_at[x] != g:  # a miss that took a free slot: no eviction, ARC's bookkeeping still runs
                self._request(x, None)
                self.new_at[x] = g

    def on_use(self, slots, gids, g):
        for x in gids.tolist():
            if self.new_at[x] == g:  # the request that loaded it
                continue
            self._to(x, _T2)
