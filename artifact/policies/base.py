"""The strategy interface the scheduler drives, and the small pieces several strategies share.

A strategy is one class (one module): its predictor and its eviction together, behind a narrow set of hooks. The
scheduler calls them in this order for every layer-step ``g`` (layer ``g % L`` of step ``g // L``):

1. ``observe(g)``: the router of ``g`` has run; the strategy may read what is visible now (``ctx.routing(g)``,
   ``ctx.lookahead(g + 1)``, ...). Every accessor checks the clock of the walk.
2. For each group of ``g`` (the whole batch, or one item under ``per_item``): the experts not resident need slots;
   ``evict(candidates, n, g, incoming)`` names ``n`` of the candidate slots, in eviction order (``incoming``:
   every expert about to be filled; the last ``n`` take the evicted slots). Then ``on_fill`` for every
   demand load and ``on_use`` for every slot the COMPUTE reads.
3. ``prefetch(g)``: the experts to fetch ahead, most wanted first, as :class:`Prefetch` (or None); each gets a
   victim from ``evict`` among slots that are neither in use nor protected, ``admit`` may refuse a trade (the
   scheduler keeps the prefix up to the first refusal), then ``on_fill`` with the target layer-steps.

The cache is seen through ``ctx.cache``, a read-only view (``slot_gid``, ``where``, ``last_read``, ``prefetched``,
``protected_until``): a strategy keeps its own state in its own fields and never writes the scheduler's.
``partition(layer)`` restricts the slots an expert of ``layer`` may take (``None``: any) for partitioned caches;
``slots(requested)`` and ``preload(slots)`` let a strategy shape the cache it runs on (``gpu_only``: every expert,
all resident from the start).

Keys that decide an eviction are integers (:mod:`artifact.core.select`), so plans are the same on every platform.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from artifact.core.select import smallest


class Prefetch(NamedTuple):
    gids: np.ndarray  # int64 [P]: global expert ids, most wanted first
    targets: np.ndarray  # int64 [P]: layer-step each is fetched for
    copies: np.ndarray | None = None  # int64 [P]: batch items predicting each (only ``per_item`` reads it)


class Strategy:
    """Base class: fetch on demand, no prefetch; subclasses add an eviction order (e.g. :class:`Recency`)."""

    protect_prefetches = True  # a prefetched expert is safe from other prefetches until its target has run
    batch_aware = False  # dedups across the batch even under the seed's ``per_item`` accounting

    def __init__(self, ctx) -> None:
        self.ctx = ctx

    # --- the cache it runs on -----------------------------------------------------------------------------------
    @classmethod
    def slots(cls, requested: int, layers: int, experts: int) -> int:
        """Device slots this strategy runs with (iso-cache: the requested number)."""
        return requested

    def preload(self, slots: int) -> np.ndarray:
        """Global expert ids resident in slots ``0..n-1`` before the first step (none)."""
        return np.zeros(0, np.int64)

    def partition(self, layer: int) -> np.ndarray | None:
        """Boolean mask of the slots an expert of ``layer`` may occupy; None: any slot."""
        return None

    # --- predictor ----------------------------------------------------------------------------------------------
    def observe(self, g: int) -> None:
        pass

    def prefetch(self, g: int) -> Prefetch | None:
        return None

    def admit(self, gids: np.ndarray, targets: np.ndarray, victims: np.ndarray, g: int) -> np.ndarray | None:
        return None

    # --- eviction -----------------------------------------------------------------------------------------------
    def evict(self, cand: np.ndarray, n: int, g: int, incoming: np.ndarray | None = None) -> np.ndarray:
        """``n`` of the candidate slots to evict, in order. ``incoming``: every expert about to be filled, in
        order; the first ``len(incoming) - n`` take free slots, the last ``n`` the evicted ones (ghost-list policies
        such as ARC and S3-FIFO read it), or None."""
        raise TypeError(f"strategy {type(self).__name__} names no eviction order: subclass Recency or Frequency, "
                        "or define evict")

    def on_fill(self, slots: np.ndarray, gids: np.ndarray, g: int, targets: np.ndarray | None = None) -> None:
        """``slots`` were filled with ``gids`` at layer-step ``g``: demand loads (``targets`` None) or prefetches."""

    def on_use(self, slots: np.ndarray, gids: np.ndarray, g: int) -> None:
        """A COMPUTE of layer-step ``g`` read ``slots`` (holding ``gids``)."""


class Recency(Strategy):
    """LRU order: a fill or a read moves the slot to the most-recent end (libCacheSim's LRU)."""

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.recent = np.zeros(ctx.C, np.int64)  # [C]: clock of the slot's last fill or read
        self.clock = 0

    def touch(self, slots: np.ndarray) -> None:
        n = slots.shape[0]
        self.recent[slots] = np.arange(self.clock, self.clock + n)
        self.clock += n

    def evict(self, cand, n, g, incoming=None):
        return smallest(self.recent, cand, n)

    def on_fill(self, slots, gids, g, targets=None):
        self.touch(slots)

    def on_use(self, slots, gids, g):
        self.touch(slots)


class Frequency(Recency):
    """LFU while resident: reads since the expert entered the cache (restarting at 0 on each fill), ties by LRU
    (libCacheSim's LFU)."""

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.count = np.zeros(ctx.C, np.int64)
        self.key = np.zeros(ctx.C, np.int64)

    def evict(self, cand, n, g, incoming=None):
        return smallest(self.key, cand, n)

    def on_fill(self, slots, gids, g, targets=None):
        self.count[slots] = 0
        self.touch(slots)
        self.key[slots] = (self.count[slots] << 40) + self.recent[slots]

    def on_use(self, slots, gids, g):
        self.count[slots] += 1
        self.touch(slots)
        self.key[slots] = (self.count[slots] << 40) + self.recent[slots]


def ranked(experts: np.ndarray, items: np.ndarray, layer: int, E: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union over a step's tokens of predicted experts ``[T, K]`` (-1 = none) of ``layer``.

    Returns (gids, token counts, distinct items predicting each) ordered by token count (desc), then gid.
    """
    k = experts.shape[1]
    flat = experts.reshape(-1).astype(np.int64)
    ok = flat >= 0
    if not ok.any():
        z = np.zeros(0, np.int64)
        return z, z, z
    e = flat[ok]
    it = np.repeat(items.astype(np.int64), k)[ok]
    counts = np.bincount(e, minlength=E)  # [E]: tokens per expert
    u = np.flatnonzero(counts)  # ascending, as np.unique's
    c = counts[u]
    # distinct items per expert: mark each (item, expert) pair once, then count the items of each expert
    seen = np.bincount(it * E + e, minlength=(int(it.max()) + 1) * E).reshape(-1, E) > 0  # [items, E]
    ic = seen.sum(axis=0)[u]
    order = np.lexsort((u, -c))
    return u[order] + layer * E, c[order], ic[order]


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's ``k`` largest integer scores ``[T, k]``, ties to the lower index (platform-exact)."""
    if k >= scores.shape[1]:
        return np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    if scores.dtype.kind == "f":
        raise TypeError("top_k_rows: scores must be integers (fixed point) so every platform picks the same")
    n = scores.shape[1]
    if k == 1:
        return np.argmax(scores, axis=1)[:, None]  # the first maximum: ties to the lower index
    if k * 4 < n and np.abs(scores).max() < (1 << 62) // n:
        # One distinct integer key per entry (score descending, then index ascending): the k smallest keys are the
        # stable sort's first k; partition, then order just those.
        key = -scores.astype(np.int64) * n + np.arange(n)
        part = np.argpartition(key, k - 1, axis=1)[:, :k]
        return np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, axis=1), axis=1), axis=1)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def empty_prefetch() -> Prefetch:
    z = np.zeros(0, np.int64)
    return Prefetch(z, z, None)
