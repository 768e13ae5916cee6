"""The one selector every eviction decision goes through: the ``n`` candidates with the smallest integer keys.

Keys are integers (or fixed-point integers made by the caller), so the choice is the same on every platform; ties
go to the lower slot, so it is total.
"""

from __future__ import annotations

import numpy as np


def smallest(keys: np.ndarray, cand: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` entries of ``cand`` with the smallest ``keys[cand]``, in ascending (key, candidate) order."""
    if n <= 0 or cand.shape[0] == 0:
        return cand[:0]
    return smallest_of(keys[cand], cand, n)


def smallest_of(k: np.ndarray, cand: np.ndarray, n: int) -> np.ndarray:
    """As :func:`smallest` with the candidates' keys given directly (``k[i]`` is the key of ``cand[i]``)."""
    if n <= 0 or cand.shape[0] == 0:
        return cand[:0]
    if k.dtype.kind == "f":
        raise TypeError("select: keys must be integers (round floats to fixed point first: platform-exact choices)")
    if n >= cand.shape[0]:
        return cand[np.lexsort((cand, k))]
    part = np.argpartition(k, n - 1)[:n]
    # argpartition leaves ties at the boundary arbitrary: widen to every candidate tied with the n-th key.
    kth = k[part].max()
    sel = np.nonzero(k <= kth)[0]
    sel = sel[np.lexsort((cand[sel], k[sel]))][:n]
    return cand[sel]


def smallest_lex(cand: np.ndarray, n: int, *keys: np.ndarray) -> np.ndarray:
    """The ``n`` candidates first in lexicographic order of ``keys`` (primary key first; integer arrays aligned with
    ``cand``), ties to the lower candidate."""
    if n <= 0 or cand.shape[0] == 0:
        return cand[:0]
    for k in keys:
        if k.dtype.kind == "f":
            raise TypeError("select: keys must be integers (round floats to fixed point first: platform-exact choices)")
    if keys and 4 * n < cand.shape[0]:
        # Only candidates whose primary key is at most the n-th smallest can be among the first n: sort just those.
        k0 = keys[0]
        kth = k0[np.argpartition(k0, n - 1)[n - 1]]
        sel = (k0 <= kth).nonzero()[0]
        order = np.lexsort((cand[sel],) + tuple(k[sel] for k in reversed(keys)))
        return cand[sel[order[:n]]]
    order = np.lexsort((cand,) + tuple(reversed(keys)))
    return cand[order[:n]]
