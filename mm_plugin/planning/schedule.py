"""Gradual sparsity schedules: the global level a model should be pruned to at each epoch, from an initial
level to the target (the schedules NNCF 2.x users know: polynomial, exponential, adaptive, multistep,
with their formulas and defaults). A pure function of the epoch; whoever trains asks it."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

SCHEDULES = ("polynomial", "exponential", "adaptive", "multistep")
#: NNCF 2.x's adaptive schedule raises the level by this much every ``patience`` epochs in which the
#: masks reached it, which exact masks always do.
ADAPTIVE_STEP = 0.05


@dataclass(frozen=True)
class Schedule:
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
