"""Online strategies, one module each; importing the package registers every one of them.

See :mod:`artifact.policies.base` for the interface and :mod:`artifact.policies.registry` for the table.
"""

from __future__ import annotations

import importlib
import pkgutil

_INFRASTRUCTURE = {"base", "registry", "numeric"}

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_mod}")
