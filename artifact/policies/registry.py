"""The registry of online strategies: each module registers its own class with :func:`register`.

Adding a strategy is one new module in ``artifact/policies/`` (imported by the package, which imports every module
in it): every grid, test and benchmark iterates this table. Bounds (``belady``, ``oracle``) are not here: they live
in :mod:`artifact.bounds`, and :mod:`artifact.planner` looks a name up in both.

``sees`` says what a strategy may look at (the scheduler enforces it): ``past`` (what a real engine has: the past,
the current layer's routing, the trace's lookahead for the next layer), ``next_layer`` (the exact routing of the
next layer: Pre-gated MoE's fine-tuned pre-gate), ``path`` (a whole step's routing degraded to a stated accuracy:
ExpertFlow's predictor arm) and ``future`` (the bounds).
``role``: ``online`` (a strategy a real system could run), ``reference`` (``gpu_only``: no offloading at all),
``bound`` (needs the future).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

SEES = ("past", "next_layer", "path", "future")
ROLES = ("online", "reference", "bound")


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    summary: str
    source: str
    predictor: str
    eviction: str
    factory: Callable | None = None  # (ctx, **params) -> Strategy, driven by the scheduler
    planner: Callable | None = None  # a bound planned by construction (oracle): see artifact.bounds
    sees: str = "past"
    role: str = "online"
    needs_lookahead: bool = False
    params: dict = field(default_factory=dict)  # fixed parameters given to the factory
    module: str = ""
    order: int = 500  # where it stands in every table and legend (the bounds and gpu_only last)

    def __post_init__(self) -> None:
        if self.sees not in SEES:
            raise ValueError(f"strategy {self.name}: sees must be one of {SEES}, got {self.sees!r}")
        if self.role not in ROLES:
            raise ValueError(f"strategy {self.name}: role must be one of {ROLES}, got {self.role!r}")
        if (self.factory is None) == (self.planner is None):
            raise ValueError(f"strategy {self.name}: give exactly one of factory and planner")

    @property
    def batch_aware(self) -> bool:
        return bool(getattr(self.factory, "batch_aware", False))

    def make(self, ctx, **params):
        return self.factory(ctx, **{**self.params, **params})


STRATEGIES: dict[str, StrategyInfo] = {}


def register(name: str, summary: str, source: str, predictor: str, eviction: str, *, sees: str = "past",
             role: str = "online", needs_lookahead: bool = False, params: dict | None = None, order: int = 500,
             table: dict[str, StrategyInfo] | None = None) -> Callable:
    """Class decorator: register ``cls`` (a :class:`~artifact.policies.base.Strategy`) under ``name``.

    The same class may be registered under several names with different fixed ``params`` (e.g. Pre-gated MoE's
    exact pre-gate and its training-free proxy). ``order`` places it in tables and legends (papers' baselines
    first, then the papers, the deployed policies, the seed's methods, ours). ``table`` defaults to
    :data:`STRATEGIES`.
    """

    def deco(cls):
        reg = STRATEGIES if table is None else table
        if name in reg:
            raise ValueError(f"strategy {name!r} is registered twice ({reg[name].module} and {cls.__module__})")
        reg[name] = StrategyInfo(name, summary, source, predictor, eviction, factory=cls, sees=sees, role=role,
                                 needs_lookahead=needs_lookahead, params=dict(params or {}), module=cls.__module__,
                                 order=order)
        ordered = sorted(reg.values(), key=lambda i: (i.order, i.name))
        reg.clear()
        reg.update((i.name, i) for i in ordered)
        return cls

    return deco


def get_strategy(name: str) -> StrategyInfo:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; strategies: {', '.join(STRATEGIES)}") from None
