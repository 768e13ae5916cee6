"""Atomic file writes: a temporary file in the target's folder, fsync, then a rename over the target.

A reader sees the old file or the new one, never half of one; a crash leaves the old file and no stray temp file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call ``write(fh)`` on a temporary file, then replace ``path`` with it (mode 0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text))


def strict_json(obj, where: str = "$") -> tuple[object, dict[str, str]]:
    """``obj`` made strict JSON: every NaN or infinity becomes ``None``; numpy scalars and arrays become numbers and
    lists, tuples lists. Returns ``(clean object, {JSON path of each replaced number: what it was})``."""
    import math

    nulls: dict[str, str] = {}

    def walk(o, at: str):
        if isinstance(o, bool) or o is None or isinstance(o, (str, int)):
            return o
        if isinstance(o, float):
            if math.isfinite(o):
                return o
            nulls[at] = repr(o)  # 'nan', 'inf' or '-inf'
            return None
        if isinstance(o, dict):
            return {k: walk(v, f"{at}.{k}") for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{at}[{i}]") for i, v in enumerate(o)]
        if hasattr(o, "tolist"):  # numpy scalars and arrays (and torch tensors)
            return walk(o.tolist(), at)
        return o

    return walk(obj, where), nulls


def json_text(obj, *, indent: int | None = 1, sort_keys: bool = False, default=None) -> str:
    """Strict JSON text (``allow_nan=False``): a NaN or infinity is written as null, and a dict gains
    ``null_reasons`` (JSON path -> 'nan' / 'inf': the number was not finite; the figure beside it says why)."""
    import json

    clean, nulls = strict_json(obj)
    if nulls and isinstance(clean, dict):
        clean = {**clean, "null_reasons": {**clean.get("null_reasons", {}),
                                           **{k: f"not a finite number ({v})" for k, v in nulls.items()}}}
    return json.dumps(clean, indent=indent, sort_keys=sort_keys, default=default, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int | None = 1, sort_keys: bool = False,
                      default=None) -> Path:
    """Write ``obj`` as strict JSON (:func:`json_text`) atomically, with a final newline."""
    return atomic_write_text(path, json_text(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n")
