"""The scheduler: walks layer-steps with one strategy and one cache size and emits a :class:`~artifact.core.plan.Plan`.

Per layer-step ``g`` (layer ``l`` of step ``s``), in host issue order:

1. the strategy observes what the router of ``g`` produced (the routing of ``g``; and the lookahead for ``g + 1``);
2. for each group of ``g`` (the whole batch, or one item under ``per_item``; chunks when a group needs more experts
   than its slots): hits are the experts resident or already loaded ahead; misses get victims chosen by the
   strategy's ``evict`` among slots not pinned by the group and not holding a prefetch still awaiting its use;
   demand LOADs are issued, then the COMPUTE;
3. the strategy proposes prefetches (most wanted first); each new one gets a victim (free slots first, then the
   eviction order among slots that are neither protected nor in use, i.e. read by this layer-step's COMPUTEs,
   which are still running while the copy would start), the strategy may refuse the trade (``admit``), and a
   prefetch LOAD is issued. A prefetched expert is protected from eviction by other prefetches until the
   layer-step it was fetched for has run.

A slot's next LOAD waits for the last COMPUTE that read it; loads run in issue order on one link. Decisions depend
only on this logical state (what is resident, in flight, predicted, seen so far), never on a clock, so the simulator
and the engine execute one and the same plan.

Protocols: ``batched`` loads each expert once per layer-step for the whole batch, as every real engine does.
``per_item`` (the seed report's accounting) serves each batch item as if alone: an expert loaded during a
layer-step for one item is loaded again for another item in that layer-step (a fresh copy into the same slot), and a
prefetch predicted by ``n`` items is copied ``n`` times. Experts resident before the layer-step are hits for every
item. Strategies that the seed built batch-aware (``intelligent_dedup``) dedup under both protocols.

The walk is incremental: :class:`Scheduler` plans one layer-step at a time (``layer_step(g)``) from a routing
source, so the same code plans a whole trace (:func:`schedule`, :class:`TraceRouting`) or runs live beside a model
whose routers produce the routing as it decodes.
"""

from __future__ import annotations

import numpy as np

from artifact.core.errors import FutureAccessError, Unrunnable
from artifact.core.plan import Plan, PlanBuilder
from artifact.core.requests import Requests, build_requests
from artifact.core.workload import Workload

PROTOCOLS = ("batched", "per_item")


class TraceRouting:
    """The routing of a whole workload, with its request tables: what :func:`schedule` walks."""

    def __init__(self, workload: Workload, requests: Requests | None = None) -> None:
        self.workload = workload
        self.req = requests if requests is not None else build_requests(workload)
        self.L = workload.layers
        self.has_lookahead = workload.lookahead is not None
        self._starts = workload.step_offsets

    def groups(self, g: int, per_item: bool):
        """Groups of layer-step ``g``: ``(item, gids, counts)`` (item -1 = the whole batch)."""
        gr = self.req.groups(per_item)
        off = gr.grp_off
        for p in range(int(gr.ls_off[g]), int(gr.ls_off[g + 1])):
            a, b = off[p], off[p + 1]
            yield int(gr.grp_item[p]), gr.gid[a:b], gr.count[a:b]

    def unique(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        gr = self.req.batched
        p0, p1 = gr.ls_off[g], gr.ls_off[g + 1]
        a, b = gr.grp_off[p0], gr.grp_off[p1]
        return gr.gid[a:b], gr.count[a:b]

    def routing(self, g: int) -> np.ndarray:
        s, l = divmod(g, self.L)
        return self.workload.experts[self._starts[s]:self._starts[s + 1], l, :]

    def lookahead(self, g: int) -> np.ndarray | None:
        if self.workload.lookahead is None:
            return None
        s, l = divmod(g, self.L)
        return self.workload.lookahead[self._starts[s]:self._starts[s + 1], l, :]

    def step_routing(self, s: int) -> np.ndarray:
        return self.workload.experts[self._starts[s]:self._starts[s + 1]]

    def step_meta(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self._starts[s], self._starts[s + 1]
        return self.workload.item[a:b], self.workload.seq[a:b]


class CacheView:
    """Read-only window on the device cache, what a strategy sees (``ctx.cache``). Every array is a live view."""

    def __init__(self, state: CacheState) -> None:
        def ro(a: np.ndarray) -> np.ndarray:
            v = a.view()
            v.flags.writeable = False
            return v

        self.slot_gid = ro(state.slot_gid)  # [C]: global expert id in each slot, -1 empty
        self.where = ro(state.where)  # [L * E]: slot of each expert, -1 not resident
        self.last_read = ro(state.slot_read_ls)  # [C]: layer-step of the last COMPUTE that read the slot
        self.prefetched = ro(state.slot_prefetched)  # [C]: filled by a prefetch and not read since
        self.protected_until = ro(state.slot_protect)  # [C]: a waiting prefetch's target layer-step, -1 none


class Context:
    """What a strategy may look at. Every accessor checks the clock of the walk: no strategy sees the future
    unless its registry entry says it may (the bounds, and the named predictor arms)."""

    def __init__(self, source, L: int, E: int, K: int, B: int, C: int, protocol: str, seed: int, sees: str,
                 model, hardware) -> None:
        self.source = source
        self.L, self.E, self.K, self.B, self.C = L, E, K, B, C
        self.model = model
        self.protocol = protocol
        self.seed = seed
        self.sees = sees  # "past" | "next_layer" | "path" | "future"
        self.hardware = hardware  # static facts of the target machine; never a clock
        self.has_lookahead = bool(source.has_lookahead)
        self.now = -1
        self.cache: CacheView | None = None

    def _check(self, g: int, what: str, lookahead: bool = False) -> None:
        if g <= self.now or self.sees == "future":
            return
        same_step = g // self.L == self.now // self.L
        if g == self.now + 1 and same_step and (lookahead or self.sees == "next_layer"):
            return
        raise FutureAccessError(f"{what} of layer-step {g} asked for at layer-step {self.now} "
                                f"(strategy access level {self.sees!r})")

    def unique(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """Unique gids needed by layer-step ``g`` and their token counts (whole batch)."""
        self._check(g, "routing")
        return self.source.unique(g)

    def routing(self, g: int) -> np.ndarray:
        """Per-token expert ids (within the layer) at layer-step ``g``: ``[tokens of the step, K]``."""
        self._check(g, "routing")
        return self.source.routing(g)

    def lookahead(self, g: int) -> np.ndarray | None:
        """The trace's lookahead for layer-step ``g`` (made from layer ``l - 1``'s hidden state): ``[tokens, K]``,
        -1 where there is no prediction. Available from layer-step ``g - 1`` on."""
        if not self.has_lookahead:
            return None
        self._check(g, "lookahead", lookahead=True)
        return self.source.lookahead(g)

    def step_routing(self, s: int) -> np.ndarray:
        """All layers of step ``s``: ``[tokens, L, K]`` (only for strategies that see 'path' or 'future')."""
        if self.sees not in ("path", "future"):
            raise FutureAccessError(f"routing of all of step {s} asked for at layer-step {self.now} "
                                    f"(strategy access level {self.sees!r})")
        if self.sees == "path" and s > self.now // self.L:
            raise FutureAccessError(f"path prediction of step {s} asked for at layer-step {self.now}")
        return self.source.step_routing(s)

    def step_meta(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(batch items, sequence ids) of the tokens of step ``s`` (known when the step starts)."""
        if s > self.now // self.L and self.sees != "future":
            raise FutureAccessError(f"batch composition of step {s} asked for at layer-step {self.now}")
        return self.source.step_meta(s)

    def requests(self) -> Requests:
        """The whole workload's request tables, future included (bounds only)."""
        if self.sees != "future":
            raise FutureAccessError(f"the future request table asked for at layer-step {self.now} "
                                    f"(strategy access level {self.sees!r})")
        return self.source.req


class CacheState:
    """The device expert cache: which global expert each slot holds, and the bookkeeping the plan needs."""

    def __init__(self, C: int, n_gid: int) -> None:
        self.C = C
        self.slot_gid = np.full(C, -1, np.int64)
        self.where = np.full(n_gid, -1, np.int64)
        self.slot_reader = np.full(C, -1, np.int64)  # last COMPUTE that read the slot
        self.slot_read_ls = np.full(C, -1, np.int64)  # layer-step of that COMPUTE
        self.slot_load = np.full(C, -1, np.int64)  # LOAD that filled it
        self.slot_protect = np.full(C, -1, np.int64)  # an unused prefetch protected up to this layer-step
        self.slot_fill_ls = np.full(C, -1, np.int64)  # layer-step of the demand load that filled it
        self.slot_fill_item = np.full(C, -1, np.int64)  # batch item it was loaded for (per_item)
        self.slot_prefetched = np.zeros(C, bool)  # filled by a prefetch and not used since
        self.n_free = C

    def place(self, slots: np.ndarray, gids: np.ndarray) -> None:
        old = self.slot_gid[slots]
        valid = old >= 0
        self.where[old[valid]] = -1
        self.n_free -= valid.shape[0] - np.count_nonzero(valid)
        self.slot_gid[slots] = gids
        self.where[gids] = slots


class Scheduler:
    """Plans one layer-step at a time (``layer_step(g)`` for g = 0, 1, ...), then ``finish()`` gives the plan."""

    def __init__(self, info, source, model, layers: int, top_k: int, batch: int, cache_experts: int,
                 protocol: str = "batched", seed: int = 0, hardware=None, **params) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if hardware is None:
            raise TypeError("planning needs a hardware profile (artifact.runtime.hardware.load_profile): the "
                            "hardware-aware strategies read its static figures")
        if info.factory is None:
            raise ValueError(f"strategy {info.name} is planned by construction, not by the scheduler")
        L, E, K = layers, model.experts, top_k
        n_gid = L * E
        C = int(info.factory.slots(cache_experts, L, E))
        if C < K:
            raise Unrunnable(f"cache of {C} slots holds fewer than one token's top-{K} experts")
        if C > n_gid:
            raise Unrunnable(f"cache of {C} slots exceeds the model's {n_gid} routed experts (gpu_only holds all)")
        self.info = info
        self.source = source
        self.model = model
        self.L, self.E, self.K, self.B, self.C = L, E, K, batch, C
        self.protocol = protocol
        self.seed = seed
        self.params = params
        self.per_item = protocol == "per_item" and not info.batch_aware
        self.ctx = Context(source, L, E, K, batch, C, protocol, seed, info.sees, model, hardware)
        self.st = CacheState(C, n_gid)
        self.ctx.cache = CacheView(self.st)
        self.strat = info.make(self.ctx, **params)
        pre = np.asarray(self.strat.preload(C), np.int64)
        if pre.shape[0]:
            self.st.place(np.arange(pre.shape[0]), pre)
        self.resident_at_start = pre.astype(np.int32)
        self.gate_free = info.sees == "future"
        self.pb = PlanBuilder()
        self.all_slots = np.arange(C)
        self.next_g = 0

    def victims(self, incoming: np.ndarray, pinned: np.ndarray, layer: int, g: int,
                allow_protected: bool) -> np.ndarray:
        """Up to ``len(incoming)`` slots to (re)fill with the experts ``incoming``, paired in order: free slots
        first, then the eviction order. The strategy sees every incoming expert: the first ones take the free
        slots, the last ``n`` the slots it evicts."""
        st, strat = self.st, self.strat
        n = incoming.shape[0]
        allowed = strat.partition(layer)
        out = []
        occupied = st.slot_gid >= 0
        if st.n_free:
            free = (~(occupied | pinned)).nonzero()[0]
            if allowed is not None:
                free = free[allowed[free]]
            out.append(free[:n])
            n -= out[0].shape[0]
        if n > 0:
            ok = occupied & ~pinned
            if allowed is not None:
                ok &= allowed
            unprot = ok & (st.slot_protect <= g)
            pick = strat.evict(unprot.nonzero()[0], n, g, incoming)
            out.append(pick)
            n -= pick.shape[0]
            if n > 0 and allow_protected:
                # A demand miss outranks a prefetch still waiting for its use: drop the one wanted latest.
                prot = self.all_slots[ok & ~unprot]
                order = np.argsort(-st.slot_protect[prot], kind="stable")
                out.append(prot[order[:n]])
        if len(out) == 1:
            return out[0]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def layer_step(self, g: int) -> None:
        if g != self.next_g:
            raise ValueError(f"scheduler: layer-step {g} planned out of order (expected {self.next_g})")
        self.next_g += 1
        st, strat, pb, C = self.st, self.strat, self.pb, self.C
        per_item = self.per_item
        self.ctx.now = g
        layer = g % self.L
        strat.observe(g)
        first_compute_of_g = pb.next_compute
        allowed = strat.partition(layer)
        cap = C if allowed is None else np.count_nonzero(allowed)
        where = st.where
        first_load_of_g = pb.next_load
        for item, gids, counts in self.source.groups(g, per_item):
            slots = where[gids]  # fancy indexing: a fresh array, changed in place below
            hit = slots >= 0
            # A hit is stale only in a slot filled at this layer-step (for another item): none before its first load.
            if per_item and pb.next_load > first_load_of_g and hit.any():
                hs = slots[hit]
                stale = (st.slot_fill_ls[hs] == g) & (st.slot_fill_item[hs] != item)
                reload = np.zeros(gids.shape[0], bool)
                reload[np.nonzero(hit)[0][stale]] = True
                if not reload.any():
                    reload = None
            else:
                reload = None
            if gids.shape[0] > cap:
                # More experts than slots: run the group in chunks, residents first.
                order = np.argsort(~hit, kind="stable")
                chunks = [order[i:i + cap] for i in range(0, order.shape[0], cap)]
            else:
                chunks = [None]
            for ch in chunks:
                if ch is None:
                    cg, cc, cs, chit = gids, counts, slots, hit
                else:
                    cg, cc = gids[ch], counts[ch]
                    cs = where[cg]  # fancy indexing: a copy
                    chit = cs >= 0
                miss_idx = (~chit).nonzero()[0]
                if miss_idx.size:
                    pinned = np.zeros(C, bool)
                    pinned[cs[chit]] = True
                    vic = self.victims(cg[miss_idx], pinned, layer, g, True)
                    if vic.shape[0] < miss_idx.size:
                        raise RuntimeError(f"scheduler: layer-step {g} needs {miss_idx.size} slots, "
                                           f"found {vic.shape[0]} (cache {C})")
                    st.place(vic, cg[miss_idx])
                    cs[miss_idx] = vic
                if reload is not None:
                    chit &= ~(reload if ch is None else reload[ch])
                    load_idx = (~chit).nonzero()[0]  # misses and per-item reloads, in gid order
                else:
                    load_idx = miss_idx
                if load_idx.size:
                    ls_slots = cs[load_idx]
                    first = pb.next_load
                    pb.loads(cg[load_idx].tolist(), ls_slots.tolist(), g, st.slot_reader[ls_slots].tolist(), False)
                    st.slot_load[ls_slots] = np.arange(first, first + load_idx.size)
                    st.slot_protect[ls_slots] = -1
                    st.slot_fill_ls[ls_slots] = g
                    st.slot_fill_item[ls_slots] = item
                    strat.on_fill(ls_slots, cg[load_idx], g)
                c = pb.compute(g, item, cg.tolist(), cs.tolist(), st.slot_load[cs].tolist(), cc.tolist(),
                               chit.tolist())
                st.slot_reader[cs] = c
                st.slot_read_ls[cs] = g
                st.slot_protect[cs] = -1
                st.slot_prefetched[cs] = False
                strat.on_use(cs, cg, g)
        self._prefetch(g, layer, first_compute_of_g)

    def _prefetch(self, g: int, layer: int, first_compute_of_g: int) -> None:
        st, strat, pb = self.st, self.strat, self.pb
        prop = strat.prefetch(g)
        if prop is None:
            return
        pg, pt, pcopies = prop
        if pg.shape[0] == 0:
            return
        res = st.where[pg]
        if strat.protect_prefetches:
            rs = res >= 0
            if rs.any():
                st.slot_protect[res[rs]] = np.maximum(st.slot_protect[res[rs]], pt[rs])
        new = res < 0
        if not new.any():
            return
        pg, pt = pg[new], pt[new]
        pcopies = None if pcopies is None else pcopies[new]
        # In use: the experts the COMPUTEs of this layer-step read are still being read while the prefetch would copy;
        # never evict them (the copy would have to wait for the compute, and the link would idle meanwhile).
        in_use = st.slot_reader >= first_compute_of_g
        if strat.partition(0) is None:
            batches = [(pg, pt, pcopies, 0)]
        else:
            lay = pg // self.E
            batches = [(pg[lay == m], pt[lay == m], None if pcopies is None else pcopies[lay == m], int(m))
                       for m in np.unique(lay)]
        for bg, bt, bc, m in batches:
            vic = self.victims(bg, in_use, m, g, False)
            n = vic.shape[0]
            if n == 0:
                continue
            bg, bt = bg[:n], bt[:n]
            ok = strat.admit(bg, bt, vic, g)
            if ok is not None and not ok.all():
                n = int(np.argmin(ok))
                bg, bt, vic = bg[:n], bt[:n], vic[:n]
            if n == 0:
                continue
            st.place(vic, bg)
            waits = st.slot_reader[vic]
            gate = -1 if self.gate_free else g
            first = pb.next_load
            if self.per_item and bc is not None and (bc[:n] > 1).any():
                reps = bc[:n]
                pb.loads(np.repeat(bg, reps).tolist(), np.repeat(vic, reps).tolist(), gate,
                         np.repeat(waits, reps).tolist(), True)
                st.slot_load[vic] = first + np.cumsum(reps) - 1
            else:
                pb.loads(bg.tolist(), vic.tolist(), gate, waits.tolist(), True)
                st.slot_load[vic] = np.arange(first, first + n)
            st.slot_protect[vic] = bt if strat.protect_prefetches else -1
            st.slot_fill_ls[vic] = -1
            st.slot_fill_item[vic] = -1
            st.slot_prefetched[vic] = True
            strat.on_fill(vic, bg, g, bt)

    def finish(self, steps: int, requests: int) -> Plan:
        return self.pb.build(model=self.model, strategy=self.info.name, protocol=self.protocol, cache_experts=self.C,
                             batch=self.B, steps=steps, layers=self.L, requests=requests,
                             resident_at_start=self.resident_at_start,
                             params=dict(self.params, seed=self.seed, per_item_accounting=self.per_item))


def schedule(workload: Workload, info, cache_experts: int, protocol: str = "batched", seed: int = 0,
             requests: Requests | None = None, hardware=None, **params) -> Plan:
    """Plan a whole ``workload`` with the strategy ``info`` (a registry entry) and ``cache_experts`` slots."""
    source = TraceRouting(workload, requests)
    sch = Scheduler(info, source, workload.model, workload.layers, workload.top_k, workload.batch, cache_experts,
                    protocol, seed, hardware, **params)
    for g in range(source.req.layer_steps):
        sch.layer_step(g)
    return sch.finish(workload.steps, source.req.requests)
