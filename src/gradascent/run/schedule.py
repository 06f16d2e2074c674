"""Learning-rate schedules as multipliers of the base rate: linear warm-up, then constant, linear or cosine decay.

A pure function of the step, so a resumed run needs nothing but the step to be on the same schedule.
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "linear", "cosine"]


def lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0, schedule: Schedule = "constant",
                  min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based).

    Warm-up: (step + 1) / warmup_steps for the first ``warmup_steps`` steps. Then, with progress p in [0, 1]
    over the remaining steps: constant 1; linear 1 - (1 - min_ratio) p; cosine
    min_ratio + (1 - min_ratio) (1 + cos(pi p)) / 2.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    p = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * p
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown schedule {schedule!r}; expected constant, linear or cosine")


def warn_short_warmup(warmup_steps: int, total_steps: int, lr: float, what: str = "optimizer steps") -> None:
    """A GradascentWarning when the warm-up outlasts the run, so that the learning rate never reaches ``lr``."""
    if warmup_steps > total_steps:
        import warnings

        from gradascent.errors import GradascentWarning

        warnings.warn(f"warmup_steps={warmup_steps} is longer than the run's {total_steps} {what}: the learning rate "
                      f"rises only to {lr * total_steps / warmup_steps:.3g}, not to the {lr:g} asked for; lower "
                      "warmup_steps",
                      GradascentWarning, stacklevel=3)
