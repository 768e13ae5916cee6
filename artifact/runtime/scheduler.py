"""The scheduler: walks a workload's layer-steps with one strategy and one cache size and emits a :class:`Plan`.

Per layer-step ``g`` (layer ``l`` of step ``s``), in host issue order:

1. the strategy observes what the router of ``g`` produced (the routing of ``g``; and the lookahead for ``g + 1``);
2. for each group of ``g`` (the whole batch, or one item under ``per_item``; chunks when a group needs more experts
   than its slots): hits are the experts resident or already loaded ahead; misses get victims chosen by the
   strategy's eviction policy among slots not pinned by the group and not holding a prefetch still awaiting its
   use; demand LOADs are issued, then the COMPUTE;
3. the strategy proposes prefetches (most wanted first); each new one gets a victim (free slots first, then the
   eviction order among slots that are neither protected nor in use, i.e. read by this layer-step's COMPUTEs,
   which are still running while the copy would start), the strategy may refuse the trade
   (``admit``), and a prefetch LOAD is issued. A prefetched expert is protected from eviction by other prefetches
   until the layer-step it was fetched for has run.

A slot's next LOAD waits for the last COMPUTE that read it; loads run in issue order on one link. Decisions depend
only on this logical state (what is resident, in flight, predicted, seen so far), never on a clock, so the simulator
and the engine execute one and the same plan.

Protocols: ``batched`` loads each expert once per layer-step for the whole batch, as every real engine does.
``per_item`` (the seed report's accounting) serves each batch item as if alone: an expert loaded during a
layer-step for one item is loaded again for another item in that layer-step (a fresh copy into the same slot), and a
prefetch predicted by ``n`` items is copied ``n`` times. Experts resident before the layer-step are hits for every
item. Strategies that the seed built batch-aware (``intelligent_dedup``) dedup under both protocols.
"""

from __future__ import annotations

import numpy as np

from artifact.runtime.plan import Plan, PlanBuilder
from artifact.runtime.requests import Requests, build_requests
from artifact.traces.workload import Workload

PROTOCOLS = ("batched", "per_item")
AGED_MIN_WINDOWS = (1, 2, 4)


class FutureAccessError(RuntimeError):
    """A strategy asked for information it could not have at this point of the decode."""


class SchedulerContext:
    """What a strategy may look at. Every accessor checks the clock of the walk: no strategy sees the future
    unless its registry entry says it may (the bounds, and the named predictor arms)."""

    def __init__(self, workload: Workload, req: Requests, cache_experts: int, protocol: str, seed: int,
                 access: str) -> None:
        self.workload = workload
        self.req = req
        self.model = workload.model
        self.L = workload.layers
        self.E = workload.model.experts
        self.K = workload.top_k
        self.B = workload.batch
        self.C = cache_experts
        self.protocol = protocol
        self.seed = seed
        self.access = access  # "past" | "next_layer" | "path" | "future"
        self.now = -1
        self.state: CacheState | None = None
        self._step_starts = workload.step_offsets

    # --- clock checks -------------------------------------------------------------------------------------------
    def _check(self, g: int, what: str, lookahead: bool = False) -> None:
        if g <= self.now or self.access == "future":
            return
        same_step = g // self.L == self.now // self.L
        if g == self.now + 1 and same_step and (lookahead or self.access == "next_layer"):
            return
        raise FutureAccessError(f"{what} of layer-step {g} asked for at layer-step {self.now} "
                                f"(strategy access level {self.access!r})")

    # --- accessors ------------------------------------------------------------------------------------------------
    def unique(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """Unique gids needed by layer-step ``g`` and their token counts (whole batch)."""
        self._check(g, "routing")
        gr = self.req.batched
        p0, p1 = gr.ls_off[g], gr.ls_off[g + 1]
        a, b = gr.grp_off[p0], gr.grp_off[p1]
        return gr.gid[a:b], gr.count[a:b]

    def routing(self, g: int) -> np.ndarray:
        """Per-token expert ids (within the layer) at layer-step ``g``: ``[tokens of the step, K]``."""
        self._check(g, "routing")
        s, l = divmod(g, self.L)
        return self.workload.experts[self._step_starts[s]:self._step_starts[s + 1], l, :]

    def lookahead(self, g: int) -> np.ndarray | None:
        """The trace's lookahead for layer-step ``g`` (made from layer ``l - 1``'s hidden state): ``[tokens, K]``,
        -1 where there is no prediction. Available from layer-step ``g - 1`` on."""
        if self.workload.lookahead is None:
            return None
        self._check(g, "lookahead", lookahead=True)
        s, l = divmod(g, self.L)
        return self.workload.lookahead[self._step_starts[s]:self._step_starts[s + 1], l, :]

    def step_routing(self, s: int) -> np.ndarray:
        """All layers of step ``s``: ``[tokens, L, K]`` (only for strategies with access 'path' or 'future')."""
        if self.access not in ("path", "future"):
            raise FutureAccessError(f"routing of all of step {s} asked for at layer-step {self.now} "
                                    f"(strategy access level {self.access!r})")
        if self.access == "path" and s > self.now // self.L:
            raise FutureAccessError(f"path prediction of step {s} asked for at layer-step {self.now}")
        return self.workload.experts[self._step_starts[s]:self._step_starts[s + 1]]

    def step_meta(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(batch items, sequence ids) of the tokens of step ``s`` (known when the step starts)."""
        if s > self.now // self.L and self.access != "future":
            raise FutureAccessError(f"batch composition of step {s} asked for at layer-step {self.now}")
        a, b = self._step_starts[s], self._step_starts[s + 1]
        return self.workload.item[a:b], self.workload.seq[a:b]


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
        self.n_free -= int((~valid).sum())
        self.slot_gid[slots] = gids
        self.where[gids] = slots


def schedule(workload: Workload, strategy: str, cache_experts: int, protocol: str = "batched", seed: int = 0,
             requests: Requests | None = None, hardware=None, plans: dict | None = None, **params) -> Plan:
    """Plan ``workload`` under ``strategy`` with ``cache_experts`` device slots (``gpu_only`` ignores it).

    ``oracle`` needs the hardware profile it is the floor for (default: the built-in H200 one) and reuses any
    already computed ``plans`` of the other strategies (same workload, cache and protocol) given by name.
    """
    from artifact.policies.registry import get_strategy

    spec = get_strategy(strategy)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    req = requests if requests is not None else build_requests(workload)
    if spec.name == "gpu_only":
        return _gpu_only_plan(workload, req, protocol, spec.batch_aware)
    if spec.name == "oracle":
        return oracle_plan(workload, cache_experts, protocol, seed, req, hardware, plans or {})
    return _schedule(workload, spec, cache_experts, protocol, seed, req, hardware=hardware, **params)


def _schedule(workload: Workload, spec, cache_experts: int, protocol: str, seed: int, req: Requests,
              hardware=None, **params) -> Plan:
    L, E, K = workload.layers, workload.model.experts, workload.top_k
    n_gid = L * E
    if cache_experts < K:
        raise ValueError(f"cache_experts must hold at least one token's top-{K} experts, got {cache_experts}")
    if cache_experts > n_gid:
        raise ValueError(f"cache_experts {cache_experts} exceeds the model's {n_gid} experts; use gpu_only")
    per_item = protocol == "per_item" and not spec.batch_aware
    ctx = SchedulerContext(workload, req, cache_experts, protocol, seed, spec.access)
    if hardware is None:
        from artifact.runtime.hardware import H200 as hardware
    ctx.hardware = hardware  # static facts of the target machine (hardware-aware strategies); never a clock
    st = CacheState(cache_experts, n_gid)
    ctx.state = st
    strat = spec.make(ctx, **params)
    ev = strat.eviction
    gate_free = spec.access == "future"
    protect = strat.protect_prefetches
    pb = PlanBuilder()
    groups = req.groups(per_item)
    all_slots = np.arange(cache_experts)

    def victims(n: int, pinned: np.ndarray, layer: int, g: int, allow_protected: bool) -> np.ndarray:
        """Up to ``n`` slots to (re)fill, in order: free slots first, then the eviction order."""
        allowed = ev.allowed(layer)
        out = []
        if st.n_free:
            free = all_slots[(st.slot_gid < 0) & ~pinned]
            if allowed is not None:
                free = free[allowed[free]]
            out.append(free[:n])
            n -= out[0].shape[0]
        if n > 0:
            ok = (st.slot_gid >= 0) & ~pinned
            if allowed is not None:
                ok &= allowed
            unprot = ok & (st.slot_protect <= g)
            cand = all_slots[unprot]
            pick = ev.choose(cand, n, g)
            out.append(pick)
            n -= pick.shape[0]
            if n > 0 and allow_protected:
                # A demand miss outranks a prefetch still waiting for its use: drop the one wanted latest.
                prot = all_slots[ok & ~unprot]
                order = np.argsort(-st.slot_protect[prot], kind="stable")
                out.append(prot[order[:n]])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    for g in range(req.layer_steps):
        ctx.now = g
        layer = g % L
        strat.observe(g)
        first_compute_of_g = pb.next_compute
        for p in range(groups.ls_off[g], groups.ls_off[g + 1]):
            item = int(groups.grp_item[p])
            a, b = groups.grp_off[p], groups.grp_off[p + 1]
            gids = groups.gid[a:b]
            counts = groups.count[a:b]
            slots = st.where[gids]
            hit = slots >= 0
            if per_item and hit.any():
                hs = slots[hit]
                stale = (st.slot_fill_ls[hs] == g) & (st.slot_fill_item[hs] != item)
                reload = np.zeros(gids.shape[0], bool)
                reload[np.nonzero(hit)[0][stale]] = True
            else:
                reload = None
            allowed = ev.allowed(layer)
            cap = cache_experts if allowed is None else int(allowed.sum())
            if gids.shape[0] > cap:
                # More experts than slots: run the group in chunks, residents first.
                order = np.argsort(~hit, kind="stable")
                chunks = [order[i:i + cap] for i in range(0, order.shape[0], cap)]
            else:
                chunks = [None]
            for ch in chunks:
                cg = gids if ch is None else gids[ch]
                cc = counts if ch is None else counts[ch]
                cs = st.where[cg].copy()
                chit = cs >= 0
                if reload is not None:
                    crel = reload if ch is None else reload[ch]
                    chit &= ~crel
                else:
                    crel = None
                pinned = np.zeros(cache_experts, bool)
                pinned[cs[cs >= 0]] = True
                miss_idx = np.nonzero(cs < 0)[0]
                if miss_idx.size:
                    vic = victims(miss_idx.size, pinned, layer, g, True)
                    if vic.shape[0] < miss_idx.size:
                        raise RuntimeError(f"scheduler: layer-step {g} needs {miss_idx.size} slots, "
                                           f"found {vic.shape[0]} (cache {cache_experts})")
                    mg = cg[miss_idx]
                    st.place(vic, mg)
                    cs[miss_idx] = vic
                load_idx = np.nonzero(~chit)[0]  # misses and per-item reloads, in gid order
                if load_idx.size:
                    ls_slots = cs[load_idx]
                    first = pb.next_load
                    pb.loads(cg[load_idx].tolist(), ls_slots.tolist(), g, st.slot_reader[ls_slots].tolist(), False)
                    st.slot_load[ls_slots] = np.arange(first, first + load_idx.size)
                    st.slot_protect[ls_slots] = -1
                    st.slot_fill_ls[ls_slots] = g
                    st.slot_fill_item[ls_slots] = item
                    ev.on_load(ls_slots, cg[load_idx], g)
                c = pb.compute(g, item, cg.tolist(), cs.tolist(), st.slot_load[cs].tolist(), cc.tolist(),
                               chit.tolist())
                st.slot_reader[cs] = c
                st.slot_read_ls[cs] = g
                st.slot_protect[cs] = -1
                st.slot_prefetched[cs] = False
                ev.on_use(cs, cg, g)
        # Prefetches decided at g.
        prop = strat.prefetch(g)
        if prop is None:
            continue
        pg, pt, pcopies = prop
        if pg.shape[0] == 0:
            continue
        res = st.where[pg]
        if protect:
            rs = res >= 0
            if rs.any():
                st.slot_protect[res[rs]] = np.maximum(st.slot_protect[res[rs]], pt[rs])
        new = res < 0
        if not new.any():
            continue
        pg, pt = pg[new], pt[new]
        pcopies = None if pcopies is None else pcopies[new]
        # In use: the experts the COMPUTEs of this layer-step read are still being read while the prefetch would copy;
        # never evict them (the copy would have to wait for the compute, and the link would idle meanwhile).
        in_use = st.slot_reader >= first_compute_of_g
        if ev.allowed(0) is None:
            batches = [(pg, pt, pcopies, 0)]
        else:
            lay = pg // E
            batches = [(pg[lay == m], pt[lay == m], None if pcopies is None else pcopies[lay == m], int(m))
                       for m in np.unique(lay)]
        for bg, bt, bc, m in batches:
            vic = victims(bg.shape[0], in_use, m, g, False)
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
            gate = -1 if gate_free else g
            if per_item and bc is not None and (bc[:n] > 1).any():
                reps = bc[:n]
                first = pb.next_load
                pb.loads(np.repeat(bg, reps).tolist(), np.repeat(vic, reps).tolist(), gate,
                         np.repeat(waits, reps).tolist(), True)
                st.slot_load[vic] = first + np.cumsum(reps) - 1
            else:
                first = pb.next_load
                pb.loads(bg.tolist(), vic.tolist(), gate, waits.tolist(), True)
                st.slot_load[vic] = np.arange(first, first + n)
            st.slot_protect[vic] = bt if protect else -1
            st.slot_fill_ls[vic] = -1
            st.slot_fill_item[vic] = -1
            st.slot_prefetched[vic] = True
            ev.on_load(vic, bg, g, targets=bt)
    plan = pb.build(model=workload.model, strategy=spec.name, protocol=protocol, cache_experts=cache_experts,
                    batch=workload.batch, steps=workload.steps, layers=L, requests=req.requests,
                    params=dict(params, seed=seed, per_item_accounting=per_item))
    return plan


def oracle_plan(workload: Workload, cache_experts: int, protocol: str, seed: int, req: Requests, hardware,
                plans: dict) -> Plan:
    """The latency floor: the fastest perfect-prefetch plan among
    (1) Belady's MIN loads, each issued as early as its slot allows (fewest bytes; Cao et al.'s "conservative"),
    (2) aggressive prefetching with MIN replacement (Cao et al., SIGMETRICS 1995),
    (3) MIN that spares the experts read in the last ``w`` layer-steps (``w`` in ``AGED_MIN_WINDOWS``): a few
        more loads than MIN, but each slot frees ``w`` layer-steps before its copy is needed, so the hoisted
        copies stream back to back, and
    (4) every registered strategy's own cache decisions, each load issued as early as its slot allows.
    A plan with perfect knowledge could make any of these decisions, and issuing a load earlier never delays
    anything (every constraint is a max of earlier finish times), so no registered strategy is faster than this
    floor on the profile it is chosen for. It is not the true optimum of integrated prefetching and caching;
    ``params['oracle_source']`` names the construction chosen.
    """
    from dataclasses import replace

    from artifact.policies.registry import AGGRESSIVE_MIN, STRATEGIES
    from artifact.runtime.hardware import H200
    from artifact.runtime.simulator import simulate

    hw = hardware if hardware is not None else H200
    cands = {"belady": plans.get("belady") or _schedule(workload, STRATEGIES["belady"], cache_experts, protocol, seed,
                                                        req, hw),
             "aggressive_min": _schedule(workload, AGGRESSIVE_MIN, cache_experts, protocol, seed, req, hw)}
    for window in AGED_MIN_WINDOWS:
        cands[f"aged_min_{window}"] = _schedule(workload, aged_min_spec(window), cache_experts, protocol, seed, req,
                                                hw)
    for name, sp in STRATEGIES.items():
        if sp.bound or (sp.needs_lookahead and workload.lookahead is None):
            continue
        if protocol == "per_item" and sp.batch_aware:
            continue  # dedups under per_item: not the same accounting, so not a candidate for this floor
        if name in plans:
            cands[name] = plans[name]
            continue
        try:
            cands[name] = _schedule(workload, sp, cache_experts, protocol, seed, req, hw)
        except ValueError:  # cannot run at this cache size (e.g. per-layer slots below top-k): not a candidate
            continue
    best, best_ms = None, float("inf")
    t_copy = float(hw.copy_ms(workload.model.expert_bytes))
    # Fewest loads first: a plan whose copies alone (one link, back to back) take longer than the best so far
    # cannot win, and is not simulated.
    for name in sorted(cands, key=lambda n: cands[n].num_loads):
        p = cands[name]
        if p.num_loads * t_copy >= best_ms:
            continue
        h = p if name == "aggressive_min" else hoist_loads(p)
        ms = simulate(h, workload, hw).total_ms
        if ms < best_ms - 1e-9:
            best, best_ms = (name, h), ms
    name, h = best
    return replace(h, strategy="oracle", params=dict(h.params, oracle_source=name, oracle_hardware=hw.name))


def hoist_loads(plan: Plan) -> Plan:
    """Perfect prefetch of a demand plan: the same loads into the same slots, each issued right after the COMPUTE
    that last read its slot (and no earlier than the load before it: the link stays FIFO), waiting on no router.

    Every slot holds at every COMPUTE exactly what it held in the demand plan, so hits, loads and bytes stay those of
    the demand plan (Belady's MIN for the oracle: the fewest loads), while every copy starts as early as its slot
    and the link allow. All loads become prefetches, all uses hits.
    """
    from dataclasses import replace

    before = np.maximum.accumulate(np.maximum(plan.load_wait + 1, 0)).astype(np.int32)
    before = np.minimum(before, plan.load_before)
    return replace(plan, load_gate=np.full_like(plan.load_gate, -1), load_before=before,
                   load_prefetch=np.ones_like(plan.load_prefetch), use_hit=np.ones_like(plan.use_hit))


def _gpu_only_plan(workload: Workload, req: Requests, protocol: str, batch_aware: bool) -> Plan:
    """Every expert resident from the start (slot = gid): no LOADs; one COMPUTE per group."""
    L, E = workload.layers, workload.model.experts
    per_item = protocol == "per_item" and not batch_aware
    groups = req.groups(per_item)
    pb = PlanBuilder()
    n_entries = np.diff(groups.grp_off)
    ls = groups.grp_ls
    for p in range(ls.shape[0]):
        a, b = groups.grp_off[p], groups.grp_off[p + 1]
        gids = groups.gid[a:b]
        pb.compute(int(ls[p]), int(groups.grp_item[p]), gids.tolist(), gids.tolist(), [-1] * int(n_entries[p]),
                   groups.count[a:b].tolist(), [True] * int(n_entries[p]))
    return pb.build(model=workload.model, strategy="gpu_only", protocol=protocol, cache_experts=L * E,
                    batch=workload.batch, steps=workload.steps, layers=L, requests=req.requests,
                    resident_at_start=np.arange(L * E, dtype=np.int32), params={"per_item_accounting": per_item})


def aged_min_spec(window: int):
    from artifact.policies import eviction as ev
    from artifact.policies import predictors as pr
    from artifact.policies.registry import StrategySpec

    return StrategySpec(f"aged_min_{window}", "MIN sparing recently read experts (oracle construction)", "", "none",
                        "Belady MIN, aged", lambda ctx, **p: pr.OnDemand(ctx, ev.AgedBelady(ctx, window)),
                        access="future", bound=True)
