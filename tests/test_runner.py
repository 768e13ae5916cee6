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
