"""Budgets: bring a strategy to a global target weighed by parameters or multiply-adds, or to any
measured figure (multiply-adds as a toolkit counts them, latency) by a search on the planned target
(the figure a method is asked for, by its own estimate).

One bisection serves both: the exact rescale searches the common step every unit takes toward its
max (or min); a measured budget searches the rescale target (or a baseline's own ratio) whose pruned
model measures closest to the goal, after proportional steps that usually find it first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError, ValidationError, check_fraction
from ..model import Unit
from .allocations import round_to_total
from .strategies import Strategy

COSTS = ("params", "macs")


def unit_costs(units: Sequence[Unit], cost: str = "params") -> np.ndarray:
    """Each unit's weight in a global figure: ``params`` (sparsity) or ``macs`` (multiply-adds per
    inference of the weights the unit's sparsity removes a share of)."""
    values = [getattr(u, cost, None) for u in units] if cost in COSTS else [None]
    if any(not isinstance(v, (int, np.integer)) for v in values) or sum(values) <= 0:
        raise ValidationError(
            f"these units carry no positive {cost!r} counts to weigh a target by; use cost='params'"
        )
    return np.array(values, dtype=float)


def reach(units: Sequence[Unit], lo: np.ndarray, hi: np.ndarray, cost: str = "params") -> tuple[float, float]:
    """The global figures (weighted by ``cost``) of the ranges' minimum and maximum."""
    costs = unit_costs(units, cost)
    return float(np.asarray(lo) @ costs / costs.sum()), float(np.asarray(hi) @ costs / costs.sum())


def bisect(measure: Callable[[float], float], goal: float, lo: float, hi: float, *, steps: int = 100,
           tol: float = 0.0, xtol: float = 0.0) -> float:
    """The value in [lo, hi] whose ``measure`` (non-decreasing in it) came closest to ``goal``
    over ``steps`` halvings; stops early once within ``tol``, or once the interval is ``xtol`` wide (a
    staircase measure: nothing new between). Reachability is the caller's check."""
    best = min((abs(measure(lo) - goal), lo), (abs(measure(hi) - goal), hi))
    for _ in range(steps):
        if best[0] <= tol or abs(hi - lo) <= xtol:
            break
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        m = measure(mid)
        best = min(best, (abs(m - goal), mid))
        lo, hi = (mid, hi) if m < goal else (lo, mid)
    return best[1]


def planned_target_for(removed: Callable[[float], float], goal: float, lo: float, hi: float, *, what: str,
                       figure: str = "of the model's multiply-adds", tol: float = 0.005, steps: int = 14,
                       proportional: int = 4, xtol: float = 1e-3, start: float | None = None) -> float:
    """The planned target in [lo, hi] whose pruned model measures within ``tol`` of ``goal`` removed
    (``removed``: about non-decreasing, measured on a pruned copy, so each planned target is measured once);
    a goal outside what the ends reach is a ConfigError naming ``what`` and its span.

    A measured figure grows about in proportion to the planned target (removing channels also removes what read
    them, so a multiply-add estimate is off by a factor, not a shift): up to ``proportional`` measurements, the
    first at ``start`` (the caller's first-order guess; the goal itself by default), each next one stepping by
    the measured ratio, usually land within ``tol``. Otherwise bisection between the closest measurements on
    either side of the goal, down to ``xtol``; the ends are measured only for a side no measurement reached.
    Whole channels and heads make the figure a staircase whose steps can be wider than ``tol``: where no
    measurement lands within it, the closest that removes at least the goal wins, since a target is a budget
    and no method may be compared at less than it."""
    seen: dict[float, float] = {}

    def at(t: float) -> float:
        if t not in seen:
            seen[t] = removed(t)
        return seen[t]

    t = min(max(goal if start is None else start, lo), hi)
    for _ in range(proportional):
        m = at(t)
        if abs(m - goal) <= tol:
            return t
        t = min(max(t * goal / m, lo), hi) if m > 0 else hi
    below = max((t for t, m in seen.items() if m <= goal), default=None)
    above = min((t for t, m in seen.items() if m >= goal), default=None)
    if (below is None and at(lo) - tol > goal) or (above is None and at(hi) + tol < goal):
        raise ConfigError(f"{what} cannot remove {goal:g} {figure}: it spans {at(lo):.3f} to {at(hi):.3f}; "
                          "pick targets inside that range (or widen the ranges with rules)")
    bisect(at, goal, lo if below is None else below, hi if above is None else above, steps=steps, tol=tol,
           xtol=xtol)
    met = [t for t, m in seen.items() if m >= goal - tol]  # never empty: the span reaches the goal
    return min(met, key=lambda t: abs(seen[t] - goal))


def rescale(
    strategy: Strategy, units: Sequence[Unit], lo: np.ndarray, hi: np.ndarray, target: float,
    cost: str = "params",
) -> Strategy:
    """Move every unit toward its max (or min) by the same fraction until the global figure is
    ``target``; the shape of the strategy is kept and every unit stays inside its range.

    ``cost`` weighs the units: ``params`` makes ``target`` a fraction of weights; ``macs`` a fraction
    of multiply-adds, which is what latency follows when whole channels are removed.
    """
    check_fraction(target, "target sparsity")
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    sizes = unit_costs(units, cost)
    rho = np.array([strategy.sparsity[u.name] for u in units])
    k = target * sizes.sum()
    low, high = reach(units, lo, hi, cost)
    if not low - 1e-12 <= target <= high + 1e-12:
        raise ValidationError(
            f"target {target} is outside what the ranges allow ({low:.4f} to {high:.4f}); "
            "widen the ranges (rules, range targets) or pick a reachable target"
        )

    def moved(lam: float) -> np.ndarray:
        return rho + lam * (hi - rho) if lam >= 0 else rho + lam * (rho - lo)

    lam = bisect(lambda x: float(moved(x) @ sizes), k, -1.0, 1.0)
    counts = round_to_total(moved(lam), sizes.astype(np.int64), int(round(k)), hi)
    suffix = "" if cost == "params" else f" {cost}"
    return Strategy.of(f"{strategy.name}@{target:g}{suffix}", units, counts / sizes, strategy.signal)
