"""The planning engine: units -> ranges and strategies, as plain data that saves to JSON.

:func:`plan_units` is the one engine: any sequence of units (weights, or channel groups from a
toolkit's dependency graph), the allocations ranges are derived from, and the rules. :func:`plan` is the
verb for weights: it lists a model's weights, reads their scores and calls the engine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import (
    CalibrationRequiredError,
    NoPrunableLayersError,
    UnknownNameError,
    ValidationError,
    check_fraction,
)
from ..files import read_json_as, write_json_atomic
from ..model import UNIT_KINDS, IgnoredScope, Unit, inventory, op_type
from ..tables import format_table
from . import budget
from . import strategies as strat
from .allocations import ALLOCATIONS, AllocationInputs
from .ranges import (
    DEFAULT_TARGETS,
    RANGE_MODES,
    BoundAllocation,
    bind_allocations,
    default_allocations,
    derive_ranges,
    guard_for,
    threshold_allocations,
)
from .rules import describe_move, explain, load_rules, measured_bounds, resolve_rules, warn_unmatched
from .sensitivity import Sensitivity
from .signals import SIGNALS, get_signal, mean_abs_gradients
from .strategies import Strategy

log = logging.getLogger(__name__)

PLAN_FORMATS = (1, 2)  # 1: weights only, before units carried multiply-adds and channel counts


@dataclass
class Plan:
    """Units with their ranges, and the strategies built from them."""

    units: list[Unit]
    lo: np.ndarray
    hi: np.ndarray
    strategies: list[Strategy]
    signal: str
    rules: dict[str, list[str]] = field(default_factory=dict)  # unit -> names of the rules that bound it
    config: dict[str, Any] = field(default_factory=dict)
    unit_kind: str = "weight"
    #: unit -> the rule bounds measured sensitivity moved, with their evidence (see rules.measured_bounds)
    measured: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return {u.name: u.params for u in self.units}

    def strategy(self, name: Strategy | str) -> Strategy:
        if isinstance(name, Strategy):
            return name
        for s in self.strategies:
            if s.name == name:
                return s
        raise UnknownNameError("strategy", name, [s.name for s in self.strategies])

    def global_sparsity(self, strategy: Strategy | str, cost: str = "params") -> float:
        """The fraction of all weights (or of another ``cost``, e.g. ``macs``) the strategy removes."""
        costs = budget.unit_costs(self.units, cost)
        return self.strategy(strategy).global_sparsity({u.name: c for u, c in zip(self.units, costs)})

    def reach(self, cost: str = "params") -> tuple[float, float]:
        """The global sparsities (weighted by ``cost``) of the ranges' minimum and maximum."""
        return budget.reach(self.units, self.lo, self.hi, cost)

    def rescale(self, strategy: Strategy | str, target: float, cost: str = "params") -> Strategy:
        """The strategy moved inside the ranges until its global sparsity (weighted by ``cost``) is
        exactly ``target``; an unreachable target names the units that bound it."""
        try:
            return budget.rescale(self.strategy(strategy), self.units, self.lo, self.hi, target, cost)
        except ValidationError as e:
            raise ValidationError(f"{e}. {self._binding(target, cost)}") from None

    def at_target(self, strategy: Strategy | str, target: float | None) -> Strategy:
        """The strategy at any global target: rescaled inside the ranges; below their floor (where a gradual
        schedule starts), the floor's per-unit ratios scaled down alike. None: as planned."""
        s = self.strategy(strategy)
        low = self.reach()[0]
        if target is None or target >= low:
            return s if target is None else self.rescale(s, target)
        floor = self.rescale(s, low)
        return Strategy(f"{s.name}@{target:g}", {n: r * target / low for n, r in floor.sparsity.items()}, s.signal)

    def _binding(self, target: float, cost: str) -> str:
        """The units that keep the ranges from reaching ``target`` most, and the rules behind them."""
        costs = budget.unit_costs(self.units, cost)
        low, high = self.reach(cost)
        bound = self.hi if target > high else self.lo
        short = (target - bound) * costs if target > high else (bound - target) * costs
        worst = [i for i in np.argsort(-short)[:3] if short[i] > 0]
        names = "; ".join(f"{self.units[i].name} ({'max' if target > high else 'min'} {bound[i]:.2f}"
                          + (f", rules {', '.join(self.rules.get(self.units[i].name, []))}"
                             if self.rules.get(self.units[i].name) else "") + ")" for i in worst)
        return (f"The units that bind it most: {names}. Reachable: {low:.4f} to {high:.4f}; relax those rules, "
                "or plan around this target (mm_plugin.plan(..., targets=mm_plugin.planning.around([target])))")

    def sample(self, k: int, seed: int = 0) -> list[Strategy]:
        return strat.sample_strategies(self.units, self.lo, self.hi, k, self.signal, seed)

    def kept(self, strategy: Strategy | str, round_to: int | None = None) -> dict[str, int]:
        """Items each unit keeps (channels per head, for groups): ``round(ratio * items)`` go, at least
        one stays; with ``round_to`` the kept count moves to the nearest multiple (at least ``round_to``;
        a unit smaller than ``round_to`` is kept whole)."""
        s = self.strategy(strategy)
        if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
            raise ValidationError(f"round_to must be a positive integer, got {round_to!r}")
        kept = {}
        for u in self.units:
            if u.name not in s.sparsity:
                raise ValidationError(f"strategy {s.name!r} has no ratio for unit '{u.name}'; re-plan this model")
            n = u.items
            pruned = round(check_fraction(s.sparsity[u.name], f"ratio of unit '{u.name}'", upper_inclusive=True) * n)
            k = min(max(n - pruned, 1), n)
            if round_to and pruned > 0:
                k = n if n <= round_to else min(max(round_to, round(k / round_to) * round_to), n)
            kept[u.name] = k
        return kept

    # --- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMATS[-1],
            "unit_kind": self.unit_kind,
            "signal": self.signal,
            "config": self.config,
            "units": [
                {**u.to_dict(), "min": float(lo), "max": float(hi), "rules": self.rules.get(u.name, []),
                 **({"measured": self.measured[u.name]} if self.measured.get(u.name) else {})}
                for u, lo, hi in zip(self.units, self.lo, self.hi)
            ],
            "strategies": [
                {"name": s.name, "signal": s.signal, "global_sparsity": self.global_sparsity(s), "sparsity": s.sparsity}
                for s in self.strategies
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        if d.get("format") not in PLAN_FORMATS:
            raise ValidationError(f"plan format {d.get('format')!r} is not supported (expected one of {PLAN_FORMATS})")
        rows = d["units"] if "units" in d else d["layers"]
        return cls(
            units=[Unit.from_dict(r) for r in rows],
            lo=np.array([r["min"] for r in rows], dtype=float),
            hi=np.array([r["max"] for r in rows], dtype=float),
            strategies=[Strategy(s["name"], {k: float(v) for k, v in s["sparsity"].items()}, s.get("signal", d["signal"]))
                        for s in d["strategies"]],
            signal=d["signal"],
            rules={r["name"]: list(r.get("rules", [])) for r in rows},
            config=d.get("config", {}),
            unit_kind=d.get("unit_kind", "weight"),
            measured={r["name"]: list(r["measured"]) for r in rows if r.get("measured")},
        )

    def save(self, path: str | os.PathLike) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        return read_json_as(path, cls.from_dict, "plan", "a valid plan")

    def table(self, max_rows: int | None = None) -> str:
        """A readable table: one row per unit with its range and every strategy's sparsity."""
        header = ["unit", "kind", "params", "min", "max"] + [s.name for s in self.strategies]
        rows = [[u.module, u.kind, f"{u.params:,}", f"{lo:.2f}", f"{hi:.2f}"]
                + [f"{s.sparsity[u.name]:.2f}" for s in self.strategies]
                for u, lo, hi in zip(self.units, self.lo, self.hi)]
        footer = [["GLOBAL", "", f"{sum(self.sizes.values()):,}", "", ""]
                  + [f"{self.global_sparsity(s):.3f}" for s in self.strategies]]
        return format_table(header, rows, left=2, max_rows=max_rows, footer=footer) + self.moves()

    def moves(self) -> str:
        """The rule bounds measured sensitivity moved, one line each with its evidence ("" when none)."""
        lines = [describe_move(u.module if self.unit_kind == "weight" else u.name, m)
                 for u in self.units for m in self.measured.get(u.name, [])]
        return "\n\nRules moved by measured sensitivity:\n  " + "\n  ".join(lines) if lines else ""


def plan_units(
    units: Sequence[Unit],
    allocations: Mapping[str, BoundAllocation],
    *,
    signal: str,
    rules: Any = None,
    default_rules: bool = True,
    targets: Sequence[float] = DEFAULT_TARGETS,
    reach: Sequence[float] = (),
    samples: int = 0,
    seed: int = 0,
    unit_kind: str = "weight",
    config: Mapping[str, Any] | None = None,
    sensitivity: Sensitivity | None = None,
) -> Plan:
    """The engine: ranges from ``allocations`` at ``targets`` (extended until every ``reach`` target is
    reachable, see :func:`derive_ranges`) bounded by the rules, then the ten named strategies (plus
    ``samples`` drawn uniformly in the ranges). ``config`` is recorded in the plan. With ``sensitivity``
    (measured), rules that declare ``measured_min`` / ``measured_max`` follow each unit's measured tolerance
    at the plan's target (the median of ``reach``, or of ``targets``), see :func:`~.rules.measured_bounds`."""
    if unit_kind not in UNIT_KINDS:
        raise UnknownNameError("unit kind", unit_kind, UNIT_KINDS)
    if not units:
        raise NoPrunableLayersError("there is no unit to plan")
    rule_list = resolve_rules(rules, defaults=default_rules)
    warn_unmatched(units, load_rules(rules) if rules is not None else [])
    moved, records, measured_config = {}, {}, {}
    if sensitivity is not None:
        reference = float(np.median(list(reach) or list(targets)))
        moved, records = measured_bounds(units, rule_list, sensitivity, reference)
        measured_config = {"sensitivity": {"key": sensitivity.key, "grid": list(sensitivity.grid),
                                           "reference_sparsity": min(reference, sensitivity.grid[-1]),
                                           "moved": sum(len(v) for v in records.values())}}
    ranges = derive_ranges(units, allocations, rule_list, targets, reach, moved)
    strategies = strat.build_strategies(units, ranges.lo, ranges.hi, signal)
    if len(strategies) < len(strat.NAMED_STRATEGIES):
        log.warning("ranges are too narrow for ten distinct strategies; kept %d", len(strategies))
    strategies += strat.sample_strategies(units, ranges.lo, ranges.hi, samples, signal, seed) if samples else []
    log.info("planned %d units, %d strategies", len(units), len(strategies))
    return Plan(
        units=list(units), lo=ranges.lo, hi=ranges.hi, strategies=strategies, signal=signal,
        rules={u.name: explain(u, rule_list, sum(v.params for v in units)) for u in units},
        config={**(config or {}), "targets": sorted({float(k.rpartition("@")[2]) for k in ranges.sources}),
                "reach": list(reach), "rules": [r.to_dict() for r in rule_list],
                "samples": samples, "seed": seed, "range_sources": {k: v.tolist() for k, v in ranges.sources.items()},
                **measured_config},
        unit_kind=unit_kind, measured=records,
    )


def calibration_need(signal: str, allocations: Sequence[str] = ()) -> tuple[str, str] | None:
    """What asks for calibration data: ``("signal", name)``, ``("allocations", name)``, or None."""
    if SIGNALS.needs(signal).calibration:
        return "signal", signal
    return next((("allocations", a) for a in allocations if ALLOCATIONS.needs(a).calibration), None)


def effective_weights(model: nn.Module, units: Sequence[Unit]) -> dict[str, torch.Tensor]:
    return {u.name: getattr(model.get_submodule(u.module), u.name.rpartition(".")[2]).detach() for u in units}


def plan(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    signal: str = "magnitude",
    calibration: Iterable | None = None,
    loss_fn: Callable | None = None,
    rules: Any = None,
    default_rules: bool = True,
    ignored_scope: IgnoredScope | dict | list | None = None,
    targets: Sequence[float] = DEFAULT_TARGETS,
    reach: Sequence[float] = (),
    allocations: Sequence[str] | None = None,
    range_mode: str = "allocations",
    samples: int = 0,
    seed: int = 0,
    min_density: float | None = None,
    sensitivity: Sensitivity | None = None,
) -> Plan:
    """Derive per-weight ranges and the ten named strategies (plus ``samples`` random ones).

    ``targets`` are the global sparsities the ranges are derived at; to rescale strategies to some
    sparsities later, plan at and around them and ask the plan to reach them:
    ``targets=around([0.9, 0.95]), reach=[0.9, 0.95]``. ``min_density`` (the
    guard that keeps part of every weight in the threshold allocations) defaults to 1 %, less when a range
    target needs it. ``calibration`` (an iterable of (inputs, targets) batches) is needed by the gradient
    signals and the |w g| allocation; without it the range allocations are global magnitude, LAMP, ERK.
    ``sensitivity`` (measured, :func:`mm_plugin.portfolio.measure_sensitivity`): the ``sensitivity``
    allocation joins the range allocations (or may be named in ``allocations``), and rules that declare
    measured limits follow it (rules as priors, see docs/rules.md).
    """
    min_density = guard_for([*targets, *reach]) if min_density is None else min_density
    get_signal(signal)  # fail on a typo before any work
    if range_mode not in RANGE_MODES:
        raise UnknownNameError("range mode", range_mode, RANGE_MODES)
    for a in allocations or ():
        ALLOCATIONS.get(a, where="allocations")
    if sensitivity is None and ALLOCATIONS.any_needs(allocations or (), "measured"):
        raise ValidationError("allocation 'sensitivity' needs measured sensitivity: pass sensitivity=<a Sensitivity> "
                              "(mm-prune sensitivity writes sensitivity.json; Sensitivity.load reads it)")
    if calibration is None and SIGNALS.needs(signal).calibration:
        raise CalibrationRequiredError(
            f"signal {signal!r} needs calibration data: pass calibration=<(inputs, targets) batches>, "
            "or use signal='magnitude'"
        )
    inv = inventory(model, example_inputs)
    units = inv.units
    scope = IgnoredScope.from_any(ignored_scope)
    if scope is not None:
        units = scope.select(units, [op_type(model.get_submodule(u.module)) for u in units])
        if not units:
            raise NoPrunableLayersError("the ignored scope excludes every prunable layer")
    names = [u.name for u in units]
    chosen = tuple(allocations or default_allocations(calibration is not None)
                   + (("sensitivity",) if sensitivity is not None else ()))
    need_grads = calibration is not None and (SIGNALS.needs(signal).calibration
                                             or ALLOCATIONS.any_needs(chosen, "calibration"))
    grads = mean_abs_gradients(model, names, calibration, loss_fn) if need_grads else None
    inputs = AllocationInputs(units, effective_weights(model, units), grads, min_density, sensitivity)
    if range_mode == "signal":
        allocations = threshold_allocations(inputs, {"signal": get_signal(signal)(model, names, calibration, loss_fn)})
    else:
        allocations = bind_allocations(inputs, chosen)
    return plan_units(
        units, allocations, signal=signal, rules=rules, default_rules=default_rules, targets=targets, reach=reach,
        samples=samples, seed=seed, sensitivity=sensitivity,
        config={
            "allocations": list(allocations),
            "range_mode": range_mode,
            "ignored_scope": None if scope is None else
            {"names": list(scope.names), "patterns": list(scope.patterns), "types": list(scope.types)},
            "min_density": min_density,
            "skipped": [{"name": p.name, "reason": p.reason} for p in inv.skipped],
        },
    )
