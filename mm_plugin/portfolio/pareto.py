"""Pareto fronts and aggregation over seeds (pure functions on result records)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates maximized.

    A point dominates another when it is at least as good in both and better in one; exact
    duplicates are all kept. Returned in order of increasing first coordinate.
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (a >= x and b >= y) and (a > x or b > y) for j, (a, b) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


@dataclass(frozen=True)
class Aggregate:
    """One method configuration averaged over seeds."""

    key: str  # the run key without the seed
    method: str
    signal: str
    name: str  # strategy or allocation
    target: float | None
    n: int
    sparsity: float
    nonzeros: float
    val: float
    val_std: float
    test: float
    test_std: float
    oneshot_val: float
    dense_test: float
    latency_ratio: float | None = None  # measured latency / dense (structured runs)
    macs_ratio: float | None = None

    @property
    def timed(self) -> bool:
        return self.latency_ratio is not None

    @property
    def drop(self) -> float:
        return self.dense_test - self.test


def aggregate(records: Iterable[dict]) -> list[Aggregate]:
    """Group finished runs by configuration (everything but the seed) and average them."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("rung") is None:  # a search's rungs are its workings; its pick is a record of its own
            groups[r["config_key"]].append(r)
    out = []
    for key, rs in groups.items():
        def col(field: str) -> np.ndarray:
            return np.array([r[field] for r in rs], dtype=float)

        first = rs[0]
        out.append(Aggregate(
            key=key, method=first["method"], signal=first["signal"], name=first["name"], target=first["target"],
            n=len(rs), sparsity=float(col("sparsity").mean()), nonzeros=float(col("nonzeros").mean()),
            val=float(col("val_score").mean()), val_std=float(col("val_score").std()),
            test=float(col("test_score").mean()), test_std=float(col("test_score").std()),
            oneshot_val=float(col("oneshot_val_score").mean()), dense_test=float(col("dense_test_score").mean()),
            **{f: float(col(f).mean()) for f in ("latency_ratio", "macs_ratio") if all(f in r for r in rs)},
        ))
    return sorted(out, key=lambda a: (a.sparsity, a.method, a.name))


def front_of(aggregates: Sequence[Aggregate]) -> list[Aggregate]:
    """The accuracy-vs-sparsity front, chosen on VALIDATION accuracy so the test split stays unused."""
    idx = pareto_front([(a.sparsity, a.val) for a in aggregates])
    return [aggregates[i] for i in idx]


def latency_front_of(aggregates: Sequence[Aggregate]) -> list[Aggregate]:
    """The accuracy-vs-measured-latency front (lower latency is better), chosen on validation."""
    timed = [a for a in aggregates if a.timed]
    idx = pareto_front([(-a.latency_ratio, a.val) for a in timed])
    return sorted((timed[i] for i in idx), key=lambda a: a.latency_ratio)


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """y at ``x`` on the piecewise-linear curve through ``points``; None outside their x span (a
    baseline is never extrapolated)."""
    pts = sorted(points)
    if len(pts) < 2 or not pts[0][0] <= x <= pts[-1][0]:
        return None
    xs, ys = zip(*pts)
    return float(np.interp(x, xs, ys))
