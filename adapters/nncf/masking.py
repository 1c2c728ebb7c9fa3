"""The masks a controller holds: the core's keep-masks written into NNCF's mask hooks, re-written for a
new level or strategy, FlexHiNM's masks or learned gates, and the raw weights they prune kept at zero.

Each keep-mask is NNCF's stock ``UnstructuredPruningMask`` on the weight constant; the raw value of every
weight it prunes is set to zero whenever masks are written, so a weight that a later level revives starts
from zero, never from a stale value (as TF-MOT's ``prune_low_magnitude`` and the core's ``apply_masks_``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import mm_plugin
from mm_plugin.errors import MMError, check_fraction
from mm_plugin.flexhinm import GradualFlexHiNM, flexhinm_sparsify_
from mm_plugin.masks import bake_masks_
from mm_plugin.planning import Strategy, compute_scores
from mm_plugin.planning.reach import check_reach, guard_limit, range_targets_for

from .legacy import accuracy_aware
from .wrapping import mask_hooks, register_mask, unwrap_model, wrap

if TYPE_CHECKING:
    from .controller import CompressionController

log = logging.getLogger(__name__)

#: Passed to ``mm_plugin.plan``: every weight tensor keeps at least this fraction of its weights.
MIN_DENSITY = 0.01
#: The highest level NNCF 2.x's adaptive accuracy-aware loop tries (its ``maximal_compression_rate``).
ADAPTIVE_CEILING = 0.95


@torch.no_grad()
def zero_pruned(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Set the raw value of every weight a keep-mask prunes to zero, so the parameters agree with the hooks."""
    for name, keep in masks.items():
        param = model.get_parameter(name)
        param.masked_fill_(~keep.to(device=param.device, dtype=torch.bool), 0.0)


def register_masks(ctrl: CompressionController, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Every planned weight's keep-mask as an NNCF mask hook (all-ones where none is given); the raw
    weights they prune are set to zero."""
    wrap(model)
    masks = {u.name: masks[u.name] if u.name in masks else
             torch.ones_like(model.get_parameter(u.name), dtype=torch.bool) for u in ctrl.plan.units}
    for name, keep in masks.items():
        register_mask(model, name, keep)
    zero_pruned(model, masks)
    record(ctrl, masks)


def record(ctrl: CompressionController, masks: Mapping[str, torch.Tensor]) -> None:
    """What the export check compares the file with: ``{weight: flat bool "must be zero"}``."""
    ctrl.planned_zeros.update({name: (~keep).reshape(-1).cpu().numpy() for name, keep in masks.items()})


def core_masks(ctrl: CompressionController, model: nn.Module, strategy: Strategy) -> dict[str, torch.Tensor]:
    return mm_plugin.compute_masks(model, strategy, signal=ctrl.step.get("signal"), calibration=ctrl.calibration,
                                   loss_fn=ctrl.loss_fn, plan=ctrl.plan)


def write(ctrl: CompressionController, masks: Mapping[str, torch.Tensor]) -> None:
    """New keep-masks into the existing hooks (broadcast from rank 0 after ``ctrl.distributed()``)."""
    hooks = mask_hooks(ctrl.model)
    if ctrl.is_distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        masks = {name: _broadcast(keep) for name, keep in masks.items()}
    with torch.no_grad():
        for name, keep in masks.items():
            hooks[name].binary_mask.copy_(keep)
    zero_pruned(ctrl.model, masks)
    record(ctrl, masks)


def _broadcast(keep: torch.Tensor) -> torch.Tensor:
    """Rank 0's mask on every process (as bytes: not every backend sends bools)."""
    buffer = keep.to(torch.uint8)
    torch.distributed.broadcast(buffer, src=0)
    return buffer.bool()


def movable(ctrl: CompressionController, what: str) -> dict[str, nn.Module]:
    """The mask hooks, when this controller's masks can be re-written (unstructured mix_and_match)."""
    if ctrl.plan is None or ctrl.step.algorithm != "mix_and_match" or ctrl.channels is not None:
        raise MMError(f"{what}: only a mix_and_match step with unstructured masks changes level "
                      "(flexhinm and filter-pruning steps prune once)")
    hooks = mask_hooks(ctrl.model)
    if not hooks:
        raise MMError(f"{what}: the masks are baked into the weights (strip / prepare_for_export); compress the "
                      "model again to change the level")
    return hooks


def apply(ctrl: CompressionController, level: float, base: Strategy | None = None,
          what: str = "set_sparsity_level") -> Strategy:
    """Re-mask every planned weight for a global ``level`` with ``base`` (the config's strategy by
    default): the plan's strategy at that level, the core's masks for it (scored on the effective
    weights), written into the hooks. Returns the strategy the masks now hold."""
    hooks = movable(ctrl, what)
    level = check_fraction(level, "sparsity level")
    check_level(ctrl, max(level, ctrl.plan.reach()[0]), what)
    strategy = ctrl.plan.at_target(base or ctrl.base, level)
    zero_pruned(ctrl.model, {n: h.binary_mask for n, h in hooks.items()})  # score the effective weights
    write(ctrl, core_masks(ctrl, ctrl.model, strategy))
    ctrl.strategy, ctrl.level = strategy, level
    return strategy


def check_level(ctrl: CompressionController, level: float, path: str) -> None:
    step = ctrl.step
    ranges = (f"range_targets {list(step.range_targets)}" if step.range_targets is not None else
              f"range_targets derived as {list(range_targets(ctrl, ctrl.plan.units))}")
    check_reach(ctrl.plan, level, path, ranges=ranges, fix_low=f"set {step.path}.range_targets to bracket the target",
                min_density=MIN_DENSITY)


def range_targets(ctrl: CompressionController, units: Any) -> tuple[float, ...]:
    """The step's range targets: as given, or ``target`` +- 0.1 clipped to what the guard allows; with
    ``accuracy_aware_training`` in ``adaptive_compression_level`` mode, also the adaptive loop's ceiling
    (0.95, as NNCF 2.x's, or the guard's limit), so that every level it may try is reachable."""
    step = ctrl.step
    targets = range_targets_for(step.target, units, MIN_DENSITY, given=step.range_targets,
                                where=f"{step.path}.range_targets")
    adaptive = accuracy_aware(ctrl.config.raw)
    if step.range_targets is None and adaptive is not None and adaptive.mode == "adaptive_compression_level":
        targets = tuple(sorted({*targets, min(ADAPTIVE_CEILING, guard_limit(units, MIN_DENSITY))}))
    return targets


def flexhinm_masks(ctrl: CompressionController, model: nn.Module, strategy: Strategy, calibration: Iterable | None,
                   loss_fn: Callable | None, solve_on: Iterable | None) -> dict[str, torch.Tensor] | None:
    """FlexHiNM on the plan's per-layer amounts: the one-shot verb's masks (they become NNCF hooks),
    or, with ``gradual``, learnable 2:4 gates that ``ctrl.scheduler`` drives (None is returned).

    FlexHiNM traces and permutes the plain model (permutations folded into neighbouring weights,
    outputs checked), so NNCF's wrapper comes off for that step and goes back on. With a gradient
    signal the core's scores replace FlexHiNM's ``|w|``; with ``solve_on`` (the step's ``reconstruct``)
    the kept weights are re-solved on those batches.
    """
    step = ctrl.step
    unwrap_model(model)
    scores = None
    if step.get("signal") != "magnitude":
        scores = compute_scores(model, list(strategy.sparsity), step.get("signal"), calibration, loss_fn)
    inputs = ctrl.example_inputs if isinstance(ctrl.example_inputs, tuple) else (ctrl.example_inputs,)
    if step.gradual is not None:
        ctrl.learning = GradualFlexHiNM(model, strategy.sparsity, step.flexhinm, total_steps=step.total_steps,
                                        schedule=step.gradual, example_inputs=inputs, scores=scores,
                                        calibration=solve_on)
        ctrl.scheduler = LearningScheduler(ctrl.learning, ctrl.harden)
        ctrl.left_dense = dict(ctrl.learning.skipped)
        wrap(model)
        return None
    result = flexhinm_sparsify_(model, strategy.sparsity, step.flexhinm, example_inputs=inputs, scores=scores,
                                calibration=solve_on)
    bake_masks_(model)
    ctrl.flexhinm_result, ctrl.left_dense = result, dict(result.skipped)
    return result.masks


def harden(ctrl: CompressionController) -> None:
    """End the learned path: every gate's current 2:4 choice becomes a fixed NNCF mask hook."""
    if ctrl.learning is None:
        return
    unwrap_model(ctrl.model)
    masks = ctrl.learning.harden_()
    bake_masks_(ctrl.model)
    register_masks(ctrl, ctrl.model, masks)
    ctrl.learning = None
    log.info("%s: the learned 2:4 choices are hardened into NNCF mask hooks", ctrl.step.path)


class LearningScheduler:
    """``ctrl.scheduler`` of a flexhinm step with ``gradual``: NNCF 2.x's calls (``epoch_step()`` at the
    start of every epoch, ``step()`` before every optimizer step) advance the
    :class:`~mm_plugin.flexhinm.GradualFlexHiNM`; the first ``step()`` past its budget hardens the
    gates (``finish``), after which training goes on under fixed masks."""

    schedule = None  # no NNCF 2.x level schedule: every layer holds its planned amount from the first step
    current_sparsity_level = None

    def __init__(self, learning: GradualFlexHiNM, finish: Callable[[], None]) -> None:
        self.learning, self._finish = learning, finish
        self.current_epoch = -1
        self.current_step = -1

    def epoch_step(self, next_epoch: int | None = None) -> None:
        self.current_epoch = self.current_epoch + 1 if next_epoch is None else next_epoch

    def step(self, next_step: int | None = None) -> None:
        self.current_step = self.current_step + 1 if next_step is None else next_step
        if self.current_step >= self.learning.total_steps:
            self._finish()
        else:
            self.learning.on_step(step=self.current_step)

    def get_state(self) -> dict[str, int]:
        return {"current_epoch": self.current_epoch, "current_step": self.current_step}

    def load_state(self, state: dict[str, int]) -> None:
        self.current_epoch, self.current_step = state["current_epoch"], state["current_step"]
