"""A routing source that grows while a real model runs: the :class:`~artifact.runtime.scheduler.Scheduler` plans
each layer-step from the routing the model's routers just produced, with the same strategy code that plans from
traces.

The model drives it, one forward pass (a *step*) at a time::

    src.begin_step(items, seqs, phase)          # the forward's tokens: batch item and sequence of each
    for each MoE layer l:                       # layer-step g = step * layers + l
        src.set_layer(g, experts, lookahead)    # [T, K] ids the router chose; [T, K] predicted for layer l + 1
        scheduler.layer_step(g)                 # plans g from what is visible now

It answers every question :class:`~artifact.runtime.scheduler.TraceRouting` answers (``groups``, ``unique``,
``routing``, ``lookahead``, ``step_meta``), from the arrays filled so far and in the same dtypes and order, so a
strategy cannot tell a live run from its replay: replaying the recorded trace (:func:`replay_workload`) plans the
same operations. What a live model cannot know is refused: ``step_routing`` (a whole step's routing before its
layers run: the ``path`` and ``future`` access levels) raises; :func:`live_refusal` names the strategies that need
it, or the exact next layer (``next_layer``), before anything runs.

A step's ``lookahead`` at layer ``l`` is the prediction made at layer ``l - 1`` (layer ``l``'s router applied to
layer ``l - 1``'s router input, as the recorder computes it); layer 0 holds -1, as in a trace.
"""

from __future__ import annotations

import numpy as np

from artifact.core.errors import FutureAccessError, Unrunnable
from artifact.core.workload import Workload
from artifact.models import ModelSpec
from artifact.traces.trace import DECODE, Trace, make_meta

LIVE_SEES = ("past",)  # access levels a live model can serve


def live_refusal(info) -> str | None:
    """Why strategy ``info`` (a registry entry) cannot run beside a live model, or None when it can."""
    if info.planner is not None or info.sees == "future" or info.role == "bound":
        return (f"strategy {info.name} is a bound: it needs the future routing, which a running model does not "
                f"have; plan it from a recorded trace (`python -m artifact simulate --trace ...`)")
    if info.sees == "path":
        return (f"strategy {info.name} reads a whole step's routing before the step's layers run (a predictor arm "
                f"fed the true path at a stated accuracy); a running model has no such predictor")
    if info.sees == "next_layer":
        return (f"strategy {info.name} reads layer l+1's exact routing while layer l runs (a fine-tuned pre-gate "
                f"whose weights are not public); use pregated_proxy, the training-free stand-in")
    if info.sees not in LIVE_SEES:
        return f"strategy {info.name}: access level {info.sees!r} cannot be served live"
    return None


def refuse_if_not_live(info) -> None:
    """Raise :class:`Unrunnable` when strategy ``info`` cannot run beside a live model."""
    why = live_refusal(info)
    if why:
        raise Unrunnable(why)


class LiveRouting:
    """The routing of the steps a model has run so far, in the shape the scheduler walks.

    ``layers``, ``experts``, ``top_k``: the planned MoE layers; ``lookahead``: whether ``set_layer`` receives
    predictions (a strategy that needs them is refused otherwise).
    """

    def __init__(self, layers: int, experts: int, top_k: int, lookahead: bool = True) -> None:
        self.L, self.E, self.K = int(layers), int(experts), int(top_k)
        self.has_lookahead = bool(lookahead)
        self.experts: list[np.ndarray] = []  # per step: int16 [T, L, K]
        self.lookaheads: list[np.ndarray] = []  # per step: int16 [T, L, K], -1 where nothing was predicted
        self.gates: list[np.ndarray] = []  # per step: float16 [T, L, K]
        self.items: list[np.ndarray] = []  # per step: int32 [T]
        self.seqs: list[np.ndarray] = []  # per step: int32 [T]
        self.phases: list[int] = []  # per step: PREFILL or DECODE
        self.next_g = 0  # the layer-step set_layer expects next
        self._cache: tuple | None = None  # (g, gids [T, K], batched group, per-item groups or None) (latest step)

    # --- growing ---------------------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return len(self.experts)

    def begin_step(self, items: np.ndarray, seqs: np.ndarray, phase: int = DECODE) -> int:
        """A forward pass starts with ``T`` tokens: ``items`` (batch slot) and ``seqs`` (sequence) of each, ``[T]``.
        Returns the step's index."""
        if self.next_g != self.steps * self.L:
            s, l = divmod(self.next_g, self.L)
            raise RuntimeError(f"live routing: step {s} ended at MoE layer {l} of {self.L}; every forward pass "
                               f"must run all MoE layers in order")
        items = np.asarray(items, np.int32)
        seqs = np.asarray(seqs, np.int32)
        if items.ndim != 1 or items.shape != seqs.shape or items.shape[0] == 0:
            raise ValueError(f"live routing: items and seqs must be equal non-empty [T] arrays, got "
                             f"{list(items.shape)} and {list(seqs.shape)}")
        T = items.shape[0]
        self.experts.append(np.zeros((T, self.L, self.K), np.int16))
        self.lookaheads.append(np.full((T, self.L, self.K), -1, np.int16))
        self.gates.append(np.zeros((T, self.L, self.K), np.float16))
        self.items.append(items)
        self.seqs.append(seqs)
        self.phases.append(int(phase))
        return self.steps - 1

    def set_layer(self, g: int, experts: np.ndarray, lookahead: np.ndarray | None = None,
                  gates: np.ndarray | None = None) -> None:
        """The router of layer-step ``g`` chose ``experts [T, K]`` (with ``gates``); ``lookahead [T, K]`` predicts
        layer ``l + 1`` (None at the last layer, or without predictions)."""
        if g != self.next_g:
            raise RuntimeError(f"live routing: layer-step {g} arrived, expected {self.next_g} (layers run in order)")
        s, l = divmod(g, self.L)
        if s >= self.steps:
            raise RuntimeError(f"live routing: layer-step {g} belongs to step {s}, which has not begun")
        ex = np.asarray(experts)
        T = self.experts[s].shape[0]
        if ex.shape != (T, self.K):
            raise ValueError(f"live routing: layer-step {g} routes {list(ex.shape)}, expected [{T}, {self.K}]")
        if ex.size and (ex.min() < 0 or ex.max() >= self.E):
            raise ValueError(f"live routing: layer-step {g} holds expert id {int(ex.max())} (or below 0); the "
                             f"model has {self.E} experts")
        self.experts[s][:, l] = ex
        if gates is not None:
            self.gates[s][:, l] = gates
        if lookahead is not None and l + 1 < self.L:
            self.lookaheads[s][:, l + 1] = lookahead
        self.next_g = g + 1
        self._cache = None

    # --- what the scheduler asks (TraceRouting's interface) ----------------------------------------------------
    def _visible(self, g: int) -> tuple[int, int]:
        if g >= self.next_g:
            raise FutureAccessError(f"live routing: layer-step {g} asked for before its router ran "
                                    f"(routing known up to {self.next_g - 1})")
        return divmod(g, self.L)

    def routing(self, g: int) -> np.ndarray:
        s, l = self._visible(g)
        return self.experts[s][:, l, :]

    def lookahead(self, g: int) -> np.ndarray | None:
        if not self.has_lookahead:
            return None
        s, l = divmod(g, self.L)
        if s >= self.steps or g > self.next_g:  # the prediction for g exists once g - 1 has run
            raise FutureAccessError(f"live routing: lookahead of layer-step {g} asked for before layer-step "
                                    f"{g - 1} ran")
        return self.lookaheads[s][:, l, :]

    def _groups(self, g: int, per_item: bool) -> tuple:
        """``((-1, gids, counts), per-item groups or None)`` of layer-step ``g``; the per-item groups are made on
        first request (the batched protocol never asks)."""
        if self._cache is None or self._cache[0] != g:
            s, l = self._visible(g)
            gid = self.experts[s][:, l, :].astype(np.int64) + l * self.E  # [T, K]
            self._cache = (g, gid, (-1, *np.unique(gid, return_counts=True)), None)
        _, gid, batched, items = self._cache
        if per_item and items is None:
            its = self.items[g // self.L]
            items = [(int(it), *np.unique(gid[its == it], return_counts=True)) for it in np.unique(its)]
            self._cache = self._cache[:3] + (items,)
        return batched, items

    def groups(self, g: int, per_item: bool):
        """Groups of layer-step ``g``, as ``TraceRouting.groups``: ``(item, gids, counts)``, gids ascending."""
        batched, items = self._groups(g, per_item)
        if per_item:
            yield from items
        else:
            yield batched

    def unique(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        _, u, c = self._groups(g, False)[0]
        return u, c

    def step_routing(self, s: int) -> np.ndarray:
        raise FutureAccessError(f"live routing: the routing of every layer of step {s} is not known before its "
                                f"layers run (strategies that see 'path' or 'future' cannot run live)")

    def step_meta(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        if s >= self.steps:
            raise FutureAccessError(f"live routing: step {s} has not begun")
        return self.items[s], self.seqs[s]

    # --- what the run leaves behind ----------------------------------------------------------------------------
    @property
    def tokens(self) -> int:
        return int(sum(e.shape[0] for e in self.experts))

    def complete_steps(self) -> int:
        """Steps whose every MoE layer ran."""
        return self.next_g // self.L

    def to_trace(self, model: str, meta: dict | None = None) -> Trace:
        """The routing of the complete steps as a trace (schema 2): one sequence per ``seq`` id, rows in the order
        the model processed them, ``phase`` per row; ``meta["live"]`` keeps the step structure
        (:func:`replay_workload` rebuilds the steps from it)."""
        S = self.complete_steps()
        if S == 0:
            raise ValueError("live routing: no complete step to record")
        seq = np.concatenate(self.seqs[:S]).astype(np.int64)
        step = np.repeat(np.arange(S), [e.shape[0] for e in self.experts[:S]])
        order = np.lexsort((np.arange(seq.shape[0]), step, seq))  # by sequence, then step, then row
        experts = np.concatenate(self.experts[:S])[order]
        la = np.concatenate(self.lookaheads[:S])[order]
        gates = np.concatenate(self.gates[:S])[order]
        phase = np.repeat(np.asarray(self.phases[:S], np.int8), [e.shape[0] for e in self.experts[:S]])[order]
        seq_sorted = seq[order]
        ids, lengths = np.unique(seq_sorted, return_counts=True)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # Per step: (sequence, tokens) of each sequence it ran, in item order: what replay_workload rebuilds.
        steps = []
        for s in range(S):
            su, first, cnt = np.unique(self.seqs[s], return_index=True, return_counts=True)
            its = self.items[s][first]
            steps.append([[int(q), int(n), int(i)] for q, n, i in sorted(zip(su, cnt, its), key=lambda r: r[2])])
        extra = dict(meta or {})
        extra["live"] = {"steps": steps, "sequence_ids": ids.tolist(), "phases": [int(p) for p in self.phases[:S]]}
        m = make_meta(model, self.E, extra.pop("source", "recorded:live"), extra.pop("generator", None), **extra)
        return Trace(experts, offsets, m, gates, la if self.has_lookahead else None, phase).validate()


def replay_workload(trace: Trace, model: ModelSpec, batch: int | None = None) -> Workload:
    """The steps a live run planned, rebuilt from its recorded trace (``meta["live"]``): planning this workload
    with the run's strategy, cache and hardware gives the run's own plan.

    Step ``s`` holds, for each sequence it ran (in batch-item order), that sequence's next ``n`` rows; ``batch``
    defaults to the most items any step ran.
    """
    live = trace.meta.get("live")
    if not isinstance(live, dict) or "steps" not in live:
        raise ValueError(f"trace ({trace.meta.get('model')}): no meta.live step structure; only a trace recorded "
                         f"by a live run (artifact.offload) can be replayed step by step")
    ids = list(live.get("sequence_ids", range(trace.num_sequences)))
    index = {int(q): i for i, q in enumerate(ids)}
    cursor = [int(trace.seq_offsets[i]) for i in range(trace.num_sequences)]
    rows, items, seqs, pos, offsets = [], [], [], [], [0]
    for s, step in enumerate(live["steps"]):
        for q, n, it in step:
            i = index.get(int(q))
            if i is None:
                raise ValueError(f"trace: meta.live step {s} names sequence {q}, which the trace does not hold")
            a = cursor[i]
            if a + n > int(trace.seq_offsets[i + 1]):
                raise ValueError(f"trace: meta.live step {s} runs {n} rows of sequence {q} beyond its end")
            rows.append(np.arange(a, a + n))
            items.append(np.full(n, it, np.int32))
            seqs.append(np.full(n, i, np.int32))
            pos.append(np.arange(a, a + n) - int(trace.seq_offsets[i]))
            cursor[i] = a + n
        offsets.append(offsets[-1] + sum(n for _, n, _ in step))
    if any(cursor[i] != int(trace.seq_offsets[i + 1]) for i in range(trace.num_sequences)):
        raise ValueError("trace: meta.live steps do not cover every row of the trace")
    idx = np.concatenate(rows)
    B = batch if batch is not None else max(max(it for _, _, it in step) + 1 for step in live["steps"])
    if model.experts != trace.num_experts or model.moe_layers != trace.layers or model.top_k != trace.top_k:
        raise ValueError(f"trace ({trace.meta.get('model')}): [{trace.layers} layers, {trace.num_experts} experts, "
                         f"top-{trace.top_k}] differs from model {model.name} ({model.moe_layers}, {model.experts}, "
                         f"top-{model.top_k})")
    return Workload(model, int(B), "live", trace.experts[idx], np.asarray(offsets, np.int64),
                    np.concatenate(items), np.concatenate(seqs), np.concatenate(pos).astype(np.int32),
                    None if trace.lookahead is None else trace.lookahead[idx],
                    None if trace.gates is None else trace.gates[idx], str(trace.meta.get("source", "")))
