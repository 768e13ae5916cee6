"""What a measurement ran on: GPU, driver, torch, CUDA, package version and git commit, probed in one place.

Every record that names its environment (grid CSV rows, hardware profiles, the GPU checks, pytest-benchmark's
machine info) reads it from here, so the same machine is described the same way everywhere. torch is imported only
inside the probes that need it: the grid runner's simulator processes never load it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from artifact import __version__

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
# Families a hardware profile is named after (``results/hardware/<family>.json``).
GPU_FAMILIES = ("H200", "H100", "A100", "L40S", "B200")


def nvidia_smi(fields: Sequence[str]) -> dict[str, str]:
    """``nvidia-smi --query-gpu`` of the first GPU: field -> value; empty when there is no nvidia-smi or it fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        res = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    out = res.stdout.strip()
    if res.returncode != 0 or not out:
        return {}
    values = [v.strip() for v in out.splitlines()[0].split(",")]
    return dict(zip(fields, values))


def driver_version() -> str:
    """The NVIDIA driver version, or ``unknown`` when nvidia-smi cannot say."""
    return nvidia_smi(("driver_version",)).get("driver_version", "unknown")


def gpu_family(device: torch.device) -> str:
    """Short name of the device's family (``h200``; ``cpu`` off the GPU): the default hardware profile name."""
    import torch

    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    for tag in GPU_FAMILIES:
        if tag in name.upper():
            return tag.lower()
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


def device_name(device: torch.device) -> str:
    """The GPU's marketing name, or ``cpu (<processor>)``."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def git_commit(root: Path = REPO_ROOT) -> str:
    """Short commit of the checkout, ``-dirty`` when tracked files changed; ``unknown`` outside a git checkout."""
    try:
        res = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
        if res.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return res.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def utc_now() -> str:
    """The time of a measurement, ISO 8601 in UTC to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """GPU, driver, torch, CUDA, package version and git commit of this process (the ``ENV_FIELDS`` of a CSV row).

    ``ARTIFACT_GIT_COMMIT`` names the commit where the checkout has no ``.git`` (an exported tarball, a container).
    """
    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda or "", "package_version": __version__}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["driver"] = driver_version()
    else:
        env["gpu"] = "none"
        env["driver"] = ""
    env["git_commit"] = os.environ.get("ARTIFACT_GIT_COMMIT") or git_commit()
    return env


def installed_version(package: str) -> str | None:
    """The installed version of a distribution (e.g. ``accelerate``), or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
