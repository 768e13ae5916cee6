"""``gpu_only``: every expert resident from the start, no offloading (the GPU-only baseline of Pre-gated MoE's
artifact). Not iso-cache: it runs with one slot per routed expert, whatever cache is asked for."""

from __future__ import annotations

import numpy as np

from artifact.policies.base import Recency
from artifact.policies.registry import register


@register("gpu_only", "every expert resident: no offloading", "Pre-gated MoE artifact baseline", "-", "-",
          role="reference", order=990)
class GpuOnly(Recency):
    @classmethod
    def slots(cls, requested, layers, experts):
        return layers * experts

    def preload(self, slots):
        return np.arange(slots, dtype=np.int64)
