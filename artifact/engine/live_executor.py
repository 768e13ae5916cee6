"""The device side of a live run: executes the LOADs and COMPUTEs the scheduler has just emitted for one layer-step,
while the model waits for that layer's expert output.

Memory: the host slab (every routed expert, one row each, pinned when the device is CUDA) and a device slab of
``C`` slots, allocated once per configuration. Per layer-step, in the plan's host issue order (``plan.py``):
for each COMPUTE its demand LOADs then the COMPUTE itself; after the last COMPUTE the LOADs the strategy prefetched
at this layer-step, which then run on the copy stream while the model's next layers compute.

Streams and events as in :mod:`artifact.engine.executor`: LOADs are ``non_blocking`` copies from the pinned slab on
a dedicated copy stream; COMPUTEs run on the model's own (current) stream. A LOAD into a slot waits for the event of
the last COMPUTE that read the slot (the plan's ``load_wait``); a COMPUTE waits for the event of the latest LOAD it
reads (the copy stream is FIFO, so that covers the earlier ones). An event is waited on only when it is newer than
what the waiting stream already waited for. On the CPU everything runs synchronously and events are skipped.

The expert math is the family's (:mod:`artifact.engine.hf_experts`); within a COMPUTE the loop path runs experts in
ascending expert id, the order the model's own eager loop adds them in, so float32 outputs equal the resident
model's whenever a layer-step runs in one COMPUTE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from artifact.core.plan import PlanBuilder
from artifact.engine.hf_experts import ExpertLayout, make_kernels
from artifact.engine.kernels import chunk_slots, grouped_mm_supported
from artifact.models import ModelSpec


@dataclass
class IssueCounters:
    """What the executor issued, counted as it went (held against the plan by the tests)."""

    copies: int = 0
    bytes_copied: int = 0
    computes: int = 0
    uses: int = 0
    encoder_copies: int = 0  # Switch's encoder experts, streamed outside the plan
    encoder_bytes: int = 0
    issue_s: list = field(default_factory=list)  # host seconds spent issuing each layer-step's operations


def choose_ffn(ffn: str, device: torch.device, dtype: torch.dtype, lay: ExpertLayout) -> str:
    """``auto``: the grouped GEMM where it runs without a host sync (sm90/sm100, bf16), else the loop."""
    if lay.kind == "gpt_oss":
        if ffn == "grouped":
            raise ValueError("ffn 'grouped' is not available for gpt-oss experts (interleaved, clamped, biased)")
        return "loop"
    if ffn == "auto":
        ok, _ = grouped_mm_supported(device, dtype)
        return "grouped" if ok and device.type == "cuda" else "loop"
    if ffn == "grouped":
        ok, why = grouped_mm_supported(device, dtype)
        if not ok:
            raise ValueError(f"ffn 'grouped' is not available here: {why}")
    elif ffn != "loop":
        raise ValueError(f"ffn must be 'auto', 'grouped' or 'loop', got {ffn!r}")
    return ffn


class PinnedRing:
    """Pinned host memory for the small index uploads of live COMPUTEs, reused round a ring (``pin_memory`` per upload
    costs a pinned allocation each time). A copy from the ring runs later on the stream, so a half of the ring is
    rewritten only once the copies from its last use have run: entering a half records an event on the stream, and
    first waits for the event recorded when the other half was entered, which follows every copy from this half's
    last use (long done: a lap is thousands of uploads)."""

    def __init__(self, size: int = 1 << 16) -> None:
        self.buf = torch.empty(size, dtype=torch.int32, pin_memory=True)
        self.np = self.buf.numpy()
        self.half = size // 2
        self.pos = 0
        self.cur: int | None = None  # the half written last
        self.events: list = [None, None]  # per half: the event recorded when it was last entered

    def upload(self, a: np.ndarray, device: torch.device) -> torch.Tensor:
        """``a`` (int32 ``[n]``) copied to ``device`` on the current stream, without blocking."""
        n = int(a.shape[0])
        if n > self.half:  # larger than half the ring (a long prefill): a one-off pinned copy
            return torch.from_numpy(a).pin_memory().to(device, non_blocking=True)
        if self.pos + n > 2 * self.half:
            self.pos = 0
        for h in sorted({self.pos // self.half, (self.pos + max(n, 1) - 1) // self.half}):
            if h != self.cur:
                other = self.events[1 - h]
                if other is not None:
                    other.synchronize()
                ev = torch.cuda.Event()
                ev.record(torch.cuda.current_stream(device))
                self.events[h] = ev
                self.cur = h
        self.np[self.pos:self.pos + n] = a
        out = self.buf[self.pos:self.pos + n].to(device, non_blocking=True)
        self.pos += n
        return out


class LiveExecutor:
    """``C`` device slots over the host slab ``host [rows, numel]``; runs one layer-step's operations at a time."""

    def __init__(self, host: torch.Tensor, lay: ExpertLayout, spec: ModelSpec, slots: int, device: torch.device,
                 ffn: str = "auto") -> None:
        self.host = host
        self.lay = lay
        self.device = device
        self.cuda = device.type == "cuda"
        self.ffn = choose_ffn(ffn, device, lay.dtype, lay)
        with torch.inference_mode(False):
            self.slots = torch.empty(slots, lay.numel, dtype=lay.dtype, device=device)  # [C, numel]
        self.kernels = make_kernels(lay, spec, self.slots, self.ffn)
        self.C = slots
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.ring = PinnedRing() if self.cuda else None
        self.counters = IssueCounters()
        self._reset_events()

    def _reset_events(self) -> None:
        self.slot_reader: list = [None] * self.C  # per slot: (COMPUTE, event after it) of its last reader
        self.slot_load: list = [None] * self.C  # per slot: (LOAD, event after it) that filled it
        self.copy_waited = -1  # latest COMPUTE the copy stream has waited for
        self.comp_waited = -1  # latest LOAD the compute stream has waited for

    def start_run(self, resident: np.ndarray) -> None:
        """A new plan starts: forget its predecessor's events; copy the preloaded experts into slots 0..n-1."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self._reset_events()
        n = int(resident.shape[0])
        if n:
            with torch.no_grad():
                if np.array_equal(resident, np.arange(n)):
                    self.slots[:n].copy_(self.host[:n])
                else:
                    self.slots[:n].copy_(self.host[torch.from_numpy(resident.astype(np.int64))])
            if self.cuda:
                torch.cuda.synchronize(self.device)

    # ---------------------------------------------------------------------------------------------------------
    def layer_step(self, pb: PlanBuilder, n0: int, c0: int, layer: int, experts: int, routing: np.ndarray,
                   items: np.ndarray, w: torch.Tensor, x: torch.Tensor,
                   keep: np.ndarray | None = None) -> torch.Tensor:
        """Execute the LOADs ``n0:`` and COMPUTEs ``c0:`` the scheduler just appended to ``pb`` for one layer-step
        (MoE layer ``layer``, routing ``[T, K]``, batch items ``[T]``, gates ``w [T, K]`` on the device, expert input
        ``x [T, D]``); returns the experts' output ``[T, D]``. ``keep [T]``: tokens to compute (Switch drops tokens
        over an expert's capacity: routed and planned, but given no expert output, as in the model; leaving their
        rows out keeps the other rows' matmuls the model's own)."""
        t0 = time.perf_counter()
        n1, c1 = pb.next_load, pb.next_compute
        out = torch.zeros_like(x)
        K = routing.shape[1]
        flat = routing.reshape(-1).astype(np.int64) + layer * experts  # [T * K] gids, entry t * K + k
        cache: dict = {}
        n = n0
        for c in range(c0, c1):
            a = n
            while n < n1 and pb.load_before[n] == c:
                n += 1
            self._loads(pb, a, n)
            item = pb.comp_item[c]
            if item not in cache:
                mask = np.ones(flat.shape[0], bool) if item < 0 else np.repeat(items, K) == item
                if keep is not None:
                    mask &= np.repeat(keep, K)
                sel = np.nonzero(mask)[0]
                o = np.argsort(flat[sel], kind="stable")
                cache[item] = (sel[o], flat[sel][o])
            self._compute(pb, c, cache[item], K, w, x, out)
        self._loads(pb, n, n1)  # prefetches decided at this layer-step: they overlap the next layers
        self.counters.issue_s.append(time.perf_counter() - t0)
        return out

    def _loads(self, pb: PlanBuilder, a: int, b: int) -> None:
        if b <= a:
            return
        nbytes = self.slots[0].numel() * self.slots.element_size()
        if not self.cuda:
            with torch.no_grad():
                for i in range(a, b):
                    self.slots[pb.load_slot[i]].copy_(self.host[pb.load_gid[i]])
            self.counters.copies += b - a
            self.counters.bytes_copied += (b - a) * nbytes
            return
        ks = self.copy_stream
        with torch.cuda.stream(ks), torch.no_grad():
            for i in range(a, b):
                s = pb.load_slot[i]
                wait = pb.load_wait[i]
                if wait > self.copy_waited:
                    reader = self.slot_reader[s]
                    if reader is None or reader[0] != wait:
                        raise RuntimeError(f"live executor: LOAD {i} into slot {s} waits for COMPUTE {wait}, but "
                                           f"the slot's last reader is {None if reader is None else reader[0]}")
                    ks.wait_event(reader[1])
                    self.copy_waited = wait
                self.slots[s].copy_(self.host[pb.load_gid[i]], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(ks)
                self.slot_load[s] = (i, ev)
        self.counters.copies += b - a
        self.counters.bytes_copied += (b - a) * nbytes

    def _upload(self, a: np.ndarray) -> torch.Tensor:
        """``a`` (int32) on the device: on CUDA through the pinned ring, without blocking."""
        if not self.cuda:
            return torch.from_numpy(a)
        return self.ring.upload(a, self.device)

    def _compute(self, pb: PlanBuilder, c: int, entries: tuple, K: int, w: torch.Tensor, x: torch.Tensor,
                 out: torch.Tensor) -> None:
        u0, u1 = pb.comp_offsets[c], pb.comp_offsets[c + 1]
        gids = np.asarray(pb.use_gid[u0:u1], np.int64)
        slots = np.asarray(pb.use_slot[u0:u1], np.int64)
        loads = pb.use_load[u0:u1]
        order, srt = entries
        lo = np.searchsorted(srt, gids, "left")
        hi = np.searchsorted(srt, gids, "right")
        grouped = self.ffn == "grouped"
        perm = np.argsort(slots if grouped else gids, kind="stable")  # loop: ascending expert, the model's order
        counts = (hi - lo)[perm]
        ends = np.concatenate([[0], np.cumsum(counts)])  # each use's rows: ends[i]:ends[i + 1]
        # The entries of each use, use after use: order[lo[p]:hi[p]] for p in perm, as one gather.
        idx = order[np.repeat(lo[perm] - ends[:-1], counts) + np.arange(int(ends[-1]))]
        chunks = chunk_slots(slots[perm], counts) if grouped else []
        # Every index of this COMPUTE goes up in ONE copy, before the wait on its loads, from pinned memory and
        # without blocking (a pageable upload would make the host wait for the compute stream, i.e. for those loads):
        # the grouped GEMMs' offsets (each part at a 16-byte boundary), the entry t * K + k of each row, its token.
        R = idx.shape[0]
        parts = [c[4] for c in chunks] + [idx, idx // K]
        at = np.cumsum([0] + [-(-q.shape[0] // 4) * 4 for q in parts])
        pack = np.zeros(int(at[-1]), np.int32)
        for q, a in zip(parts, at[:-1].tolist()):
            pack[a:a + q.shape[0]] = q
        dev = self._upload(pack)
        n_off = len(chunks)
        idx_t = dev[at[n_off]:at[n_off] + R]  # [R]: entry t * K + k of each row, use after use
        rows = dev[at[n_off + 1]:at[n_off + 1] + R]  # [R] token rows
        if self.cuda:
            cur = torch.cuda.current_stream(self.device)
            mx = max(loads) if loads else -1
            if mx > self.comp_waited:
                s = int(slots[loads.index(mx)])
                held = self.slot_load[s]
                if held is None or held[0] != mx:
                    raise RuntimeError(f"live executor: COMPUTE {c} reads LOAD {mx} in slot {s}, which holds "
                                       f"LOAD {None if held is None else held[0]}")
                cur.wait_event(held[1])
                self.comp_waited = mx
        gate = w.reshape(-1).index_select(0, idx_t).unsqueeze(1)  # [R, 1], the router's dtype (the model's math)
        k = self.kernels
        need = max(int(ends[-1]) if grouped else int(counts.max(initial=0)), 1)
        if need > getattr(k, "capacity", need):
            with torch.inference_mode(False):
                k.ensure_capacity(need)
        if grouped:
            work = []
            for q, (i, j, slo, shi, offs) in enumerate(chunks):
                ra, rb = int(ends[i]), int(ends[j])
                work.append(k.chunk_work(rows[ra:rb], gate[ra:rb], slo, shi, dev[at[q]:at[q] + offs.shape[0]]))
        else:
            work = [k.use_work(rows[ends[i]:ends[i + 1]], gate[ends[i]:ends[i + 1]], int(slots[p]))
                    for i, p in enumerate(perm) if counts[i] > 0]
        with torch.no_grad():
            k.run(work, x, out)
        self.counters.computes += 1
        self.counters.uses += int(perm.size)
        if self.cuda:
            ev = torch.cuda.Event()
            ev.record(cur)
            for s in slots.tolist():
                self.slot_reader[s] = (c, ev)


class StagedExperts:
    """Switch's encoder MoE layers, which run once per prompt and are not planned: their experts are streamed from
    the host slab through two device staging slots (double buffering), each expert once per encoder layer, in
    ascending expert id. Counted apart (``encoder_copies``, ``encoder_bytes``)."""

    def __init__(self, host: torch.Tensor, lay: ExpertLayout, spec: ModelSpec, device: torch.device,
                 counters_of) -> None:
        self.host = host
        self.device = device
        self.cuda = device.type == "cuda"
        with torch.inference_mode(False):
            self.staging = torch.empty(2, lay.numel, dtype=lay.dtype, device=device)  # [2, numel]
        self.kernels = make_kernels(lay, spec, self.staging, "loop")
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.read_ev: list = [None, None]
        self.counters_of = counters_of  # -> the IssueCounters of the current run

    def run(self, base_row: int, experts: np.ndarray, keep: np.ndarray, w: torch.Tensor,
            x: torch.Tensor) -> torch.Tensor:
        """``experts [T]`` top-1 ids, ``keep [T]`` tokens the router did not drop, ``w [T, 1]`` gates."""
        out = torch.zeros_like(x)
        tok = np.nonzero(keep)[0]
        ids = experts[tok].astype(np.int64)
        nbytes = self.staging[0].numel() * self.staging.element_size()
        cnt = self.counters_of()
        for i, e in enumerate(np.unique(ids).tolist()):
            s = i % 2
            with torch.no_grad():
                if self.cuda:
                    with torch.cuda.stream(self.copy_stream):
                        if self.read_ev[s] is not None:
                            self.copy_stream.wait_event(self.read_ev[s])
                        self.staging[s].copy_(self.host[base_row + e], non_blocking=True)
                        done = torch.cuda.Event()
                        done.record(self.copy_stream)
                    torch.cuda.current_stream(self.device).wait_event(done)
                else:
                    self.staging[s].copy_(self.host[base_row + e])
            cnt.encoder_copies += 1
            cnt.encoder_bytes += nbytes
            rows = torch.from_numpy(tok[ids == e]).to(self.device)
            gate = w.reshape(-1).index_select(0, rows).unsqueeze(1)
            with torch.inference_mode(False):
                self.kernels.ensure_capacity(int(rows.shape[0]))
            with torch.no_grad():
                self.kernels.run([self.kernels.use_work(rows, gate, s)], x, out)
            if self.cuda:
                ev = torch.cuda.Event()
                ev.record(torch.cuda.current_stream(self.device))
                self.read_ev[s] = ev
        return out
