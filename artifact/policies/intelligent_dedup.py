"""``intelligent_dedup``: our flagship, designed from what the routing traces show.

What the traces show (``python -m artifact trace inspect``), and what each fact asks of a cache:

1. Layers are visited in a fixed cycle. An expert of layer ``m`` is needed again only when layer ``m`` comes round,
   ``((m - l - 1) mod L) + 1`` layer-steps after layer ``l``. Plain LRU keeps the layer that just ran (needed again
   in ``L`` layer-steps) and evicts the layer coming next (needed in 1): exactly the wrong way round.
2. Popularity is skewed per layer (the top 10% of experts take 27-71% of Switch's tokens), and a batch of ``B``
   tokens touches expert ``e`` with probability ``1 - (1 - p_e)^B``: the same expert is worth more at batch 64 than
   at batch 1.
3. Within a sequence the next token rarely repeats its expert (1-10% for Switch), so recency says little; the
   layer-wise frequency says much more.
4. The router of layer ``l + 1`` applied to layer ``l``'s hidden state (the trace's ``lookahead``) names most of
   layer ``l + 1``'s experts one layer ahead, and a token's expert at layer ``l`` says something about its expert at
   layer ``l + 1`` (held-out transition accuracy 0.3-0.7 per layer on the calibrated workload).

Hence, with only what a real engine has (the past, the current layer's routing, the lookahead):

- Dedup: each expert is loaded once per layer-step for the whole batch, whatever the protocol.
- A per-token forecast of layer ``l + 1``: the lookahead's experts with its learned precision ``a``, and the rest of
  the token's ``top_k`` mass spread by an online transition table (layer ``l``'s first choice to layer ``l + 1``'s
  experts, smoothed towards the layer's popularity). The batch uses expert ``e`` with probability
  ``P(e) = 1 - prod_t (1 - p_t(e))``: the demand counts across the batch, folded into one number.
- Eviction by expected time to next use, ``d + (1 - f) L / q`` layer-steps: ``d`` is the cyclic distance to the
  expert's layer, ``q = 1 - (1 - p)^B`` the probability that a visit of that layer uses it (``p``: the layer's
  running frequency, a count with a uniform prior), and ``f`` the probability that the very next visit does: the
  forecast ``P(e)`` for the next layer, ``q`` for the others. The largest expected time goes first: an estimate of
  Belady's MIN.
- Prefetch, while layer ``l`` runs, the experts of layer ``l + 1`` most likely first, each admitted only if it is
  likelier to be used at its visit than its victim is at the victim's. How many: a prefetch pays only while the
  link would otherwise idle. The copies that fit under layer ``l``'s compute (its expert FFNs, the next NON-MoE part
  and the host's issue time, over one expert's copy time, all static figures of the target's hardware profile)
  are prefetched if ``P(e) >= min_probability``; past that window a wrong guess costs a whole copy on a busy link,
  so the bar rises with the share of the candidates' copy time the compute cannot hide,
  ``1 - t_compute / (n t_copy)``, between ``min_probability`` and ``sure_probability``. On a link-bound machine this
  stops the speculative copies that would push out the copies actually needed; where compute hides most copies,
  it keeps the link busy with every likely expert.
"""

from __future__ import annotations

import numpy as np

from artifact.core.select import smallest_of
from artifact.policies.base import Prefetch, Strategy
from artifact.policies.registry import register

_SCALE = 1000.0  # expected-use keys are compared as integers of 1/1000 layer-step


@register("intelligent_dedup", "ours: dedup + expected-reuse eviction + admitted lookahead prefetch",
          "this artifact (the seed's Intelligent+Deduplication, redesigned)", "lookahead, admitted",
          "expected time to next use", order=150)
class IntelligentDedup(Strategy):
    batch_aware = True

    def __init__(self, ctx, prior: float = 1.0, min_probability: float = 0.25, smoothing: float = 4.0,
                 use_lookahead: bool = True, use_transitions: bool = True, sure_probability: float = 0.95,
                 hardware_window: bool = True) -> None:
        super().__init__(ctx)
        L, E = ctx.L, ctx.E
        if not 0.0 < min_probability <= 1.0:
            raise ValueError(f"intelligent_dedup: min_probability must be in (0, 1], got {min_probability}")
        self.counts = np.full((L, E), prior * ctx.K / E)  # routed tokens per expert (with a uniform prior)
        self.tokens = np.full(L, prior)  # tokens seen per layer (with the prior's weight)
        self.trans = np.zeros((L, E, E))  # [L, E, E]: layer l first choice -> layer l+1 experts (counts)
        self.trans_n = np.zeros((L, E))
        self.la_hit = 1.0  # lookahead precision: predicted-and-used / predicted (Beta(1, 1) prior)
        self.la_n = 2.0
        self.min_p = min_probability
        self.smoothing = smoothing
        self.use_lookahead = use_lookahead and ctx.has_lookahead
        self.use_transitions = use_transitions
        self.next_p = np.zeros(E)  # P(e used at the next layer-step), for the experts of that layer
        self.next_layer = -1
        self._pending: np.ndarray | None = None
        self._prev_first: np.ndarray | None = None
        self.batch_tokens = float(ctx.B)
        self.sure_p = sure_probability
        self.hardware_window = hardware_window
        hw = getattr(ctx, "hardware", None)
        self.hw = hw
        self.t_copy = float(hw.copy_ms(ctx.model.expert_bytes)) if hw is not None else 0.0
        host = hw.host_issue_us if hw is not None else {}
        fixed_us = host.get("nonmoe_us", 0.0) + host.get("compute_us", 0.0)
        self._host_ms = (fixed_us / 1e3, host.get("use_us", 0.0) / 1e3)
        self._compute_cache: dict = {}

    def observe(self, g):
        ctx = self.ctx
        layer = g % ctx.L
        r = ctx.routing(g)  # [T, K]
        self.batch_tokens = float(r.shape[0])
        flat = r.reshape(-1)
        self.counts[layer] += np.bincount(flat, minlength=ctx.E)
        self.tokens[layer] += r.shape[0]
        if layer > 0 and self._prev_first is not None and self._prev_first.shape[0] == r.shape[0]:
            src = np.repeat(self._prev_first, r.shape[1])
            E = ctx.E
            self.trans[layer - 1] += np.bincount(src * E + flat, minlength=E * E).reshape(E, E)
            self.trans_n[layer - 1] += np.bincount(self._prev_first, minlength=E) * r.shape[1]
        self._prev_first = r[:, 0].astype(np.int64)
        if self._pending is not None:
            la, ok = self._pending
            used = np.zeros(ctx.E, bool)
            used[flat] = True
            self.la_hit += float(used[la[ok]].sum())
            self.la_n += float(ok.sum())
            self._pending = None
        self.next_layer = -1

    def _forecast(self, g: int) -> np.ndarray:
        """P(each expert of layer l + 1 is used at layer-step g + 1) ``[E]``."""
        ctx = self.ctx
        L, E, K = ctx.L, ctx.E, ctx.K
        layer = g % L
        nxt = layer + 1
        pop = self.counts[nxt] / self.tokens[nxt]  # [E]: per-token probability (sums to K)
        first = self._prev_first  # layer l first choices [T]
        T = first.shape[0]
        if self.use_transitions:
            rows = self.trans[layer][first]  # [T, E]
            n = self.trans_n[layer][first][:, None]
            spread = (rows + self.smoothing * pop[None, :]) / (n + self.smoothing * K)  # [T, E], sums to K
        else:
            spread = np.broadcast_to(pop[None, :] / K * K, (T, E)).copy()
        la = ctx.lookahead(g + 1) if self.use_lookahead else None
        if la is not None and (la >= 0).any():
            a = self.la_hit / self.la_n
            ok = la >= 0  # [T, K]
            named = np.zeros((T, E), bool)
            rows_i = np.repeat(np.arange(T), K)[ok.reshape(-1)]
            named[rows_i, la.reshape(-1)[ok.reshape(-1)]] = True
            rest = np.where(named, 0.0, spread)
            mass = rest.sum(axis=1, keepdims=True)
            n_named = named.sum(axis=1, keepdims=True)
            # The lookahead's experts get its precision; the rest of the token's k choices follow the spread.
            p = np.where(named, a, rest * (K - a * n_named) / np.maximum(mass, 1e-12))
            self._pending = (la.reshape(-1), ok.reshape(-1))
        else:
            p = spread
        p = np.clip(p, 0.0, 1.0 - 1e-9)
        return 1.0 - np.exp(np.log1p(-p).sum(axis=0))

    def next_visit(self, gids: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cyclic distance ``d`` to each expert's next visit, probability ``f`` that visit uses it, probability
        ``q`` that a later visit does)."""
        ctx = self.ctx
        L, E = ctx.L, ctx.E
        gl = gids // E
        d = ((gl - g % L - 1) % L) + 1
        p = np.minimum(self.counts[gl, gids % E] / self.tokens[gl], 1.0)
        q = np.maximum(1.0 - (1.0 - p) ** self.batch_tokens, 1e-9)
        f = q
        if self.next_layer >= 0:
            nxt = gl == self.next_layer
            if nxt.any():
                f = np.where(nxt, self.next_p[gids % E], q)
        return d, f, q

    def expected_next_use(self, gids: np.ndarray, g: int) -> np.ndarray:
        """Expected layer-steps from ``g`` until each expert is next used (floats)."""
        d, f, q = self.next_visit(gids, g)
        # Used at the next visit (in d) with probability f; otherwise one more cycle of L, then geometric in q.
        return d + (1.0 - f) * self.ctx.L / q

    def prefetch(self, g):
        ctx = self.ctx
        layer = g % ctx.L
        if layer + 1 >= ctx.L:
            return None
        P = self._forecast(g)
        self.next_p = P
        self.next_layer = layer + 1
        cand = np.nonzero(P >= self.min_p)[0]
        cand = cand[np.lexsort((cand, -P[cand]))]
        if self.hardware_window and self.hw is not None and self.t_copy > 0 and cand.shape[0]:
            # The copies that fit under this layer-step's compute cost nothing; past them, a copy is worth it only
            # if it is likely enough: the more of the candidates' copy time the compute hides, the lower the bar.
            t_c = self._compute_ms(g)
            window = int(np.ceil(t_c / self.t_copy))
            bar = float(np.clip(1.0 - t_c / (cand.shape[0] * self.t_copy), self.min_p, self.sure_p))
            cand = np.concatenate([cand[:window], cand[window:][P[cand[window:]] >= bar]])
        gids = cand + (layer + 1) * ctx.E
        return Prefetch(gids, np.full(gids.shape[0], g + 1, np.int64), None)

    def _compute_ms(self, g: int) -> float:
        """Compute-stream time of layer-step ``g`` (its COMPUTE, the next NON-MoE part, the host's issue time) from
        the hardware profile: the time the link would idle without prefetches."""
        ctx = self.ctx
        uniq, _ = ctx.unique(g)
        key = (uniq.shape[0], self.batch_tokens)
        t = self._compute_cache.get(key)
        if t is None:
            n, tok = key
            name = ctx.model.name
            try:
                t = float(self.hw.compute_ms(name, np.array([n]), np.array([tok * ctx.K]))[0])
                t += float(self.hw.nonmoe_ms(tok, name))
                host_fixed, host_use = self._host_ms
                t = max(t, host_fixed + host_use * n)
            except KeyError:  # no timings for this expert shape: no window, only near-certain prefetches
                t = 0.0
            self._compute_cache[key] = t
        return t

    def admit(self, gids, targets, victims, g):
        """A prefetch for the next layer-step is worth its victim when it is likelier to be used at its visit
        (the soonest any expert can be needed) than the victim is at the victim's next visit."""
        _, mine, _ = self.next_visit(gids, g)
        vg = self.ctx.cache.slot_gid[victims]
        _, theirs, _ = self.next_visit(np.maximum(vg, 0), g)
        return (vg < 0) | (mine > theirs)

    def evict(self, cand, n, g, incoming=None):
        """Evict the largest expected time to next use."""
        if n <= 0 or cand.shape[0] == 0:
            return cand[:0]
        t = self.expected_next_use(self.ctx.cache.slot_gid[cand], g)
        return smallest_of(-(t * _SCALE).astype(np.int64), cand, n)
