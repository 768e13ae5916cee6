"""Hardware profiles: what the simulator needs to time a plan.

A profile gives
- the time of one host-to-device copy of ``n`` bytes from pinned memory: piecewise-linear through a measured
  (bytes, ms) table, and ``latency + n / bandwidth`` fitted by least squares to it outside the table (closed form,
  exactly rounded sums: :func:`copy_line`);
- the time of one COMPUTE (the expert FFNs of one layer-step, or of one item or chunk of it) per model preset: from
  a measured grid over (experts in the COMPUTE, tokens per expert) when the profile has one (``compute_tables``:
  the engine runs all experts of a COMPUTE in one grouped kernel, so its cost is not a sum of per-expert costs),
  bilinear in log2 of both; else the sum over its experts of a per-expert table (``ffn_tables``), piecewise-linear
  in tokens (flat below its first point, linear extrapolation past its last);
- the time of the NON-MoE part of a layer (attention, norms, router) as a function of tokens in the step;
- the host time to issue each kind of operation (``host_issue_us``): an engine whose host is slower than its GPU
  is host-bound, and the simulator then waits for the host as a third resource;
- the latency of a wait across the two device streams (``dependency_us``): a LOAD that waits for a COMPUTE or
  NON-MoE part, or a COMPUTE that waits for its LOAD, starts this long after the operation it waits on ends.

Profiles are JSON files with their provenance (``source``, ``description``, ``extra``): ``load_profile(name)`` reads
``results/hardware/NAME.json`` (the calibrated ``h200.json``, the modelled ``a100-pcie4.json``) or a JSON path.
Nothing is typed in here: planning without a measured (or explicitly modelled) profile is an error.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from artifact.atomicfile import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILE_DIR = REPO_ROOT / "results" / "hardware"


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    copy_table: tuple[tuple[int, float], ...]  # (bytes, ms) of pinned H2D copies
    ffn_tables: dict  # model preset name -> ((tokens, ms), ...)
    nonmoe_table: tuple[tuple[int, float], ...]  # (tokens in step, ms) of the non-MoE part of one layer
    source: str = ""
    extra: dict = field(default_factory=dict)
    # model -> {"experts": [n...], "tokens": [t...], "ms": [[ms of one COMPUTE of n experts x t tokens]]}
    compute_tables: dict = field(default_factory=dict)
    # Host time to issue one op (us): {"nonmoe_us", "load_us", "compute_us", "use_us"}; empty = the host runs ahead.
    host_issue_us: dict = field(default_factory=dict)
    # Latency (us) a device operation adds when it waits on an operation of the other stream (a LOAD on the COMPUTE
    # or NON-MoE part that frees its slot or gates it; a COMPUTE on its last LOAD): the cross-stream event edge of
    # the engine's graph. 0 = none modelled.
    dependency_us: float = 0.0

    def __post_init__(self) -> None:
        if len(self.copy_table) < 2:
            raise ValueError(f"hardware profile {self.name}: copy_table needs at least 2 (bytes, ms) points")
        if not (math.isfinite(self.dependency_us) and self.dependency_us >= 0):
            raise ValueError(f"hardware profile {self.name}: dependency_us must be a finite number >= 0, got "
                             f"{self.dependency_us!r}")
        object.__setattr__(self, "_copy_fit", copy_line(self.copy_table))

    @property
    def copy_latency_ms(self) -> float:
        return self._copy_fit[0]

    @property
    def copy_bandwidth_gbps(self) -> float:
        return 1e-6 / self._copy_fit[1]  # bytes per ms -> GB/s

    def copy_ms(self, nbytes: int | np.ndarray) -> float | np.ndarray:
        """Piecewise-linear in bytes through the measured table (exact at measured sizes, e.g. one expert);
        outside it, the least-squares ``latency + bytes / bandwidth`` line."""
        b = np.asarray(nbytes, float)
        xs = np.array([p[0] for p in self.copy_table], float)
        ys = np.array([p[1] for p in self.copy_table], float)
        line = self._copy_fit[0] + b * self._copy_fit[1]
        inside = (b >= xs[0]) & (b <= xs[-1])
        return np.where(inside, np.interp(b, xs, ys), line)

    def ffn_ms(self, model: str, tokens: int | np.ndarray) -> np.ndarray:
        if model not in self.ffn_tables:
            raise KeyError(f"hardware profile {self.name}: no expert FFN timings for model {model!r} "
                           f"(has {sorted(self.ffn_tables)}); run `python -m artifact calibrate`")
        return _interp(self.ffn_tables[model], tokens)

    def compute_ms(self, model: str, n_experts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Time of COMPUTEs of ``n_experts`` experts with ``tokens`` tokens in all (arrays of equal length)."""
        n = np.maximum(np.asarray(n_experts, float), 1.0)
        tok = np.maximum(np.asarray(tokens, float), 1.0)
        tab = self.compute_tables.get(model)
        if tab is None:
            return n * self.ffn_ms(model, tok / n)
        xs = np.log2(np.asarray(tab["experts"], float))
        ys = np.log2(np.asarray(tab["tokens"], float))
        z = np.asarray(tab["ms"], float)  # [len(experts), len(tokens)]
        # Beyond the grid: more experts than measured scale linearly from the largest group; more tokens per expert
        # scale linearly in tokens from the largest measured count. Inside: bilinear in log2 of both.
        i, i1, fx, scale = _grid_axis(xs, n)
        j, j1, fy, tscale = _grid_axis(ys, tok / n)
        v = (z[i, j] * (1 - fx) * (1 - fy) + z[i1, j] * fx * (1 - fy) + z[i, j1] * (1 - fx) * fy + z[i1, j1] * fx * fy)
        return v * scale * tscale

    def nonmoe_ms(self, tokens: int | np.ndarray, model: str | None = None) -> np.ndarray:
        """NON-MoE time of one layer over ``tokens``; per model when calibrated per model (it depends on d_model)."""
        per_model = self.extra.get("nonmoe_tables", {}) if isinstance(self.extra, dict) else {}
        if model is not None and model in per_model:
            return _interp(per_model[model], tokens)
        return _interp(self.nonmoe_table, tokens)

    def to_json(self) -> dict:
        d = asdict(self)
        d["copy_table"] = [list(p) for p in self.copy_table]
        d["nonmoe_table"] = [list(p) for p in self.nonmoe_table]
        d["ffn_tables"] = {k: [list(p) for p in v] for k, v in self.ffn_tables.items()}
        return d

    @classmethod
    def from_json(cls, d: dict, origin: str = "<dict>") -> HardwareProfile:
        try:
            return cls(name=d["name"], description=d.get("description", ""),
                       copy_table=tuple((int(b), float(t)) for b, t in d["copy_table"]),
                       ffn_tables={k: tuple((int(n), float(t)) for n, t in v) for k, v in d["ffn_tables"].items()},
                       nonmoe_table=tuple((int(n), float(t)) for n, t in d["nonmoe_table"]),
                       source=d.get("source", ""), extra=d.get("extra", {}),
                       compute_tables=_check_compute_tables(d.get("compute_tables", {}), origin),
                       host_issue_us={k: float(v) for k, v in d.get("host_issue_us", {}).items()},
                       dependency_us=float(d.get("dependency_us", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"hardware profile {origin}: bad or missing field ({type(exc).__name__}: {exc})") from None


def copy_line(table) -> tuple[float, float]:
    """``(latency ms, ms per byte)``: the least-squares line ``ms = latency + bytes * slope`` through the (bytes, ms)
    points, in closed form with exactly rounded sums (``math.fsum``), so every platform, BLAS and numpy version
    fits the same figures from the same table. The latency is clipped at zero (a copy cannot take negative time)."""
    xs = [float(p[0]) for p in table]
    ys = [float(p[1]) for p in table]
    n = len(xs)
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mx) * (x - mx) for x in xs)
    if sxx == 0.0:
        raise ValueError("copy_table: every point has the same size; a line needs two sizes")
    slope = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return max(my - slope * mx, 0.0), slope


def _grid_axis(grid_log2: np.ndarray, v: np.ndarray) -> tuple:
    """Bracketing indices, interpolation weight and beyond-the-grid linear scale of values ``v`` on a log2 grid."""
    top = 2.0 ** grid_log2[-1]
    scale = np.where(v > top, v / top, 1.0)
    x = np.clip(np.log2(np.minimum(v, top)), grid_log2[0], grid_log2[-1])
    if len(grid_log2) == 1:
        zero = np.zeros(x.shape, np.int64)
        return zero, zero, np.zeros_like(x), scale
    i = np.clip(np.searchsorted(grid_log2, x, side="right") - 1, 0, len(grid_log2) - 2)
    return i, i + 1, (x - grid_log2[i]) / (grid_log2[i + 1] - grid_log2[i]), scale


def _check_compute_tables(tabs: dict, origin: str) -> dict:
    for model, tab in tabs.items():
        ms = np.asarray(tab["ms"], float)
        if ms.shape != (len(tab["experts"]), len(tab["tokens"])):
            raise ValueError(f"hardware profile {origin}: compute_tables.{model}.ms has shape {list(ms.shape)}, "
                             f"expected [{len(tab['experts'])}, {len(tab['tokens'])}]")
        if not np.all(np.diff(tab["experts"]) > 0) or not np.all(np.diff(tab["tokens"]) > 0):
            raise ValueError(f"hardware profile {origin}: compute_tables.{model}: experts and tokens must increase")
    return tabs


def _interp(table, x) -> np.ndarray:
    xs = np.array([p[0] for p in table], float)
    ys = np.array([p[1] for p in table], float)
    x = np.asarray(x, float)
    y = np.interp(x, xs, ys)
    if xs.size >= 2:
        over = x > xs[-1]
        if np.any(over):
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
            y = np.where(over, ys[-1] + slope * (x - xs[-1]), y)
    return y


def known_profiles() -> list[str]:
    return sorted(q.stem for q in PROFILE_DIR.glob("*.json"))


def load_profile(name_or_path: str) -> HardwareProfile:
    """A profile by name (``results/hardware/NAME.json``) or by JSON path."""
    p = Path(name_or_path)
    if p.suffix == ".json":
        if not p.is_file():
            raise FileNotFoundError(f"hardware profile {p}: no such file")
        return _read(p)
    cand = PROFILE_DIR / f"{name_or_path}.json"
    if cand.is_file():
        return _read(cand)
    raise KeyError(f"unknown hardware profile {name_or_path!r}; known: {', '.join(known_profiles())} "
                   f"(files in {PROFILE_DIR}), or give a JSON path")


def _read(path: Path) -> HardwareProfile:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"hardware profile {path}: cannot read JSON ({exc})") from None
    return HardwareProfile.from_json(d, str(path))


def save_profile(profile: HardwareProfile, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename), strict JSON (a number that is not finite is null, its path listed
    in ``null_reasons``)."""
    return atomic_write_json(path, profile.to_json(), indent=1, sort_keys=True)
