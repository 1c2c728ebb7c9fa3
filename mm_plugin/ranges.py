"""Per-layer sparsity ranges [min, max]: where global allocations disagree, then bounded by rules.

Default (the paper's draft): run global allocations at several targets with no fine-tuning, take each
layer's min and max over those runs. ``mode="signal"`` uses the chosen signal's own global threshold
at the targets instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .allocations import AllocationInputs, allocate, threshold_allocation
from .errors import UnknownNameError, ValidationError, check_fraction
from .rules import Rule, apply_rules

RANGE_MODES = ("allocations", "signal")
DEFAULT_TARGETS = (0.7, 0.8, 0.9)
DEFAULT_ALLOCATIONS = ("global_magnitude", "lamp", "snip")
DATA_FREE_ALLOCATIONS = ("global_magnitude", "lamp", "erk")


@dataclass(frozen=True)
class Ranges:
    lo: np.ndarray
    hi: np.ndarray
    sources: dict[str, np.ndarray]  # "allocation@target" -> per-layer sparsity, before rules


def default_allocations(has_gradients: bool) -> tuple[str, ...]:
    """|w g| needs calibration data; without it ERK stands in as the third, data-free view."""
    return DEFAULT_ALLOCATIONS if has_gradients else DATA_FREE_ALLOCATIONS


def derive_ranges(
    inputs: AllocationInputs,
    rules: Sequence[Rule],
    *,
    targets: Sequence[float] = DEFAULT_TARGETS,
    allocations: Sequence[str] | None = None,
    mode: str = "allocations",
    signal_scores: dict[str, torch.Tensor] | None = None,
) -> Ranges:
    if mode not in RANGE_MODES:
        raise UnknownNameError("range mode", mode, RANGE_MODES)
    if not targets:
        raise ValidationError("range targets must hold at least one global sparsity, e.g. [0.7, 0.8, 0.9]")
    targets = [check_fraction(t, "range target") for t in targets]
    if mode == "signal":
        if signal_scores is None:
            raise ValidationError("range mode 'signal' needs the signal's scores")
        sources = {
            f"signal@{t:g}": threshold_allocation(
                inputs, t, inputs.sorted_scores("signal", lambda n: signal_scores[n].clone())
            )
            for t in targets
        }
    else:
        names = allocations or default_allocations(inputs.gradients is not None)
        sources = {f"{a}@{t:g}": allocate(a, inputs, t) for a in names for t in targets}
    stacked = np.stack(list(sources.values()))
    lo, hi = apply_rules(inputs.layers, stacked.min(0), stacked.max(0), rules)
    return Ranges(lo, hi, sources)
