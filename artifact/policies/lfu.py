"""``lfu``: least frequently used, the expert cache of Pre-gated MoE's artifact (ranggihwang/Pregated_MoE,
``src/fastertransformer/utils/lfu_cache_policy.h``, ``cpp_config.ini`` ``cache_policy = LFU``) and of
libCacheSim's ``LFU``.

A read counts once per layer-step (the batch's demand for an expert is one request, as in every engine that loads
each expert once per layer). Counts live while the expert is resident: an evicted expert starts again from one (the
artifact's ``Erase`` deletes the entry). Ties go to the least recently used, which is the order Pre-gated MoE's
frequency multimap gives (an entry is re-inserted whenever its count changes). Demand fetch, no prediction.
"""

from __future__ import annotations

from artifact.policies.base import Frequency
from artifact.policies.registry import register


@register("lfu", "LFU: evict the expert read least often since it was loaded, ties by LRU",
          "Pre-gated MoE artifact's expert cache; libCacheSim LFU", "none", "LFU", order=80)
class LFU(Frequency):
    """Demand fetch with :class:`~artifact.policies.base.Frequency` eviction."""
