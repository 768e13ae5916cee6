"""The offloading engine: runs a plan for real with PyTorch (pinned host slab, device slots, copy and compute
streams, events for every dependency).

- ``weights``: :class:`ExpertWeights`, every expert in one pinned host slab (random, or a safetensors file);
- ``kernels``: the NON-MoE stand-in and the expert FFN of a COMPUTE (``loop`` and ``grouped`` paths);
- ``prepare``: the plan checked against the workload, and every tensor a run needs built before timing;
- ``executor``: :class:`OffloadEngine`, the issue loop, its streams and events, and what a run returns;
- ``graph``: graph mode, the plan's issue sequence captured once into a CUDA graph and replayed (``run(graph=...)``);
- ``reference``: the same math with every expert resident and no plan (:func:`dense_reference`).
"""

from artifact.core.plan import PlanError
from artifact.engine.executor import OffloadEngine
from artifact.engine.reference import dense_reference, make_inputs, max_rel_error, token_gates
from artifact.engine.weights import ExpertWeights

__all__ = ["ExpertWeights", "OffloadEngine", "PlanError", "dense_reference", "make_inputs", "max_rel_error",
           "token_gates"]
