"""Graph mode of the engine (a plan captured once into a CUDA graph and replayed): the same outputs as the eager
issue loop and the dense reference, the same counts, the start state restored before every replay, one graph per
prepared plan; and on the CPU, where there is no graph, a named refusal or the eager path.

GPU tolerances: float32 (loop path) graph against eager 1e-6 (the same kernels in the same order; cuBLAS may pick
another algorithm inside a capture, which moves float32 sums by ~1e-7), against the dense reference 1e-4 as in
tests/test_engine.py; bfloat16 (grouped path on sm90/sm100, whose index_add_ of a top-k > 1 COMPUTE adds in atomic
order) graph against eager 1e-2 and the reference 5e-2.
"""

from __future__ import annotations

import pytest
import torch

from artifact.core.errors import Unrunnable
from artifact.engine import ExpertWeights, OffloadEngine, dense_reference, max_rel_error
from artifact.engine.graph import GRAPH_KEY
from artifact.experiments.gpu_checks import lockstep_workload, next_layer_plan
from artifact.models import ModelSpec
from artifact.planner import plan as make_plan
from artifact.planner import strategies
from tests.helpers import TEST_HW

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")
COUNT_KEYS = ("copies_issued", "bytes_copied", "computes_issued", "uses_issued")


def tiny(dtype: str = "float32", d_model: int = 32, d_ff: int = 64) -> ModelSpec:
    return ModelSpec("tiny", moe_layers=3, experts=8, top_k=2, d_model=d_model, d_ff=d_ff, activation="swiglu",
                     dtype=dtype)


def planned(wl, strategy: str, cache: int, protocol: str = "batched", plans: dict | None = None):
    return make_plan(wl, strategy, cache, protocol, 0, TEST_HW, belady=(plans or {}).get("belady"))


# ---------------------------------------------------------------------------------------------------------------
# CPU: no graph, a named refusal or the eager path
# ---------------------------------------------------------------------------------------------------------------


def test_cpu_graph_is_refused_or_falls_back():
    m = tiny()
    wl = lockstep_workload(m, batch=2, steps=2, seed=1)
    plan = planned(wl, "on_demand", 4)
    w = ExpertWeights.random(m, "float32", seed=3, init_device="cpu")
    eng = OffloadEngine(m, plan.cache_experts, weights=w, device="cpu")
    with pytest.raises(ValueError, match="graph mode needs a CUDA device"):
        eng.run(plan, wl, timeline=False, graph=True)
    with pytest.raises(ValueError, match="graph must be"):
        eng.run(plan, wl, graph="yes")
    eager, tl = eng.run(plan, wl, timeline=False)
    assert tl.info["engine_mode"] == "eager" and tl.info["graph_fallback"] is None
    auto, tl_auto = eng.run(plan, wl, timeline=False, graph="auto")
    assert tl_auto.info["engine_mode"] == "eager" and "CUDA" in tl_auto.info["graph_fallback"]
    assert torch.equal(eager, auto)
    assert all(tl.info[k] == tl_auto.info[k] for k in COUNT_KEYS)
    assert len(tl_auto.info["issue_ms_repeats"]) == tl_auto.info["repeats"] and tl_auto.info["graph_capture_ms"] is None


# ---------------------------------------------------------------------------------------------------------------
# GPU (skipped without CUDA)
# ---------------------------------------------------------------------------------------------------------------


def _graph_vs_eager(eng: OffloadEngine, plan, wl, ref, tol_eager: float, tol_ref: float, what: str) -> None:
    eager, tl_e = eng.run(plan, wl, repeats=1, warmup=1, timeline=False, graph=False)
    eager2, _ = eng.run(plan, wl, repeats=1, warmup=0, timeline=False, graph=False)
    got, tl_g = eng.run(plan, wl, repeats=3, warmup=1, timeline=False, graph=True)
    assert tl_g.info["engine_mode"] == "graph" and tl_g.info["graph_fallback"] is None, what
    assert tl_e.info["engine_mode"] == "eager", what
    # Graph against eager: within the given tolerance, or twice what two eager runs drift apart (index_add_ on the
    # GPU accumulates with atomics, whose order, and so the last bf16 bits, changes from run to run).
    tol = max(tol_eager, 2 * max_rel_error(eager2, eager))
    assert max_rel_error(got, eager) <= tol, (what, max_rel_error(got, eager), max_rel_error(eager2, eager))
    assert max_rel_error(got, ref[:got.shape[0]]) <= tol_ref, what
    for k in COUNT_KEYS:  # the graph holds what the eager loop issues
        assert tl_g.info[k] == tl_e.info[k], (what, k)
    assert tl_g.info["copies_issued"] == plan.num_loads and tl_g.info["computes_issued"] == plan.num_computes
    # A second call replays the same graph (no new capture) from a restored start state: the same outputs.
    again, tl_again = eng.run(plan, wl, repeats=2, warmup=0, timeline=False, graph=True)
    assert tl_again.info["engine_mode"] == "graph"
    assert max_rel_error(again, got) <= tol, what


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("protocol", ["batched", "per_item"])
def test_gpu_graph_every_strategy_float32(protocol):
    """Every plannable strategy, small cache (slots reused hard), float32 loop path: graph = eager = reference."""
    m = tiny()
    wl = lockstep_workload(m, batch=4, steps=5, seed=2)
    w = ExpertWeights.random(m, "float32", seed=4)
    ref = dense_reference(m, w, wl)
    eng = OffloadEngine(m, m.total_experts, weights=w, device="cuda", ffn="loop")
    plans: dict = {}
    for name in strategies():
        try:
            plan = planned(wl, name, 6, protocol, plans)
        except Unrunnable:
            continue
        plans[name] = plan
        _graph_vs_eager(eng, plan, wl, ref, 1e-6, 1e-4, f"{name}/{protocol}")
    plan = next_layer_plan(wl, TEST_HW)  # prefetch-heavy: copies overlap the previous layer's compute
    _graph_vs_eager(eng, plan, wl, ref, 1e-6, 1e-4, "next_layer_prefetch")


@pytest.mark.gpu
@gpu
def test_gpu_graph_bfloat16_paths():
    m = tiny("bfloat16", d_model=256, d_ff=512)
    wl = lockstep_workload(m, batch=16, steps=4, seed=3)
    w = ExpertWeights.random(m, "bfloat16", seed=5)
    ref = dense_reference(m, w, wl)
    paths = ["loop"] + (["grouped"] if torch.cuda.get_device_capability()[0] in (9, 10) else [])
    for ffn in paths:
        eng = OffloadEngine(m, m.total_experts, weights=w, device="cuda", ffn=ffn)
        for name, cache in (("on_demand", 8), ("gpu_only", m.total_experts), ("intelligent_dedup", 8)):
            _graph_vs_eager(eng, planned(wl, name, cache), wl, ref, 1e-2, 5e-2, f"{ffn}/{name}")


@pytest.mark.gpu
@gpu
def test_gpu_graph_released_with_its_plan_and_refusals():
    m = tiny()
    wl = lockstep_workload(m, batch=4, steps=3, seed=8)
    w = ExpertWeights.random(m, "float32", seed=9)
    eng = OffloadEngine(m, m.total_experts, weights=w, device="cuda")
    a, b = planned(wl, "on_demand", 4), planned(wl, "gpu_only", m.total_experts)
    eng.run(a, wl, timeline=False, graph=True)
    prep_a = eng.prepare(a, wl)
    assert GRAPH_KEY in prep_a.programs
    eng.run(b, wl, timeline=False, graph=True)
    assert GRAPH_KEY not in prep_a.programs  # released when the engine prepared another plan
    with pytest.raises(ValueError, match="timeline=True"):
        eng.run(b, wl, timeline=True, graph=True)
    _, tl = eng.run(b, wl, timeline=True, graph="auto")
    assert tl.info["engine_mode"] == "eager" and "timeline" in tl.info["graph_fallback"]
    unpinned = ExpertWeights.random(m, "float32", seed=9, pin=False)
    eng2 = OffloadEngine(m, m.total_experts, weights=unpinned, device="cuda")
    with pytest.raises(ValueError, match="not pinned"):
        eng2.run(a, wl, timeline=False, graph=True)
    _, tl2 = eng2.run(a, wl, timeline=False, graph="auto")
    assert tl2.info["engine_mode"] == "eager" and "pinned" in tl2.info["graph_fallback"]
