"""Learning-rate schedules: pure functions of the global step (resuming needs only the step)."""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class LRSchedule:
    """lr(step) for ``kind`` in constant | step | cosine, after an optional linear warm-up.

    - constant: ``base_lr``.
    - step: ``base_lr * gamma ** (epoch // step_epochs)``; independent of the total length, so
      extending a finished run with ``--resume --epochs N`` continues it exactly.
    - cosine: from ``base_lr`` down to 0 over the steps after warm-up, per batch.
    Warm-up rises linearly from ``base_lr / warmup_steps`` to ``base_lr``.
    """

    kind: str
    base_lr: float
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int = 0
    step_epochs: int = 10
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}: expected one of {SCHEDULES}")
        if self.steps_per_epoch < 1 or self.total_steps < 1:
            raise ValueError("a schedule needs at least one step")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.base_lr
        if self.kind == "step":
            return self.base_lr * self.gamma ** (step // self.steps_per_epoch // self.step_epochs)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
