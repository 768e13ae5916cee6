"""The calibration behind every simulated time: the profile's cross-stream wait, and whether two calibrations of one
machine agree (``raw/calibrations/*.json``, written by ``python -m artifact.measure.calibrate --compare A B --json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from artifact.report.tables import Table, fmt_pct

CALIBRATIONS_DIR = "calibrations"


def read_agreements(results: Path) -> dict[str, dict]:
    """Every comparison file under ``raw/calibrations/``, by file stem; a file that is not one is an error."""
    d = Path(results) / "raw" / CALIBRATIONS_DIR
    out = {}
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            obj = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not JSON ({exc})") from None
        if "families" not in obj:  # a profile kept beside the comparisons
            continue
        for i, f in enumerate(obj["families"]):
            missing = {"family", "figures", "worst_rel", "beyond", "fitted"} - set(f)
            if missing:
                raise ValueError(f"{p}: families[{i}] lacks {sorted(missing)}")
        out[p.stem] = obj
    return out


def agreement_table(key: str, obj: dict) -> Table:
    rows, text = [], []
    for f in obj["families"]:
        rows.append({"family": f["family"], "figures": int(f["figures"]), "worst_rel": float(f["worst_rel"]),
                     "beyond": int(f["beyond"]), "fitted": bool(f["fitted"])})
        text.append({"figures": f["family"], "kind": "fitted (gates)" if f["fitted"] else "measured (reported)",
                     "count": str(f["figures"]), "worst relative difference": fmt_pct(float(f["worst_rel"])),
                     "at": str(f.get("worst_figure", "")),
                     f"beyond {100 * float(obj['tolerance']):g}% (and its floor)": str(f["beyond"])})
    verdict = "every fitted figure agrees" if obj["fitted_agree"] else "some fitted figure disagrees"
    cap = (f"{Path(obj['a']).name} ({obj.get('a_source', '')}) against {Path(obj['b']).name} "
           f"({obj.get('b_source', '')}): {verdict}. A figure agrees within the tolerance or under its floor (1 us "
           "for the copy latency, 0.5 us for host issue costs, the cross-stream wait and device timings).")
    return Table(f"calibration_{key}", f"Calibration agreement: {key.replace('_', ' ')}", cap, pd.DataFrame(rows),
                 pd.DataFrame(text))


def read_profile_json(results: Path, name: str) -> dict | None:
    """The profile ``name`` as JSON: ``results/hardware/NAME.json``, else the repository's; None when neither."""
    from artifact.report.load import BUILTIN_PROFILES

    for p in (Path(results) / "hardware" / f"{name}.json", BUILTIN_PROFILES / f"{name}.json"):
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{p}: not JSON ({exc})") from None
    return None


def calibration_text(profile_json: dict | None, agreements: dict[str, dict]) -> str:
    """A paragraph on how the profile was measured, and the agreement tables' verdicts."""
    out = []
    if profile_json is not None:
        dep = profile_json.get("dependency_us")
        extra = profile_json.get("extra", {}) if isinstance(profile_json.get("extra"), dict) else {}
        det = extra.get("dependency", {})
        parts = det.get("per_pair_ms", {})
        if dep is not None:
            out.append(
                f"The profile ({profile_json.get('source', '')}) times COMPUTEs inside CUDA graphs on slots in "
                "rotation (so no call finds its weights in the L2 cache, as in the engine), and measures the wait "
                f"across the copy and compute streams: {float(dep):.2f} us per wait"
                + (f" (a LOAD-COMPUTE chain of {det.get('chain')} pairs: {1e3 * parts['chain']:.1f} us per pair "
                   f"against {1e3 * parts['loads']:.1f} us of copy and {1e3 * parts['computes']:.1f} us of "
                   "COMPUTE alone)" if {"chain", "loads", "computes"} <= set(parts) else "")
                + ". The simulator adds it to every LOAD that waits on the compute stream and every COMPUTE that "
                  "waits on its LOAD.")
    for key, obj in agreements.items():
        fitted = [f for f in obj["families"] if f["fitted"]]
        worst = "; ".join(f"{f['family']} {fmt_pct(f['worst_rel'])} ({f.get('worst_figure', '')}: "
                          f"{f.get('worst_a', float('nan')):.4g} vs {f.get('worst_b', float('nan')):.4g}"
                          + (f", {f['beyond']} beyond tolerance and floor" if f["beyond"] else "") + ")"
                          for f in fitted)
        out.append(f"Calibrations compared ({key.replace('_', ' ')}): "
                   + ("every fitted figure agrees" if obj["fitted_agree"] else "a fitted figure disagrees")
                   + (f". Worst difference per fitted family: {worst}" if worst else "") + ".")
    return "\n\n".join(out) + ("\n" if out else "")
