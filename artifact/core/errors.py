"""The two errors every layer may raise and the runner tells apart.

``Unrunnable``: this configuration cannot run (a cache smaller than one token's top-k, per-layer slots below
top-k, a strategy that needs a lookahead field the trace lacks). The grid runner records it as a refusal with its
reason in the row; every other exception stops the run.
"""

from __future__ import annotations


class Unrunnable(Exception):
    """A configuration that cannot run; ``str(exc)`` is the reason recorded in the results row."""


class FutureAccessError(RuntimeError):
    """A strategy asked for information it could not have at this point of the decode (a bug, never a refusal)."""
