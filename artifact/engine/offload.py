"""Offload the routed experts of a ``transformers`` MoE model and run it with a live strategy.

    import artifact
    model = artifact.offload(model, strategy="intelligent_dedup", cache_experts=64, device="cuda")
    out = model.generate(ids, max_new_tokens=32)          # greedy: the same tokens as the resident model
    print(model.expert_offload.last.line())               # tokens/s, hits, loads, GB moved, per-token latency

What :func:`offload` does, after checking everything it can before a weight moves (an MoE model of a supported
family, a strategy that can run live, a cache of at least one token's top-k, CUDA when ``device="cuda"``, a
hardware profile): every routed expert goes into ONE host slab (pinned for CUDA), the model's expert modules are
replaced by :class:`OffloadedExperts` (their weights freed), and the rest of the model (attention, norms, routers,
shared experts, embeddings) moves to ``device``.

At every MoE layer call (the model's own router has run), :class:`OffloadSession`:

1. computes the lookahead for the next MoE layer (its router on this layer's router input, as the recorder does)
   and reads the expert ids, lookahead and gates to the host in ONE device-to-host copy. That copy is a sync: the
   host waits until the device has finished everything queued so far (this layer's attention included), so the
   host cannot run ahead of the device, and while the host decides the device idles. Its cost is measured per
   layer-step (``sync_us``), beside the strategy's decision (``plan_us``: ``Scheduler.layer_step``) and the issue
   of the copies and kernels (``issue_us``);
2. hands the routing to the live source (:class:`~artifact.runtime.live.LiveRouting`) and lets the one
   :class:`~artifact.runtime.scheduler.Scheduler` plan this layer-step with the strategy's own code;
3. executes what was planned (:class:`~artifact.engine.live_executor.LiveExecutor`): demand LOADs and the
   COMPUTE(s) (several when the layer-step needs more experts than the cache holds: waves), then the prefetches,
   which overlap the next layers.

A *run* is one ``generate`` call (or the forward passes before :meth:`OffloadSession.finish_run`): a fresh
scheduler (an empty cache), one step per forward pass (the first, over the prompt, is prefill for decoder-only
models), per-step wall times (device synchronised at both ends), and at the end the plan, its counts, and the trace
it recorded (schema 2, with lookahead and phase). Replaying that trace (:func:`~artifact.runtime.live.
replay_workload`, then :func:`artifact.planner.plan`) gives the same plan.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from artifact.core.errors import Unrunnable
from artifact.core.metrics import count_metrics
from artifact.core.plan import Plan
from artifact.engine.hf_experts import MoeLayer, expert_layout, model_spec, moe_layers, pack_layer
from artifact.engine.live_executor import IssueCounters, LiveExecutor, StagedExperts, choose_ffn
from artifact.models import ModelSpec
from artifact.runtime.hardware import HardwareProfile, load_profile
from artifact.runtime.live import LiveRouting, refuse_if_not_live
from artifact.runtime.scheduler import Scheduler
from artifact.traces.trace import DECODE, PREFILL, Trace

DEFAULT_HARDWARE = "h200"


# --------------------------------------------------------------------------------------------------------------
# What a run reports
# --------------------------------------------------------------------------------------------------------------


@dataclass
class RunReport:
    """One run: the plan it executed, its counts and times, and the trace it recorded."""

    strategy: str
    model: ModelSpec
    cache_experts: int
    protocol: str
    batch: int
    step_ms: list  # wall ms of each forward pass (device synchronised)
    step_tokens: list  # tokens of each step (all sequences)
    step_phase: list  # PREFILL / DECODE per step
    plan: Plan
    counts: dict  # count_metrics(plan)
    issued: IssueCounters
    sync_us: list  # per layer-step: host time blocked in the device-to-host read of the routing
    plan_us: list  # per layer-step: Scheduler.layer_step (the strategy's decision)
    trace: Trace | None = None
    hardware: str = ""
    extra: dict = field(default_factory=dict)

    def _phase(self, phase: int) -> tuple[int, float, list]:
        ms = [m for m, p in zip(self.step_ms, self.step_phase) if p == phase]
        tok = sum(t for t, p in zip(self.step_tokens, self.step_phase) if p == phase)
        return tok, float(sum(ms)), ms

    def summary(self) -> dict:
        """Flat figures of the run (strict JSON: what was not measured is None)."""
        pt, pms, _ = self._phase(PREFILL)
        dt, dms, dsteps = self._phase(DECODE)
        c = self.counts
        issue = [s * 1e6 for s in self.issued.issue_s]
        med = statistics.median

        def rate(tok, ms):
            return tok / (ms / 1e3) if tok and ms > 0 else None

        return {
            "strategy": self.strategy, "model": self.model.name, "cache_experts": self.cache_experts,
            "protocol": self.protocol, "batch": self.batch, "steps": len(self.step_ms),
            "prefill_tokens": pt, "decode_tokens": dt, "prefill_ms": pms if pt else None,
            "decode_ms": dms if dt else None,
            "prefill_tokens_per_s": rate(pt, pms), "decode_tokens_per_s": rate(dt, dms),
            "ms_per_token": med(dsteps) if dsteps else None,  # per decode step (one token per sequence)
            "ms_per_token_p90": float(np.percentile(dsteps, 90)) if dsteps else None,
            "requests": c["requests"], "unique_requests": c["unique_requests"], "hits": c["hits"],
            "hit_rate": c["hit_rate"], "loads": c["loads"], "demand_loads": c["demand_loads"],
            "prefetch_issued": c["prefetch_issued"], "prefetch_used": c["prefetch_used"],
            "bytes_h2d": c["bytes_h2d"], "copies_issued": self.issued.copies, "bytes_copied": self.issued.bytes_copied,
            "computes": self.issued.computes, "encoder_copies": self.issued.encoder_copies,
            "sync_us_per_layer": med(self.sync_us) if self.sync_us else None,
            "plan_us_per_layer": med(self.plan_us) if self.plan_us else None,
            "issue_us_per_layer": med(issue) if issue else None, "hardware": self.hardware,
        }

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        s = self.summary()

        def f(x, fmt):
            return "n/a" if x is None else format(x, fmt)

        hr = f(None if s["hit_rate"] is None else 100 * s["hit_rate"], ".1f")
        gb = s["bytes_copied"] / 1e9
        return (f"{s['strategy']}, cache {s['cache_experts']} experts: decode {f(s['decode_tokens_per_s'], '.1f')} "
                f"tok/s ({f(s['ms_per_token'], '.2f')} ms/token, {s['decode_tokens']} tokens), prefill "
                f"{f(s['prefill_tokens_per_s'], '.1f')} tok/s ({s['prefill_tokens']} tokens); hits {s['hits']}/"
                f"{s['unique_requests']} ({hr}%), loads {s['loads']} ({s['prefetch_issued']} prefetched), "
                f"{gb:.3f} GB moved; per layer: D2H sync {f(s['sync_us_per_layer'], '.0f')} us, decision "
                f"{f(s['plan_us_per_layer'], '.0f')} us, issue {f(s['issue_us_per_layer'], '.0f')} us")


# --------------------------------------------------------------------------------------------------------------
# The replacement experts modules
# --------------------------------------------------------------------------------------------------------------


class OffloadedExperts(torch.nn.Module):
    """Stands in for a fused experts module: ``forward(hidden_states [T, D], top_k_index [T, K], top_k_weights
    [T, K]) -> [T, D]``, the call every transformers 5.x MoE block makes. Holds no weights."""

    def __init__(self, session: OffloadSession, layer: int) -> None:
        super().__init__()
        self.session = session
        self.layer = layer

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return self.session.moe(self.layer, hidden_states, top_k_index, top_k_weights)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, offloaded to the host slab"


class OffloadedSwitchExperts(torch.nn.Module):
    """Stands in for Switch's per-expert ``ModuleDict``: ``forward(hidden_states [T, D], one-hot [T, 1, E],
    router probability [T, 1])``. A token the router dropped (over capacity) has an all-zero row: it gets no expert
    output, as in the model; its routing is recorded as the expert the router chose (as the recorder does)."""

    def __init__(self, session: OffloadSession, layer: int, encoder: bool) -> None:
        super().__init__()
        self.session = session
        self.layer = layer
        self.encoder = encoder

    def forward(self, hidden_states, selected_experts, routing_weights):
        T = hidden_states.shape[0]
        onehot = selected_experts.reshape(T, -1)  # [T, E]
        kept = onehot.sum(-1) > 0  # [T]
        w = routing_weights.reshape(T, -1)[:, :1] * kept.unsqueeze(1).to(routing_weights.dtype)  # [T, 1]
        if self.encoder:
            return self.session.encoder_moe(self.layer, hidden_states, onehot.argmax(-1), kept, w)
        site = self.session.layers[self.layer].site
        chosen = site.logits(hidden_states.reshape(T, -1)).argmax(-1)  # the router's own choice, dropped or not
        ids = torch.where(kept, onehot.argmax(-1), chosen).unsqueeze(1)  # [T, 1]
        return self.session.moe(self.layer, hidden_states, ids, w, kept)

    def extra_repr(self) -> str:
        return f"layer={self.layer}{' (encoder)' if self.encoder else ''}, offloaded to the host slab"


# --------------------------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------------------------


def _check_device(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch.cuda.is_available() is False (no GPU, or a CPU "
                             f"build of torch {torch.__version__}); use device 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    return dev


def _cuda_ok(result) -> bool:
    """A cudart binding's return value (an error enum, or a tuple starting with one) is cudaSuccess."""
    code = result[0] if isinstance(result, tuple) else result
    return int(code) == 0


def clear_cuda_error() -> None:
    """Clear CUDA's pending error after a runtime call that failed without harm (a refused
    ``cudaHostRegister``), so the next kernel launch does not report it as its own. torch binds no
    ``cudaGetLastError``; a launch check reads (and clears) the pending error, which is caught here."""
    fn = getattr(torch.cuda.cudart(), "cudaGetLastError", None)
    if fn is not None:
        fn()
        return
    try:
        torch.empty(1, device="cuda").zero_()
        torch.cuda.synchronize()
    except RuntimeError:  # torch.AcceleratorError is a RuntimeError: the stale error, now cleared
        pass


class HostSlab:
    """Every routed expert in one host allocation ``[rows, numel]``. For CUDA it is page-locked in one piece with
    ``cudaHostRegister`` (no power-of-two rounding of the caching host allocator, and :meth:`release` gives the
    memory back at once); ``pin_memory`` where registering fails."""

    def __init__(self, rows: int, numel: int, dtype: torch.dtype, pin: bool) -> None:
        self.registered = False
        self.tensor = None
        if pin:
            t = torch.empty(rows, numel, dtype=dtype)
            try:
                rt = torch.cuda.cudart()
                # Memory some other code registered and freed without unregistering is reported pinned: not ours
                # to register (it would fail); pin a fresh allocation instead.
                ok = not t.is_pinned() and _cuda_ok(rt.cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(),
                                                                        0))
                if not ok:
                    clear_cuda_error()
                self.registered = ok and bool(t.is_pinned())
                if ok and not self.registered:
                    rt.cudaHostUnregister(t.data_ptr())
            except (AttributeError, RuntimeError, TypeError, ValueError):
                self.registered = False
            if not self.registered:
                del t  # give the pageable pages back before pinning a second allocation
                t = torch.empty(rows, numel, dtype=dtype, pin_memory=True)
            self.tensor = t
        else:
            self.tensor = torch.empty(rows, numel, dtype=dtype)

    @property
    def pinned(self) -> bool:
        return self.registered or (torch.cuda.is_available() and bool(self.tensor.is_pinned()))

    def __del__(self) -> None:
        # A slab collected without release() (an offloaded model dropped, or collected with its reference cycle)
        # must not leave its range registered: the memory goes back to the OS, a later allocation may get the same
        # addresses, and registering those fails (cudaErrorHostMemoryAlreadyRegistered).
        if getattr(self, "registered", False) and self.tensor is not None:
            try:
                torch.cuda.cudart().cudaHostUnregister(self.tensor.data_ptr())
            except (AttributeError, RuntimeError, TypeError, ValueError):  # interpreter shutting down
                pass
            self.registered = False

    def release(self) -> None:
        if self.tensor is None:
            return
        pinned = self.tensor.device.type == "cpu" and torch.cuda.is_available()
        if pinned:
            torch.cuda.synchronize()
        if self.registered:
            torch.cuda.cudart().cudaHostUnregister(self.tensor.data_ptr())
            self.registered = False
        self.tensor = None
        empty = getattr(torch._C, "_host_emptyCache", None)
        if pinned and empty is not None:  # pin_memory's caching allocator keeps freed blocks: give them back
            empty()


class OffloadSession:
    """The state of one offloaded model: host slab, device slots, live strategy, runs. See the module docstring.

    ``model.expert_offload`` is the session; ``last`` the :class:`RunReport` of the latest finished run;
    :meth:`configure` switches strategy or cache size without moving the host slab.
    """

    def __init__(self, model: torch.nn.Module, layers: list[MoeLayer], encoder: list[MoeLayer], lay, spec: ModelSpec,
                 device: torch.device, hardware: HardwareProfile, record: bool, ffn: str) -> None:
        self.layers, self.encoder_layers = layers, encoder
        self.layout, self.spec = lay, spec
        self.L, self.E, self.K = spec.moe_layers, spec.experts, spec.top_k
        self.device, self.cuda = device, device.type == "cuda"
        self.hardware = hardware
        self.record = record
        self.ffn = ffn
        self.encoder_decoder = bool(encoder) or bool(getattr(model.config, "is_encoder_decoder", False))
        self.model_id = str(getattr(model.config, "name_or_path", "") or type(model).__name__)
        self.family = getattr(model.config, "model_type", "")
        self.slab: HostSlab | None = None
        self.executor: LiveExecutor | None = None
        self.staged: StagedExperts | None = None
        self.info = None
        self.requested_cache = 0
        self.protocol, self.seed, self.params = "batched", 0, {}
        self.last: RunReport | None = None
        self.reports: list[RunReport] = []
        self.on_step = None  # callable(step index, phase, tokens, ms) after every forward pass (a progress bar)
        self._run: dict | None = None
        self._pending: tuple | None = None

    # --- configuration ------------------------------------------------------------------------------------------
    def validate(self, strategy: str, cache_experts: int, protocol: str = "batched", seed: int = 0,
                 **params) -> tuple:
        """Check that ``strategy`` can run live with ``cache_experts`` slots (nothing is allocated); returns the
        registry entry and the slots it runs with. Refusals raise :class:`Unrunnable` or ``KeyError``."""
        from artifact.planner import get_strategy

        info = get_strategy(strategy)
        refuse_if_not_live(info)
        if isinstance(cache_experts, bool) or not isinstance(cache_experts, (int, np.integer)) or cache_experts < 1:
            raise ValueError(f"cache_experts must be a positive integer, got {cache_experts!r}")
        slots = int(info.factory.slots(int(cache_experts), self.L, self.E))
        if slots < self.K:
            raise Unrunnable(f"a cache of {slots} experts is smaller than one token's top-{self.K}: a layer could "
                             f"not run even one token (need at least {self.K})")
        if slots > self.L * self.E:
            raise Unrunnable(f"a cache of {slots} experts exceeds the model's {self.L * self.E} routed experts "
                             f"(gpu_only keeps every expert resident)")
        # A scheduler on an empty source raises every other refusal its strategy makes at construction.
        Scheduler(info, LiveRouting(self.L, self.E, self.K), self.spec, self.L, self.K, 1, slots, protocol, seed,
                  self.hardware, **params)
        return info, slots

    def configure(self, strategy: str, cache_experts: int, protocol: str = "batched", seed: int = 0,
                  ffn: str | None = None, **params) -> None:
        """Use ``strategy`` with ``cache_experts`` device slots from the next run on (reallocates the slots)."""
        if self._run is not None:
            raise RuntimeError("offload: configure() during a run; finish_run() first")
        info, slots = self.validate(strategy, cache_experts, protocol, seed, **params)
        self.info, self.requested_cache = info, int(cache_experts)
        self.protocol, self.seed, self.params = protocol, seed, dict(params)
        if ffn is not None:
            self.ffn = ffn
        if self.executor is None or self.executor.C != slots or (ffn is not None and ffn != self.executor.ffn):
            if self.cuda:  # copies of the last run may still be writing into the slots about to be freed
                torch.cuda.synchronize(self.device)
            self.executor = None
            if self.cuda:
                torch.cuda.empty_cache()
            self.executor = LiveExecutor(self.slab.tensor, self.layout, self.spec, slots, self.device, self.ffn)

    # --- runs ---------------------------------------------------------------------------------------------------
    def begin_run(self) -> None:
        if self._run is not None:
            self.finish_run()
        if self.executor is None:
            raise RuntimeError("offload: no strategy configured")
        self._run = {"source": LiveRouting(self.L, self.E, self.K), "sched": None, "batch": 0, "step_ms": [],
                     "sync_us": [], "plan_us": [], "t0": None}
        self.executor.counters = IssueCounters()  # the encoder (Switch) runs before the first step: count it here

    def _ensure_run(self, batch: int) -> dict:
        if self._run is None:
            self.begin_run()
        run = self._run
        if run["sched"] is None:
            run["batch"] = batch
            run["sched"] = Scheduler(self.info, run["source"], self.spec, self.L, self.K, batch,
                                     self.requested_cache, self.protocol, self.seed, self.hardware, **self.params)
            self.executor.start_run(run["sched"].resident_at_start)
        return run

    def abort_run(self) -> None:
        """Drop the current run (its forward pass failed): no report, no trace."""
        self._run = None
        self._pending = None

    def finish_run(self) -> RunReport | None:
        """Close the current run: its plan, counts and trace (None when it ran no complete step)."""
        run, self._run = self._run, None
        self._pending = None
        if run is None or run["sched"] is None:
            return None
        if self.cuda:
            torch.cuda.synchronize(self.device)
        src: LiveRouting = run["source"]
        S = src.complete_steps()
        if S == 0:
            return None
        if src.next_g != S * self.L:
            raise RuntimeError(f"offload: the run stopped inside step {S} (MoE layer {src.next_g % self.L}); "
                               f"its plan is incomplete")
        tokens = sum(e.shape[0] for e in src.experts[:S])
        plan = run["sched"].finish(S, tokens * self.L * self.K)
        trace = None
        if self.record:
            meta = {"source": "recorded:live", "model_id": self.model_id,
                    "generator": {"family": self.family, "decoding": "as run", "strategy": self.info.name,
                                  "cache_experts": plan.cache_experts, "protocol": self.protocol},
                    "recorded_layers": [m.site.path for m in self.layers],
                    "gates": "the router's gates as the model used them (top-k, in the model's renormalisation)",
                    "lookahead_source": "layer l's router on the input of MoE layer l-1's router; layer 0 holds -1",
                    "native_top_k": self.K}
            trace = src.to_trace(self.spec.name, meta)
        phases = src.phases[:S]
        step_ms = run["step_ms"][:S] if len(run["step_ms"]) >= S else run["step_ms"] + [float("nan")] * (
            S - len(run["step_ms"]))
        rep = RunReport(self.info.name, self.spec, plan.cache_experts, self.protocol, run["batch"], step_ms,
                        [int(e.shape[0]) for e in src.experts[:S]], phases, plan, count_metrics(plan),
                        self.executor.counters, run["sync_us"], run["plan_us"], trace, self.hardware.name,
                        {"requested_cache": self.requested_cache})
        self.last = rep
        self.reports.append(rep)
        return rep

    # --- forward-pass hooks -------------------------------------------------------------------------------------
    def _pre_forward(self, module, args, kwargs) -> None:
        shape = None
        keys = ("decoder_input_ids", "decoder_inputs_embeds") if self.encoder_decoder else ("input_ids",
                                                                                           "inputs_embeds")
        for k in keys:
            t = kwargs.get(k)
            if isinstance(t, torch.Tensor):
                shape = (int(t.shape[0]), int(t.shape[1]))
                break
        if shape is None and args and isinstance(args[0], torch.Tensor) and not self.encoder_decoder:
            shape = (int(args[0].shape[0]), int(args[0].shape[1]) if args[0].dim() > 1 else 1)
        self._pending = shape
        run = self._ensure_run(shape[0] if shape else 1)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        run["t0"] = time.perf_counter()

    def _post_forward(self, module, args, kwargs, output) -> None:
        run = self._run
        if run is None or run["t0"] is None:
            return
        if self.cuda:
            torch.cuda.synchronize(self.device)
        ms = (time.perf_counter() - run["t0"]) * 1e3
        run["t0"] = None
        src = run["source"]
        if src.steps > len(run["step_ms"]):  # the forward pass ran the MoE layers (one step)
            run["step_ms"].append(ms)
            if self.on_step is not None:
                self.on_step(src.steps - 1, src.phases[-1], int(src.experts[-1].shape[0]), ms)

    # --- the MoE layers -----------------------------------------------------------------------------------------
    def moe(self, layer: int, x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor,
            kept: torch.Tensor | None = None) -> torch.Tensor:
        """One planned MoE layer: route, plan this layer-step, execute it; returns the experts' output. ``kept``
        ``[T]`` (Switch): False where the router dropped the token (over capacity): planned as routed, not computed."""
        T = x.shape[0]
        shape = self._pending if self._pending and self._pending[0] * self._pending[1] == T else (1, T)
        run = self._ensure_run(shape[0])
        src: LiveRouting = run["source"]
        if layer == 0:
            B, S = shape
            items = np.repeat(np.arange(B, dtype=np.int32), S)
            phase = PREFILL if (src.steps == 0 and not self.encoder_decoder) else DECODE
            src.begin_step(items, items, phase)
        g = (src.steps - 1) * self.L + layer
        nxt = self.layers[layer + 1].site if layer + 1 < self.L else None
        parts = [ids.reshape(T, -1).float()]
        if nxt is not None:
            parts.append(nxt.choose(x.reshape(T, -1))[1].float())
        if kept is not None:
            parts.append(kept.reshape(T, 1).float())
        parts.append(w.reshape(T, -1).float())
        t0 = time.perf_counter()
        host = torch.cat(parts, 1).cpu().numpy()  # ONE device-to-host copy: a sync (see the module docstring)
        t1 = time.perf_counter()
        K = self.K
        experts = host[:, :K].astype(np.int64)
        la = host[:, K:2 * K].astype(np.int64) if nxt is not None else None
        keep = host[:, -K - 1] > 0 if kept is not None else None
        gates = host[:, -K:].astype(np.float16)
        src.set_layer(g, experts, la, gates)
        sched = run["sched"]
        n0, c0 = sched.pb.next_load, sched.pb.next_compute
        t2 = time.perf_counter()
        sched.layer_step(g)
        t3 = time.perf_counter()
        run["sync_us"].append((t1 - t0) * 1e6)
        run["plan_us"].append((t3 - t2) * 1e6)
        s = src.steps - 1
        out = self.executor.layer_step(sched.pb, n0, c0, layer, self.E, src.experts[s][:, layer, :],
                                       src.items[s], w.reshape(T, -1), x.reshape(T, -1), keep)
        return out.view_as(x)

    def encoder_moe(self, j: int, x: torch.Tensor, ids: torch.Tensor, kept: torch.Tensor,
                    w: torch.Tensor) -> torch.Tensor:
        """One encoder MoE layer of Switch: its experts streamed through the staging slots (not planned)."""
        host = torch.stack([ids.float(), kept.float()], 1).cpu().numpy()
        base = (self.L + j) * self.E
        return self.staged.run(base, host[:, 0].astype(np.int64), host[:, 1] > 0, w, x.reshape(x.shape[0], -1))

    def close(self) -> None:
        """Release the host slab (its pinned pages) and the device slots; the model can no longer run."""
        self.executor = None
        self.staged = None
        if self.slab is not None:
            self.slab.release()
        if self.cuda:
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------------------


def inspect_model(model: torch.nn.Module):
    """``(family, planned layers, encoder layers, layout, spec)`` of a model, or ``ValueError`` saying why it
    cannot be offloaded (not an MoE model, an unsupported family or expert layout)."""
    try:
        fam, layers, encoder = moe_layers(model)
    except ValueError as exc:
        raise ValueError(f"not an MoE model this engine can offload: {exc}") from None
    lays = {expert_layout(m, model.config) for m in layers + encoder}
    if len(lays) != 1:
        raise ValueError(f"model {type(model).__name__}: MoE layers differ in expert shape ({sorted(map(str, lays))})")
    lay = lays.pop()
    return fam, layers, encoder, lay, model_spec(model, lay, len(layers), layers[0].site.top_k)


def offload(model: torch.nn.Module, strategy: str = "intelligent_dedup", cache_experts: int = 64,
            device: str | torch.device = "cuda", hardware: HardwareProfile | str | None = None, record: bool = True,
            *, protocol: str = "batched", seed: int = 0, ffn: str = "auto", **params) -> torch.nn.Module:
    """Move every routed expert of ``model`` into a host slab, keep the rest on ``device`` and return the model,
    ready for ``model.generate``, with ``strategy`` deciding live which experts the ``cache_experts`` device slots
    hold (see the module docstring). ``hardware``: the profile planning reads (default ``h200``); ``record``: keep
    each run's trace; ``params``: the strategy's own parameters. Bad input raises before any weight moves."""
    if getattr(model, "expert_offload", None) is not None:
        raise ValueError("offload: this model is already offloaded (model.expert_offload.configure switches "
                         "strategy or cache)")
    dev = _check_device(device)
    fam, layers, encoder, lay, spec = inspect_model(model)
    hw = load_profile(hardware or DEFAULT_HARDWARE) if not isinstance(hardware, HardwareProfile) else hardware
    session = OffloadSession(model, layers, encoder, lay, spec, dev, hw, record, ffn)
    session.validate(strategy, cache_experts, protocol, seed, **params)
    choose_ffn(ffn, dev, lay.dtype, lay)  # refuse an impossible FFN path before moving anything

    # Weights move from here on.
    rows = (len(layers) + len(encoder)) * lay.experts
    session.slab = HostSlab(rows, lay.numel, lay.dtype, pin=dev.type == "cuda")
    host = session.slab.tensor
    for i, m in enumerate(layers + encoder):
        pack_layer(m, lay, host[i * lay.experts:(i + 1) * lay.experts])
        is_switch = lay.kind == "switch"
        idx = i if i < len(layers) else i - len(layers)
        new = (OffloadedSwitchExperts(session, idx, i >= len(layers)) if is_switch
               else OffloadedExperts(session, idx))
        m.block.experts = new
    session.layers = [MoeLayer(m.site, m.block, m.block.experts) for m in layers]
    session.encoder_layers = [MoeLayer(m.site, m.block, m.block.experts) for m in encoder]
    del layers, encoder
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    model.to(dev)
    if session.encoder_layers:
        session.staged = StagedExperts(host, lay, spec, dev, lambda: session.executor.counters)
    session.configure(strategy, cache_experts, protocol, seed, **params)
    model.register_forward_pre_hook(session._pre_forward, with_kwargs=True)
    model.register_forward_hook(session._post_forward, with_kwargs=True)
    original = model.generate

    @functools.wraps(original)
    def generate(*args, **kwargs):
        session.begin_run()
        try:
            out = original(*args, **kwargs)
        except BaseException:
            session.abort_run()
            raise
        session.finish_run()
        return out

    model.generate = generate
    model.expert_offload = session
    model.eval()
    return model
