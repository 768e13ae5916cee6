"""Everything a run of one (plan, workload) needs, checked and built before timing.

``prepare_run`` validates the plan against the workload and the engine, then builds, in named steps:

1. ``token_rows``: the token rows (and gates) each use of each COMPUTE reads, in slot order within the COMPUTE,
   with the check that every (token, layer, k) is computed exactly once;
2. ``build_work``: one device allocation each for the rows and gates, the kernels' staging buffers, and per COMPUTE
   the work items :meth:`~artifact.engine.kernels.ExpertKernels.run` launches (views only);
3. ``issue_order``: which LOADs the host issues before each layer-step's NON-MoE op, which right before each
   COMPUTE, which after the last one (the host issue order of plan.py);
4. ``dependencies``: the one event each LOAD and each COMPUTE waits on, if any.

LOADs that the plan issues after a layer-step's last COMPUTE (prefetches; their ``load_before`` is the next
layer-step's first COMPUTE and their gate is an earlier layer-step) are issued before that next layer-step's NON-MoE
op; demand loads, gated on their own layer-step's NON-MoE, right before their COMPUTE. Because each stream runs in
order, one wait on the latest event covers the earlier ones, so each op waits on at most one event and only when that
event is newer than what its stream already waited for (the same partial order, fewer API calls).

All index and gate tensors are prepared for the whole plan here: no ``.item()``, ``nonzero`` or host sync inside a
step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from artifact.core.plan import Plan, PlanError, check_plan, check_structure
from artifact.core.workload import Workload
from artifact.engine.kernels import ExpertKernels, chunk_slots
from artifact.engine.reference import make_inputs, token_gates
from artifact.engine.weights import shape_difference
from artifact.models import ModelSpec

if TYPE_CHECKING:
    from artifact.engine.executor import OffloadEngine


@dataclass
class PreparedRun:
    """Everything a run of one (plan, workload) needs, built before timing."""

    plan: Plan
    workload: Workload
    T: int  # tokens the plan covers
    G: int  # layer-steps
    out: torch.Tensor  # [T, D] residual stream = outputs
    x: torch.Tensor  # [T, D] experts' input of the current layer
    inputs: torch.Tensor  # [T, D] layer-0 hidden states (device, engine dtype)
    load_dst: list  # per LOAD: device slot view [numel]
    load_src: list  # per LOAD: pinned host view [numel]
    work: list  # per COMPUTE: list of work items
    work_uses: list  # per COMPUTE: uses (experts with tokens) its work items run
    nm_args: list  # per layer-step: (h view, x view, Wn^T)
    comp_range: np.ndarray  # [G + 1]: computes of layer-step g are comp_range[g]:comp_range[g + 1]
    early: list  # per layer-step: (lo, hi) LOADs issued before its NON-MoE op
    late: list  # per COMPUTE: (lo, hi) LOADs issued right before it
    trailing: tuple  # LOADs issued after the last COMPUTE
    load_wait_pos: np.ndarray  # [N]: compute-stream position a LOAD waits on, -1 none
    comp_wait_load: np.ndarray  # [M]: LOAD a COMPUTE waits on, -1 none
    pos_nonmoe: np.ndarray  # [G]
    pos_comp: np.ndarray  # [M]
    reset_resident: bool  # a LOAD overwrites a preloaded slot: reload them before each repeat
    given_inputs: torch.Tensor | None = None
    programs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TokenRows:
    """The token rows every use reads, concatenated use after use (uses of a COMPUTE in slot order)."""

    rows: np.ndarray  # int64 [R]: token row of each entry
    gates: np.ndarray  # float32 [R]: its gate weight
    use_order: np.ndarray  # int64 [U]: uses of each COMPUTE sorted by slot
    use_rows_off: np.ndarray  # int64 [U + 1]: rows of use use_order[i] are rows[off[i]:off[i + 1]]


@dataclass(frozen=True)
class IssueOrder:
    """Where each LOAD goes in the host's issue order (plan.py)."""

    comp_range: np.ndarray  # int64 [G + 1]
    early: list  # per layer-step: (lo, hi) LOADs issued before its NON-MoE op
    late: list  # per COMPUTE: (lo, hi) LOADs issued right before it
    trailing: tuple  # (lo, hi) LOADs issued after the last COMPUTE


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------


def check_run(plan: Plan, workload: Workload, model: ModelSpec, cache_experts: int, check: bool) -> None:
    """Refuse a plan this engine cannot run on this workload (``PlanError`` naming the field and value).

    ``check`` adds the full :func:`check_plan` (dependencies, races); without it only the structure is checked.
    """
    L, E = model.moe_layers, model.experts
    for what, spec in (("plan", plan.model), ("workload", workload.model)):
        diff = shape_difference(model, spec)
        if diff:
            raise PlanError(f"engine: {what} model {spec.name} differs from the engine's {model.name} ({diff})")
    if plan.layers != L or workload.layers != L:
        raise PlanError(f"engine: plan has {plan.layers} layers, workload {workload.layers}, engine {L}")
    if plan.steps > workload.steps:
        raise PlanError(f"engine: plan covers {plan.steps} steps, workload has only {workload.steps}")
    if plan.cache_experts > cache_experts:
        raise PlanError(f"engine: plan {plan.strategy} needs {plan.cache_experts} slots, the engine has "
                        f"{cache_experts}; build OffloadEngine(..., cache_experts={plan.cache_experts})")
    for name, arr in (("load_slot", plan.load_slot), ("use_slot", plan.use_slot)):
        if arr.size and (arr.min() < 0 or arr.max() >= cache_experts):
            raise PlanError(f"engine: plan {plan.strategy} {name} out of range 0..{cache_experts - 1}")
    for name, arr in (("load_gid", plan.load_gid), ("use_gid", plan.use_gid),
                      ("resident_at_start", plan.resident_at_start)):
        if arr.size and (arr.min() < 0 or arr.max() >= L * E):
            raise PlanError(f"engine: plan {plan.strategy} {name} out of range 0..{L * E - 1}")
    if plan.resident_at_start.shape[0] > cache_experts:
        raise PlanError(f"engine: plan preloads {plan.resident_at_start.shape[0]} experts into "
                        f"{cache_experts} slots")
    G = plan.steps * L
    if plan.num_computes and (plan.comp_ls.min() < 0 or plan.comp_ls.max() >= G):
        raise PlanError(f"engine: plan {plan.strategy} has a COMPUTE outside layer-steps 0..{G - 1}")
    if check:
        check_plan(plan)
    else:
        check_structure(plan)
    _check_gates(plan, G)


def _check_gates(plan: Plan, G: int) -> None:
    """A LOAD must be issued after the NON-MoE op it is gated on (before it, the routing would not exist)."""
    N, M = plan.num_loads, plan.num_computes
    bad = np.nonzero(plan.load_gate >= G)[0]
    if bad.size:
        raise PlanError(f"engine: LOAD {int(bad[0])} is gated on layer-step {int(plan.load_gate[bad[0]])} "
                        f"beyond the plan's {G}")
    lb = plan.load_before.astype(np.int64)
    issue_ls = np.full(N, G - 1, np.int64)  # [N]: layer-step whose COMPUTE a LOAD is issued before
    before_comp = lb < M
    issue_ls[before_comp] = plan.comp_ls.astype(np.int64)[lb[before_comp]]
    late_gate = plan.load_gate > issue_ls
    if late_gate.any():
        n = int(np.nonzero(late_gate)[0][0])
        raise PlanError(f"engine: LOAD {n} is gated on the NON-MoE op of layer-step {int(plan.load_gate[n])} "
                        f"but issued before layer-step {int(issue_ls[n])} runs (the routing would not exist)")


# --------------------------------------------------------------------------------------------------------------
# 1. Token rows of every use
# --------------------------------------------------------------------------------------------------------------


def token_rows(plan: Plan, workload: Workload, check: bool) -> TokenRows:
    """The token rows and gates each use reads, uses of each COMPUTE in slot order; with ``check``, every
    (token, layer, k) of the plan's steps must be computed exactly once."""
    L, E, K = workload.layers, workload.model.experts, workload.top_k
    M, U = plan.num_computes, int(plan.use_gid.shape[0])
    T = int(workload.step_offsets[plan.steps])
    gates_np = token_gates(workload)
    comp_ls = plan.comp_ls.astype(np.int64)
    rows_parts, gate_parts = [], []
    use_order = np.empty(U, np.int64)
    use_rows_off = np.zeros(U + 1, np.int64)
    cover = np.zeros((T, L, K), np.int32)
    pos = 0
    for c in range(M):
        u0, u1 = int(plan.comp_offsets[c]), int(plan.comp_offsets[c + 1])
        s, layer = divmod(int(comp_ls[c]), L)
        a, b = int(workload.step_offsets[s]), int(workload.step_offsets[s + 1])
        rows = np.arange(a, b)
        item = int(plan.comp_item[c])
        if item >= 0:
            rows = rows[workload.item[a:b] == item]
        ex = workload.experts[rows, layer, :].astype(np.int64).ravel()  # [n * K]
        flat_t = np.repeat(rows, K)
        flat_k = np.tile(np.arange(K), rows.shape[0])
        order = np.argsort(ex, kind="stable")
        se = ex[order]
        slots = plan.use_slot[u0:u1].astype(np.int64)
        srt = np.argsort(slots, kind="stable")
        dup = np.nonzero(np.diff(slots[srt]) == 0)[0]
        if dup.size:
            raise PlanError(f"engine: COMPUTE {c} uses slot {int(slots[srt][dup[0]])} for two experts")
        use_order[u0:u1] = u0 + srt
        e_of_use = plan.use_gid[u0:u1].astype(np.int64) - layer * E
        if np.any((e_of_use < 0) | (e_of_use >= E)):
            i = int(np.nonzero((e_of_use < 0) | (e_of_use >= E))[0][0])
            raise PlanError(f"engine: COMPUTE {c} (layer {layer}) uses gid {int(plan.use_gid[u0 + i])}, "
                            f"which is not an expert of layer {layer}")
        lo = np.searchsorted(se, e_of_use, "left")
        hi = np.searchsorted(se, e_of_use, "right")
        cnt = hi - lo
        wrong = np.nonzero(cnt != plan.use_tokens[u0:u1])[0]
        if wrong.size:
            i = int(wrong[0])
            raise PlanError(f"engine: COMPUTE {c} (step {s}, layer {layer}, item {item}): expert "
                            f"{int(e_of_use[i])} gets {int(cnt[i])} tokens in the workload but "
                            f"{int(plan.use_tokens[u0 + i])} in the plan")
        for i, j in enumerate(srt):
            sel = order[lo[j]:hi[j]]  # entries routed to this expert, in token order
            t_rows, t_k = flat_t[sel], flat_k[sel]
            rows_parts.append(t_rows)
            gate_parts.append(gates_np[t_rows, layer, t_k])
            cover[t_rows, layer, t_k] += 1
            pos += t_rows.shape[0]
            use_rows_off[u0 + i + 1] = pos
    if check and T:
        _check_coverage(plan, workload, cover)
    rows_np = np.concatenate(rows_parts) if rows_parts else np.zeros(0, np.int64)
    gates_all = np.concatenate(gate_parts) if gate_parts else np.zeros(0, np.float32)
    return TokenRows(rows_np.astype(np.int64), gates_all.astype(np.float32), use_order, use_rows_off)


def _check_coverage(plan: Plan, workload: Workload, cover: np.ndarray) -> None:
    T = cover.shape[0]
    if plan.num_computes == 0:
        raise PlanError(f"engine: plan {plan.strategy} has no COMPUTE for {T} tokens")
    bad = np.argwhere(cover != 1)
    if bad.size:
        t, layer, k = (int(v) for v in bad[0])
        s = int(np.searchsorted(workload.step_offsets, t, "right") - 1)
        raise PlanError(f"engine: plan {plan.strategy}: token {t} (step {s}) expert "
                        f"{int(workload.experts[t, layer, k])} at layer {layer} is computed "
                        f"{int(cover[t, layer, k])} times (must be once)")


# --------------------------------------------------------------------------------------------------------------
# 2. Work items of every COMPUTE
# --------------------------------------------------------------------------------------------------------------


def build_work(kernels: ExpertKernels, plan: Plan, tr: TokenRows) -> tuple[list[list], list[int]]:
    """Per COMPUTE, the work items the kernels launch (views of one rows and one gate tensor on the device), and
    the number of uses those items run. Sizes the kernels' staging buffers for the largest COMPUTE."""
    M = plan.num_computes
    grouped = kernels.path == "grouped"
    rows_t = torch.from_numpy(tr.rows).to(kernels.device)  # [R]
    gate_t = torch.from_numpy(tr.gates).to(kernels.device, kernels.dtype).unsqueeze(1)  # [R, 1]
    off = tr.use_rows_off
    max_rows = 0
    offs_np: list[np.ndarray] = []
    chunk_specs: list[list] = []
    for c in range(M):
        u0, u1 = int(plan.comp_offsets[c]), int(plan.comp_offsets[c + 1])
        if grouped:
            max_rows = max(max_rows, int(off[u1] - off[u0]))  # staged per COMPUTE
            uo = tr.use_order[u0:u1]
            slots_sorted = plan.use_slot[uo].astype(np.int64)
            counts = np.diff(off[u0:u1 + 1])
            nz = counts > 0  # experts without tokens launch nothing
            idx = np.nonzero(nz)[0]
            specs = []
            for (i, j, slo, shi, offs) in chunk_slots(slots_sorted[nz], counts[nz]):
                ra, rb = int(off[u0 + idx[i]]), int(off[u0 + idx[j - 1] + 1])
                specs.append((ra, rb, slo, shi, len(offs_np), j - i))
                offs_np.append(offs)
            chunk_specs.append(specs)
        elif u1 > u0:
            max_rows = max(max_rows, int(plan.use_tokens[u0:u1].max()))  # staged per expert
    kernels.ensure_capacity(max(max_rows, 1))
    work: list[list] = []
    uses: list[int] = []
    if grouped:
        offs_off = np.concatenate([[0], np.cumsum([o.shape[0] for o in offs_np])]).astype(np.int64)
        offs_t = torch.from_numpy(np.concatenate(offs_np) if offs_np else np.zeros(0, np.int32)).to(kernels.device)
        for c in range(M):
            work.append([kernels.chunk_work(rows_t[ra:rb], gate_t[ra:rb], slo, shi,
                                            offs_t[offs_off[k]:offs_off[k + 1]])
                         for (ra, rb, slo, shi, k, _n) in chunk_specs[c]])
            uses.append(sum(n for *_, n in chunk_specs[c]))
        return work, uses
    for c in range(M):
        u0, u1 = int(plan.comp_offsets[c]), int(plan.comp_offsets[c + 1])
        items = []
        for i in range(u0, u1):
            ra, rb = int(off[i]), int(off[i + 1])
            if rb > ra:
                items.append(kernels.use_work(rows_t[ra:rb], gate_t[ra:rb], int(plan.use_slot[tr.use_order[i]])))
        work.append(items)
        uses.append(len(items))
    return work, uses


# --------------------------------------------------------------------------------------------------------------
# 3. Host issue order and 4. dependencies
# --------------------------------------------------------------------------------------------------------------


def issue_order(plan: Plan, G: int) -> IssueOrder:
    """Split the LOADs into those issued before each layer-step's NON-MoE op (the longest prefix decided before
    that layer-step), those right before each COMPUTE, and those after the last COMPUTE."""
    M = plan.num_computes
    lb = plan.load_before.astype(np.int64)
    comp_ls = plan.comp_ls.astype(np.int64)
    comp_range = np.searchsorted(comp_ls, np.arange(G + 1), "left").astype(np.int64)  # [G + 1]
    load_lo = np.searchsorted(lb, np.arange(M + 1), "left")
    load_hi = np.searchsorted(lb, np.arange(M + 1), "right")
    early = [(0, 0)] * G
    late = []
    for c in range(M):
        lo, hi = int(load_lo[c]), int(load_hi[c])
        g = int(comp_ls[c])
        if c == comp_range[g]:
            k = lo
            while k < hi and plan.load_gate[k] < g:
                k += 1
            early[g] = (lo, k)
            lo = k
        late.append((lo, hi))
    return IssueOrder(comp_range, early, late, (int(load_lo[M]), int(load_hi[M])))


def dependencies(plan: Plan, comp_range: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(pos_nonmoe [G], pos_comp [M], load_wait_pos [N], comp_wait_load [M])``: compute-stream positions in issue
    order, the compute-stream position each LOAD waits on and the LOAD each COMPUTE waits on (-1: no wait, an
    earlier wait of the same stream covers it)."""
    N, M = plan.num_loads, plan.num_computes
    G = comp_range.shape[0] - 1
    comp_ls = plan.comp_ls.astype(np.int64)
    # NON-MoE(g) precedes the computes of g on the compute stream.
    pos_nonmoe = np.arange(G) + comp_range[:G]
    pos_comp = comp_ls + 1 + np.arange(M)
    # The compute-stream position each LOAD must wait for: its slot's last reader or its gate, the later one.
    need = np.full(N, -1, np.int64)
    w = plan.load_wait.astype(np.int64)
    gt = plan.load_gate.astype(np.int64)
    need[w >= 0] = pos_comp[w[w >= 0]]
    need[gt >= 0] = np.maximum(need[gt >= 0], pos_nonmoe[gt[gt >= 0]])
    load_wait_pos = np.full(N, -1, np.int64)
    waited = -1
    for n in range(N):
        if need[n] > waited:
            load_wait_pos[n] = need[n]
            waited = int(need[n])
    comp_wait_load = np.full(M, -1, np.int64)
    waited = -1
    for c in range(M):
        u0, u1 = int(plan.comp_offsets[c]), int(plan.comp_offsets[c + 1])
        mx = int(plan.use_load[u0:u1].max()) if u1 > u0 else -1
        if mx > waited:
            comp_wait_load[c] = mx
            waited = mx
    return pos_nonmoe, pos_comp, load_wait_pos, comp_wait_load


# --------------------------------------------------------------------------------------------------------------
# All of it
# --------------------------------------------------------------------------------------------------------------


def prepare_run(engine: OffloadEngine, plan: Plan, workload: Workload, inputs: torch.Tensor | None,
                check: bool) -> PreparedRun:
    """Validate ``plan`` on ``workload`` for ``engine`` and build every tensor and list a run needs."""
    m = engine.model
    check_run(plan, workload, m, engine.cache_experts, check)
    L, D = m.moe_layers, m.d_model
    G = plan.steps * L
    T = int(workload.step_offsets[plan.steps])
    work, work_uses = build_work(engine.kernels, plan, token_rows(plan, workload, check))
    dev, dt = engine.device, engine.dtype
    out = torch.empty(T, D, device=dev, dtype=dt)  # [T, D]
    x = torch.empty(T, D, device=dev, dtype=dt)  # [T, D]
    given_inputs = inputs
    if inputs is None:
        inputs = make_inputs(workload.num_tokens, D, engine.input_seed)
    if inputs.shape[0] < T or inputs.shape[1] != D:
        raise PlanError(f"engine: inputs have shape {list(inputs.shape)}, need at least [{T}, {D}]")
    inputs_dev = inputs[:T].to(dev, dt)
    nm_args = []
    for g in range(G):
        s, layer = divmod(g, L)
        a, b = int(workload.step_offsets[s]), int(workload.step_offsets[s + 1])
        nm_args.append((out[a:b], x[a:b], engine.wn_t[layer]))
    order = issue_order(plan, G)
    pos_nonmoe, pos_comp, load_wait_pos, comp_wait_load = dependencies(plan, order.comp_range)
    resident = plan.resident_at_start
    reset = bool(resident.shape[0] and plan.num_loads and (plan.load_slot < resident.shape[0]).any())
    host = engine.weights.host
    return PreparedRun(plan, workload, T, G, out, x, inputs_dev,
                       [engine.slab[int(s)] for s in plan.load_slot], [host[int(gd)] for gd in plan.load_gid],
                       work, work_uses, nm_args, order.comp_range, order.early, order.late, order.trailing,
                       load_wait_pos, comp_wait_load, pos_nonmoe, pos_comp, reset, given_inputs)
