"""Shared set-up of the pytest-benchmark suite: where runs are stored, what machine they ran on, what to do when
``--benchmark-compare`` has nothing to compare against, how cases are timed, and the workloads every case reuses
(built once, untimed).

Run from the repository root: ``python -m pytest benchmarks --benchmark-autosave`` saves a run under
``.benchmarks/<machine id>/``; a later ``python -m pytest benchmarks --benchmark-compare`` compares against the
latest saved run of the same machine id. The storage folder is the repository's ``.benchmarks`` whatever the
working directory, unless ``--benchmark-storage`` names another.

Timing fit for regression tracking on a small shared machine (README, "Benchmarks and regression tracking"):

- thread caps (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` = 1 unless set) before numpy or
  torch load: multi-threaded BLAS spins when another process holds a core (a 50x slowdown seen on 2 cores);
- the process's CPU time (``time.process_time``) as the timer, unless ``--benchmark-timer`` names another: every CPU
  case is single-threaded work, and CPU time does not count the time another process held the core (the GPU engine
  cases time wall clock: they wait on the device);
- the garbage collector off while a round runs (``--benchmark-disable-gc``);
- compare on the minimum over rounds (noise only ever adds time), per case with a wide threshold (the README's
  ``--benchmark-compare-fail=min:50%``: on a 2-core VM shared with other work, a case's minimum still moved by up
  to 38% between unchanged runs, when another process held the memory system through all its rounds), and over the
  suite with a tight one: ``--geomean-fail=10%`` fails the run when the geometric mean over the compared cases of
  (this run's minimum / the baseline's) exceeds 1.10 (it stayed within 3.3% there). A broad slowdown shows in the
  mean; a large one of a single case in its own figure.

``ARTIFACT_BENCH_SLOWDOWN=1.25`` (read here only, for checking that the compare catches a regression) makes every
call of the planner (``artifact.planner.plan``) and the simulator (``artifact.runtime.simulator.simulate``) burn
0.25x its own CPU time in extra work after it returns: a 25% slower simulated grid, decisions unchanged.
"""

from __future__ import annotations

import os
import sys

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Before numpy and torch are first imported (they read these once, when they load); a user's own setting wins.
_CAPS_LATE = sorted(m for m in ("numpy", "torch") if m in sys.modules)
for _var in THREAD_ENV:
    os.environ.setdefault(_var, "1")

import functools  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from artifact.core.metrics import count_metrics  # noqa: E402
from artifact.core.requests import Requests, build_requests  # noqa: E402
from artifact.experiments.runs import DEFAULT_SEQUENCES, DEFAULT_TOKENS  # noqa: E402
from artifact.measure.environment import nvidia_smi  # noqa: E402
from artifact.runtime.hardware import HardwareProfile, load_profile  # noqa: E402
from artifact.traces.workload import Workload, decode_workload  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
STORAGE = REPO_ROOT / ".benchmarks"
PLUGIN_DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark's own default: relative to the working directory
SAVE_FIRST = "python -m pytest benchmarks --benchmark-autosave"

# What a case records beside its time (benchmark.extra_info), so a change in the plan's decisions shows up next to a
# change in speed. Counts are exact and deterministic: any difference from the baseline is a change of behaviour.
COUNT_KEYS = ("requests", "unique_requests", "hits", "demand_loads", "loads", "bytes_h2d", "prefetch_issued",
              "prefetch_used", "prefetch_wasted", "layer_steps")
_NO_BASELINE = pytest.StashKey[str]()
_GEOMEAN = pytest.StashKey[tuple]()
CPU_TIMER = "time.process_time"
SLOWDOWN_ENV = "ARTIFACT_BENCH_SLOWDOWN"


# --------------------------------------------------------------------------------------------------------------
# A deliberate slowdown (to check that the compare catches one)
# --------------------------------------------------------------------------------------------------------------


def _slowdown() -> float:
    raw = os.environ.get(SLOWDOWN_ENV, "")
    if not raw:
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        raise pytest.UsageError(f"{SLOWDOWN_ENV}={raw!r}: not a number (e.g. 1.25 for 25% slower)") from None
    if not 1.0 <= factor <= 10.0:
        raise pytest.UsageError(f"{SLOWDOWN_ENV}={raw!r}: must be between 1 and 10")
    return factor


def _slowed(fn, extra: float, depth: list):
    @functools.wraps(fn)
    def slowed(*args, **kwargs):
        depth[0] += 1
        t0 = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:  # the outermost call burns for its nested ones too
                end = time.process_time() + (time.process_time() - t0) * extra
                while time.process_time() < end:
                    pass

    return slowed


def _install_slowdown(factor: float) -> None:
    """Replace the planner's and the simulator's entry points, wherever a loaded ``artifact`` module bound them."""
    import artifact.planner
    import artifact.runtime.simulator

    depth = [0]
    originals = {artifact.planner.plan: None, artifact.runtime.simulator.simulate: None}
    for fn in originals:
        originals[fn] = _slowed(fn, factor - 1.0, depth)
    for name, mod in list(sys.modules.items()):
        if name == "artifact" or name.startswith("artifact."):
            for attr, val in list(vars(mod).items()):
                if callable(val) and val in originals:
                    setattr(mod, attr, originals[val])


SLOWDOWN = _slowdown()
if SLOWDOWN != 1.0:
    _install_slowdown(SLOWDOWN)


# --------------------------------------------------------------------------------------------------------------
# Storage and the no-baseline case
# --------------------------------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--geomean-fail", default=None, metavar="PCT",
                     help="with --benchmark-compare: fail when the geometric mean over the compared cases of (this "
                          "run's minimum / the baseline's) exceeds 1 + PCT/100, e.g. 10%% (benchmarks/conftest.py)")


def _geomean_threshold(config: pytest.Config) -> float | None:
    raw = config.getoption("geomean_fail", None)
    if raw is None:
        return None
    try:
        pct = float(str(raw).rstrip("%"))
    except ValueError:
        raise pytest.UsageError(f"--geomean-fail={raw!r}: a percentage, e.g. 10%") from None
    if pct <= 0:
        raise pytest.UsageError(f"--geomean-fail={raw!r}: must be positive")
    return pct


def pytest_configure(config: pytest.Config) -> None:
    # Runs before pytest-benchmark's own pytest_configure (which is trylast), so the options set here are the ones
    # its BenchmarkSession reads.
    if not hasattr(config.option, "benchmark_storage"):
        return  # pytest-benchmark not loaded (-p no:benchmark)
    if config.option.benchmark_storage == PLUGIN_DEFAULT_STORAGE:
        config.option.benchmark_storage = f"file://{STORAGE}"
    given = " ".join(str(a) for a in config.invocation_params.args)
    if "--benchmark-timer" not in given:
        config.option.benchmark_timer = CPU_TIMER  # the process's CPU time (see the module docstring)
    config.option.benchmark_disable_gc = True
    compare = config.option.benchmark_compare
    if not compare:
        return
    msg = _missing_baseline(config.option.benchmark_storage, compare)
    if msg is None:
        return
    # pytest-benchmark itself would compare nothing behind a warning that never reaches the summary, and with
    # --benchmark-compare-fail it would run the whole suite and then stop with a UsageError (exit 4). Instead: say
    # what to do, and run the suite as a plain (uncompared) run.
    from pytest_benchmark.logger import PytestBenchmarkWarning

    go_on = f"{msg} This run continues without comparing (and ignores --benchmark-compare-fail)."
    try:
        config.issue_config_time_warning(PytestBenchmarkWarning(go_on), stacklevel=2)
    except PytestBenchmarkWarning:  # -W error: stop with the message, not an INTERNALERROR traceback
        raise pytest.UsageError(msg) from None
    config.option.benchmark_compare = []
    config.option.benchmark_compare_fail = None
    config.stash[_NO_BASELINE] = go_on


def _missing_baseline(storage_uri: str, compare) -> str | None:
    """None when the storage holds a run to compare against, else the message saying what to do."""
    if "://" in storage_uri and not storage_uri.startswith("file://"):
        return None  # elasticsearch storage: left to pytest-benchmark
    if compare is not True and ("/" in str(compare) or Path(str(compare)).is_file()):
        return None  # a file or a 'machine-glob/file-glob' pattern: left to pytest-benchmark
    from pytest_benchmark.utils import get_machine_id

    folder = Path(storage_uri.removeprefix("file://")).resolve()
    machine = get_machine_id()
    # pytest-benchmark's FileStorage looks in <storage>/<machine id>/ (and <storage>/) for NNNN_*.json.
    pattern = "[0-9][0-9][0-9][0-9]_*.json" if compare is True else f"{str(compare).rstrip('*')}*.json"
    if any(p for d in (folder / machine, folder) if d.is_dir() for p in d.glob(pattern)):
        return None
    what = "no saved benchmark run" if compare is True else f"no saved benchmark run matching {compare!r}"
    others = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name != machine) if folder.is_dir() else []
    msg = (f"--benchmark-compare: {what} for machine {machine} in {folder}. "
           f"Save a baseline first with `{SAVE_FIRST}` (add --benchmark-storage=... if you use another folder), "
           "then rerun with --benchmark-compare.")
    if others:
        msg += f" Saved runs exist for other machine ids only: {', '.join(others)}."
    return msg


def pytest_sessionstart(session: pytest.Session) -> None:
    msg = session.config.stash.get(_NO_BASELINE, None)
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is None:
        return
    if msg:
        tr.write_line(f"NOTE {msg}", yellow=True, bold=True)
    if SLOWDOWN != 1.0:
        tr.write_line(f"NOTE {SLOWDOWN_ENV}={SLOWDOWN:g}: planning and simulating are made {SLOWDOWN:g}x slower on "
                      "purpose (a regression the compare must catch)", yellow=True, bold=True)
    if _CAPS_LATE:
        tr.write_line(f"NOTE {', '.join(_CAPS_LATE)} loaded before benchmarks/conftest.py set the thread caps: set "
                      f"{' '.join(v + '=1' for v in THREAD_ENV)} in the environment", yellow=True, bold=True)


# --------------------------------------------------------------------------------------------------------------
# Machine info stored with every run
# --------------------------------------------------------------------------------------------------------------


def _nvidia_smi() -> dict:
    return nvidia_smi(("name", "driver_version", "memory.total", "clocks.max.sm", "clocks.max.memory",
                       "pcie.link.gen.max", "pcie.link.width.max"))


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """GPU, driver, torch, CUDA and package version beside pytest-benchmark's CPU and Python details.

    Nothing that changes from commit to commit goes here (pytest-benchmark keeps ``commit_info`` separately):
    a machine_info that differs from the baseline's makes every compare warn.
    """
    import torch

    from artifact import __version__

    smi = _nvidia_smi()
    cuda = torch.cuda.is_available()
    machine_info["artifact_version"] = __version__
    machine_info["torch"] = torch.__version__
    machine_info["cuda"] = torch.version.cuda or "none"
    machine_info["torch_threads"] = torch.get_num_threads()
    # Thread caps change what small numpy/torch matmuls cost (and, on a busy machine, how much spinning threads
    # slow them down): a run records its caps so a compare between differently capped runs warns.
    machine_info["thread_env"] = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
    machine_info["gpu"] = torch.cuda.get_device_name(0) if cuda else smi.get("name", "none")
    machine_info["gpu_count"] = torch.cuda.device_count() if cuda else 0
    if cuda:
        major, minor = torch.cuda.get_device_capability(0)
        machine_info["gpu_capability"] = f"{major}.{minor}"
    machine_info["gpu_driver"] = smi.get("driver_version", "none")
    if smi:
        machine_info["nvidia_smi"] = smi


def pytest_benchmark_update_json(config, benchmarks, output_json: dict) -> None:
    """A deliberately slowed run says so in its saved file (not in machine_info: a machine_info that differs from
    the baseline's makes pytest-benchmark 5.2 crash formatting its warning when the storage is outside the working
    directory)."""
    if SLOWDOWN != 1.0:
        output_json["bench_slowdown"] = SLOWDOWN


# --------------------------------------------------------------------------------------------------------------
# Decision changes next to the time comparison
# --------------------------------------------------------------------------------------------------------------


def _count_changes(old: dict, new: dict) -> list[str]:
    out = []
    for k in COUNT_KEYS:
        if k not in old or k not in new or old[k] == new[k]:
            continue
        if isinstance(old[k], dict) and isinstance(new[k], dict):  # per strategy (the grid point)
            out += [f"{k}[{s}] {old[k].get(s)} -> {new[k].get(s)}" for s in {**old[k], **new[k]}
                    if old[k].get(s) != new[k].get(s)]
        else:
            out.append(f"{k} {old[k]} -> {new[k]}")
    return out


def _baseline(bs) -> dict:
    out = {}
    for _path, benches in bs.compared_mapping.items():
        out.update(benches)
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    """--geomean-fail: the geometric mean over the compared cases of (this run's minimum / the baseline's); a run
    whose mean exceeds the threshold fails (exit status 1), whatever each case did."""
    config = session.config
    pct = _geomean_threshold(config)
    bs = getattr(config, "_benchmarksession", None)
    if pct is None or bs is None or not getattr(bs, "compared_mapping", None):
        return
    old = _baseline(bs)
    logs = [math.log(b.stats.min / old[b.fullname]["stats"]["min"]) for b in bs.benchmarks
            if b and b.fullname in old and old[b.fullname]["stats"]["min"] > 0 and b.stats.min > 0]
    if not logs:
        return
    ratio = math.exp(math.fsum(logs) / len(logs))
    failed = ratio > 1 + pct / 100
    config.stash[_GEOMEAN] = (ratio, len(logs), pct, failed)
    if failed and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    """With --benchmark-compare, list every case whose counts (loads, hits, bytes, ...) differ from the baseline's:
    pytest-benchmark compares times only, and a change in what the plan decided explains a change in time. With
    --geomean-fail, say where the suite's mean stands."""
    bs = getattr(config, "_benchmarksession", None)
    mapping = getattr(bs, "compared_mapping", None)
    if not mapping:
        return
    gm = config.stash.get(_GEOMEAN, None)
    if gm is not None:
        ratio, n, pct, failed = gm
        terminalreporter.write_sep("-", "suite against the baseline", bold=True)
        terminalreporter.write_line(
            f"geometric mean of (minimum / baseline minimum) over {n} cases: {100 * (ratio - 1):+.1f}% "
            f"(fails above +{pct:g}%){': REGRESSION' if failed else ''}", red=failed, green=not failed, bold=failed)
    baseline = _baseline(bs)
    changes = []
    for bench in bs.benchmarks:
        old = baseline.get(bench.fullname)
        if old is None:
            continue
        diff = _count_changes(old.get("extra_info", {}), bench.extra_info)
        if diff:
            changes.append(f"{bench.name}: {', '.join(diff)}")
    terminalreporter.write_sep("-", "decisions against the baseline", bold=True)
    if changes:
        for line in changes:
            terminalreporter.write_line(line, yellow=True)
    else:
        terminalreporter.write_line("same counts (loads, hits, bytes, prefetches) as the baseline in every compared "
                                    "case")


# --------------------------------------------------------------------------------------------------------------
# Fixtures: workloads and request tables built once, outside the timed code
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    workload: Workload
    requests: Requests


class Workloads:
    """Decode workloads of one trace, with their request tables, cached by (batch, steps, model)."""

    def __init__(self, trace) -> None:
        self.trace = trace
        self._cache: dict = {}

    def get(self, batch: int, steps: int, model="switch-base-128") -> Prepared:
        key = (batch, steps, model)
        hit = self._cache.get(key)
        if hit is None:
            w = decode_workload(self.trace, batch, steps, model=model)
            hit = self._cache[key] = Prepared(w, build_requests(w))
        return hit


@pytest.fixture(scope="session")
def hardware() -> HardwareProfile:
    return load_profile("h200")


@pytest.fixture(scope="session")
def switch_trace():
    """The grids' synthetic switch-base-128 pool (256 sequences x 128 tokens, seed 0)."""
    from artifact.traces.synthetic import generate

    return generate("switch-base-128", DEFAULT_SEQUENCES, DEFAULT_TOKENS, 0)


@pytest.fixture(scope="session")
def switch_workloads(switch_trace) -> Workloads:
    return Workloads(switch_trace)


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    return v


@pytest.fixture
def record_counts():
    """``record_counts(benchmark, plan, **more)``: the plan's counts (and any extra figures) into extra_info."""

    def record(benchmark, plan, **more) -> None:
        counts = count_metrics(plan)
        info = benchmark.extra_info
        for key in ("strategy", "batch", "cache_experts", "steps", "hit_rate", *COUNT_KEYS):
            if key in counts:
                info[key] = _plain(counts[key])
        info["layer_steps"] = int(plan.layer_steps)
        if "oracle_source" in plan.params:
            info["oracle_source"] = plan.params["oracle_source"]
        for key, v in more.items():
            info[key] = _plain(v)

    return record
