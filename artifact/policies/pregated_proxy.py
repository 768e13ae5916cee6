"""``pregated_proxy``: the training-free pre-gate, layer ``l + 1``'s router applied to layer ``l``'s hidden state
(the trace's ``lookahead``), as mixtral-offloading (arXiv:2312.17238) and DAOP use it, with Pre-gated MoE's LFU
cache. It can mispredict; a miss falls back to an on-demand fetch. Kept apart from ``pregated`` (the exact arm)."""

from __future__ import annotations

from artifact.policies.base import Frequency
from artifact.policies.pregated import NextLayerSet
from artifact.policies.registry import register


@register("pregated_proxy", "training-free pre-gate: next router on this layer's hidden state",
          "mixtral-offloading arXiv:2312.17238; DAOP", "trace lookahead", "LFU", needs_lookahead=True,
          params={"source": "lookahead"}, order=40)
class PregatedProxy(NextLayerSet, Frequency):
    """Lookahead next-layer prefetch with an LFU cache."""
