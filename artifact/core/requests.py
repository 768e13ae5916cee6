"""What a workload asks of the expert cache, per layer-step: the precomputed tables the scheduler walks.

``batched`` groups: one per layer-step, the unique experts of all its tokens with their token counts.
``per_item`` groups: one per (layer-step, batch item), each item's experts with their token counts.
Both are CSR tables sorted by layer-step; ``next_use`` (for the bounds) is the next layer-step that needs the same
expert, or ``NEVER``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artifact.core.workload import Workload

NEVER = np.iinfo(np.int64).max // 4


@dataclass(frozen=True)
class Groups:
    grp_ls: np.ndarray  # int64 [P]: layer-step of each group
    grp_item: np.ndarray  # int64 [P]: batch item, -1 = whole batch
    grp_off: np.ndarray  # int64 [P + 1]: entries of group p
    gid: np.ndarray  # int64 [R]: global expert id (layer * E + expert), ascending within a group
    count: np.ndarray  # int64 [R]: tokens of the group routed to it
    ls_off: np.ndarray  # int64 [G + 1]: groups of layer-step g are ls_off[g]:ls_off[g + 1]


@dataclass(frozen=True)
class Requests:
    layers: int
    experts: int
    steps: int
    batch: int
    requests: int  # token-expert pairs
    batched: Groups
    per_item: Groups
    next_use: np.ndarray  # int64 [R of batched]: next layer-step needing the same gid, NEVER if none
    tokens_per_step: np.ndarray  # int64 [S]

    @property
    def layer_steps(self) -> int:
        return self.steps * self.layers

    def groups(self, per_item: bool) -> Groups:
        return self.per_item if per_item else self.batched


def _groups(key_hi: np.ndarray, gid: np.ndarray, n_hi: int, G: int, hi_to_ls, hi_to_item, n_gid: int) -> Groups:
    key = key_hi * n_gid + gid
    uk, cnt = np.unique(key, return_counts=True)
    hi = uk // n_gid
    ug = uk % n_gid
    grp_hi, start = np.unique(hi, return_index=True)
    grp_off = np.append(start, uk.shape[0]).astype(np.int64)
    grp_ls = hi_to_ls(grp_hi)
    ls_off = np.searchsorted(grp_ls, np.arange(G + 1)).astype(np.int64)
    return Groups(grp_ls.astype(np.int64), hi_to_item(grp_hi).astype(np.int64), grp_off, ug.astype(np.int64),
                  cnt.astype(np.int64), ls_off)


def build_requests(w: Workload) -> Requests:
    L, E, B = w.layers, w.model.experts, w.batch
    S = w.steps
    G = S * L
    T, _, K = w.experts.shape
    tps = w.tokens_per_step.astype(np.int64)
    step_of = np.repeat(np.arange(S, dtype=np.int64), tps)  # [T]
    lay = np.arange(L, dtype=np.int64)
    ls = (step_of[:, None] * L + lay[None, :])  # [T, L]
    ls_flat = np.repeat(ls[:, :, None], K, axis=2).ravel()  # [T*L*K]
    gid = (lay[None, :, None] * E + w.experts.astype(np.int64)).ravel()
    item = np.repeat(np.repeat(w.item.astype(np.int64)[:, None], L, axis=1)[:, :, None], K, axis=2).ravel()
    n_gid = L * E
    batched = _groups(ls_flat, gid, G, G, lambda h: h, lambda h: np.full(h.shape, -1), n_gid)
    per_item = _groups(ls_flat * B + item, gid, G * B, G, lambda h: h // B, lambda h: h % B, n_gid)
    # Next use of each batched entry: sort entries by (gid, layer-step); the next entry of the same gid.
    g_entry = np.repeat(batched.grp_ls, np.diff(batched.grp_off))
    order = np.lexsort((g_entry, batched.gid))
    nxt = np.full(order.shape[0], NEVER, dtype=np.int64)
    same = batched.gid[order][1:] == batched.gid[order][:-1]
    nxt_sorted = np.where(same, g_entry[order][1:], NEVER)
    nxt[order[:-1]] = nxt_sorted
    return Requests(L, E, S, B, int(T * L * K), batched, per_item, nxt, tps)
