"""What a target can be for the model at hand: range targets derived around it, clipped to what the
core's minimum-density guard allows, and a one-line error naming the layers that bound a target the
plan cannot reach, with the largest one it can."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mm_plugin.errors import ConfigError
from mm_plugin.model import Unit
from mm_plugin.planning import Plan

from .config import PruningStep

#: Passed to ``mm_plugin.plan``: every weight tensor keeps at least this fraction of its weights.
MIN_DENSITY = 0.01
#: How far on either side of the target the range targets go when the config gives none.
RANGE_SPREAD = 0.1


def guard_limits(units: Sequence[Unit]) -> np.ndarray:
    """Each unit's largest sparsity under the core's minimum-density guard: it keeps ``MIN_DENSITY`` of
    its items, rounded up, and at least one (``mm_plugin.planning.allocations.threshold_allocation``)."""
    sizes = np.array([u.items for u in units], dtype=float)
    return np.maximum(sizes - np.maximum(np.ceil(MIN_DENSITY * sizes), 1), 0) / sizes


def guard_limit(units: Sequence[Unit]) -> float:
    """The largest global sparsity the guard allows, rounded down to 1e-6 so allocations stay under it."""
    sizes = np.array([u.items for u in units], dtype=float)
    return math.floor(float(guard_limits(units) @ sizes / sizes.sum()) * 1e6) / 1e6


def range_targets(step: PruningStep, units: Sequence[Unit]) -> tuple[float, ...]:
    """The step's range targets: as given (each checked against the guard), or ``target`` +- 0.1 clipped
    to [0, guard limit]; without a target the core's defaults."""
    limit = guard_limit(units)
    if step.range_targets is not None:
        for i, t in enumerate(step.range_targets):
            if t > limit:
                raise ConfigError(f"{step.path}.range_targets[{i}]: {t:g} is more than the minimum-density guard "
                                  f"allows ({limit:.4f}: every weight tensor keeps at least {MIN_DENSITY:.0%} of its "
                                  "weights); lower it")
        return step.range_targets
    return tuple(sorted({min(round(max(step.target + d, 0.0), 6), limit)
                         for d in (-RANGE_SPREAD, 0.0, RANGE_SPREAD)}))


def check_reach(plan: Plan, step: PruningStep, level: float, path: str) -> None:
    """Refuse a level outside what the plan's ranges reach: below, say how to lower the ranges; above,
    name the layers that hold the global sparsity back and the largest level that is possible."""
    low, high = plan.reach()
    if low - 1e-9 <= level <= high + 1e-9:
        return
    where = (f"range_targets {list(step.range_targets)}" if step.range_targets is not None else
             f"range_targets derived as {list(range_targets(step, plan.units))}")
    if level < low:
        raise ConfigError(f"{path}: target {level:g} is outside what the ranges allow ({low:.4f} to {high:.4f}, from "
                          f"{where}); set {step.path}.range_targets to bracket the target")
    sizes = np.array([u.items for u in plan.units], dtype=float)
    held = (guard_limits(plan.units) - plan.hi) * sizes  # weights each layer keeps beyond the guard
    binding = [i for i in np.argsort(-held, kind="stable") if held[i] >= 1][:3]
    named = ", ".join(f"{plan.units[i].name} at most {plan.hi[i]:.2f} ({', '.join(plan.rules[plan.units[i].name]) or where})"
                      for i in binding)
    raise ConfigError(f"{path}: target {level:g} is outside what the ranges allow: at most {high:.4f} for this model, "
                      f"bound by {named + ' and ' if named else ''}the minimum-density guard (every layer keeps "
                      f"at least {MIN_DENSITY:.0%} of its weights); lower the target to "
                      f"{math.floor(high * 1e4) / 1e4:.4f}" + (" or relax those rules" if named else ""))
