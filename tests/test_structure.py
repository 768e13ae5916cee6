"""The shape of the package: nothing imports upward, no import cycles, no module over 600 lines, and adding a
strategy is one new file that every entry point picks up without moving the bounds."""

from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import artifact
from artifact.policies.registry import STRATEGIES

ROOT = Path(artifact.__file__).parent
MAX_LINES = 600
# Layers, bottom first: a module may import its own layer or lower ones only.
LAYERS = [
    ("artifact", "artifact.atomicfile", "artifact.models"),
    ("artifact.core",),
    ("artifact.traces",),
    ("artifact.policies",),
    ("artifact.runtime",),
    ("artifact.bounds",),
    ("artifact.planner",),
    ("artifact.engine",),
    ("artifact.measure",),
    ("artifact.experiments",),
    ("artifact.report",),
    ("artifact.cli", "artifact.__main__", "artifact.reproduce"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _rank(module: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"module {module} is in no layer of tests/test_structure.py"
    return rank


def _imports(path: Path, module: str) -> set[str]:
    """Every ``artifact`` module imported anywhere in the file (functions included), but under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "artifact")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name.split(".")[0] != "artifact":
                continue
            mods = _modules()
            for a in node.names:
                full = f"{name}.{a.name}"
                out.add(full if full in mods else name)
    return out


GRAPH = {m: _imports(p, m) for m, p in _modules().items()}


def test_nothing_imports_upward():
    bad = [(m, t) for m, targets in GRAPH.items() for t in targets if _rank(t) > _rank(m)]
    assert not bad, f"upward imports (module -> imported): {bad}"


def test_no_import_cycles():
    # Tarjan-free check: a module may not reach itself through other modules (package __init__ re-exports of
    # their own children are not edges back to the parent).
    def reach(start):
        seen, stack = set(), [t for t in GRAPH.get(start, ()) if not start.startswith(t + ".")]
        while stack:
            m = stack.pop()
            if m in seen:
                continue
            seen.add(m)
            stack += [t for t in GRAPH.get(m, ()) if not m.startswith(t + ".") and not t.startswith(m + ".")]
        return seen

    cycles = [m for m in GRAPH if m in reach(m)]
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


def test_no_module_over_600_lines():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_report_reads_files_not_planners():
    bad = [(m, t) for m, targets in GRAPH.items() if m.startswith("artifact.report") for t in targets
           if t.startswith(("artifact.runtime", "artifact.bounds", "artifact.engine", "artifact.experiments",
                            "artifact.policies"))]
    assert not bad, f"the report must read CSV/JSON only: {bad}"


# --- adding a strategy is one file ---------------------------------------------------------------------------------

TOY = '''
"""A toy strategy for the structure test: evict the most recently used expert."""
from artifact.core.select import smallest
from artifact.policies.base import Recency
from artifact.policies.registry import register


@register("toy_mru", "toy: evict the most recently used", "tests/test_structure.py", "none", "MRU")
class ToyMRU(Recency):
    def evict(self, cand, n, g, incoming=None):
        return smallest(-self.recent, cand, n)
'''


@pytest.fixture
def toy_strategy(tmp_path):
    (tmp_path / "toy_policy.py").write_text(TOY)
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("toy_policy")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("toy_policy", None)
        STRATEGIES.pop("toy_mru", None)


def test_a_new_strategy_is_one_file_and_leaves_the_oracle_alone(toy_strategy, capsys):
    from artifact.cli import main
    from artifact.engine import ExpertWeights, OffloadEngine, dense_reference, max_rel_error
    from artifact.models import ModelSpec
    from artifact.planner import plan, strategies
    from tests.helpers import TEST_HW, random_workload

    m = ModelSpec("tiny", 3, 8, 2, 32, 64, "swiglu", "float32")
    w = random_workload(m, batch=3, n_seq=6, seed=5, steps=6)
    assert "toy_mru" in strategies()
    # The oracle does not consult the registry: the same plan with and without the toy strategy.
    with_toy = plan(w, "oracle", 9, hardware=TEST_HW)
    STRATEGIES.pop("toy_mru")
    without = plan(w, "oracle", 9, hardware=TEST_HW)
    toy_strategy.register  # noqa: B018  (the module stays imported)
    importlib.reload(toy_strategy)
    for field in ("load_gid", "load_slot", "load_before", "use_slot", "use_hit"):
        assert np.array_equal(getattr(with_toy, field), getattr(without, field)), field
    # Simulate from the command line, by name.
    assert main(["simulate", "--model", "switch-base-128", "--sequences", "6", "--tokens", "6", "--steps", "4",
                 "--batch", "2", "--cache-experts", "16", "--strategy", "toy_mru", "--hardware", "h200",
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["strategy"] == "toy_mru" and row["loads"] > 0
    # And on the engine: the toy's plan computes the same outputs as every expert resident.
    p = plan(w, "toy_mru", 9, hardware=TEST_HW)
    wts = ExpertWeights.random(m, seed=0, pin=False, init_device="cpu")
    out, tl = OffloadEngine(m, p.cache_experts, weights=wts, device="cpu").run(p, w, warmup=0)
    assert max_rel_error(out, dense_reference(m, wts, w)[: out.shape[0]]) <= 1e-5
    assert tl.info["copies_issued"] == p.num_loads
