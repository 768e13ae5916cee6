"""Belady's MIN and the MIN constructions the oracle chooses from (all need the future).

- :class:`Belady` (registered as ``belady``): demand fetch, evict the expert whose next use is furthest in the
  future (Belady 1966). The next use of an expert read at layer-step ``g`` comes from the request table; a
  prefetched expert's next use is the layer-step it was fetched for. With ``horizon=H`` it sees only the next ``H``
  decode steps (``H * L`` layer-steps): an expert whose next use lies beyond them counts as unknown, and the unknown
  ones go first, least recently read first (LRU), then the known ones, furthest first: how much of MIN's advantage
  needs how much of the future (the report's target-2 analysis).
- :class:`AgedMIN` (``aged_min_{w}``): MIN among the experts not read in the last ``w`` layer-steps, falling back to
  all of them: a few more loads than MIN, but once hoisted, its copies never wait for a compute that has just run.
- :class:`PartitionedMIN` (``partitioned_min``): MIN within a fixed per-layer share of the slots: a slot of layer
  ``m`` frees when layer ``m`` has run and is needed again a whole cycle later, so hoisted copies get the most slack.
- :class:`AggressiveMIN` (``aggressive_min``): aggressive prefetching with MIN replacement (Cao, Felten, Karlin,
  Li, SIGMETRICS 1995): each layer-step, fetch the next needed non-resident experts in order of need, as long as the
  expert evicted for each is needed later than the one fetched ("do no harm").
"""

from __future__ import annotations

import numpy as np

from artifact.core.requests import NEVER
from artifact.core.select import smallest, smallest_of
from artifact.policies.base import Prefetch, Strategy
from artifact.policies.mixtral_offloading import layer_shares
from artifact.policies.registry import register

BOUNDS: dict = {}  # the registered bound: belady
CONSTRUCTIONS: dict = {}  # the oracle's MIN constructions (not strategies of their own)


@register("belady", "offline optimal eviction, demand fetch: fewest loads", "Belady 1966 (MIN)", "none",
          "Belady MIN", sees="future", role="bound", order=900, table=BOUNDS)
class Belady(Strategy):
    def __init__(self, ctx, horizon: int | None = None) -> None:
        super().__init__(ctx)
        if horizon is not None and (int(horizon) != horizon or horizon < 1):
            raise ValueError(f"belady: horizon must be a whole number of decode steps >= 1, got {horizon!r}")
        self.horizon = None if horizon is None else int(horizon) * ctx.L  # in layer-steps
        self.key = np.zeros(ctx.C, np.int64)  # -(next use)
        req = ctx.requests()
        b = req.batched
        self._gid = b.gid
        self._off = b.grp_off[b.ls_off]  # entry range of each layer-step (one batched group per layer-step)
        self._next = req.next_use

    def next_use_after(self, gids: np.ndarray, g: int) -> np.ndarray:
        """Next layer-step > g that needs each of ``gids`` (which layer-step ``g`` itself needs)."""
        a, b = self._off[g], self._off[g + 1]
        idx = np.searchsorted(self._gid[a:b], gids) + a
        return self._next[idx]

    def evict(self, cand, n, g, incoming=None):
        if self.horizon is None:
            return smallest(self.key, cand, n)
        key = self.key[cand]  # -(next use)
        unknown = -key - g > self.horizon
        return smallest_of(np.where(unknown, self.ctx.cache.last_read[cand] - NEVER, key), cand, n)

    def on_fill(self, slots, gids, g, targets=None):
        if targets is None:  # demand load: on_use follows at once and sets the key
            return
        self.key[slots] = -np.asarray(targets, np.int64)

    def on_use(self, slots, gids, g):
        self.key[slots] = -self.next_use_after(gids, g)


class AgedMIN(Belady):
    def __init__(self, ctx, window: int) -> None:
        super().__init__(ctx)
        self.window = window

    def evict(self, cand, n, g, incoming=None):
        recent = self.ctx.cache.last_read[cand] > g - 1 - self.window
        return smallest_of((recent.astype(np.int64) << 62) + (self.key[cand] + NEVER), cand, n)


class PartitionedMIN(Belady):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.masks = layer_shares(ctx.C, ctx.L, ctx.K)

    def partition(self, layer):
        return self.masks[layer]


class AggressiveMIN(Belady):
    protect_prefetches = False

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        b = ctx.requests().batched
        self._b = b
        self._entry_ls = np.repeat(b.grp_ls, np.diff(b.grp_off))  # layer-step of each request entry
        self._G = ctx.requests().layer_steps

    def prefetch(self, g):
        b = self._b
        if g + 1 >= self._G:
            return None
        a = b.grp_off[g + 1]  # batched groups: group index == layer-step
        z = min(a + self.ctx.C, b.gid.shape[0])
        gids, ls = b.gid[a:z], self._entry_ls[a:z]
        new = self.ctx.cache.where[gids] < 0
        gids, ls = gids[new], ls[new]
        _, first = np.unique(gids, return_index=True)
        first.sort()
        return Prefetch(gids[first], ls[first], None)

    def admit(self, gids, targets, victims, g):
        nxt = np.where(self.ctx.cache.slot_gid[victims] < 0, NEVER, -self.key[victims])
        return nxt > targets


def _construction(name: str, summary: str, eviction: str, params: dict | None = None):
    def deco(cls):
        register(name, summary, "oracle construction", "the future", eviction, sees="future", role="bound",
                 params=params, table=CONSTRUCTIONS)(cls)
        return cls

    return deco


_construction("aggressive_min", "aggressive prefetch with MIN replacement (Cao et al., SIGMETRICS 1995)",
              "Belady MIN")(AggressiveMIN)
_construction("partitioned_min", "MIN within per-layer slot shares", "per-layer Belady MIN")(PartitionedMIN)
for _w in (1, 2, 4):
    _construction(f"aged_min_{_w}", f"MIN sparing experts read in the last {_w} layer-steps", "Belady MIN, aged",
                  {"window": _w})(AgedMIN)
