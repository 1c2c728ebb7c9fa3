"""Per-unit sparsity ranges [min, max]: where several views of a global target disagree, then bounded
by rules.

A *view* maps a global target to per-unit sparsities: a registered allocation over weights (global
magnitude, LAMP, |w g|, ERK...), one global threshold over a signal's scores, or over a toolkit's
per-channel importances for channel groups. The default (the paper's draft) runs three allocations at
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

View = Callable[[float], np.ndarray]
RANGE_MODES = ("allocations", "signal")
DEFAULT_TARGETS = (0.7, 0.8, 0.9)
DEFAULT_ALLOCATIONS = ("global_magnitude", "lamp", "snip")


@dataclass(frozen=True)
class Ranges:
    lo: np.ndarray
    hi: np.ndarray
    sources: dict[str, np.ndarray]  # "view@target" -> per-unit sparsity, before rules


def default_allocations(has_gradients: bool) -> tuple[str, ...]:
    """Global magnitude, LAMP and |w g|; without calibration data ERK stands in as the data-free view."""
    if has_gradients:
        return DEFAULT_ALLOCATIONS
    return tuple(a for a in DEFAULT_ALLOCATIONS if not ALLOCATIONS.needs(a).calibration) + ("erk",)


def allocation_views(inputs: AllocationInputs, names: Sequence[str]) -> dict[str, View]:
    return {a: (lambda t, a=a: allocate(a, inputs, t)) for a in names}


def threshold_views(inputs: AllocationInputs, scores: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, View]:
    """One global threshold per score source (``{view: {unit: scores}}``), with the minimum-density guard."""
    return {v: (lambda t, v=v: threshold_allocation(inputs, t, inputs.sorted_scores(v, lambda n: scores[v][n].clone())))
            for v in scores}


def derive_ranges(units: Sequence[Unit], views: Mapping[str, View], rules: Sequence[Rule],
                  targets: Sequence[float] = DEFAULT_TARGETS) -> Ranges:
    if not targets:
        raise ValidationError("range targets must hold at least one global sparsity, e.g. [0.7, 0.8, 0.9]")
    targets = [check_fraction(t, "range target") for t in targets]
    sources = {f"{name}@{t:g}": view(t) for name, view in views.items() for t in targets}
    stacked = np.stack(list(sources.values()))
    lo, hi = apply_rules(units, stacked.min(0), stacked.max(0), rules)
    return Ranges(lo, hi, sources)
