"""The strategy interface the scheduler drives, and small shared pieces."""

from __future__ import annotations

import numpy as np


class Strategy:
    """A predictor (``observe`` / ``prefetch`` / ``admit``) composed with an eviction policy (``eviction``).

    - ``observe(g)``: layer-step ``g``'s router has run; learn from what may be seen now.
    - ``prefetch(g)``: after ``g``'s demand loads and COMPUTE are issued, the experts to fetch ahead, most wanted
      first: ``(gids, target layer-steps, copies)`` where ``copies`` (or None) is how many batch items predicted each
      one (used only under the ``per_item`` protocol), or None for no prefetch.
    - ``admit(gids, targets, victims, g)``: whether each prefetch is worth evicting the paired victim; the scheduler
      keeps the prefix up to the first refusal. None admits all.
    """

    protect_prefetches = True

    def __init__(self, ctx, eviction) -> None:
        self.ctx = ctx
        self.eviction = eviction

    def observe(self, g: int) -> None:
        pass

    def prefetch(self, g: int):
        return None

    def admit(self, gids: np.ndarray, targets: np.ndarray, victims: np.ndarray, g: int) -> np.ndarray | None:
        return None


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
    u, c = np.unique(e, return_counts=True)
    ui = np.unique(it * E + e) % E
    ic = np.bincount(ui, minlength=E)[u]
    order = np.lexsort((u, -c))
    return u[order] + layer * E, c[order], ic[order]


def empty_prefetch():
    z = np.zeros(0, np.int64)
    return z, z, None
