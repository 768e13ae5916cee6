"""``on_demand``: MoE-OnDemand, the baseline of Pre-gated MoE's artifact (Hwang et al., ISCA 2024,
arXiv:2308.12066): fetch an expert when the router picks it, no prediction, LRU cache."""

from __future__ import annotations

from artifact.policies.base import Recency
from artifact.policies.registry import register


@register("on_demand", "MoE-OnDemand: fetch an expert when the router picks it",
          "Pre-gated MoE artifact baseline (arXiv:2308.12066)", "none", "LRU", order=10)
class OnDemand(Recency):
    """Demand fetch with LRU eviction."""
