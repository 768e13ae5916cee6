"""Importers: routing dumps of other tools into the project's trace format (:mod:`artifact.traces.trace`).

| format | what it reads | module |
| --- | --- | --- |
| ``route-csv`` | BigMoeOnEdge's ``route_trace v1`` CSV (header block included) | :mod:`.route_csv` |
| ``jsonl`` | one JSON object per token and layer, field names given as options | :mod:`.jsonl` |
| ``vllm`` | vLLM's routed-experts output (``--enable-return-routed-experts``), as documented | :mod:`.vllm` |
| ``sglang`` | SGLang's routed-experts output (``return_routed_experts``), as documented | :mod:`.sglang` |

Every importer returns ``(trace, warnings)``: a validated :class:`~artifact.traces.trace.Trace` (schema version 2,
``phase`` where the source tells prefill from decode) whose ``meta`` carries provenance (``format``,
``source_file``, ``source_sha256``, the model, ``top_k_used`` and ``native_top_k``), and sentences for the user.
Bad input raises :class:`~artifact.traces.trace.TraceError` naming file, line (or item), field and value.
:func:`import_file` writes the result atomically: a failed import leaves no file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from artifact.traces import trace as tracefile
from artifact.traces.importers import jsonl, route_csv, sglang, vllm

FORMATS = {"route-csv": route_csv.read, "jsonl": jsonl.read, "vllm": vllm.read, "sglang": sglang.read}


def import_trace(fmt: str, path: str | os.PathLike, **options) -> tuple[tracefile.Trace, list[str]]:
    """Read ``path`` in format ``fmt`` (see :data:`FORMATS`); ``options`` are the importer's keyword arguments."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown trace format {fmt!r}; formats: {', '.join(FORMATS)}")
    return FORMATS[fmt](path, **options)


def import_file(fmt: str, path: str | os.PathLike, out: str | os.PathLike,
                **options) -> tuple[tracefile.Trace, list[str], Path]:
    """Import and write ``out`` atomically (validated first; nothing is written when anything fails)."""
    tr, warnings = import_trace(fmt, path, **options)
    return tr, warnings, tracefile.save(tr, out)
