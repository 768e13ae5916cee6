"""Eviction policies over device slots.

The narrow interface (after libCacheSim's get / insert / evict): a policy keeps a private priority per slot and
answers ``choose(candidates, n, g)``: the ``n`` candidate slots to evict first, in eviction order. The scheduler
tells it about every fill (``on_load``) and every read (``on_use``). ``allowed(layer)`` restricts the slots an
expert of ``layer`` may occupy (``None``: any), for per-layer partitioned caches.
"""

from __future__ import annotations

import numpy as np

from artifact.runtime.requests import NEVER


def _smallest(keys: np.ndarray, cand: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` candidates with the smallest keys, ascending (ties: lower slot first)."""
    if n <= 0 or cand.shape[0] == 0:
        return cand[:0]
    k = keys[cand]
    if n >= cand.shape[0]:
        return cand[np.lexsort((cand, k))]
    part = np.argpartition(k, n - 1)[:n]
    # argpartition leaves ties at the boundary arbitrary: widen to all candidates tied with the n-th key.
    kth = k[part].max()
    sel = np.nonzero(k <= kth)[0]
    sel = sel[np.lexsort((cand[sel], k[sel]))][:n]
    return cand[sel]


class EvictionPolicy:
    name = "base"

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.key = np.zeros(ctx.C, np.int64)

    def allowed(self, layer: int) -> np.ndarray | None:
        return None

    def choose(self, cand: np.ndarray, n: int, g: int) -> np.ndarray:
        return _smallest(self.key, cand, n)

    def on_load(self, slots: np.ndarray, gids: np.ndarray, g: int, targets: np.ndarray | None = None) -> None:
        pass

    def on_use(self, slots: np.ndarray, gids: np.ndarray, g: int) -> None:
        pass


class LRU(EvictionPolicy):
    """Least recently used: a fill or a read moves the slot to the most-recent end."""

    name = "lru"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.clock = 0

    def _touch(self, slots: np.ndarray) -> None:
        n = slots.shape[0]
        self.key[slots] = np.arange(self.clock, self.clock + n)
        self.clock += n

    def on_load(self, slots, gids, g, targets=None) -> None:
        self._touch(slots)

    def on_use(self, slots, gids, g) -> None:
        self._touch(slots)


class LFU(LRU):
    """Least frequently used while resident (the count restarts when an expert is loaded), ties by LRU.

    Pre-gated MoE's artifact (ranggihwang/Pregated_MoE, ``scripts/eval_all.py``) runs its expert cache with LFU; it
    does not say whether counts survive eviction: we count since the expert entered the cache, as libCacheSim's LFU.
    """

    name = "lfu"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.count = np.zeros(ctx.C, np.int64)
        self.recent = np.zeros(ctx.C, np.int64)

    def _key(self, slots) -> None:
        self.key[slots] = (self.count[slots] << 40) + self.recent[slots]

    def on_load(self, slots, gids, g, targets=None) -> None:
        self.count[slots] = 0
        n = slots.shape[0]
        self.recent[slots] = np.arange(self.clock, self.clock + n)
        self.clock += n
        self._key(slots)

    def on_use(self, slots, gids, g) -> None:
        self.count[slots] += 1
        n = slots.shape[0]
        self.recent[slots] = np.arange(self.clock, self.clock + n)
        self.clock += n
        self._key(slots)


class VisitCount(LRU):
    """MoE-Infinity's GPU cache: evict the expert with the lowest visit count (counted over the whole run, kept
    across evictions, since the count is a property of the expert), ties by LRU (arXiv:2401.14361, section 5)."""

    name = "visits"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.visits = np.zeros(ctx.L * ctx.E, np.int64)
        self.recent = np.zeros(ctx.C, np.int64)

    def on_load(self, slots, gids, g, targets=None) -> None:
        n = slots.shape[0]
        self.recent[slots] = np.arange(self.clock, self.clock + n)
        self.clock += n
        self.key[slots] = (self.visits[gids] << 40) + self.recent[slots]

    def on_use(self, slots, gids, g) -> None:
        self.visits[gids] += 1
        n = slots.shape[0]
        self.recent[slots] = np.arange(self.clock, self.clock + n)
        self.clock += n
        self.key[slots] = (self.visits[gids] << 40) + self.recent[slots]


class PerLayerLRU(LRU):
    """mixtral-offloading (dvmazur/mixtral-offloading): each layer owns a fixed share of the slots, LRU within it.

    The repo gives every layer the same number of slots; with ``C`` slots and ``L`` layers we give ``C // L`` to each
    layer and the remainder to the first ones.
    """

    name = "per_layer_lru"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        L, C = ctx.L, ctx.C
        share = np.full(L, C // L)
        share[: C % L] += 1
        if (share < ctx.K).any():
            raise ValueError(f"per-layer LRU: {C} slots over {L} layers leaves a layer fewer than top-{ctx.K} slots")
        owner = np.repeat(np.arange(L), share)
        self.masks = [owner == m for m in range(L)]

    def allowed(self, layer: int) -> np.ndarray:
        return self.masks[layer]


class Belady(EvictionPolicy):
    """Belady's MIN: evict the expert whose next use is furthest in the future (needs the future: a bound).

    The next use of an expert read at layer-step ``g`` comes from the request table; a prefetched expert's next use
    is the layer-step it was fetched for.
    """

    name = "belady"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.key = np.zeros(ctx.C, np.int64)  # -(next use)
        b = ctx.req.batched
        self._gid = b.gid
        self._off = b.grp_off[b.ls_off]  # entry range of each layer-step (one batched group per layer-step)
        self._next = ctx.req.next_use

    def next_use_after(self, gids: np.ndarray, g: int) -> np.ndarray:
        """Next layer-step > g that needs each of ``gids`` (which layer-step ``g`` itself needs)."""
        a, b = self._off[g], self._off[g + 1]
        idx = np.searchsorted(self._gid[a:b], gids) + a
        return self._next[idx]

    def on_load(self, slots, gids, g, targets=None) -> None:
        if targets is None:  # demand load: on_use follows at once and sets the key
            return
        self.key[slots] = -np.asarray(targets, np.int64)

    def on_use(self, slots, gids, g) -> None:
        self.key[slots] = -self.next_use_after(gids, g)


class AgedBelady(Belady):
    """Belady's MIN among the experts not read in the last ``window`` layer-steps, falling back to all of them: an
    oracle construction whose copies, once hoisted, never wait for a compute that has just run."""

    name = "aged_belady"

    def __init__(self, ctx, window: int) -> None:
        super().__init__(ctx)
        self.window = window

    def choose(self, cand, n, g):
        if n <= 0 or cand.shape[0] == 0:
            return cand[:0]
        recent = self.ctx.state.slot_read_ls[cand] > g - 1 - self.window
        key = (recent.astype(np.int64) << 62) + (self.key[cand] + NEVER)
        order = np.lexsort((cand, key))
        return cand[order[:n]]
