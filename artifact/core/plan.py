"""The plan: a deterministic list of LOAD and COMPUTE operations, stored as flat arrays.

A decode step walks the MoE layers in order; layer ``l`` of step ``s`` is *layer-step* ``g = s * layers + l``.
Each layer-step has one NON-MoE part (attention, norms and the router: it produces the routing that demand loads
wait for) followed by one or more COMPUTE operations (expert FFNs). Under the ``batched`` protocol a layer-step has
one COMPUTE for the whole batch (more only when it needs more experts than there are slots: then it runs in chunks);
under ``per_item`` it has one per batch item.

Host issue order, which both executors follow::

    for g in layer-steps:
        NONMOE(g)
        for each COMPUTE c of g:   LOADs with load_before == c (demand loads of c, in plan order), then COMPUTE(c)
        LOADs issued after g's last COMPUTE (prefetches decided at g) carry load_before == (first COMPUTE of g + 1)

Copies run in plan order on one link (FIFO). A LOAD may not start before
- the NON-MoE part of layer-step ``load_gate`` has finished (the routing or prediction it was decided on exists;
  ``-1`` for the bounds, which know the future), and
- COMPUTE ``load_wait`` (the last one that read the slot) has finished (``-1``: the slot was never read).
A COMPUTE starts when the compute stream is free and every LOAD it reads (``use_load``) has finished.

Expert ids in a plan are *global*: ``gid = layer * experts + expert``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from artifact.models import ModelSpec


class PlanError(ValueError):
    """A plan the engine cannot execute faithfully; the message names the operation and what is wrong."""


@dataclass(frozen=True)
class Plan:
    model: ModelSpec
    strategy: str
    protocol: str
    cache_experts: int
    batch: int
    steps: int
    layers: int
    # LOADs, in issue order = order on the copy link.                                          [N]
    load_gid: np.ndarray  # int32: global expert id
    load_slot: np.ndarray  # int32: device slot it is copied into
    load_gate: np.ndarray  # int32: layer-step whose NON-MoE part must have finished; -1 none
    load_wait: np.ndarray  # int32: COMPUTE that last read the slot; -1 none
    load_before: np.ndarray  # int32: COMPUTE before which the host issues it (M = after the last)
    load_prefetch: np.ndarray  # bool: a prefetch (True) or a demand load (False)
    # COMPUTEs, in issue order.                                                                [M]
    comp_ls: np.ndarray  # int32: layer-step
    comp_item: np.ndarray  # int32: batch item it serves (per_item), -1 = every item of the layer-step
    comp_offsets: np.ndarray  # int64 [M + 1]: its uses are use_*[comp_offsets[c]:comp_offsets[c + 1]]
    # Uses: one per (COMPUTE, expert).                                                         [U]
    use_gid: np.ndarray  # int32
    use_slot: np.ndarray  # int32
    use_load: np.ndarray  # int32: the LOAD that put this expert in this slot; -1 = resident from the start
    use_tokens: np.ndarray  # int32: tokens routed to this expert in this COMPUTE
    use_hit: np.ndarray  # bool: resident (or loaded ahead) when the COMPUTE was decided, i.e. no demand load
    # Accounting the executors cannot derive from the arrays above.
    requests: int = 0  # token-expert pairs
    resident_at_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # gids preloaded
    params: dict = field(default_factory=dict)

    @property
    def num_loads(self) -> int:
        return int(self.load_gid.shape[0])

    @property
    def num_computes(self) -> int:
        return int(self.comp_ls.shape[0])

    @property
    def layer_steps(self) -> int:
        return self.steps * self.layers

    def uses(self, c: int) -> slice:
        return slice(int(self.comp_offsets[c]), int(self.comp_offsets[c + 1]))


class PlanBuilder:
    """Appends operations in issue order; ``build`` freezes them into arrays."""

    def __init__(self) -> None:
        self.load_gid: list[int] = []
        self.load_slot: list[int] = []
        self.load_gate: list[int] = []
        self.load_wait: list[int] = []
        self.load_before: list[int] = []
        self.load_prefetch: list[bool] = []
        self.comp_ls: list[int] = []
        self.comp_item: list[int] = []
        self.comp_offsets: list[int] = [0]
        self.use_gid: list[int] = []
        self.use_slot: list[int] = []
        self.use_load: list[int] = []
        self.use_tokens: list[int] = []
        self.use_hit: list[bool] = []

    @property
    def next_compute(self) -> int:
        return len(self.comp_ls)

    @property
    def next_load(self) -> int:
        return len(self.load_gid)

    def load(self, gid: int, slot: int, gate: int, wait: int, prefetch: bool) -> int:
        self.load_gid.append(gid)
        self.load_slot.append(slot)
        self.load_gate.append(gate)
        self.load_wait.append(wait)
        self.load_before.append(len(self.comp_ls))
        self.load_prefetch.append(prefetch)
        return len(self.load_gid) - 1

    def loads(self, gids, slots, gate: int, waits, prefetch: bool) -> None:
        n = len(gids)
        self.load_gid.extend(gids)
        self.load_slot.extend(slots)
        self.load_gate.extend([gate] * n)
        self.load_wait.extend(waits)
        self.load_before.extend([len(self.comp_ls)] * n)
        self.load_prefetch.extend([prefetch] * n)

    def compute(self, ls: int, item: int, gids, slots, loads, tokens, hits) -> int:
        self.comp_ls.append(ls)
        self.comp_item.append(item)
        self.use_gid.extend(gids)
        self.use_slot.extend(slots)
        self.use_load.extend(loads)
        self.use_tokens.extend(tokens)
        self.use_hit.extend(hits)
        self.comp_offsets.append(len(self.use_gid))
        return len(self.comp_ls) - 1

    def build(self, **meta) -> Plan:
        i32 = np.int32
        return Plan(
            load_gid=np.asarray(self.load_gid, i32), load_slot=np.asarray(self.load_slot, i32),
            load_gate=np.asarray(self.load_gate, i32), load_wait=np.asarray(self.load_wait, i32),
            load_before=np.asarray(self.load_before, i32), load_prefetch=np.asarray(self.load_prefetch, bool),
            comp_ls=np.asarray(self.comp_ls, i32), comp_item=np.asarray(self.comp_item, i32),
            comp_offsets=np.asarray(self.comp_offsets, np.int64), use_gid=np.asarray(self.use_gid, i32),
            use_slot=np.asarray(self.use_slot, i32), use_load=np.asarray(self.use_load, i32),
            use_tokens=np.asarray(self.use_tokens, i32), use_hit=np.asarray(self.use_hit, bool), **meta)


def check_structure(plan: Plan) -> None:
    """What the engine's issue loop relies on even when dependencies are not checked: operations in issue order."""
    M, N = plan.num_computes, plan.num_loads
    lb = plan.load_before.astype(np.int64)
    if N and (np.any(np.diff(lb) < 0) or lb.min() < 0 or lb.max() > M):
        raise PlanError(f"plan {plan.strategy}: load_before must be non-decreasing in 0..{M} (issue order)")
    if M and np.any(np.diff(plan.comp_ls) < 0):
        c = int(np.nonzero(np.diff(plan.comp_ls) < 0)[0][0]) + 1
        raise PlanError(f"plan {plan.strategy}: COMPUTE {c} is at layer-step {int(plan.comp_ls[c])} after "
                        f"layer-step {int(plan.comp_ls[c - 1])}: computes must be in layer-step order")
    if plan.comp_offsets.shape[0] != M + 1 or plan.comp_offsets[-1] != plan.use_gid.shape[0]:
        raise PlanError(f"plan {plan.strategy}: comp_offsets must have {M + 1} entries ending at the "
                        f"{plan.use_gid.shape[0]} uses")


def check_plan(plan: Plan) -> None:
    """Static checks that the plan's dependencies make every COMPUTE read the expert it names.

    Raises :class:`PlanError` when
    - a use's slot/gid differs from its LOAD's, or a resident use names a gid not preloaded in that slot;
    - a use's LOAD is issued after its COMPUTE, or a LOAD waits for a COMPUTE issued after it;
    - a LOAD into a slot is issued after the LOAD a COMPUTE reads and before that COMPUTE (it overwrites the expert
      before it is read);
    - a LOAD into a slot does not wait for the last COMPUTE issued before it that read the slot (it may overwrite
      the weights while they are read: a race the synchronous CPU would never show).
    """
    check_structure(plan)
    M, N = plan.num_computes, plan.num_loads
    lb = plan.load_before.astype(np.int64)
    bad = np.nonzero(plan.load_wait >= lb)[0]
    if bad.size:
        n = int(bad[0])
        raise PlanError(f"plan {plan.strategy}: LOAD {n} waits for COMPUTE {int(plan.load_wait[n])}, which is issued "
                        f"after it (load_before {int(lb[n])})")
    resident = plan.resident_at_start
    comp_of_use = np.repeat(np.arange(M), np.diff(plan.comp_offsets))  # [U]
    # Per slot, the LOADs into it in plan order: the next one after a given load.
    next_same_slot = np.full(N, -1, np.int64)
    first_in_slot: dict[int, int] = {}
    last_in_slot: dict[int, int] = {}
    for n in range(N):
        s = int(plan.load_slot[n])
        if s in last_in_slot:
            next_same_slot[last_in_slot[s]] = n
        else:
            first_in_slot[s] = n
        last_in_slot[s] = n
    for u in range(plan.use_gid.shape[0]):
        c = int(comp_of_use[u])
        s, gid, n = int(plan.use_slot[u]), int(plan.use_gid[u]), int(plan.use_load[u])
        if n >= 0:
            if n >= N:
                raise PlanError(f"plan {plan.strategy}: COMPUTE {c} reads LOAD {n}, but the plan has {N} loads")
            if int(plan.load_slot[n]) != s or int(plan.load_gid[n]) != gid:
                raise PlanError(f"plan {plan.strategy}: COMPUTE {c} reads gid {gid} from slot {s} via LOAD {n}, which "
                                f"copies gid {int(plan.load_gid[n])} into slot {int(plan.load_slot[n])}")
            if lb[n] > c:
                raise PlanError(f"plan {plan.strategy}: COMPUTE {c} reads LOAD {n}, issued after it "
                                f"(load_before {int(lb[n])})")
            nxt = int(next_same_slot[n])
        else:
            if s >= resident.shape[0] or int(resident[s]) != gid:
                held = int(resident[s]) if s < resident.shape[0] else None
                raise PlanError(f"plan {plan.strategy}: COMPUTE {c} reads gid {gid} from slot {s} as resident from "
                                f"the start, but resident_at_start puts {held} there")
            nxt = first_in_slot.get(s, -1)
        if nxt >= 0 and lb[nxt] <= c:
            raise PlanError(f"plan {plan.strategy}: LOAD {nxt} copies gid {int(plan.load_gid[nxt])} into slot {s} "
                            f"before COMPUTE {c} reads gid {gid} from it (overwrite before use)")
    # Every LOAD waits for the last COMPUTE issued before it that read its slot.
    order = np.lexsort((comp_of_use, plan.use_slot))
    r_slot = plan.use_slot[order].astype(np.int64)
    r_comp = comp_of_use[order]
    for n in range(N):
        s = int(plan.load_slot[n])
        a, b = np.searchsorted(r_slot, s, "left"), np.searchsorted(r_slot, s, "right")
        k = np.searchsorted(r_comp[a:b], lb[n], "left")  # readers issued before the load
        if k > 0:
            last = int(r_comp[a + k - 1])
            if int(plan.load_wait[n]) < last:
                raise PlanError(f"plan {plan.strategy}: LOAD {n} into slot {s} waits for COMPUTE "
                                f"{int(plan.load_wait[n])} but COMPUTE {last} read that slot before it (race)")
