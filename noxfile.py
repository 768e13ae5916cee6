"""nox sessions. ``ARTIFACT_TORCH`` selects the torch requirement (default ``torch==2.13.0``: a CPU build on the
reference CI machine; set e.g. ``ARTIFACT_TORCH=torch`` on a CUDA machine to take its default build)."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

TORCH = os.environ.get("ARTIFACT_TORCH", "torch==2.13.0")


def _install(session: nox.Session, extras: str) -> None:
    if isinstance(session.virtualenv, nox.virtualenv.PassthroughEnv):
        return  # --no-venv: the environment already has the dependencies
    session.install(TORCH)
    session.install("-e", f".[{extras}]" if extras else ".")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, property, differential and golden tests (GPU tests skip without CUDA)."""
    _install(session, "test,record")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "artifact", "tests", "benchmarks", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """pytest-benchmark suite (GPU engine cases skip without CUDA); options after -- go to pytest.

    e.g. ``nox -s bench -- --benchmark-autosave``, later
    ``nox -s bench -- --benchmark-compare --benchmark-compare-fail=min:50% --geomean-fail=10%`` (README,
    "Benchmarks and regression tracking": CPU time, thread caps 1, the garbage collector off and ``--geomean-fail``
    come from ``benchmarks/conftest.py``).
    """
    _install(session, "test,record")  # record: transformers, for the live-decode cases
    # Thread caps before anything loads numpy or torch (benchmarks/conftest.py sets the same defaults).
    env = {var: os.environ.get(var, "1") for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    session.run("python", "-m", "pytest", "benchmarks", *session.posargs, env=env)


@nox.session
def reproduce(session: nox.Session) -> None:
    """The main job: on a GPU calibrate it, run the GPU checks and the engine grid; simulate every grid; build the
    report. Writes out/reproduce/ (REPORT.md, figures/, raw/, hardware/); options after -- go to
    ``python -m artifact reproduce`` (e.g. ``-- --out results`` to regenerate the committed results on a GPU)."""
    _install(session, "")
    session.run("python", "-m", "artifact", "reproduce", *session.posargs)


@nox.session
def report(session: nox.Session) -> None:
    """Rebuild results/REPORT.md and results/figures/ from results/raw/*.csv and results/hardware/*.json alone
    (``-- --results DIR`` for another folder). Two runs give identical files."""
    _install(session, "")
    session.run("python", "-m", "artifact", "report", *session.posargs)
