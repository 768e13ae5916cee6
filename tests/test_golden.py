"""Golden loads for every strategy at three cache sizes (see tests/golden.py to review and print new ones)."""

from __future__ import annotations

import json

from artifact.planner import strategies
from tests.golden import CACHES, GOLDEN, current


def test_goldens_cover_every_strategy():
    gold = json.loads(GOLDEN.read_text())
    for name in strategies():
        for cache in CACHES:
            assert f"{name}|C{cache}|batched" in gold and f"{name}|C{cache}|per_item" in gold


def test_golden_loads():
    gold = json.loads(GOLDEN.read_text())
    now = current()
    changed = {k: (gold.get(k), v) for k, v in now.items() if gold.get(k) != v}
    assert not changed, ("decisions changed (golden, now); if intended, review and regenerate with "
                         f"`python -m tests.golden > tests/golden_loads.json`: {changed}")
