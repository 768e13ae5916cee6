"""Real routing traces shipped with the package (``artifact/traces/data/``), listed and loaded by name.

| name | source (route-csv) | model, top-k used / native | tokens (prefill + decode) |
| --- | --- | --- | --- |
| ``qwen3-30b-a3b`` | ``bigmoeonedge-2026-07-15/qwen.route.csv`` | Qwen3-30B-A3B, top-6 / 8 | 1 + 128 |
| ``gemma-4-26b-a4b`` | ``bigmoeonedge-2026-07-15/gemma.route.csv`` | gemma-4-26B-A4B-it, top-6 / 8 | 29 + 128 |
| ``gpt-oss-120b`` | ``bigmoeonedge-2026-07-15/gptoss.route.csv`` | gpt-oss-120b, top-2 / 4 | 1 + 64 |

Captured by BigMoeOnEdge (github.com/Helldez/BigMoeOnEdge, commit 2d4f2b11db128cbe32da738ce114c0479542f458,
``docs/bench-data/2026-07-15-route-trace/``, Apache-2.0: ``data/bigmoeonedge-2026-07-15/LICENSE`` and
``README.md``) and converted, unchanged in content, by the ``route-csv`` importer with its defaults
(:func:`convert`); the prompt positions that engine ran without their last layer are dropped, so qwen3 and
gpt-oss keep 1 prefill token each. Anywhere a trace file is accepted (``--trace``, ``WorkloadSpec.trace``,
``trace inspect``), ``vendored:NAME`` names one of these.
"""

from __future__ import annotations

import os
from pathlib import Path

from artifact.traces import trace as tracefile

DATA = Path(__file__).parent / "data"
PREFIX = "vendored:"
# name -> (collection folder, the source file it was converted from)
VENDORED = {
    "qwen3-30b-a3b": ("bigmoeonedge-2026-07-15", "qwen.route.csv"),
    "gemma-4-26b-a4b": ("bigmoeonedge-2026-07-15", "gemma.route.csv"),
    "gpt-oss-120b": ("bigmoeonedge-2026-07-15", "gptoss.route.csv"),
}


def names() -> list[str]:
    return list(VENDORED)


def path(name: str) -> Path:
    if name not in VENDORED:
        raise KeyError(f"unknown vendored trace {name!r}; vendored: {', '.join(VENDORED)}")
    folder, _ = VENDORED[name]
    return DATA / folder / f"{name}.npz"


def load(name: str) -> tracefile.Trace:
    """A vendored trace by name (validated like any trace file)."""
    return tracefile.load(path(name))


def open_trace(ref: str | os.PathLike) -> tracefile.Trace:
    """``vendored:NAME`` or a trace file path."""
    ref = str(ref)
    if ref.startswith(PREFIX):
        return load(ref[len(PREFIX):])
    return tracefile.load(ref)


def convert(source_root: str | os.PathLike) -> dict[str, tuple[tracefile.Trace, list[str]]]:
    """Import every vendored trace from its source CSV under ``source_root`` (a folder holding
    ``bigmoeonedge-2026-07-15/``): how the shipped files were made, and what the tests compare them with."""
    from artifact.traces.importers import import_trace

    root = Path(source_root)
    return {name: import_trace("route-csv", root / folder / src) for name, (folder, src) in VENDORED.items()}


def write_all(source_root: str | os.PathLike, out_root: str | os.PathLike = DATA) -> list[Path]:
    """(Re)write the vendored files from the source CSVs (atomically)."""
    out = []
    for name, (tr, _) in convert(source_root).items():
        out.append(tracefile.save(tr, Path(out_root) / VENDORED[name][0] / f"{name}.npz"))
    return out


if __name__ == "__main__":  # python -m artifact.traces.vendored ../shared/traces
    import sys

    for p in write_all(sys.argv[1] if len(sys.argv) > 1 else "../shared/traces"):
        print(f"wrote {p} ({p.stat().st_size} bytes)")
