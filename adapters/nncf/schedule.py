"""``ctrl.scheduler``: what an NNCF 2.x training loop drives with ``epoch_step()`` / ``step()``. The schedule
itself (NNCF 2.x's formulas and defaults) is the core's :class:`mm_plugin.planning.Schedule`; whenever a
level is due the scheduler asks the controller to re-mask (the core's masks at that level).
"""

from __future__ import annotations

from collections.abc import Callable

from mm_plugin.planning import Schedule


class Scheduler:
    """``ctrl.scheduler``: call ``epoch_step()`` at the start of every epoch and ``step()`` at every
    optimizer step, as in NNCF 2.x; from ``freeze_epoch`` on the masks stay as they are. Without a
    schedule (one-shot configs) it only counts, like NNCF 2.x's stub scheduler."""

    def __init__(self, schedule: Schedule | None, apply: Callable[[float], None]) -> None:
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
