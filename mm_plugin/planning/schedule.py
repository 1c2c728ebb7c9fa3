"""Gradual sparsity schedules: the global level a model should be pruned to at each epoch, from an initial
level to the target (the schedules NNCF 2.x users know: polynomial, exponential, adaptive, multistep,
with their formulas and defaults). A pure function of the epoch; whoever trains asks it, or drives a
:class:`Scheduler` that applies each level as it falls due."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SCHEDULES = ("polynomial", "exponential", "adaptive", "multistep")
#: NNCF 2.x's adaptive schedule raises the level by this much every ``patience`` epochs in which the
#: masks reached it, which exact masks always do.
ADAPTIVE_STEP = 0.05


@dataclass(frozen=True)
class SparsitySchedule:
    """The sparsity level by epoch: from ``init`` to ``target`` (NNCF 2.x ``SparsityScheduler``s)."""

    kind: str
    init: float
    target: float
    target_epoch: int = 90
    freeze_epoch: int = 100
    power: float = 0.9
    concave: bool = True
    steps: tuple[int, ...] = ()  # multistep: epochs at which the next level starts
    levels: tuple[float, ...] = ()  # multistep: one more than steps; the last is the target
    patience: int = 1
    steps_per_epoch: int | None = None  # polynomial: update every optimizer step when set

    def sparsity_at(self, epoch: int, step: int = 0) -> float:
        """The level for ``epoch`` (zero-based; -1 before training), ``step`` optimizer steps into it."""
        if self.kind == "multistep":
            return self.levels[bisect_right(self.steps, epoch)] if epoch >= 0 else self.levels[0]
        if epoch < 0:
            return self.init
        if self.kind == "adaptive":
            return min(self.init + ADAPTIVE_STEP * ((epoch + 1) // self.patience), self.target)
        if self.target_epoch == 0:
            return self.target
        fraction = epoch + (step / self.steps_per_epoch if self.steps_per_epoch else 0.0)
        progress = min(1.0, max(0.0, fraction / self.target_epoch))
        if self.kind == "exponential":  # the density decays exponentially
            density = (1 - self.init) * ((1 - self.target) / (1 - self.init)) ** progress
            return min(1 - density, self.target)
        if self.concave:
            return self.target - (self.target - self.init) * (1 - progress) ** self.power
        return self.init + (self.target - self.init) * progress ** self.power

    @property
    def final_level(self) -> float:
        """The level the masks keep once frozen (``freeze_epoch``): what a run without training gets."""
        return self.sparsity_at(self.freeze_epoch - 1)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


class Scheduler:
    """Drives a schedule from a training loop: call ``epoch_step()`` at the start of every epoch and
    ``step()`` at every optimizer step (NNCF 2.x's scheduler interface); whenever a level is due,
    ``apply(level)`` re-masks. From ``freeze_epoch`` on the masks stay as they are. Without a schedule
    (one shot) it only counts, like NNCF 2.x's stub scheduler."""

    def __init__(self, schedule: SparsitySchedule | None, apply: Callable[[float], None]) -> None:
        self.schedule, self._apply = schedule, apply
        self.current_epoch = -1
        self.current_step = -1
        self._steps_in_epoch = 0

    @property
    def current_sparsity_level(self) -> float | None:
        """The level the masks hold (from ``freeze_epoch`` on, the last one before it)."""
        if self.schedule is None:
            return None
        if self.current_epoch >= self.schedule.freeze_epoch:
            return self.schedule.final_level
        return self.schedule.sparsity_at(self.current_epoch, max(self._steps_in_epoch - 1, 0))

    def epoch_step(self, next_epoch: int | None = None) -> None:
        self.current_epoch = self.current_epoch + 1 if next_epoch is None else next_epoch
        self._steps_in_epoch = 0
        self._update()

    def step(self, next_step: int | None = None) -> None:
        self.current_step = self.current_step + 1 if next_step is None else next_step
        self._steps_in_epoch += 1
        if self.schedule is not None and self.schedule.steps_per_epoch and self.current_epoch >= 0:
            self._update()

    def _update(self) -> None:
        if self.schedule is not None and self.current_epoch < self.schedule.freeze_epoch:
            self._apply(self.current_sparsity_level)

    def get_state(self) -> dict[str, int]:
        return {"current_epoch": self.current_epoch, "current_step": self.current_step}

    def load_state(self, state: dict[str, int]) -> None:
        """Restore the position; the next ``epoch_step()`` / ``step()`` re-masks from there."""
        self.current_epoch, self.current_step = state["current_epoch"], state["current_step"]
