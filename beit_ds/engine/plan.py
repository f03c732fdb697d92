"""A run's clock: how long it trains and how often it logs and saves, all in optimizer steps.

``job.loop_plan`` derives it once from the recipe and the loader; the loop runs by it and each
task is handed it (``Task.attach``), so no task derives steps per epoch or totals again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class LoopPlan:
    """``schedule_steps``: the steps every schedule spans (``schedule.steps``, else epochs x steps
    per epoch); ``total_steps``: where this run stops (``schedule.max_steps`` may stop it earlier).
    All in optimizer steps except ``save_every_epochs``."""

    total_steps: int
    steps_per_epoch: int
    micro_per_step: int
    samples_per_micro: int  # micro batch x world size: the global sample advance per micro-step
    lr_at: Callable[[int], float]
    wd_at: Callable[[int], float]
    log_every: int
    save_every_steps: int
    save_every_epochs: int
    max_nonfinite_steps: int
    progress_bar: bool = True
    schedule_steps: int = 0  # 0: total_steps

    def __post_init__(self) -> None:
        self.schedule_steps = self.schedule_steps or self.total_steps

    @property
    def epoch_samples(self) -> int:
        """Global samples one epoch trains on (the same on any world size at a fixed global batch)."""
        return self.steps_per_epoch * self.micro_per_step * self.samples_per_micro
