"""Differential checks: every eviction policy, request by request, against a plain reference implementation.

Two kinds of workload:
- a sequence of single requests (batch 1, top-1: one expert per layer-step) on a seeded Zipf routing, compared hit
  by hit with textbook implementations of LRU, LFU, Belady's MIN, MoE-Infinity's visit count, per-layer LRU
  (mixtral-offloading), vLLM's LFRU, ARC (per layer, as FATE runs it), S3-FIFO and the aged MIN the oracle uses;
- groups with several misses (batch > 1, top-k > 1: every expert of a layer-step pinned together), compared with
  group-level references of LRU and Belady, which model the slots as the scheduler does.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from artifact.bounds.belady import CONSTRUCTIONS, Belady
from artifact.core.requests import build_requests
from artifact.planner import get_strategy
from artifact.policies.base import Frequency, Recency
from artifact.policies.expertflow import ExpertFlowPLEC
from artifact.policies.mixtral_offloading import MixtralOffloading
from artifact.policies.moe_infinity import MoEInfinity
from artifact.policies.registry import StrategyInfo
from artifact.runtime.scheduler import schedule
from artifact.traces.trace import Trace, make_meta
from artifact.traces.workload import decode_workload
from tests.helpers import TEST_HW, random_workload, tiny_model

LAYERS, EXPERTS = 3, 6


def _sequence(seed: int, steps: int = 60):
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, EXPERTS + 1) ** 1.1
    ex = rng.choice(EXPERTS, size=(steps, LAYERS), p=zipf / zipf.sum())
    gids = (np.arange(LAYERS)[None, :] * EXPERTS + ex).reshape(-1).tolist()
    tr = Trace(ex[:, :, None].astype(np.int16), np.array([0, steps], np.int64), make_meta("tiny", EXPERTS, "test"))
    return gids, decode_workload(tr, 1, model=tiny_model(LAYERS, EXPERTS, 1))


def _info(cls, sees="past", **params):
    return StrategyInfo("ref_" + cls.__name__, "", "", "", "", factory=cls, sees=sees, params=params)


def _hits(info, w, cache):
    plan = schedule(w, info, cache, "batched", 0, build_requests(w), TEST_HW)
    return plan.use_gid.tolist(), plan.use_hit.tolist()


def _shares(C):
    share = [C // LAYERS + (1 if m < C % LAYERS else 0) for m in range(LAYERS)]
    return share


# --- references: one request at a time ----------------------------------------------------------------------------


def ref_lru(reqs, C):
    cache, hits = OrderedDict(), []
    for r in reqs:
        hits.append(r in cache)
        if r in cache:
            cache.move_to_end(r)
            continue
        if len(cache) >= C:
            cache.popitem(last=False)
        cache[r] = True
    return hits


def ref_lfu(reqs, C):
    count, last, hits = {}, {}, []
    for t, r in enumerate(reqs):
        hits.append(r in count)
        if r in count:
            count[r] += 1
        else:
            if len(count) >= C:
                victim = min(count, key=lambda x: (count[x], last[x]))
                del count[victim], last[victim]
            count[r] = 1
        last[r] = t
    return hits


def _next_use(reqs, t, x):
    for u in range(t + 1, len(reqs)):
        if reqs[u] == x:
            return u
    return len(reqs) + 1


def ref_belady(reqs, C):
    cache, hits = set(), []
    for t, r in enumerate(reqs):
        hits.append(r in cache)
        if r in cache:
            continue
        if len(cache) >= C:
            cache.remove(max(cache, key=lambda x: _next_use(reqs, t, x)))
        cache.add(r)
    return hits


def ref_aged_min(reqs, C, window):
    """MIN among the experts not read in the last ``window`` requests (one request per layer-step), else all."""
    cache, last, hits = set(), {}, []
    for t, r in enumerate(reqs):
        hits.append(r in cache)
        if r not in cache:
            if len(cache) >= C:
                old = [x for x in cache if last[x] <= t - 1 - window]
                pool = old if old else list(cache)
                cache.remove(max(pool, key=lambda x: _next_use(reqs, t, x)))
            cache.add(r)
        last[r] = t
    return hits


def ref_visit_count(reqs, C):
    """MoE-Infinity: evict the lowest visit count over the whole run (kept across evictions), ties by LRU."""
    visits, last, cache, hits = {}, {}, set(), []
    for t, r in enumerate(reqs):
        hits.append(r in cache)
        if r not in cache:
            if len(cache) >= C:
                cache.remove(min(cache, key=lambda x: (visits[x], last[x])))
            cache.add(r)
        visits[r] = visits.get(r, 0) + 1
        last[r] = t
    return hits


def _per_layer(reqs, C, one_layer):
    """Run ``one_layer(subsequence, share)`` on each layer's own requests and merge the hits back in order."""
    hits = [None] * len(reqs)
    for m, share in enumerate(_shares(C)):
        idx = [i for i, r in enumerate(reqs) if r // EXPERTS == m]
        for i, h in zip(idx, one_layer([reqs[i] for i in idx], share)):
            hits[i] = h
    return hits


def ref_lfru_layer(reqs, c):
    """vLLM PR #37190: per-layer clock, evict the lowest freq / (clock - last + 1), ties earliest inserted."""
    entries, clock, hits, seq = {}, 0, [], 0
    for r in reqs:
        hits.append(r in entries)
        if r in entries:
            clock += 1
            entries[r][0] += 1
            entries[r][1] = clock
            continue
        if len(entries) >= c:
            victim = min(entries, key=lambda x: (entries[x][0] / (clock - entries[x][1] + 1), entries[x][2]))
            del entries[victim]
        clock += 1
        entries[r] = [1, clock, seq]
        seq += 1
    return hits


def ref_arc_layer(reqs, c):
    """ARC (Megiddo and Modha, FAST'03) as printed in the paper, ``p`` a float."""
    T1, T2, B1, B2 = OrderedDict(), OrderedDict(), OrderedDict(), OrderedDict()  # LRU first
    p, hits = 0.0, []

    def replace(x):
        if T1 and (len(T1) > p or (x in B2 and len(T1) == p)):
            old, _ = T1.popitem(last=False)
            B1[old] = True
        else:
            old, _ = T2.popitem(last=False)
            B2[old] = True

    for x in reqs:
        if x in T1 or x in T2:
            hits.append(True)
            (T1 if x in T1 else T2).pop(x)
            T2[x] = True
            continue
        hits.append(False)
        full = len(T1) + len(T2) >= c
        if x in B1:
            p = min(c, p + max(len(B2) / len(B1), 1.0))
            if full:
                replace(x)
            B1.pop(x)
            T2[x] = True
        elif x in B2:
            p = max(0.0, p - max(len(B1) / len(B2), 1.0))
            if full:
                replace(x)
            B2.pop(x)
            T2[x] = True
        else:
            if len(T1) + len(B1) == c:
                if len(T1) < c:
                    B1.popitem(last=False)
                    if full:
                        replace(x)
                else:
                    T1.popitem(last=False)
            elif len(T1) + len(T2) + len(B1) + len(B2) >= c:
                if len(T1) + len(T2) + len(B1) + len(B2) >= 2 * c:
                    B2.popitem(last=False)
                if full:
                    replace(x)
            T1[x] = True
    return hits


def ref_s3fifo(reqs, C):
    """S3-FIFO as libCacheSim's S3FIFO.c: small FIFO 10%, main FIFO, ghost FIFO, move-to-main at freq >= 2."""
    s_cap = max(1, round(0.1 * C))
    m_cap = C - s_cap
    S, M, G, freq, hits = [], [], [], {}, []  # FIFOs: index 0 is the tail (oldest)

    def evict():
        while True:
            if len(M) > m_cap or not S:
                x = M.pop(0)
                if freq[x] >= 1:
                    freq[x] = min(freq[x], 3) - 1
                    M.append(x)
                    continue
                return
            x = S.pop(0)
            if freq[x] >= 2:
                freq[x] = 0
                M.append(x)
                continue
            G.append(x)
            if len(G) > max(1, m_cap):
                G.pop(0)
            return

    for x in reqs:
        if x in S or x in M:
            hits.append(True)
            freq[x] = min(freq[x] + 1, 3)
            continue
        hits.append(False)
        if len(S) + len(M) >= C:
            evict()
        freq[x] = 0
        if x in G:
            G.remove(x)
            M.append(x)
        else:
            S.append(x)
    return hits


class _DemandMoEInfinity(MoEInfinity):
    def prefetch(self, g):
        return None


class _DemandPerLayerLRU(MixtralOffloading):
    def prefetch(self, g):
        return None


CASES = {
    "lru": (_info(Recency), ref_lru),
    "lfu": (_info(Frequency), ref_lfu),
    "belady": (_info(Belady, sees="future"), ref_belady),
    "visit_count": (_info(_DemandMoEInfinity), ref_visit_count),
    "per_layer_lru": (_info(_DemandPerLayerLRU, source="exact"), lambda r, C: _per_layer(r, C, ref_lru)),
    "lfru": (get_strategy("lfru"), lambda r, C: _per_layer(r, C, ref_lfru_layer)),
    "arc": (get_strategy("arc"), lambda r, C: _per_layer(r, C, ref_arc_layer)),
    "s3fifo": (get_strategy("s3fifo"), ref_s3fifo),
}


@pytest.mark.parametrize("policy", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cache", [3, 5, 9])
def test_single_requests(policy, seed, cache):
    info, ref = CASES[policy]
    gids, w = _sequence(seed)
    used, hits = _hits(info, w, cache)
    assert used == gids
    assert hits == ref(gids, cache)


@pytest.mark.parametrize("window", [1, 2, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_aged_min(window, seed):
    gids, w = _sequence(seed)
    _, hits = _hits(CONSTRUCTIONS[f"aged_min_{window}"], w, 5)
    assert hits == ref_aged_min(gids, 5, window)


def ref_horizon_min(reqs, C, horizon):
    """MIN seeing ``horizon`` requests ahead: an expert whose next use is further counts as unknown; the unknown ones
    go first, least recently read first, then the known ones, furthest next use first."""
    cache, last, hits = set(), {}, []
    for t, r in enumerate(reqs):
        hits.append(r in cache)
        if r not in cache:
            if len(cache) >= C:
                unknown = [x for x in cache if _next_use(reqs, t, x) - t > horizon]
                cache.remove(min(unknown, key=lambda x: last[x]) if unknown else
                             max(cache, key=lambda x: _next_use(reqs, t, x)))
            cache.add(r)
        last[r] = t
    return hits


@pytest.mark.parametrize("horizon", [1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_belady_with_a_horizon(horizon, seed):
    """``belady`` with ``horizon=H`` decode steps against the one-request reference (one request per layer-step: no
    ties); a horizon past the trace's end is MIN itself."""
    gids, w = _sequence(seed)
    _, hits = _hits(_info(Belady, sees="future", horizon=horizon), w, 5)
    assert hits == ref_horizon_min(gids, 5, horizon * LAYERS)
    _, full = _hits(_info(Belady, sees="future", horizon=len(gids)), w, 5)
    assert full == ref_belady(gids, 5) == _hits(_info(Belady, sees="future"), w, 5)[1]
    with pytest.raises(ValueError, match="horizon"):
        _hits(_info(Belady, sees="future", horizon=0), w, 5)


# --- groups with several misses -----------------------------------------------------------------------------------


def _groups(w):
    req = build_requests(w)
    b = req.batched
    out = []
    for g in range(req.layer_steps):
        a, z = b.grp_off[b.ls_off[g]], b.grp_off[b.ls_off[g + 1]]
        out.append(b.gid[a:z].tolist())
    return out


def ref_group_lru(groups, C):
    """Slots as the scheduler keeps them: a group's residents are pinned; its misses take free slots (lowest first),
    then the least recently touched unpinned slots; fills then reads touch the group's slots in gid order."""
    slot_of, content, recent, clock, hits = {}, [None] * C, [0] * C, 1, []
    for grp in groups:
        pinned = {slot_of[x] for x in grp if x in slot_of}
        hits += [x in slot_of for x in grp]
        misses = [x for x in grp if x not in slot_of]
        free = [s for s in range(C) if content[s] is None]
        taken = free[:len(misses)]
        rest = sorted((recent[s], s) for s in range(C) if content[s] is not None and s not in pinned)
        taken += [s for _, s in rest[:len(misses) - len(taken)]]
        for x, s in zip(misses, taken):
            if content[s] is not None:
                del slot_of[content[s]]
            content[s], slot_of[x] = x, s
        for x in misses:  # on_fill in gid order, then on_use of the whole group in gid order
            recent[slot_of[x]] = clock
            clock += 1
        for x in grp:
            recent[slot_of[x]] = clock
            clock += 1
    return hits


def ref_group_belady(groups, C):
    """MIN over groups: misses take free slots, then the unpinned slots whose expert is needed furthest ahead
    (ties: the lower slot)."""
    slot_of, content, hits = {}, [None] * C, []
    never = len(groups) + 1

    def nxt(x, g):
        for u in range(g + 1, len(groups)):
            if x in groups[u]:
                return u
        return never

    for g, grp in enumerate(groups):
        pinned = {slot_of[x] for x in grp if x in slot_of}
        hits += [x in slot_of for x in grp]
        misses = [x for x in grp if x not in slot_of]
        free = [s for s in range(C) if content[s] is None]
        taken = free[:len(misses)]
        rest = sorted((-nxt(content[s], g), s) for s in range(C) if content[s] is not None and s not in pinned)
        taken += [s for _, s in rest[:len(misses) - len(taken)]]
        for x, s in zip(misses, taken):
            if content[s] is not None:
                del slot_of[content[s]]
            content[s], slot_of[x] = x, s
    return hits


@pytest.mark.parametrize("name, ref, info", [("lru", ref_group_lru, _info(Recency)),
                                             ("belady", ref_group_belady, _info(Belady, sees="future"))])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch, top_k, cache", [(3, 1, 6), (2, 2, 7), (4, 2, 12)])
def test_groups_with_several_misses(name, ref, info, seed, batch, top_k, cache):
    m = tiny_model(3, 8, top_k)
    w = random_workload(m, batch, n_seq=8, seed=seed, steps=10)
    groups = _groups(w)
    assert max(len(x) for x in groups) > 1
    _, hits = _hits(info, w, cache)
    assert hits == ref(groups, cache)


# --- PLEC's eviction order on hand-built cache states -------------------------------------------------------------


def test_plec_eviction_order_matches_its_definition():
    """ExpertFlow's order (unused predictions, then layers already computed this step, then LRU, predicted-for-later
    last) against a plain sort, on the cache states a real run goes through."""
    m = tiny_model(4, 8, 2)
    w = random_workload(m, 3, n_seq=8, seed=4, steps=10)
    seen = []
    orig = ExpertFlowPLEC.evict

    def spy(self, cand, n, g, incoming=None):
        out = orig(self, cand, n, g, incoming)
        c = self.ctx.cache
        L, E = self.ctx.L, self.ctx.E
        layer = g % L

        def tier(s):
            x = int(c.slot_gid[s])
            if x // E > layer and self.pred[x]:
                return 3
            if c.prefetched[s] and c.protected_until[s] < g:
                return 0
            return 1 if x // E <= layer else 2

        want = sorted(cand.tolist(), key=lambda s: (tier(s), int(self.recent[s]), s))[:n]
        seen.append(out.tolist() == want)
        return out

    ExpertFlowPLEC.evict = spy
    try:
        schedule(w, get_strategy("expertflow"), 9, "batched", 0, build_requests(w), TEST_HW)
    finally:
        ExpertFlowPLEC.evict = orig
    assert seen and all(seen)
