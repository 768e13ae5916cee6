"""Shared set-up of the pytest-benchmark suite: where runs are stored, what machine they ran on, what to do when
``--benchmark-compare`` has nothing to compare against, and the workloads every case reuses (built once, untimed).

Run from the repository root: ``python -m pytest benchmarks --benchmark-autosave`` saves a run under
``.benchmarks/<machine id>/``; a later ``python -m pytest benchmarks --benchmark-compare`` compares against the
latest saved run of the same machine id. The storage folder is the repository's ``.benchmarks`` whatever the
working directory, unless ``--benchmark-storage`` names another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from artifact.core.metrics import count_metrics
from artifact.core.requests import Requests, build_requests
from artifact.experiments.runs import DEFAULT_SEQUENCES, DEFAULT_TOKENS
from artifact.measure.environment import nvidia_smi
from artifact.runtime.hardware import HardwareProfile, load_profile
from artifact.traces.workload import Workload, decode_workload

REPO_ROOT = Path(__file__).resolve().parents[1]
STORAGE = REPO_ROOT / ".benchmarks"
PLUGIN_DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark's own default: relative to the working directory
SAVE_FIRST = "python -m pytest benchmarks --benchmark-autosave"

# What a case records beside its time (benchmark.extra_info), so a change in the plan's decisions shows up next to a
# change in speed. Counts are exact and deterministic: any difference from the baseline is a change of behaviour.
COUNT_KEYS = ("requests", "unique_requests", "hits", "demand_loads", "loads", "bytes_h2d", "prefetch_issued",
              "prefetch_used", "prefetch_wasted", "layer_steps")
_NO_BASELINE = pytest.StashKey[str]()
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# --------------------------------------------------------------------------------------------------------------
# Storage and the no-baseline case
# --------------------------------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # Runs before pytest-benchmark's own pytest_configure (which is trylast), so the options set here are the ones
    # its BenchmarkSession reads.
    if not hasattr(config.option, "benchmark_storage"):
        return  # pytest-benchmark not loaded (-p no:benchmark)
    if config.option.benchmark_storage == PLUGIN_DEFAULT_STORAGE:
        config.option.benchmark_storage = f"file://{STORAGE}"
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
    if msg and tr is not None:
        tr.write_line(f"NOTE {msg}", yellow=True, bold=True)


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


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    """With --benchmark-compare, list every case whose counts (loads, hits, bytes, ...) differ from the baseline's:
    pytest-benchmark compares times only, and a change in what the plan decided explains a change in time."""
    bs = getattr(config, "_benchmarksession", None)
    mapping = getattr(bs, "compared_mapping", None)
    if not mapping:
        return
    baseline = {}
    for _path, benches in mapping.items():
        baseline.update(benches)
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
