"""``python -m artifact reproduce``: the artifact's main job, from a fresh clone to a report.

With a CUDA GPU: calibrate the machine (``hardware/<gpu>.json``), run the GPU checks (``raw/gpu_checks.json``), execute
the E5 grid on the engine (``raw/engine.csv``), simulate the E1-E4/E6 grid (``raw/sim.csv``), E7 (``raw/models.csv``),
E8 (``raw/real.csv``), E9 (``raw/sensitivity.csv``) and the flagship's ablation (``raw/ablation.csv``) and its prefetch
bar swept (``raw/frontier.csv``), Belady's MIN with a horizon (``raw/horizon.csv``) on the calibrated profile, measure
the routing statistics (``raw/routing_stats.json``), and build ``REPORT.md`` with its figures.

Without CUDA: the simulator grids on the committed calibrated profile (``results/hardware/h200.json``), a small
engine check on the CPU (``raw/cpu_engine.csv``), and the report,
which says which parts ran where. Simulator rows are deterministic: on the same profile they reproduce the committed
ones exactly.

Every stage resumes: a stopped run picks up where it stopped, and a finished stage is skipped.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from artifact.experiments import grids
from artifact.experiments.runner import run_grid
from artifact.runtime.hardware import PROFILE_DIR, load_profile


def _stage(name: str, t0: float) -> None:
    print(f"[reproduce {time.perf_counter() - t0:7.1f} s] {name}", file=sys.stderr, flush=True)


def reproduce(out: str | Path = "out/reproduce", quick: bool = False, device: str | None = None,
              jobs: int | None = None, hardware: str | None = None, recalibrate: bool = False) -> Path:
    import torch

    t0 = time.perf_counter()
    out = Path(out)
    raw, hw_dir = out / "raw", out / "hardware"
    raw.mkdir(parents=True, exist_ok=True)
    hw_dir.mkdir(parents=True, exist_ok=True)
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if cuda:
        from artifact.measure.calibrate import calibrate
        from artifact.measure.environment import gpu_family

        name = hardware or gpu_family(torch.device("cuda"))
        prof_path = hw_dir / f"{name}.json"
        if recalibrate or not prof_path.is_file():
            _stage(f"calibrating this GPU into {prof_path}", t0)
            calibrate("cuda", out=str(prof_path), name=name, quick=quick)
        profile = load_profile(str(prof_path))
        if not (raw / "gpu_checks.json").is_file():
            _stage("GPU checks (copy efficiency, host overhead, overlap, accelerate peer, correctness)", t0)
            from artifact.experiments.gpu_checks import main as gpu_checks

            # Planned on the profile just calibrated, as the engine grid is.
            gpu_checks(["--out", str(raw), "--hardware", str(prof_path)] + (["--quick"] if quick else []))
        _stage("E5: engine grid on the GPU", t0)
        run_grid(grids.engine_grid(quick), raw, profile, device="cuda")
    else:
        committed = PROFILE_DIR / f"{hardware or 'h200'}.json"
        if not committed.is_file():
            raise FileNotFoundError(f"no CUDA here and no committed hardware profile {committed}: the simulator "
                                    "times plans on a measured profile (calibrate one on a GPU, or name another "
                                    "with --hardware)")
        profile = load_profile(str(committed))
        if committed.resolve() != (hw_dir / committed.name).resolve():
            shutil.copyfile(committed, hw_dir / committed.name)
        _stage(f"no CUDA: the simulator runs on profile {profile.name}; a CPU engine check stands in for E5", t0)
        run_grid(grids.cpu_engine_grid(quick), raw, profile, device="cpu")
    _stage("E1-E4, E6: simulator grid", t0)
    run_grid(grids.sim_grid(quick), raw, profile, jobs=jobs)
    _stage("E7: other model presets", t0)
    run_grid(grids.models_grid(quick), raw, profile, jobs=jobs)
    _stage("E8: every strategy on the vendored real decode traces", t0)
    run_grid(grids.real_grid(quick), raw, profile, jobs=jobs)
    _stage("E9: sensitivity to temporal locality and adjacent-layer coupling", t0)
    run_grid(grids.sensitivity_grid(quick), raw, profile, jobs=jobs)
    _stage("the flagship's ablation", t0)
    run_grid(grids.ablation_grid(quick), raw, profile, jobs=jobs)
    _stage("target 1 at small batch: the flagship's prefetch bar swept", t0)
    run_grid(grids.frontier_grid(quick), raw, profile, jobs=jobs)
    _stage("target 2 in context: Belady's MIN with a horizon on the real traces", t0)
    run_grid(grids.horizon_grid(quick), raw, profile, jobs=jobs)
    if not (raw / "routing_stats.json").is_file():
        _stage("routing statistics: real traces against the synthetic presets", t0)
        from artifact.experiments.routing import write as write_routing

        write_routing(raw)
    _stage("building the report", t0)
    from artifact.report.build import build_report

    path = build_report(out)
    _stage(f"done: {path}", t0)
    return path
