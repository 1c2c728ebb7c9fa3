"""What a global target can be for the units at hand: the largest sparsity the minimum-density guard
allows, range targets derived around a target and clipped to it, and a one-line error naming the units
that keep a plan from reaching a level, with the largest level it can."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from ..model import Unit
from .allocations import guard_caps
from .plan import Plan


def guard_limits(units: Sequence[Unit], min_density: float) -> np.ndarray:
    """Each unit's largest sparsity under the minimum-density guard of the threshold allocations."""
    sizes = np.array([u.items for u in units], dtype=float)
    return guard_caps(sizes, min_density) / sizes


def guard_limit(units: Sequence[Unit], min_density: float) -> float:
    """The largest global sparsity the guard allows, rounded down to 1e-6 so allocations stay under it."""
    sizes = np.array([u.items for u in units], dtype=float)
    return math.floor(float(guard_limits(units, min_density) @ sizes / sizes.sum()) * 1e6) / 1e6


def range_targets_for(target: float | None, units: Sequence[Unit], min_density: float, *,
                      given: Sequence[float] | None = None, spread: float = 0.1,
                      where: str = "range_targets") -> tuple[float, ...]:
    """Range targets for a plan that must reach ``target``: ``given`` (each checked against the guard;
    ``where`` names them in errors), or ``target`` +- ``spread`` clipped to [0, guard limit]."""
    limit = guard_limit(units, min_density)
    if given is not None:
        for i, t in enumerate(given):
            if t > limit:
                raise ConfigError(f"{where}[{i}]: {t:g} is more than the minimum-density guard allows ({limit:.4f}: "
                                  f"every weight tensor keeps at least {min_density:.0%} of its weights); lower it")
        return tuple(given)
    return tuple(sorted({min(round(max(target + d, 0.0), 6), limit) for d in (-spread, 0.0, spread)}))


def check_reach(plan: Plan, level: float, where: str, *, ranges: str, fix_low: str, min_density: float) -> None:
    """Refuse a level outside what the plan's ranges reach. Below, say how to lower the ranges
    (``fix_low``); above, name the units that hold the global sparsity back (and their rules, else
    ``ranges``: what the ranges were derived from) and the largest level that is possible."""
    low, high = plan.reach()
    if low - 1e-9 <= level <= high + 1e-9:
        return
    if level < low:
        raise ConfigError(f"{where}: target {level:g} is outside what the ranges allow ({low:.4f} to {high:.4f}, from "
                          f"{ranges}); {fix_low}")
    sizes = np.array([u.items for u in plan.units], dtype=float)
    held = (guard_limits(plan.units, min_density) - plan.hi) * sizes  # weights each unit keeps beyond the guard
    binding = [i for i in np.argsort(-held, kind="stable") if held[i] >= 1][:3]
    named = ", ".join(f"{plan.units[i].name} at most {plan.hi[i]:.2f} "
                      f"({', '.join(plan.rules[plan.units[i].name]) or ranges})" for i in binding)
    raise ConfigError(f"{where}: target {level:g} is outside what the ranges allow: at most {high:.4f} for this model, "
                      f"bound by {named + ' and ' if named else ''}the minimum-density guard (every layer keeps "
                      f"at least {min_density:.0%} of its weights); lower the target to "
                      f"{math.floor(high * 1e4) / 1e4:.4f}" + (" or relax those rules" if named else ""))
