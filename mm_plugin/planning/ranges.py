"""Per-unit sparsity ranges [min, max]: where several allocations of a global target disagree, then bounded
by rules.

An *allocation* maps a global target to per-unit sparsities: a registered one over weights (global
magnitude, LAMP, |w g|, ERK...), one global threshold over a signal's scores, or over a toolkit's
per-channel importances for channel groups; bound to a model's units it is a :data:`BoundAllocation`. The default (the paper's draft) runs three allocations at
targets 0.7 / 0.8 / 0.9 with no fine-tuning and takes each unit's min and max over those runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ValidationError, check_fraction
from ..model import Unit
from .allocations import ALLOCATIONS, AllocationInputs, allocate, threshold_allocation
from .rules import Rule, apply_rules

BoundAllocation = Callable[[float], np.ndarray]
RANGE_MODES = ("allocations", "signal")
DEFAULT_TARGETS = (0.7, 0.8, 0.9)
DEFAULT_ALLOCATIONS = ("global_magnitude", "lamp", "snip")


@dataclass(frozen=True)
class Ranges:
    lo: np.ndarray
    hi: np.ndarray
    sources: dict[str, np.ndarray]  # "allocation@target" -> per-unit sparsity, before rules


def around(targets: Sequence[float]) -> tuple[float, ...]:
    """Range targets at and around the global sparsities that will be asked for: each target's density
    (1 - t) times 1.5 and divided by 1.5, so a 90 % target is bracketed by 85 % and 93.3 %, and a 99 %
    one by 98.5 % and 99.3 % (a fixed step would run past 100 % at high sparsity)."""
    out = {round(t, 4) for t in targets}
    out |= {round(1 - (1 - t) * f, 4) for t in targets for f in (1.5, 1 / 1.5)}
    return tuple(sorted(t for t in out if 0.0 < t < 1.0))


def guard_for(targets: Sequence[float], default: float = 0.01) -> float:
    """The minimum-density guard the threshold allocations can keep at the highest range target."""
    return min(default, (1.0 - max(targets)) / 2) if targets else default


def default_allocations(has_gradients: bool) -> tuple[str, ...]:
    """Global magnitude, LAMP and |w g|; without calibration data ERK stands in as the data-free allocation."""
    if has_gradients:
        return DEFAULT_ALLOCATIONS
    return tuple(a for a in DEFAULT_ALLOCATIONS if not ALLOCATIONS.needs(a).calibration) + ("erk",)


def bind_allocations(inputs: AllocationInputs, names: Sequence[str]) -> dict[str, BoundAllocation]:
    return {a: (lambda t, a=a: allocate(a, inputs, t)) for a in names}


def threshold_allocations(inputs: AllocationInputs, scores: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, BoundAllocation]:
    """One global threshold per score source (``{allocation: {unit: scores}}``), with the minimum-density guard."""
    return {v: (lambda t, v=v: threshold_allocation(inputs, t, inputs.sorted_scores(v, lambda n: scores[v][n].clone())))
            for v in scores}


def derive_ranges(units: Sequence[Unit], allocations: Mapping[str, BoundAllocation], rules: Sequence[Rule],
                  targets: Sequence[float] = DEFAULT_TARGETS, reach: Sequence[float] = (),
                  measured: Mapping[str, Mapping[str, float]] | None = None) -> Ranges:
    """Each unit's min and max over the allocations at ``targets``, bounded by the rules (``measured``: the
    bounds measured sensitivity moved, see :func:`~.rules.measured_bounds`).

    ``reach``: global sparsities (weighted by parameters) the ranges must allow. While one lies outside,
    the range targets are extended one step further (the density shrunk or grown 1.5x), so that only a
    rule, or an allocation that cannot go further, limits what is reachable, never the choice of targets."""
    if not targets:
        raise ValidationError("range targets must hold at least one global sparsity, e.g. [0.7, 0.8, 0.9]")
    targets = [check_fraction(t, "range target") for t in targets]
    sizes = np.array([u.params for u in units], dtype=float)
    sources: dict[str, np.ndarray] = {}
    while True:
        sources.update({f"{name}@{t:g}": allocation(t) for name, allocation in allocations.items() for t in targets
                        if f"{name}@{t:g}" not in sources})
        stacked = np.stack(list(sources.values()))
        lo, hi = apply_rules(units, stacked.min(0), stacked.max(0), rules, measured)
        low, high = float(lo @ sizes / sizes.sum()), float(hi @ sizes / sizes.sum())
        step = [round(1 - (1 - max(targets)) / 1.5, 4)] if any(t > high + 1e-12 for t in reach) else []
        step += [round(1 - (1 - min(targets)) * 1.5, 4)] if any(t < low - 1e-12 for t in reach) else []
        step = [t for t in step if 0.0 < t < 1.0 and t not in targets]
        try:
            sources.update({f"{name}@{t:g}": allocation(t) for name, allocation in allocations.items() for t in step})
        except ValidationError:  # an allocation cannot go that far (its minimum-density guard): the allocations' limit
            step = []
        if not step:
            return Ranges(lo, hi, sources)
        targets += step
