"""Learned 2:4 choice during gradual pruning: Hard Concrete gates (Louizos et al. 2018).

Why: magnitude decides *which* 2 of 4 survive once and for all; a gate per weight with a learnable
``log_alpha`` lets training decide, while a penalty pulls every group of 4 towards exactly 2
expected-open gates. Gates start open, so nothing is pruned too early; the temperature is annealed
and groups are hardened gradually; ``harden_`` finally swaps every gate for an exact 2:4
:class:`~mm_plugin.masks.WeightMask`.

The gate is a mask module of the project's single mask mechanism (``masks.set_mask_module_``), so
the optimizer updates ``original`` weights and ``log_alpha`` alike and nothing else changes in the
training loop. Only weights in the 2:4 region get learnable gates; dense and vector-pruned weights
are fixed ones and zeros. The schedule (:class:`GradualFlexHiNM`) raises each layer's sparsity with
the cubic schedule of Zhu & Gupta (2017) and re-partitions the layer as it goes.

Sampling: ``u ~ U(0,1)``, ``s = sigmoid((log u - log(1-u) + log_alpha) / beta)``,
``z = clamp(s (zeta - gamma) + gamma, 0, 1)``; expected L0 = ``sigmoid(log_alpha - beta log(-gamma/zeta))``.
Evaluation is deterministic: by default the exact top-2 per group (the deployable model).
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import ValidationError, check_fraction
from ..masks import apply_masks_, masked_weights, set_mask_module_
from .config import IMPORTANCES, FlexHiNMConfig
from .layout import M, N, as_groups, from_groups
from .partition import hybrid_partition

log = logging.getLogger(__name__)


class HardConcreteGate(nn.Module):
    """Mask module ``weight -> weight * z`` with Hard Concrete gates on the 2:4 region."""

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        beta: float = 2 / 3,
        gamma: float = -0.1,
        zeta: float = 1.1,
        init_open: float = 3.0,
        init_spread: float = 1.0,
        eval_mode: str = "hard",
    ) -> None:
        super().__init__()
        if weight.dim() < 2 or weight.shape[1] % M:
            raise ValidationError(
                f"Hard Concrete gates need an input dimension divisible by {M}, got {tuple(weight.shape)}"
            )
        if not (gamma < 0 and zeta > 1):
            raise ValidationError(
                f"Hard Concrete needs gamma < 0 and zeta > 1, got gamma={gamma}, zeta={zeta}"
            )
        if eval_mode not in ("hard", "expected"):
            raise ValidationError(f"eval_mode must be 'hard' or 'expected', got {eval_mode!r}")
        self.gamma, self.zeta, self.eval_mode = float(gamma), float(zeta), eval_mode
        self.init_open, self.init_spread = float(init_open), float(init_spread)
        shape = tuple(weight.shape)
        self.log_alpha = nn.Parameter(torch.full(shape, self.init_open, device=weight.device))
        self.register_buffer("beta", torch.tensor(float(beta), device=weight.device))
        self.register_buffer("region", torch.zeros(shape, dtype=torch.bool, device=weight.device))
        self.register_buffer("fixed", torch.ones(shape, dtype=torch.bool, device=weight.device))
        self.register_buffer("hardened", torch.zeros(shape, dtype=torch.bool, device=weight.device))

    # -- regions -----------------------------------------------------------------------------------
    def _init_log_alpha(self, weight: torch.Tensor, where: torch.Tensor) -> None:
        """Open gates, slightly ordered by magnitude inside each group (ties broken sensibly)."""
        g = as_groups(weight.detach().abs())
        rank = g.argsort(dim=-1).argsort(dim=-1).float()  # 0 = smallest, M-1 = largest
        offset = (rank / (M - 1) * 2 - 1) * self.init_spread
        init = from_groups(self.init_open + offset, tuple(weight.shape)).to(self.log_alpha)
        with torch.no_grad():
            self.log_alpha.copy_(torch.where(where, init, self.log_alpha))

    @torch.no_grad()
    def set_regions_(self, weight: torch.Tensor, nm_region: torch.Tensor, keep_outside: torch.Tensor) -> None:
        """New partition: ``nm_region`` gets gates (new entries re-initialized), the rest is fixed."""
        nm_region = nm_region.to(self.region.device, torch.bool)
        self._init_log_alpha(weight, nm_region & ~self.region)
        self.region.copy_(nm_region)
        self.fixed.copy_(keep_outside.to(self.fixed.device, torch.bool) & ~nm_region)
        self.hardened.zero_()

    def set_temperature_(self, beta: float) -> None:
        self.beta.fill_(float(beta))

    # -- gates -------------------------------------------------------------------------------------
    def _group_mask(self, t: torch.Tensor) -> torch.Tensor:
        return as_groups(t).all(-1)

    def top2(self) -> torch.Tensor:
        """Exact 2:4 choice from ``log_alpha`` (bool, weight-shaped; meaningful inside groups)."""
        g = as_groups(self.log_alpha.detach())
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.topk(N, dim=-1).indices, True)
        return from_groups(keep, tuple(self.log_alpha.shape))

    def hard_mask(self) -> torch.Tensor:
        """Binary keep-mask this gate stands for: top-2 ``log_alpha`` in the region, fixed elsewhere."""
        return torch.where(self.region, self.top2(), self.fixed)

    def expected_l0(self) -> torch.Tensor:
        """Probability each gate is non-zero."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp_(1e-6, 1 - 1e-6)
            s = torch.sigmoid((u.log() - (1 - u).log() + self.log_alpha) / self.beta)
            z = (s * (self.zeta - self.gamma) + self.gamma).clamp(0, 1)
        elif self.eval_mode == "expected":
            z = (torch.sigmoid(self.log_alpha) * (self.zeta - self.gamma) + self.gamma).clamp(0, 1)
        else:
            z = self.top2().to(weight.dtype)
        z = torch.where(self.region, z.to(weight.dtype), self.fixed.to(weight.dtype))
        return weight * z

    def n_region_groups(self) -> int:
        return int(self._group_mask(self.region).sum())

    def penalty(self) -> torch.Tensor:
        """Sum over learnable groups of ``(expected open gates - 2)^2``: zero exactly at 2 of 4."""
        groups = self._group_mask(self.region)
        if not bool(groups.any()):
            return self.log_alpha.sum() * 0.0
        per_group = as_groups(self.expected_l0()).sum(-1)
        return ((per_group - N) ** 2)[groups].sum()

    @torch.no_grad()
    def harden_fraction_(self, fraction: float) -> int:
        """Freeze the most confident learnable groups until ``fraction`` of 2:4 groups are hard.

        Confidence is the gap between the 2nd and 3rd largest ``log_alpha`` of a group. Returns how
        many groups were hardened by this call.
        """
        fraction = check_fraction(fraction, "hardening fraction", upper_inclusive=True)
        active = self._group_mask(self.region)
        done = self._group_mask(self.hardened)
        total = int(active.sum() + done.sum())
        want = math.ceil(fraction * total) - int(done.sum())
        if want <= 0 or not bool(active.any()):
            return 0
        srt = as_groups(self.log_alpha).sort(dim=-1, descending=True).values
        conf = (srt[..., N - 1] - srt[..., N]).masked_fill(~active, float("-inf")).reshape(-1)
        pick = conf.topk(min(want, int(active.sum()))).indices
        chosen = torch.zeros_like(conf, dtype=torch.bool)
        chosen[pick] = True
        chosen = chosen.reshape(active.shape)[..., None].expand(*active.shape, M)
        elem = from_groups(chosen, tuple(self.region.shape))
        top = self.top2()
        self.fixed.copy_(torch.where(elem, top, self.fixed))
        self.region.copy_(self.region & ~elem)
        self.hardened.copy_(self.hardened | elem)
        return int(pick.numel())


# ------------------------------------------------------------------------------------------------
# model-level helpers (work with any training loop)


def gates(model: nn.Module) -> dict[str, HardConcreteGate]:
    """Every Hard Concrete gate installed in ``model``, by parameter name."""
    return {n: m for n, m in masked_weights(model).items() if isinstance(m, HardConcreteGate)}


def penalty(model: nn.Module, weight: float = 1.0) -> torch.Tensor:
    """Mean 2-of-4 penalty over all learnable groups of ``model`` (add it to the loss)."""
    gs = list(gates(model).values())
    if not gs:
        return torch.zeros(())
    n = sum(g.n_region_groups() for g in gs)
    total = sum(g.penalty() for g in gs)
    return weight * total / max(1, n)


def harden_(model: nn.Module) -> dict[str, torch.Tensor]:
    """Replace every gate by an exact binary :class:`~mm_plugin.masks.WeightMask`; returns the masks."""
    masks = {name: g.hard_mask() for name, g in gates(model).items()}
    apply_masks_(model, masks)
    return masks


_SCHEDULES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def on_step(model: nn.Module, step: int) -> None:
    """Advance the :class:`GradualFlexHiNM` schedule attached to ``model`` (callback-style API)."""
    sched = _SCHEDULES.get(model)
    if sched is None:
        raise ValidationError("no GradualFlexHiNM schedule is attached to this model; create one first")
    sched.on_step(model, step)


def cubic_sparsity(final: float, step: int, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): ``s = s_f + (s_i - s_f) (1 - progress)^3``, flat outside [start, end]."""
    if end <= start:
        return final if step >= start else initial
    progress = min(1.0, max(0.0, (step - start) / (end - start)))
    return final + (initial - final) * (1.0 - progress) ** 3


class GradualFlexHiNM:
    """Gradual FlexHiNM with learned 2:4 masks, driven by any training loop.

    Per step::

        sched.on_step(model, step)          # or sched.step(step): regions, temperature, hardening
        loss = task_loss + sched.penalty()  # 2-of-4 pull on the learnable gates
        ...
        sched.harden_()                     # at the end: exact 2:4 WeightMasks

    Create the optimizer after the schedule (the gates' ``log_alpha`` are new parameters) or add
    :meth:`parameters` to it. Schedule fractions are of ``total_steps``: sparsity ramps over
    ``ramp`` with the cubic schedule, regions are re-partitioned every ``update_every`` steps
    during the ramp, the temperature decays geometrically from ``temperature[0]`` to
    ``temperature[1]``, and the share of hardened 2:4 groups rises linearly over ``harden``.
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: Mapping[str, float],
        config: FlexHiNMConfig | None = None,
        *,
        total_steps: int,
        ramp: tuple[float, float] = (0.0, 0.5),
        update_every: int = 50,
        penalty_weight: float = 1.0,
        temperature: tuple[float, float] = (2 / 3, 0.1),
        harden: tuple[float, float] = (0.6, 0.95),
        example_inputs: Sequence | None = None,
        scores: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        from . import _resolve, flexhinm_permute_  # late import: the package imports this module

        self.config = config or FlexHiNMConfig()
        if int(total_steps) < 1:
            raise ValidationError(f"total_steps must be >= 1, got {total_steps}")
        for what, (a, b) in (("ramp", ramp), ("harden", harden)):
            if not 0.0 <= a <= b <= 1.0:
                raise ValidationError(f"{what} must be two fractions 0 <= start <= end <= 1, got {(a, b)}")
        if not ramp[1] <= harden[0]:
            raise ValidationError(
                f"hardening must start after the sparsity ramp ends: ramp={ramp}, harden={harden}"
            )
        self.model = model
        self.total_steps = int(total_steps)
        self.ramp = (round(ramp[0] * total_steps), round(ramp[1] * total_steps))
        self.harden_steps = (round(harden[0] * total_steps), round(harden[1] * total_steps))
        self.update_every = max(1, int(update_every))
        self.penalty_weight = float(penalty_weight)
        self.temperature = (float(temperature[0]), float(temperature[1]))
        self.targets, self.skipped = _resolve(model, sparsity)
        self.permutation = None
        if self.config.permutation != "none" and self.targets:
            self.permutation = flexhinm_permute_(
                model, sparsity, self.config, example_inputs=example_inputs, scores=scores
            )
        self.gates: dict[str, HardConcreteGate] = {}
        for name in self.targets:
            module, _ = _split(model, name)
            gate = HardConcreteGate(module.weight, beta=self.temperature[0])
            set_mask_module_(model, name, gate)
            self.gates[name] = gate
        self._last_update: int | None = None
        _SCHEDULES[model] = self

    def parameters(self) -> list[nn.Parameter]:
        return [g.log_alpha for g in self.gates.values()]

    def sparsity_at(self, step: int) -> dict[str, float]:
        return {n: cubic_sparsity(t, step, *self.ramp) for n, t in self.targets.items()}

    def _original(self, name: str) -> torch.Tensor:
        module, attr = _split(self.model, name)
        return module.parametrizations[attr].original

    @torch.no_grad()
    def _repartition(self, step: int) -> None:
        score_fn = IMPORTANCES.get(self.config.importance)
        for name, t in self.sparsity_at(step).items():
            w = self._original(name)
            part = hybrid_partition(score_fn(w).float().cpu(), t, self.config.tile_rows)
            self.gates[name].set_regions_(w, part.nm_region, part.mask)
        self._last_update = step

    def on_step(self, model: nn.Module | None = None, step: int | None = None) -> None:
        """Advance to ``step`` (call once per optimizer step, before the forward pass)."""
        if step is None:
            raise ValidationError("on_step needs the current step")
        start, end = self.ramp
        due = (
            self._last_update is None
            or (start <= step <= end and (step - start) % self.update_every == 0)
            or (step >= end and self._last_update < end)
        )
        if due:
            self._repartition(min(step, end) if step >= start else step)
        b0, b1 = self.temperature
        beta = b0 * (b1 / b0) ** min(1.0, max(0.0, step / self.total_steps))
        hs, he = self.harden_steps
        frac = 0.0 if step < hs else (1.0 if he <= hs else min(1.0, (step - hs) / (he - hs)))
        for gate in self.gates.values():
            gate.set_temperature_(beta)
            if frac > 0:
                gate.harden_fraction_(frac)

    def step(self, step: int) -> None:
        """Scheduler-style alias of :meth:`on_step`: ``sched.step(step)``."""
        self.on_step(self.model, step)

    def penalty(self, model: nn.Module | None = None) -> torch.Tensor:
        """Weighted mean 2-of-4 penalty over this schedule's learnable groups."""
        gs = list(self.gates.values())
        n = sum(g.n_region_groups() for g in gs)
        if n == 0:
            return sum((g.log_alpha.sum() * 0.0 for g in gs), torch.zeros(()))
        return self.penalty_weight * sum(g.penalty() for g in gs) / n

    def harden_(self) -> dict[str, torch.Tensor]:
        """Finish: the final partition with exact 2:4 masks replaces every gate."""
        if self._last_update is None or self._last_update < self.ramp[1]:
            self._repartition(self.ramp[1])  # make sure the final targets are met
        masks = {name: g.hard_mask() for name, g in self.gates.items()}
        apply_masks_(self.model, masks)
        _SCHEDULES.pop(self.model, None)
        return masks


def _split(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr
