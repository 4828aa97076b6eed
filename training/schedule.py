"""Learning-rate schedules with warm-up (as multipliers of the base rate, for LambdaLR)."""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class LearningRateSchedule:
    """``warmup_steps`` of linear warm-up, then constant, linear decay to 0, or cosine decay to 0."""

    kind: str
    total_steps: int
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; allowed: {', '.join(SCHEDULES)}")

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
