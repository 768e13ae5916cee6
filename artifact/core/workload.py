"""A workload: sequences composed into lockstep steps, as flat per-token routing arrays (what a run walks).

Tokens of step ``s`` are ``step_offsets[s]:step_offsets[s + 1]`` of the ``[T, L, K]`` arrays, in slot order, with
the slot (``item``), pool sequence (``seq``) and position (``pos``) of each token beside them. Builders from trace
files live in :mod:`artifact.traces.workload`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artifact.models import ModelSpec


@dataclass(frozen=True)
class Workload:
    model: ModelSpec
    batch: int
    kind: str  # "decode" | "prefill"
    experts: np.ndarray  # int16 [T, L, K]
    step_offsets: np.ndarray  # int64 [S + 1]
    item: np.ndarray  # int32 [T]: batch slot of each token
    seq: np.ndarray  # int32 [T]: index of the pool sequence
    pos: np.ndarray  # int32 [T]: position of the token in its sequence
    lookahead: np.ndarray | None = None  # int16 [T, L, K]
    gates: np.ndarray | None = None  # float16 [T, L, K]
    source: str = ""

    @property
    def steps(self) -> int:
        return int(self.step_offsets.shape[0] - 1)

    @property
    def layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def tokens_per_step(self) -> np.ndarray:
        return np.diff(self.step_offsets)

    def step(self, s: int) -> slice:
        return slice(int(self.step_offsets[s]), int(self.step_offsets[s + 1]))

    def head(self, steps: int) -> Workload:
        """The first ``steps`` steps."""
        steps = min(steps, self.steps)
        end = int(self.step_offsets[steps])
        cut = slice(0, end)
        return Workload(self.model, self.batch, self.kind, self.experts[cut], self.step_offsets[: steps + 1],
                        self.item[cut], self.seq[cut], self.pos[cut],
                        None if self.lookahead is None else self.lookahead[cut],
                        None if self.gates is None else self.gates[cut], self.source)
