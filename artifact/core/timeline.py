"""When each operation of a plan ran: what both executors return (milliseconds from the first operation)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Timeline:
    load_start: np.ndarray  # float64 [N]
    load_end: np.ndarray  # float64 [N]
    comp_start: np.ndarray  # float64 [M]: expert FFNs of each COMPUTE
    comp_end: np.ndarray  # float64 [M]
    nonmoe_start: np.ndarray  # float64 [G]: the NON-MoE part of each layer-step
    nonmoe_end: np.ndarray  # float64 [G]
    executor: str  # "simulator" | "engine"
    # Engine extras (wall time, repeats, peak memory); the simulator leaves them empty.
    info: dict = field(default_factory=dict)
    # False for a lean engine run, which records no per-operation times: its arrays are NaN and its figures None.
    measured: bool = True

    @property
    def total_ms(self) -> float | None:
        if not self.measured:
            return None
        ends = [a.max() for a in (self.load_end, self.comp_end, self.nonmoe_end) if a.size]
        return float(max(ends)) if ends else 0.0

    @property
    def copy_busy_ms(self) -> float | None:
        if not self.measured:
            return None
        return float((self.load_end - self.load_start).sum())

    @property
    def compute_busy_ms(self) -> float | None:
        if not self.measured:
            return None
        return float((self.comp_end - self.comp_start).sum() + (self.nonmoe_end - self.nonmoe_start).sum())

    def stall_ms(self, comp_ready: np.ndarray) -> float | None:
        """Time COMPUTEs waited for copies: start minus when the compute stream was ready for them."""
        if not self.measured:
            return None
        return float(np.maximum(self.comp_start - comp_ready, 0.0).sum())
