"""Stopping a grid stops all of it: SIGTERM or Ctrl-C on ``python -m artifact grid`` ends its worker processes,
keeps every finished row and exits with 128 + the signal; the next run finishes the rest without duplicates. A
runner killed outright (SIGKILL: no handler runs) leaves no worker behind either: each watches its parent.

The grid runs in a subprocess through the CLI (``artifact.cli.main(["grid", "sim", ...])``) with the ``sim`` grid
replaced by a small one (16 tasks of a few hundred ms), so that it is still running when the signal comes. Processes
are found through /proc (Linux).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from artifact.experiments.runner import read_rows
from tests.helpers import DATA

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
ROOT = Path(__file__).resolve().parents[1]
HW = str(DATA / "h200-test.json")

DRIVER = textwrap.dedent("""
    import sys
    import artifact.experiments.grids as grids
    from artifact.experiments.grids import Grid, Point
    from artifact.experiments.runs import WorkloadSpec

    def small(quick=False):
        ws = WorkloadSpec("switch-base-128", None, 64, 48, 0)
        pts = tuple(Point("sim", "switch-base-128", ws, b, c, "batched", s, 40)
                    for c in (32, 48) for b in range(1, 9) for s in ("on_demand", "belady", "intelligent_dedup"))
        return Grid("sim", ("E1",), pts)

    grids.GRIDS["sim"] = small
    from artifact.cli import main
    sys.exit(main(["grid", "sim", "--out", sys.argv[1], "--hardware", sys.argv[2], "--jobs", "2"]))
""")
TOTAL = 2 * 8 * 3


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(out), HW], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (scanning /proc/*/stat for parent ids)."""
    parent_of = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent_of[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent_of.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def _wait_for_rows(proc: subprocess.Popen, csv: Path, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the grid ended before the signal: {proc.communicate()}")
        if csv.is_file() and read_rows(csv):
            return
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no row written in time")


def _gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_ends_workers_keeps_rows_and_resumes(tmp_path, sig):
    out = tmp_path / "raw"
    csv = out / "sim.csv"
    proc = _start(out)
    _wait_for_rows(proc, csv)
    workers = _children(proc.pid)
    assert workers, "the runner has no worker processes"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name}" in err and "Run the same command again" in err
    assert not _gone(workers), "worker processes outlived the runner"
    kept = read_rows(csv)
    ids = [r["point_id"] for r in kept]
    assert 0 < len(kept) < TOTAL and len(set(ids)) == len(ids)
    before = {r["point_id"]: r for r in kept}
    # The next run finishes the rest: every point once, in grid order, the kept rows untouched.
    again = _start(out)
    _, err2 = again.communicate(timeout=300)
    assert again.returncode == 0, err2
    rows = read_rows(csv)
    assert len(rows) == TOTAL and len({r["point_id"] for r in rows}) == TOTAL
    for r in rows:
        if r["point_id"] in before:
            assert r == before[r["point_id"]]


def test_killed_runner_leaves_no_worker(tmp_path):
    out = tmp_path / "raw"
    proc = _start(out)
    _wait_for_rows(proc, out / "sim.csv")
    workers = _children(proc.pid)
    assert workers
    proc.kill()  # SIGKILL: no handler runs in the runner
    proc.communicate(timeout=30)
    assert not _gone(workers), "worker processes outlived a killed runner"
