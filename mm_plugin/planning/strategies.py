"""Strategies: per-layer sparsity vectors drawn from the ranges [lo, hi].

Each named strategy is a position ``a_l`` in [0, 1] inside every layer's range,
``rho_l = lo_l + a_l (hi_l - lo_l)``, defined from depth, size and kind only, so it applies to any
model and to any unit (weights or channel groups). Pure functions throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..model import Unit


@dataclass(frozen=True)
class Strategy:
    """Per-unit sparsities and the signal that ranks the weights inside each unit: what ``prune_`` masks by,
    unless told otherwise."""

    name: str
    sparsity: dict[str, float]
    signal: str

    @classmethod
    def of(cls, name: str, units: Sequence[Unit], rho: np.ndarray, signal: str) -> Strategy:
        return cls(name, {u.name: float(r) for u, r in zip(units, rho)}, signal)

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


def build_strategies(units: Sequence[Unit], lo: np.ndarray, hi: np.ndarray, signal: str) -> list[Strategy]:
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
            out.append(Strategy.of(name, units, rho, signal))
    return out


def sample_strategies(
    units: Sequence[Unit], lo: np.ndarray, hi: np.ndarray, k: int, signal: str, seed: int = 0
) -> list[Strategy]:
    """K strategies with every layer drawn uniformly from its range (seed 000's sampling mode)."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return [Strategy.of(f"sample-{i:02d}", units, rng.uniform(lo, hi), signal) for i in range(k)]
