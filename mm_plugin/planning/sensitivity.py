"""Measured sensitivity as plain data: each unit's validation loss when it alone is pruned at a grid of
sparsities, and what planning reads from it.

The measuring (pruning a copy, re-estimating BatchNorm, scoring a few validation batches) needs masks and a
task, so it lives in :mod:`mm_plugin.portfolio.sensitivity`; planning only reads the numbers:

* :meth:`Sensitivity.rise` / :meth:`Sensitivity.rise_at`: a unit's loss rise over the dense model, on the
  monotone envelope of its measurement (interpolated between grid points; a loss that falls counts as 0);
* :meth:`Sensitivity.tolerance`: the largest sparsity, within the grid, at which a unit's rise stays at
  or below a reference (the median unit's rise at the plan's target, :meth:`Sensitivity.reference`):
  what rules as priors compare their bounds with (:func:`mm_plugin.planning.rules.measured_bounds`);
* :func:`min_rise_allocation`: per-unit sparsities meeting a global count that minimise the summed rise
  (the ``sensitivity`` allocation).

Coupled weights: the weights whose outputs meet at residual adds (one residual stream) are also measured
pruned together (``groups`` / ``group_loss``). Where the stream's joint rise exceeds the sum of its members'
rises measured alone, the excess is shared among the members in proportion to their weights, so a stream
whose layers each look robust alone does not look robust as a whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ValidationError
from ..files import read_json_as, write_json_atomic
from ..tables import format_table

DEFAULT_GRID = (0.3, 0.5, 0.7, 0.9)
DEFAULT_BATCHES = 4  # validation batches per probe
SENSITIVITY_FORMAT = 1


def check_grid(grid: Any) -> tuple[float, ...]:
    """The grid as ascending sparsities in (0, 1), each once; a bad grid is one line naming the value."""
    try:
        values = [float(g) for g in grid]
    except (TypeError, ValueError):
        raise ValidationError(f"sensitivity grid must be a list of sparsities in (0, 1), got {grid!r}") from None
    if not values:
        raise ValidationError("sensitivity grid is empty; give sparsities in (0, 1), e.g. 0.3,0.5,0.7,0.9")
    for v in values:
        if not 0.0 < v < 1.0:
            raise ValidationError(f"sensitivity grid: {v:g} is not a sparsity in (0, 1) (0 is the dense model, "
                                  "1 would remove the unit); e.g. 0.3,0.5,0.7,0.9")
    if len(set(values)) != len(values):
        raise ValidationError(f"sensitivity grid {values} repeats a sparsity; give each once")
    return tuple(sorted(values))


def _lower_hull(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lower convex hull of points with ascending ``xs`` (collinear points dropped)."""
    hull: list[int] = []
    for i in range(len(xs)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (ys[b] - ys[a]) * (xs[i] - xs[a]) >= (ys[i] - ys[a]) * (xs[b] - xs[a]):
                hull.pop()  # b lies on or above the chord a -> i
            else:
                break
        hull.append(i)
    return xs[hull], ys[hull]


@dataclass(frozen=True)
class Sensitivity:
    """Probe losses of pruned copies of one dense model (lower is better).

    ``loss[unit][j]``: the loss with ``unit`` alone pruned to ``grid[j]`` (every other unit dense);
    ``base_loss``: the same procedure at sparsity 0 (BatchNorm re-estimated alike), so a rise is what
    pruning costs. ``groups`` / ``group_loss``: coupled weights pruned together at each grid point.
    ``key`` hashes what the numbers depend on (the run folder's cache reads it); ``meta`` says how they
    were measured.
    """

    grid: tuple[float, ...]
    base_loss: float
    loss: dict[str, tuple[float, ...]]
    kinds: dict[str, str] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    group_loss: dict[str, tuple[float, ...]] = field(default_factory=dict)
    key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", check_grid(self.grid))
        n = len(self.grid)
        for what, table in (("unit", self.loss), ("group", self.group_loss)):
            for name, values in table.items():
                if len(values) != n:
                    raise ValidationError(f"sensitivity of {what} {name!r} has {len(values)} losses for a grid of {n}")
        for g, members in self.groups.items():
            missing = [m for m in members if m not in self.loss]
            if missing:
                raise ValidationError(f"sensitivity group {g!r} names units without a measurement: {missing}")
        object.__setattr__(self, "_rises", self._corrected_rises())

    # --- curves ------------------------------------------------------------------------------
    def _corrected_rises(self) -> dict[str, np.ndarray]:
        """Each unit's rise at the grid points (>= 0), plus its share of its group's excess."""
        rises = {u: np.maximum(np.asarray(v, dtype=float) - self.base_loss, 0.0) for u, v in self.loss.items()}
        for g, members in self.groups.items():
            if g not in self.group_loss or not members:
                continue
            joint = np.maximum(np.asarray(self.group_loss[g], dtype=float) - self.base_loss, 0.0)
            excess = np.maximum(joint - sum(rises[m] for m in members), 0.0)
            weights = np.array([max(self.params.get(m, 1), 1) for m in members], dtype=float)
            for m, w in zip(members, weights / weights.sum()):
                rises[m] = rises[m] + excess * w
        return {u: np.maximum.accumulate(r) for u, r in rises.items()}

    @property
    def units(self) -> list[str]:
        return list(self.loss)

    def rise(self, unit: str) -> np.ndarray:
        """The unit's loss rise at each grid point: measured, coupling excess added, made non-decreasing."""
        if unit not in self._rises:
            raise ValidationError(f"the measured sensitivity has no curve for unit {unit!r}; measure it for this "
                                  "plan's units (mm-prune sensitivity, or mm_plugin.portfolio.measure_sensitivity)")
        return self._rises[unit]

    @property
    def ceiling(self) -> float:
        """The largest rise measured for any unit: what removing a unit entirely is assumed to cost."""
        return max((float(r[-1]) for r in self._rises.values()), default=0.0)

    def knots(self, unit: str) -> tuple[np.ndarray, np.ndarray]:
        """The unit's curve as knots from sparsity 0 (rise 0) through the grid to 1. Past the grid's last
        point nothing was measured: the curve goes on at least as steeply as its last measured segment and
        reaches at least :attr:`ceiling` at 1 (costly, so an allocation goes there only when a target needs
        it)."""
        r = self.rise(unit)
        xs = np.array([0.0, *self.grid, 1.0])
        prev_x, prev_y = (self.grid[-2], r[-2]) if len(r) > 1 else (0.0, 0.0)
        trend = float(r[-1]) + (float(r[-1]) - prev_y) / (self.grid[-1] - prev_x) * (1.0 - self.grid[-1])
        ys = np.array([0.0, *r, max(self.ceiling, trend)])
        return xs, ys

    def rise_at(self, unit: str, sparsity: float) -> float:
        """The unit's loss rise at ``sparsity``, interpolated on :meth:`knots`."""
        xs, ys = self.knots(unit)
        return float(np.interp(sparsity, xs, ys))

    def tolerance(self, unit: str, reference: float) -> float:
        """The largest sparsity in [0, the grid's last point] at which the unit's rise is at most
        ``reference`` (linear between measured points)."""
        xs, ys = self.knots(unit)
        xs, ys = xs[:-1], ys[:-1]  # measured territory only
        above = np.nonzero(ys > reference + 1e-12)[0]
        if not len(above):
            return float(xs[-1])
        j = int(above[0])  # j >= 1: ys[0] = 0 <= reference
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        return float(x0 + (x1 - x0) * (reference - y0) / (y1 - y0))

    def reference(self, sparsity: float, units: Sequence[str] | None = None) -> float:
        """The median unit's rise at ``sparsity`` (capped at the grid's last point)."""
        names = [u for u in (units if units is not None else self.units) if u in self._rises]
        if not names:
            raise ValidationError("the measured sensitivity has no curve for any of the plan's units")
        s = min(sparsity, self.grid[-1])
        return float(np.median([self.rise_at(u, s) for u in names]))

    # --- persistence and display -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": SENSITIVITY_FORMAT, "key": self.key, "grid": list(self.grid), "base_loss": self.base_loss,
                "units": [{"name": u, "kind": self.kinds.get(u, ""), "params": self.params.get(u, 0),
                           "loss": list(v), "rise": self.rise(u).tolist()} for u, v in self.loss.items()],
                "groups": [{"name": g, "members": list(m), "loss": list(self.group_loss.get(g, ()))}
                           for g, m in self.groups.items()],
                "meta": self.meta}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Sensitivity:
        if d.get("format") != SENSITIVITY_FORMAT:
            raise ValidationError(f"sensitivity format {d.get('format')!r} is not supported (expected "
                                  f"{SENSITIVITY_FORMAT}); measure again")
        units = d["units"]
        groups = d.get("groups", [])
        return cls(grid=tuple(d["grid"]), base_loss=float(d["base_loss"]),
                   loss={u["name"]: tuple(float(x) for x in u["loss"]) for u in units},
                   kinds={u["name"]: u.get("kind", "") for u in units},
                   params={u["name"]: int(u.get("params", 0)) for u in units},
                   groups={g["name"]: tuple(g["members"]) for g in groups},
                   group_loss={g["name"]: tuple(float(x) for x in g["loss"]) for g in groups if g.get("loss")},
                   key=d.get("key", ""), meta=dict(d.get("meta", {})))

    def save(self, path: str | os.PathLike) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Sensitivity:
        return read_json_as(path, cls.from_dict, "sensitivity", "a valid measurement",
                            "; measure it with mm-prune sensitivity")

    def table(self, max_rows: int | None = None) -> str:
        """One row per unit: kind, weights and its loss rise at each grid point (coupling excess included)."""
        header = ["unit", "kind", "params"] + [f"{g:g}" for g in self.grid]
        rows = [[u, self.kinds.get(u, ""), f"{self.params.get(u, 0):,}"] + [f"{r:.4f}" for r in self.rise(u)]
                for u in self.units]
        footer = [[f"group {g}", f"{len(m)} units", f"{sum(self.params.get(u, 0) for u in m):,}"]
                  + [f"{max(v - self.base_loss, 0.0):.4f}" for v in self.group_loss[g]]
                  for g, m in self.groups.items() if g in self.group_loss]
        note = f"loss rise over the dense model's {self.base_loss:.4f}, each unit pruned alone"
        return note + "\n" + format_table(header, rows, left=2, max_rows=max_rows, footer=footer)


def min_rise_allocation(sensitivity: Sensitivity, units: Sequence[str], sizes: np.ndarray, count: int,
                        hi: np.ndarray) -> np.ndarray:
    """Per-unit sparsities (floats) whose pruned items sum to ``count`` and minimise the summed loss rise.

    Each unit's curve (:meth:`Sensitivity.knots`, capped at its ``hi``) is replaced by its lower convex
    hull; for separable convex piecewise-linear costs under one linear constraint the Lagrangian optimum is
    greedy: segments are filled in order of rise per pruned item, cheapest first. Segments of equal cost
    fill together, in proportion to their length (so units that measured no rise at all share alike)."""
    sizes = np.asarray(sizes, dtype=float)
    hi = np.asarray(hi, dtype=float)
    capacity = float((hi * sizes).sum())
    if count > capacity + 1e-9:
        raise ValidationError(f"global sparsity needs {count} pruned items but the unit caps (minimum-density "
                              f"guard) allow at most {int(capacity)}; lower the target or the guard (min_density)")
    segments = []  # (cost per item, unit index, length in sparsity)
    for i, name in enumerate(units):
        xs, ys = sensitivity.knots(name)
        top = float(hi[i])
        if top <= 0:
            continue
        cut = np.searchsorted(xs, top, side="left")
        xs_c = np.append(xs[:cut], top)
        ys_c = np.append(ys[:cut], np.interp(top, xs, ys))
        hx, hy = _lower_hull(xs_c, ys_c)
        for j in range(len(hx) - 1):
            dx = hx[j + 1] - hx[j]
            segments.append(((hy[j + 1] - hy[j]) / (dx * sizes[i]), i, dx))
    segments.sort(key=lambda s: s[0])
    out = np.zeros(len(units))
    left = float(count)
    k = 0
    while left > 1e-9 and k < len(segments):
        cost = segments[k][0]
        tier = []
        while k < len(segments) and np.isclose(segments[k][0], cost, rtol=1e-9, atol=1e-15):
            tier.append(segments[k])
            k += 1
        room = sum(dx * sizes[i] for _, i, dx in tier)
        share = min(1.0, left / room)
        for _, i, dx in tier:
            out[i] += dx * share
        left -= room * share
    return np.minimum(out, hi)
