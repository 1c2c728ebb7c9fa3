"""Strategies: per-layer sparsity vectors drawn from the ranges [lo, hi].

Each named strategy is a position ``a_l`` in [0, 1] inside every layer's range,
``rho_l = lo_l + a_l (hi_l - lo_l)``, defined from depth, size and kind only, so it applies to any
model (or to Torch-Pruning groups, which carry the same fields). Pure functions throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .allocations import round_to_total
from .errors import ValidationError, check_fraction


class Unit(Protocol):
    """What a strategy needs to know of a layer (or of a channel group)."""

    name: str
    kind: str
    params: int
    depth: float


@dataclass(frozen=True)
class Strategy:
    name: str
    sparsity: dict[str, float]

    def global_sparsity(self, sizes: Mapping[str, int]) -> float:
        total = sum(sizes[n] for n in self.sparsity)
        return sum(self.sparsity[n] * sizes[n] for n in self.sparsity) / total if total else 0.0


Position = Callable[[Sequence[Unit]], np.ndarray]

_INTERPOLATIONS = (0.3, 0.5, 0.7, 0.9)
_FALLBACK_INTERPOLATIONS = (0.1, 0.2, 0.4, 0.6, 0.8, 0.95, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85)


def _constant(a: float) -> Position:
    return lambda units: np.full(len(units), a)


def _parameter_proportional(units: Sequence[Unit]) -> np.ndarray:
    """b_l = min(1, 0.1 |W_l| / mean |W|): large layers are pruned more (the draft's formula)."""
    sizes = np.array([u.params for u in units], dtype=float)
    return np.minimum(1.0, 0.1 * sizes / sizes.mean())


def _classifier_heavy(units: Sequence[Unit]) -> np.ndarray:
    """Late layers pruned more, the head fully to its maximum."""
    a = np.array([u.depth for u in units], dtype=float)
    a[[u.kind == "head" for u in units]] = 1.0
    return a


def _feature_heavy(units: Sequence[Unit]) -> np.ndarray:
    """Early feature layers and embeddings pruned more (within their rule-capped ranges)."""
    a = np.array([1.0 - u.depth for u in units], dtype=float)
    a[[u.kind in ("embedding", "patch_embedding") for u in units]] = 1.0
    return a


NAMED_STRATEGIES: dict[str, Position] = {
    "conservative": _constant(0.0),
    "aggressive": _constant(1.0),
    "balanced": _constant(0.5),
    **{f"interp-{a:.2f}": _constant(a) for a in _INTERPOLATIONS},
    "parameter-proportional": _parameter_proportional,
    "classifier-heavy": _classifier_heavy,
    "feature-heavy": _feature_heavy,
}


def _counts(rho: np.ndarray, units: Sequence[Unit]) -> tuple[int, ...]:
    return tuple(int(round(r * u.params)) for r, u in zip(rho, units))


def _strategy(name: str, units: Sequence[Unit], rho: np.ndarray) -> Strategy:
    return Strategy(name, {u.name: float(r) for u, r in zip(units, rho)})


def build_strategies(units: Sequence[Unit], lo: np.ndarray, hi: np.ndarray) -> list[Strategy]:
    """The ten named strategies; a duplicate (same pruned count in every layer) is replaced by the
    next interpolation that differs from all strategies so far. Fewer than ten come back only when
    the ranges are too narrow to hold ten distinct vectors."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    out: list[Strategy] = []
    seen: set[tuple[int, ...]] = set()
    fallbacks = iter(_FALLBACK_INTERPOLATIONS)
    for name, position in NAMED_STRATEGIES.items():
        rho = lo + position(units) * (hi - lo)
        while _counts(rho, units) in seen:
            a = next(fallbacks, None)
            if a is None:
                break
            name, rho = f"interp-{a:.2f}", lo + a * (hi - lo)
        key = _counts(rho, units)
        if key not in seen:
            seen.add(key)
            out.append(_strategy(name, units, rho))
    return out


def sample_strategies(
    units: Sequence[Unit], lo: np.ndarray, hi: np.ndarray, k: int, seed: int = 0
) -> list[Strategy]:
    """K strategies with every layer drawn uniformly from its range (seed 000's sampling mode)."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return [_strategy(f"sample-{i:02d}", units, rng.uniform(lo, hi)) for i in range(k)]


def unit_costs(units: Sequence[Unit], cost: str = "params") -> np.ndarray:
    """Each unit's weight in a global figure: ``params`` (sparsity) or another integer field such as
    ``macs`` (Torch-Pruning groups carry the multiply-adds their channels take part in)."""
    values = [getattr(u, cost, None) for u in units]
    if any(not isinstance(v, (int, np.integer)) for v in values) or sum(values) <= 0:
        raise ValidationError(
            f"these layers carry no positive {cost!r} counts to weigh a target by; use cost='params'"
        )
    return np.array(values, dtype=float)


def rescale(
    strategy: Strategy, units: Sequence[Unit], lo: np.ndarray, hi: np.ndarray, target: float,
    cost: str = "params",
) -> Strategy:
    """Move every layer toward its max (or min) by the same fraction until the global sparsity is
    ``target``; the shape of the strategy is kept and every layer stays inside its range.

    ``cost`` weighs the layers: ``params`` makes ``target`` a fraction of weights; ``macs`` a fraction
    of multiply-adds, which is what latency follows when whole channels are removed.
    """
    check_fraction(target, "target sparsity")
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    sizes = unit_costs(units, cost)
    rho = np.array([strategy.sparsity[u.name] for u in units])
    k = target * sizes.sum()
    reach = (float(lo @ sizes / sizes.sum()), float(hi @ sizes / sizes.sum()))
    if not reach[0] - 1e-12 <= target <= reach[1] + 1e-12:
        raise ValidationError(
            f"target {target} is outside what the ranges allow ({reach[0]:.4f} to {reach[1]:.4f}); "
            "widen the ranges (rules, range targets) or pick a reachable target"
        )

    def moved(lam: float) -> np.ndarray:
        return rho + lam * (hi - rho) if lam >= 0 else rho + lam * (rho - lo)

    a, b = -1.0, 1.0
    for _ in range(100):
        mid = (a + b) / 2
        if moved(mid) @ sizes < k:
            a = mid
        else:
            b = mid
    counts = round_to_total(moved(b), sizes.astype(np.int64), int(round(k)), hi)
    suffix = "" if cost == "params" else f" {cost}"
    return _strategy(f"{strategy.name}@{target:g}{suffix}", units, counts / sizes)
