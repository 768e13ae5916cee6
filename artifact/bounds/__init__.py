"""Bounds: strategies that see the future, kept apart from online planning.

- ``belady``: Belady's MIN, demand fetch: the fewest loads any eviction policy can reach.
- ``oracle``: perfect prefetch, the fastest of an explicit list of MIN constructions (``oracle.CANDIDATES``): the
  latency floor the report sets every strategy against. It never consults the online registry, so adding a
  strategy cannot move it.

``BOUNDS`` maps their names to registry entries; :mod:`artifact.planner` looks names up here and in
:data:`artifact.policies.registry.STRATEGIES`.
"""

from __future__ import annotations

from artifact.bounds.belady import BOUNDS as _MIN_BOUNDS
from artifact.bounds.oracle import ORACLE

BOUNDS = {**_MIN_BOUNDS, ORACLE.name: ORACLE}
