"""The grid runner: one row per run, atomic rewrites, resume, a refusal row (never a crash, never a NaN) for what
cannot run, and a stop for every other error."""

from __future__ import annotations

import csv

import pytest

from artifact.experiments.grids import Grid, Point
from artifact.experiments.runner import read_rows, run_grid
from artifact.experiments.runs import WorkloadSpec
from artifact.experiments.schema import FIELDS
from tests.helpers import DATA

WS = WorkloadSpec("switch-base-128", None, 24, 16, 0)
HW = str(DATA / "h200-test.json")


def _grid(strategies=("on_demand", "belady", "intelligent_dedup", "oracle"), batches=(1, 4), cache=32,
          protocol="batched") -> Grid:
    pts = tuple(Point("t", "switch-base-128", WS, b, cache, protocol, s, 6) for b in batches for s in strategies)
    return Grid("t", ("E1",), pts)


def test_rows_and_schema(tmp_path):
    path = run_grid(_grid(), tmp_path, HW, jobs=1, progress=False)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == FIELDS
        rows = list(reader)
    assert len(rows) == 8
    r = rows[0]
    assert r["strategy"] == "on_demand" and r["batch"] == "1" and r["executor"] == "simulator"
    assert int(r["hits"]) + int(r["demand_loads"]) == int(r["unique_requests"])
    assert float(r["latency_ms_per_step"]) > 0 and r["hardware"] == "h200-test"
    assert r["package_version"] and r["torch"]
    oracle = [x for x in rows if x["strategy"] == "oracle"]
    assert all(x["oracle_source"] for x in oracle)


def test_second_run_does_nothing(tmp_path):
    path = run_grid(_grid(), tmp_path, HW, jobs=1, progress=False)
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    run_grid(_grid(), tmp_path, HW, jobs=1, progress=False)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_stopped_grid_finishes_the_rest(tmp_path):
    full = _grid()
    half = Grid("t", full.experiments, full.points[:4])  # as if stopped after the first task
    path = run_grid(half, tmp_path, HW, jobs=1, progress=False)
    first = {r["point_id"]: r for r in read_rows(path)}
    assert len(first) == 4
    run_grid(full, tmp_path, HW, jobs=1, progress=False)
    rows = read_rows(path)
    assert [r["point_id"] for r in rows] == [p.point_id for p in full.points]  # grid order, no duplicates
    for r in rows:
        if r["point_id"] in first:
            assert r == first[r["point_id"]]  # untouched
    # and the finished file equals a run from scratch
    fresh = run_grid(full, tmp_path / "fresh", HW, jobs=1, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "git_commit"} for r in rs]  # noqa: E731
    assert strip(read_rows(fresh)) == strip(rows)


def test_parallel_equals_serial(tmp_path):
    a = run_grid(_grid(), tmp_path / "a", HW, jobs=1, progress=False)
    b = run_grid(_grid(), tmp_path / "b", HW, jobs=2, progress=False)
    assert a.read_bytes() == b.read_bytes()


def test_configuration_that_cannot_run_is_a_refusal_row(tmp_path):
    # per-layer slots: 8 slots over 12 layers leave layers without a slot
    g = _grid(strategies=("mixtral_offloading", "on_demand"), batches=(1,), cache=8)
    rows = read_rows(run_grid(g, tmp_path, HW, jobs=1, progress=False))
    bad = rows[0]
    assert bad["latency_ms_per_step"] == "" and bad["loads"] == "" and bad["note"].startswith("refused: per-layer")
    assert rows[1]["note"] == "" and float(rows[1]["latency_ms_per_step"]) > 0
    assert "nan" not in path_text(tmp_path)


def path_text(root) -> str:
    return "".join(p.read_text() for p in root.glob("*.csv")).lower()


def test_any_other_error_stops_the_grid(tmp_path, monkeypatch):
    import artifact.experiments.runner as runner

    def broken(*a, **k):
        raise ValueError("a bug, not a refusal")

    monkeypatch.setattr(runner, "simulate_one", broken)
    with pytest.raises(ValueError, match="a bug, not a refusal"):
        run_grid(_grid(batches=(1,)), tmp_path, HW, jobs=1, progress=False)


def test_not_a_grid_csv(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"t\.csv: field 'point_id' missing"):
        run_grid(_grid(), tmp_path, HW, jobs=1, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# Progress by expected cost, tasks split for the pool, strict JSON, the engine's mode in its rows
# ---------------------------------------------------------------------------------------------------------------


def test_progress_counts_expected_cost_and_tasks_split_cleanly():
    from collections import OrderedDict

    from artifact.experiments.grids import sim_grid
    from artifact.experiments.runner import _split_tasks, point_cost
    from artifact.planner import strategies

    g = sim_grid(quick=True)
    costs = {p.point_id: point_cost(p) for p in g.points}
    assert all(c > 0 for c in costs.values())
    by = {(p.strategy, p.batch, p.protocol): costs[p.point_id] for p in g.points}
    for s in strategies():  # more tokens cost more; per_item costs more unless the strategy dedups anyway
        assert by[(s, 64, "batched")] > by[(s, 1, "batched")]
        if (s, 64, "per_item") in by and not strategies()[s].batch_aware:
            assert by[(s, 64, "per_item")] > by[(s, 64, "batched")]
    groups: OrderedDict = OrderedDict()
    for p in g.points:
        groups.setdefault(p.task_key, []).append(p)
    tasks = _split_tasks(groups, n_jobs=2)
    assert len(tasks) > len(groups)  # the big groups were split
    seen = [p.point_id for t in tasks.values() for p in t]
    assert sorted(seen) == sorted(p.point_id for p in g.points)  # every point once
    for t in tasks.values():
        names = {p.strategy for p in t}
        assert len({p.task_key for p in t}) == 1
        if "oracle" in names:  # the oracle reuses belady's plan: they share a task
            assert "belady" in names
    assert _split_tasks(groups, n_jobs=1).keys() == {(k, 0) for k in groups}  # one process: nothing to balance


def test_json_files_are_strict(tmp_path):
    import json

    from artifact.experiments.runner import read_timelines, write_timelines

    path = tmp_path / "timelines.json"
    write_timelines(path, {"p": {"step_ms": float("nan"), "loads": {"end_ms": [1.0, float("inf")]}}})
    text = path.read_text()

    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    doc = json.loads(text, parse_constant=refuse)
    assert doc["points"]["p"]["step_ms"] is None and doc["points"]["p"]["loads"]["end_ms"] == [1.0, None]
    assert set(doc["null_reasons"]) == {"$.points.p.step_ms", "$.points.p.loads.end_ms[1]"}
    assert read_timelines(path)["p"]["step_ms"] is None


def test_engine_rows_record_the_engine_mode(tmp_path):
    from artifact.experiments.grids import SWITCH_MINI

    pts = tuple(Point("t", "switch-base-128", WS, 2, 32, "batched", s, 2, "engine", 1, SWITCH_MINI)
                for s in ("on_demand", "gpu_only"))
    rows = read_rows(run_grid(Grid("t", ("E5",), pts), tmp_path, HW, jobs=1, device="cpu", progress=False))
    assert [r["engine_mode"] for r in rows] == ["eager", "eager"]  # no CUDA graph on the CPU
    eager = read_rows(run_grid(Grid("u", ("E5",), pts), tmp_path, HW, jobs=1, device="cpu", progress=False,
                               engine_graph=False))
    assert [r["engine_mode"] for r in eager] == ["eager", "eager"]


def test_sensitivity_grid_sweeps_the_lookahead_apart():
    """E9's lookahead-accuracy points: their own workloads (only the lookahead overridden, so the report can split them
    from the locality x coupling sweep), the lookahead readers and the bounds, every accuracy x batch; quick mode keeps
    the exact lookahead at batch 1."""
    from artifact.experiments import grids
    from artifact.report.sensitivity import LOOKAHEAD, knob

    for quick in (False, True):
        pts = [p for p in grids.sensitivity_grid(quick).points if p.workload.overrides[0][0] == "lookahead_accuracy"]
        accs = grids.SENSITIVITY_LOOKAHEAD[-1:] if quick else grids.SENSITIVITY_LOOKAHEAD
        batches = grids.SENSITIVITY_BATCHES[:1] if quick else grids.SENSITIVITY_BATCHES
        assert len(pts) == len(accs) * len(batches) * len(grids.LOOKAHEAD_STRATEGIES)
        assert {knob(p.workload.label, LOOKAHEAD) for p in pts} == set(accs)
        assert all(len(p.workload.overrides) == 1 and p.cache_experts == grids.DEFAULT_CACHE for p in pts)
        assert {p.strategy for p in pts} == set(grids.LOOKAHEAD_STRATEGIES) and "oracle" in grids.LOOKAHEAD_STRATEGIES


def test_frontier_grid_sweeps_the_bar_on_the_sim_grids_points():
    """Target 1's bar sweep: every development seed, cache and small batch of the sim grid, the flagship's variants
    (the default, no prefetch, each fixed bar, never a sure bar below 0.95); its default points are the sim grid's
    own flagship points (the same workload, cache, batch and steps), so its rows sit beside the peers' there."""
    from artifact.experiments import grids

    g = grids.frontier_grid()
    assert len(g.points) == len(grids.SEEDS) * len(grids.CACHES) * len(grids.FRONTIER_BATCHES) * len(grids.FRONTIER)
    assert {p.strategy for p in g.points} == {grids.FLAGSHIP} and {p.protocol for p in g.points} == {"batched"}
    for p in g.points:
        prm = dict(p.params)
        if p.variant.startswith("bar_"):
            assert prm["break_even"] is False and prm["min_probability"] == float(p.variant[4:])
            assert prm["sure_probability"] == max(prm["min_probability"], 0.95)
    sim = {(p.workload, p.batch, p.cache_experts, p.steps) for p in grids.sim_grid().points
           if p.strategy == grids.FLAGSHIP and p.protocol == "batched"}
    default = {(p.workload, p.batch, p.cache_experts, p.steps) for p in g.points if p.variant == ""}
    assert default <= sim and len(default) == len(grids.SEEDS) * len(grids.CACHES) * len(grids.FRONTIER_BATCHES)
    quick = grids.frontier_grid(quick=True)
    assert len(quick.points) == len(grids.FRONTIER) and {p.batch for p in quick.points} == {1}


def test_horizon_grid_is_belady_with_each_horizon_at_the_real_grids_points():
    from artifact.experiments import grids

    g = grids.horizon_grid()
    real = {(p.workload, p.cache_experts, p.steps) for p in grids.real_grid().points if p.strategy == "belady"}
    assert {(p.workload, p.cache_experts, p.steps) for p in g.points} == real
    assert len(g.points) == len(real) * len(grids.HORIZONS) and {p.strategy for p in g.points} == {"belady"}
    assert {p.variant for p in g.points} == {f"horizon_{h}" for h in grids.HORIZONS}
    assert all(dict(p.params)["horizon"] == int(p.variant.split("_")[1]) for p in g.points)
