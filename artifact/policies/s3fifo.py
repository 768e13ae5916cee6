"""``s3fifo``: S3-FIFO (Yang, Zhang, Qiu, Yue, Rashmi, SOSP'23), as its reference implementation runs it
(1a1a11a/libCacheSim ``libCacheSim/cache/eviction/S3FIFO.c``, identical in Thesys-lab/sosp23-s3fifo).

One cache over every layer's experts: a small FIFO S (10% of the slots, at least one), a main FIFO M (the rest) and
a ghost FIFO G of ids (as many entries as M has slots, libCacheSim's 0.9 of the cache). Each resident expert has a
frequency counter (at most 3: two bits), 0 when it enters.
- hit: ``freq += 1`` (up to 3);
- miss: an id found in G leaves G and enters M; any other enters S;
- eviction: from M when M holds more than its share (or S is empty), else from S.
  S: the tail with ``freq >= 2`` moves to M (counter reset) and the next tail is tried; else it is evicted and its
  id enters G. M: the tail with ``freq >= 1`` is reinserted at the head with ``freq - 1``; else it is evicted.
The move-to-main threshold is the reference code's default, 2 (the paper's text and some ports promote after one
access; we follow the code). A request is one expert per layer-step; experts the layer-step reads are pinned and
skipped by the scans. Demand fetch.
"""

from __future__ import annotations

import numpy as np

from artifact.policies.base import Strategy
from artifact.policies.registry import register

_NONE, _S, _M, _G = 0, 1, 2, 3
MOVE_TO_MAIN = 2  # libCacheSim S3FIFO default move-to-main-threshold
SMALL_RATIO = 0.10  # libCacheSim S3FIFO default fifo-size-ratio


class _Fifo:
    """A FIFO of expert ids with lazy removal: entries whose ticket is stale are skipped and dropped."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int]] = []
        self.head = 0

    def push(self, gid: int, ticket: int) -> None:
        self.items.append((gid, ticket))

    def compact(self) -> None:
        if self.head > 1024 and self.head * 2 > len(self.items):
            del self.items[:self.head]
            self.head = 0


@register("s3fifo", "S3-FIFO (SOSP'23): small, main and ghost FIFO queues", "Yang et al., SOSP'23; "
          "libCacheSim S3FIFO.c", "none", "S3-FIFO", order=110)
class S3FIFO(Strategy):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        n_gid = ctx.L * ctx.E
        self.s_cap = max(1, round(SMALL_RATIO * ctx.C))
        self.m_cap = ctx.C - self.s_cap
        self.g_cap = max(1, self.m_cap)
        self.q = np.zeros(n_gid, np.int8)  # which queue each expert is in
        self.ticket = np.zeros(n_gid, np.int64)  # the ticket of its live queue entry
        self.size = [0, 0, 0, 0]  # entries per queue (index: _NONE, _S, _M, _G)
        self.fifo = {_S: _Fifo(), _M: _Fifo(), _G: _Fifo()}
        self.freq = np.zeros(n_gid, np.int64)
        self.now = 0
        self.new_at = np.full(n_gid, -1, np.int64)

    def _push(self, gid: int, q: int) -> None:
        self.size[self.q[gid]] -= self.q[gid] != _NONE
        self.q[gid] = q
        self.size[q] += 1
        self.now += 1
        self.ticket[gid] = self.now
        self.fifo[q].push(gid, self.now)
        if q == _G and self.size[_G] > self.g_cap:
            oldest = self._tail(_G, None)
            self._remove(oldest)

    def _remove(self, gid: int) -> None:
        self.size[self.q[gid]] -= 1
        self.q[gid] = _NONE

    def _live(self, q: int, gid: int, ticket: int) -> bool:
        return self.q[gid] == q and self.ticket[gid] == ticket

    def _tail(self, q: int, pinned: np.ndarray | None) -> int:
        """The oldest live entry of queue ``q`` not pinned, or -1; stale entries at the head are dropped."""
        f = self.fifo[q]
        while f.head < len(f.items) and not self._live(q, *f.items[f.head]):
            f.head += 1
        f.compact()
        for gid, ticket in f.items[f.head:]:
            if self._live(q, gid, ticket) and (pinned is None or not pinned[gid]):
                return gid
        return -1

    def _evict_one(self, pinned: np.ndarray) -> int:
        """One eviction as libCacheSim's ``S3FIFO_evict``: from M when M is over its share or S is empty, else
        from S (pinned experts are skipped; a queue with none to offer yields to the other)."""
        for _ in range(8 * self.ctx.C + 8):  # each pass evicts, or moves or reinserts one expert: bounded
            over = self.size[_M] > self.m_cap or self.size[_S] == 0
            for q in ((_M, _S) if over else (_S, _M)):
                x = self._tail(q, pinned)
                if x >= 0:
                    break
            else:
                raise RuntimeError("s3fifo: every resident expert is pinned")
            if q == _S:
                if self.freq[x] >= MOVE_TO_MAIN:
                    self.freq[x] = 0
                    self._push(x, _M)
                    continue
                self._push(x, _G)
                return x
            if self.freq[x] >= 1:
                self.freq[x] = min(int(self.freq[x]), 3) - 1
                self._push(x, _M)
                continue
            self._remove(x)
            return x
        raise RuntimeError("s3fifo: eviction did not converge")

    def _insert(self, x: int, g: int) -> None:
        self.freq[x] = 0
        self._push(x, _M if self.q[x] == _G else _S)
        self.new_at[x] = g

    def evict(self, cand, n, g, incoming=None):
        cache = self.ctx.cache
        pinned = np.ones(self.q.shape[0], bool)
        pinned[cache.slot_gid[cand]] = False
        k = incoming.shape[0] - n
        for x in incoming[:k].tolist():  # they take free slots, in order before the evictions
            self._insert(x, g)
        victims = []
        for x in incoming[k:].tolist():
            v = self._evict_one(pinned)
            pinned[v] = True
            victims.append(v)
            self._insert(x, g)
        return cache.where[np.array(victims, np.int64)]

    def on_fill(self, slots, gids, g, targets=None):
        for x in gids.tolist():
            if self.new_at[x] != g:  # a miss that took a free slot
                self._insert(x, g)

    def on_use(self, slots, gids, g):
        hit = self.new_at[gids] != g
        self.freq[gids[hit]] = np.minimum(self.freq[gids[hit]] + 1, 3)
