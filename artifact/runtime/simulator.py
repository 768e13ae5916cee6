"""The simulator: times a plan on two device resources, one host-to-device link and one compute stream, plus the
host thread that issues them.

It follows the engine's host issue order (see ``plan.py`` and ``engine.py``) in one pass. For layer-step ``g``:
the LOADs decided at an earlier layer-step that are due before ``g``'s first COMPUTE (prefetches) are issued
first, then ``g``'s NON-MoE part, then for each COMPUTE its remaining LOADs and the COMPUTE itself.

- Host: each operation costs ``host_issue_us`` of host time (zero in profiles without it: the host runs ahead); a
  device operation cannot start before the host has issued it.
- NON-MoE part of layer-step ``g``: starts when the compute stream is free; lasts ``nonmoe_ms(tokens of the step)``.
- LOAD: starts when the link is free, the NON-MoE part of its gate layer-step has finished, and the COMPUTE that
  last read its slot has finished; lasts ``copy_ms(expert bytes)``.
- COMPUTE: starts when the stream is free and every LOAD it reads has finished; lasts
  ``compute_ms(experts it runs, tokens it runs)``.
- A wait across the streams (a LOAD on the compute stream's op it waits for, a COMPUTE on its last LOAD) adds
  ``dependency_us``: the dependent operation starts that long after the one it waits on ends (the engine waits on
  one event per operation, recorded after the latest op it needs).
"""

from __future__ import annotations

import numpy as np

from artifact.core.plan import Plan
from artifact.core.timeline import Timeline
from artifact.core.workload import Workload
from artifact.runtime.hardware import HardwareProfile


def simulate(plan: Plan, workload: Workload, hw: HardwareProfile, expert_bytes: int | None = None) -> Timeline:
    L = plan.layers
    G = plan.layer_steps
    nbytes = plan.model.expert_bytes if expert_bytes is None else expert_bytes
    t_copy = float(hw.copy_ms(nbytes))
    tps = workload.tokens_per_step
    t_nonmoe = hw.nonmoe_ms(np.repeat(tps, L), plan.model.name).tolist()  # [G]
    c_off = plan.comp_offsets
    n_exp = np.diff(c_off)
    if plan.use_tokens.size:
        tok = np.add.reduceat(plan.use_tokens.astype(float), c_off[:-1])
        t_comp = np.where(n_exp > 0, hw.compute_ms(plan.model.name, n_exp, tok), 0.0).tolist()
    else:
        t_comp = [0.0] * plan.num_computes
    host = hw.host_issue_us
    dep = hw.dependency_us / 1e3
    h_nonmoe = host.get("nonmoe_us", 0.0) / 1e3
    h_load = host.get("load_us", 0.0) / 1e3
    h_comp = ((host.get("compute_us", 0.0) + host.get("use_us", 0.0) * n_exp) / 1e3).tolist()
    # The last LOAD each COMPUTE reads (loads finish in issue order on the FIFO link, so the latest index suffices).
    if plan.use_load.size:
        need = np.maximum.reduceat(plan.use_load, c_off[:-1]).tolist()
    else:
        need = [-1] * plan.num_computes
    M, N = plan.num_computes, plan.num_loads
    comp_ls = plan.comp_ls.tolist()
    gate = plan.load_gate.tolist()
    wait = plan.load_wait.tolist()
    before = plan.load_before.tolist()
    ls_start = [0.0] * G
    ls_end = [0.0] * G
    cs = [0.0] * M
    ce = [0.0] * M
    ready = [0.0] * M
    lstart = [0.0] * N
    lend = [0.0] * N
    stream = 0.0
    link = 0.0
    hclock = 0.0
    li = 0
    next_g = 0
    # One pass in host issue order. Before COMPUTE c (and, with c = M, after the last): the NON-MoE parts up to its
    # layer-step, each preceded by the LOADs decided earlier that are due before that layer-step's first COMPUTE,
    # then the LOADs due before c (with c = M: every LOAD left). The ops are written out in the loop, not in nested
    # functions: a call per LOAD would cost more than its arithmetic.
    for c in range(M + 1):
        g_to = comp_ls[c] if c < M else G - 1
        while True:
            if next_g <= g_to:
                is_load = next_g == g_to and li < N and before[li] <= c and gate[li] < g_to
            elif li < N and (c == M or before[li] <= c):
                is_load = True
            else:
                break
            if is_load:  # starts when the link and the host are ready, and dep after the compute-stream op it waits on
                hclock += h_load
                st = link if link > hclock else hclock
                gl, w = gate[li], wait[li]
                if gl >= 0 or w >= 0:
                    after = ls_end[gl] if gl >= 0 else 0.0
                    if w >= 0 and ce[w] > after:
                        after = ce[w]
                    after += dep
                    if after > st:
                        st = after
                lstart[li] = st
                link = st + t_copy
                lend[li] = link
                li += 1
            else:
                hclock += h_nonmoe
                st = stream if stream > hclock else hclock
                ls_start[next_g] = st
                stream = st + t_nonmoe[next_g]
                ls_end[next_g] = stream
                next_g += 1
        if c == M:
            break
        hclock += h_comp[c]
        st = stream if stream > hclock else hclock
        ready[c] = st
        n = need[c]
        if n >= 0 and lend[n] + dep > st:
            st = lend[n] + dep
        cs[c] = st
        stream = st + t_comp[c]
        ce[c] = stream
    return Timeline(np.array(lstart), np.array(lend), np.array(cs), np.array(ce), np.array(ls_start),
                    np.array(ls_end), "simulator", {"comp_ready": np.array(ready), "hardware": hw.name,
                                                    "copy_ms": t_copy, "host_ms": hclock})
