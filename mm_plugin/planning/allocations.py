"""Layer-wise sparsity allocations for a global target: the range inputs and the baselines.

An allocation is a registered callable ``(inputs, target) -> np.ndarray`` of per-unit sparsities
(in ``inputs.units`` order) whose item-weighted mean equals ``target`` to within one item per unit
(items: a weight's entries, or a channel group's channels).
Two families cover the classics:

* threshold allocations (global magnitude, LAMP, |w g|): one global threshold over per-weight
  scores, with a minimum-density guard against layer collapse (Gupta et al. 2022);
* proportional allocations (uniform, uniform+, ERK): density_l = eps * f_l clipped to [0, 1], with
  eps solved for the target;
* the measured allocation (``sensitivity``): the sparsities that minimise the summed measured loss rise
  (:func:`~.sensitivity.min_rise_allocation`), from a :class:`~.sensitivity.Sensitivity` in the inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import CalibrationRequiredError, ValidationError, check_fraction
from ..model import Unit
from ..registry import Needs, Registry
from .sensitivity import Sensitivity, min_rise_allocation

Allocation = Callable[["AllocationInputs", float], np.ndarray]
ALLOCATIONS: Registry[Allocation] = Registry("allocation")
register_allocation = ALLOCATIONS.register


def list_allocations(pattern: str = "*") -> list[str]:
    return ALLOCATIONS.names(pattern)


@dataclass
class AllocationInputs:
    """What allocations look at: units, their weights, (optionally) mean |gradients| and measured sensitivity.

    Sorted per-unit scores are memoized by name, so running several targets costs one sort per score.
    """

    units: list[Unit]
    weights: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor] | None = None
    min_density: float = 0.01
    sensitivity: Sensitivity | None = None
    _sorted: dict[str, list[torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([u.items for u in self.units], dtype=np.int64)

    def sorted_scores(self, key: str, fn: Callable[[str], torch.Tensor]) -> list[torch.Tensor]:
        """Each unit's ``fn`` scores in ascending order, memoized under ``key``. ``fn`` must return a
        fresh tensor: it is sorted in place, so peak memory stays near one copy of the weights."""
        if key not in self._sorted:

            def one(name: str) -> torch.Tensor:
                scores = fn(name).detach().flatten().cpu().float().contiguous()
                scores.numpy().sort()  # numpy's vectorized sort: about 3x faster than torch.sort on CPU
                return scores

            self._sorted[key] = self._map(one)
        return self._sorted[key]

    def derive_sorted(
        self, key: str, source: str, source_fn: Callable[[str], torch.Tensor],
        transform_: Callable[[torch.Tensor], None],
    ) -> list[torch.Tensor]:
        """Scores that keep ``source``'s order inside each unit, made by transforming its sorted arrays
        in place (they leave the cache: a later use of ``source`` sorts again)."""
        if key not in self._sorted:
            arrays = self.sorted_scores(source, source_fn)
            del self._sorted[source]
            self._map(lambda a: transform_(a), arrays)
            self._sorted[key] = arrays
        return self._sorted[key]

    def _map(self, fn: Callable, items: list | None = None) -> list:
        """``fn`` over units (names) or ``items`` on one thread per core: numpy and torch release the GIL."""
        items = [u.name for u in self.units] if items is None else items
        with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
            return list(pool.map(fn, items))

    def require_gradients(self, who: str) -> dict[str, torch.Tensor]:
        if self.gradients is None:
            free = [n for n in ALLOCATIONS.names() if not ALLOCATIONS.needs(n).calibration]
            raise CalibrationRequiredError(
                f"allocation {who!r} needs gradients: pass calibration data, or choose data-free "
                f"allocations ({', '.join(free)})"
            )
        return self.gradients

    def require_sensitivity(self, who: str) -> Sensitivity:
        if self.sensitivity is None:
            raise ValidationError(
                f"allocation {who!r} needs measured sensitivity: pass sensitivity=<a Sensitivity> (measure it with "
                "mm-prune sensitivity, or mm_plugin.portfolio.measure_sensitivity)"
            )
        return self.sensitivity


def _target_count(sizes: np.ndarray, target: float) -> int:
    check_fraction(target, "target sparsity")
    return int(round(target * int(sizes.sum())))


def _threshold_counts(sorted_scores: list[torch.Tensor], k: int, caps: np.ndarray) -> np.ndarray:
    """Per-layer counts of the lowest scores under one global threshold, summing exactly to ``k``."""
    if k > int(caps.sum()):
        raise ValidationError(
            f"global sparsity needs {k} pruned weights but the minimum-density guard allows at most "
            f"{int(caps.sum())}; lower the target or the guard (min_density)"
        )
    caps_t = torch.as_tensor(caps)

    def below(tau: float, right: bool) -> torch.Tensor:
        t = torch.tensor([tau], dtype=sorted_scores[0].dtype)
        c = torch.stack([torch.searchsorted(s, t, right=right)[0] for s in sorted_scores])
        return torch.minimum(c, caps_t)

    lo = min(float(s[0]) for s in sorted_scores)
    hi = max(float(s[-1]) for s in sorted_scores)
    if int(below(lo, True).sum()) >= k:
        hi = lo
    for _ in range(100):  # smallest tau with count(score <= tau) >= k
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if int(below(mid, True).sum()) >= k:
            hi = mid
        else:
            lo = mid
    strictly, upto = below(hi, False), below(hi, True)
    counts = strictly.clone()
    remainder = k - int(counts.sum())
    for i in range(len(counts)):  # ties at the threshold: fill layer by layer
        if remainder <= 0:
            break
        take = min(remainder, int(upto[i] - strictly[i]))
        counts[i] += take
        remainder -= take
    return counts.numpy().astype(np.int64)


def guard_caps(sizes: np.ndarray, min_density: float) -> np.ndarray:
    """Items each unit may lose under the minimum-density guard: it keeps ``min_density`` of its items,
    rounded up, and at least one."""
    return np.maximum(sizes - np.maximum(np.ceil(min_density * sizes), 1), 0)


def threshold_allocation(inputs: AllocationInputs, target: float, sorted_scores: list[torch.Tensor]) -> np.ndarray:
    """One global threshold over per-layer ascending ``sorted_scores``, with the minimum-density guard."""
    sizes = inputs.sizes
    caps = guard_caps(sizes, inputs.min_density).astype(np.int64)
    k = _target_count(sizes, target)
    counts = _threshold_counts(sorted_scores, k, caps)
    return counts / sizes


def round_to_total(ideal: np.ndarray, sizes: np.ndarray, k: int, hi: np.ndarray) -> np.ndarray:
    """Integer counts within one weight of ``ideal * sizes`` per layer that sum to ``k``."""
    exact = ideal * sizes
    counts = np.floor(exact).astype(np.int64)
    cap = np.floor(hi * sizes).astype(np.int64)
    remainder = k - int(counts.sum())
    for i in np.argsort(-(exact - counts)):  # largest fractional parts first
        if remainder <= 0:
            break
        if counts[i] < cap[i]:
            counts[i] += 1
            remainder -= 1
    return counts


def proportional_allocation(
    sizes: np.ndarray, factors: np.ndarray, target: float, hi: np.ndarray | None = None
) -> np.ndarray:
    """Sparsity_l = clip(1 - eps * f_l, 0, hi_l) with eps solved so the total meets ``target``."""
    hi = np.ones(len(sizes)) if hi is None else np.asarray(hi, dtype=float)
    k = _target_count(sizes, target)
    if k > int(np.floor(hi * sizes).sum()):
        raise ValidationError(
            f"target {target} is not reachable: the layer caps allow at most "
            f"{np.floor(hi * sizes).sum() / sizes.sum():.4f} global sparsity"
        )

    def sparsity(eps: float) -> np.ndarray:
        return np.clip(1.0 - eps * factors, 0.0, hi)

    lo_eps, hi_eps = 0.0, 1.0 / float(factors.min())
    for _ in range(200):
        mid = (lo_eps + hi_eps) / 2
        if (sparsity(mid) * sizes).sum() > k:
            lo_eps = mid
        else:
            hi_eps = mid
    counts = round_to_total(sparsity(hi_eps), sizes, k, hi)
    return counts / sizes


def _magnitude(inputs: AllocationInputs) -> Callable[[str], torch.Tensor]:
    return lambda name: inputs.weights[name].detach().abs().float()


@register_allocation("global_magnitude")
def global_magnitude(inputs: AllocationInputs, target: float) -> np.ndarray:
    """One |w| threshold over all layers (GMP), with the minimum-density guard."""
    return threshold_allocation(inputs, target, inputs.sorted_scores("magnitude", _magnitude(inputs)))


def _lamp_(sorted_magnitudes: torch.Tensor) -> None:
    """|w| ascending -> LAMP scores w_u^2 / sum_{v >= u} w_v^2, in place (same order)."""
    a = sorted_magnitudes.numpy()
    sq = a.astype(np.float64) ** 2
    tail = np.cumsum(sq[::-1])[::-1]
    np.divide(sq, np.maximum(tail, np.finfo(np.float64).tiny), out=sq)
    np.maximum.accumulate(sq, out=sq)  # ascending in theory; enforce it against rounding
    a[:] = sq


@register_allocation("lamp")
def lamp(inputs: AllocationInputs, target: float) -> np.ndarray:
    """LAMP (Lee et al. 2021): w_u^2 / sum_{v >= u} w_v^2 within a layer, one global threshold.
    LAMP keeps the |w| order inside a layer, so it reuses (and consumes) the magnitude sort."""
    return threshold_allocation(inputs, target, inputs.derive_sorted("lamp", "magnitude", _magnitude(inputs), _lamp_))


@register_allocation("snip", Needs(calibration=True))
def snip(inputs: AllocationInputs, target: float) -> np.ndarray:
    """Global |w g| threshold (SNIP-like first-order saliency); needs calibration gradients."""
    grads = inputs.require_gradients("snip")
    return threshold_allocation(
        inputs, target, inputs.sorted_scores("snip", lambda n: inputs.weights[n].abs().float() * grads[n].float())
    )


@register_allocation("uniform")
def uniform(inputs: AllocationInputs, target: float) -> np.ndarray:
    """The same sparsity in every layer."""
    return proportional_allocation(inputs.sizes, np.ones(len(inputs.units)), target)


@register_allocation("uniform_plus")
def uniform_plus(inputs: AllocationInputs, target: float) -> np.ndarray:
    """Uniform+ (Gale et al. 2019): first layer dense, the last at most 0.8, the rest share the target."""
    hi = np.ones(len(inputs.units))
    hi[0] = 0.0
    hi[-1] = min(hi[-1], 0.8)
    return proportional_allocation(inputs.sizes, np.ones(len(inputs.units)), target, hi)


@register_allocation("erk")
def erk(inputs: AllocationInputs, target: float) -> np.ndarray:
    """Erdos-Renyi-Kernel (Evci et al. 2020): density proportional to sum(dims) / prod(dims)."""
    factors = np.array([sum(layer.shape) / np.prod(layer.shape) for layer in inputs.units], dtype=float)
    return proportional_allocation(inputs.sizes, factors, target)


@register_allocation("sensitivity", Needs(measured=True, structured=True))
def sensitivity(inputs: AllocationInputs, target: float) -> np.ndarray:
    """Measured: the per-unit sparsities that minimise the summed loss rise measured unit by unit (convexified
    curves, exact total), with the minimum-density guard."""
    measured = inputs.require_sensitivity("sensitivity")
    sizes = inputs.sizes
    k = _target_count(sizes, target)
    hi = guard_caps(sizes, inputs.min_density) / sizes
    ideal = min_rise_allocation(measured, [u.name for u in inputs.units], sizes, k, hi)
    return round_to_total(ideal, sizes, k, hi) / sizes


def allocate(name: str, inputs: AllocationInputs, target: float) -> np.ndarray:
    return ALLOCATIONS.get(name)(inputs, target)
