"""Gradual FlexHiNM-GP: permute, then learn the 2:4 choices while fine-tuning, then harden to exact 2:4.

Why a schedule object: any training loop can drive it (``on_step`` before each forward pass, the
``penalty`` added to the loss, ``harden_`` at the end); :func:`mm_plugin.training.finetune` also takes
its ``param_groups`` (the gates' own learning rate, no weight decay) and ``on_epoch`` (diagnostics).

Phases, as fractions of the budget (:class:`~.config.GradualConfig`): the sparsity ramps up and each
layer is re-partitioned into dense / 2:4 / vector-pruned regions; learnable gates (:mod:`.gates`) pick
2 of every 4 weights in the 2:4 region; groups are then frozen to their choice, most confident first;
after that every gate's forward pass is exactly the mask evaluation uses (with the default gates, from
the first step), so the weights fine-tune under the final masks before :meth:`GradualFlexHiNM.harden_`
swaps every gate for a fixed :class:`~mm_plugin.masks.WeightMask`. Without a ramp every state meets the
final targets (:attr:`GradualFlexHiNM.checkpoints_final`), so ``finetune`` may keep its best checkpoint.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import ValidationError
from ..masks import (
    apply_masks_,
    masked_original,
    masked_weights,
    param_module,
    reconstructing,
    set_mask_module_,
)
from .config import FlexHiNMConfig, GradualConfig
from .gates import GATES, NMGate, sampling
from .layout import as_groups
from .partition import hybrid_partition

log = logging.getLogger(__name__)


def gates(model: nn.Module) -> dict[str, NMGate]:
    """Every learnable 2:4 gate installed in ``model``, by parameter name."""
    return {n: m for n, m in masked_weights(model).items() if isinstance(m, NMGate)}


def penalty(model: nn.Module, weight: float = 1.0) -> torch.Tensor:
    """Mean 2-of-4 penalty over all learnable groups of ``model`` (add it to the loss)."""
    return _mean_penalty(list(gates(model).values()), weight)


def _mean_penalty(gs: list[NMGate], weight: float) -> torch.Tensor:
    n = sum(g.n_region_groups() for g in gs)
    total = sum((g.penalty() for g in gs), torch.zeros(()))
    return weight * total / max(1, n)


def harden_(model: nn.Module) -> dict[str, torch.Tensor]:
    """Replace every gate by an exact binary :class:`~mm_plugin.masks.WeightMask`; returns the masks."""
    masks = {name: g.hard_mask() for name, g in gates(model).items()}
    apply_masks_(model, masks)
    return masks


_SCHEDULES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def schedule_of(model: nn.Module) -> GradualFlexHiNM:
    """The :class:`GradualFlexHiNM` schedule attached to ``model`` (until its ``harden_``)."""
    sched = _SCHEDULES.get(model)
    if sched is None:
        raise ValidationError("no GradualFlexHiNM schedule is attached to this model; create one first")
    return sched


def on_step(model: nn.Module, step: int) -> None:
    """Advance the :class:`GradualFlexHiNM` schedule attached to ``model`` (callback-style API)."""
    schedule_of(model).on_step(model, step)


def cubic_sparsity(final: float, step: int, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): ``s = s_f + (s_i - s_f) (1 - progress)^3``, flat outside [start, end]."""
    if end <= start:
        return final if step >= start else initial
    progress = min(1.0, max(0.0, (step - start) / (end - start)))
    return final + (initial - final) * (1.0 - progress) ** 3


def _movement_factor(movement: torch.Tensor) -> torch.Tensor:
    """``1 + tanh(movement / std)`` in (0, 2): weights whose presence lowered the loss during training count
    up to twice their importance, those that raised it down to none; no movement leaves importance as is."""
    std = movement.float().std()
    return 1.0 + torch.tanh(movement.float() / std) if std > 0 else torch.ones_like(movement, dtype=torch.float)


def _ramp(step: int, start: int, end: int) -> float:
    """0 before ``start``, 1 from ``end``, linear between."""
    if step >= end:
        return 1.0
    return 0.0 if step < start else (step - start) / (end - start)


class GradualFlexHiNM:
    """Gradual FlexHiNM-GP with learned 2:4 choices, driven by any training loop.

    Per step::

        sched.on_step(model, step)          # or sched.step(step): regions, temperature, hardening
        loss = task_loss + sched.penalty()  # 2-of-4 pull (Hard Concrete gates)
        ...
        sched.harden_()                     # at the end: exact 2:4 WeightMasks

    Give the optimizer :meth:`param_groups` (``finetune`` does it through ``hooks``); a hand-written loop
    creates its optimizer after the schedule. ``probe`` (model -> accuracy, e.g. on the validation
    split) lets :meth:`on_epoch` report the gap between training-time and evaluation-time masks.
    ``calibration`` (batches of inputs) re-solves the kept weights for the first partition's masks
    (:func:`mm_plugin.masks.reconstruct_`) before training starts.
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: Mapping[str, float],
        config: FlexHiNMConfig | None = None,
        *,
        total_steps: int,
        schedule: GradualConfig | None = None,
        example_inputs: Sequence | None = None,
        scores: Mapping[str, torch.Tensor] | None = None,
        probe: Callable[[nn.Module], float] | None = None,
        calibration: Iterable | None = None,
    ) -> None:
        from . import _resolve, flexhinm_permute_  # late import: the package imports this module

        self.config = config or FlexHiNMConfig()
        self.schedule = schedule or GradualConfig()
        s = self.schedule
        self.model, self.probe = model, probe
        self.total_steps = total_steps
        gate_cls = GATES.get(s.gate, where="GradualConfig.gate")
        self.temperature = s.temperature or gate_cls.default_temperature
        self.targets, self.skipped = _resolve(model, sparsity)
        self.permutation = None
        if self.config.permutation != "none" and self.targets:
            self.permutation = flexhinm_permute_(
                model, sparsity, self.config, example_inputs=example_inputs, scores=scores
            )
        self.gates: dict[str, NMGate] = {}
        self._last_update: int | None = None
        self._previous: dict[str, torch.Tensor] = {}
        self._labels: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # (first, current) vector labels
        self.history: list[dict[str, float]] = []
        _SCHEDULES[model] = self
        # with calibration, the first partition's kept weights are re-solved; the gates start from them
        with reconstructing(model, self.targets, calibration):
            for name in self.targets:
                module, _ = param_module(model, name)
                gate = gate_cls(module.weight.detach(), **s.gate_options)
                set_mask_module_(model, name, gate)
                gate.track_movement_(s.partition_signal == "movement")  # GradualConfig ensures a ramp
                gate.pruned_gradient = bool(s.pruned_gradient)
                self.gates[name] = gate
            self.on_step(model, 0)  # the first partition is in place before any training or evaluation
        self._snapshot()

    @property
    def total_steps(self) -> int:
        return self._total_steps

    @total_steps.setter
    def total_steps(self, steps: int) -> None:
        """The budget may be set again before training (a caller that learns it late, e.g. a search rung)."""
        if int(steps) < 1:
            raise ValidationError(f"total_steps must be >= 1, got {steps}")
        if getattr(self, "_step", 0) > 0:
            raise ValidationError(f"total_steps can only change before training starts (the schedule is at step "
                                  f"{self._step})")
        s, self._total_steps = self.schedule, int(steps)
        self.ramp = (round(s.ramp[0] * steps), round(s.ramp[1] * steps))
        self.harden_steps = (round(s.harden[0] * steps), round(s.harden[1] * steps))
        self.update_every = max(1, (self.ramp[1] - self.ramp[0]) // s.updates)

    @property
    def checkpoints_final(self) -> bool:
        """Every state evaluation sees meets the final targets (no sparsity ramp, or one that holds the
        target): evaluation mode uses each gate's current exact 2:4 choice, so a best-on-validation
        checkpoint is a valid result to keep."""
        return self.ramp[1] == 0 or self.schedule.ramp_from == 1.0

    def parameters(self) -> list[nn.Parameter]:
        return [p for g in self.gates.values() for p in g.parameters()]

    def param_groups(self, model: nn.Module | None = None) -> list[dict]:
        """The gates' own optimizer group: ``schedule.gate_lr``, no weight decay."""
        return [{"params": self.parameters(), "lr": self.schedule.gate_lr, "weight_decay": 0.0}]

    def sparsity_at(self, step: int) -> dict[str, float]:
        return {n: cubic_sparsity(t, step, *self.ramp, initial=self.schedule.ramp_from * t)
                for n, t in self.targets.items()}


    @torch.no_grad()
    def _repartition(self, step: int) -> None:
        for name, t in self.sparsity_at(step).items():
            w = masked_original(self.model, name)
            score = w.abs().float()
            if self.schedule.partition_signal == "movement":
                score = score * _movement_factor(self.gates[name].movement)
            part = hybrid_partition(score.cpu(), t, self.config.tile_rows)
            self.gates[name].set_regions_(w, part.nm_region, part.mask)
            self._labels[name] = (self._labels.get(name, (part.labels,))[0], part.labels)
        self._last_update = step

    def on_step(self, model: nn.Module | None = None, step: int | None = None) -> None:
        """Advance to ``step`` (call once per optimizer step, before the forward pass)."""
        if step is None:
            raise ValidationError("on_step needs the current step")
        self._step = step
        start, end = self.ramp
        due = (
            self._last_update is None
            or (start <= step <= end and (step - start) % self.update_every == 0 and step != self._last_update)
            or (step >= end and self._last_update < end)
        )
        if due:
            self._repartition(min(step, end) if step >= start else step)
        t0, t1 = self.temperature
        temperature = t0 * (t1 / t0) ** _ramp(step, 0, self.harden_steps[1])
        frac = _ramp(step, *self.harden_steps)
        for gate in self.gates.values():
            gate.set_temperature_(temperature)
            if frac > 0:
                gate.harden_fraction_(frac)

    def step(self, step: int) -> None:
        """Scheduler-style alias of :meth:`on_step`: ``sched.step(step)``."""
        self.on_step(self.model, step)

    def penalty(self, model: nn.Module | None = None) -> torch.Tensor:
        """Weighted mean 2-of-4 penalty over this schedule's learnable groups."""
        return _mean_penalty(list(self.gates.values()), self.schedule.penalty_weight)

    def _snapshot(self) -> None:
        self._previous = {n: g.hard_mask().clone() for n, g in self.gates.items()}

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Mean expected-open gates per learnable group, the share of 2:4 groups hardened, the share
        whose choice differs from the magnitude top-2 they started from, and from the last snapshot;
        and the share of vectors whose region (dense / 2:4 / pruned) differs from the first partition's."""
        open_sum = n_open = n_nm = hard = vs_start = vs_last = 0
        for name, g in self.gates.items():
            learn = g.region_groups()
            nm = learn | as_groups(g.hardened).all(-1)
            choice = as_groups(g.hard_mask())
            open_sum += float(g.expected_open()[learn].sum())
            n_open += int(learn.sum())
            n_nm += int(nm.sum())
            hard += int((nm & ~learn).sum())
            vs_start += int(((choice != as_groups(g.initial)).any(-1) & nm).sum())
            prev = self._previous.get(name)
            if prev is not None:
                vs_last += int(((choice != as_groups(prev)).any(-1) & nm).sum())
        return {
            "gates_open": open_sum / n_open if n_open else float("nan"),
            "hardened_share": hard / n_nm if n_nm else float("nan"),
            "changed_vs_magnitude": vs_start / n_nm if n_nm else float("nan"),
            "changed_since_last": vs_last / n_nm if n_nm else float("nan"),
            "vectors_relabelled": (sum(int((a != b).sum()) for a, b in self._labels.values())
                                   / max(1, sum(a.numel() for a, _ in self._labels.values()))),
        }

    def on_epoch(self, model: nn.Module | None = None, epoch: int | None = None) -> dict[str, float]:
        """Diagnostics at the end of an epoch (``finetune`` merges them into its history)."""
        row = {"epoch": epoch, **self.diagnostics()}
        if self.probe is not None:
            with sampling(self.model):
                row["sampled_accuracy"] = self.probe(self.model)
            row["eval_accuracy"] = self.probe(self.model)
            row["train_eval_gap"] = row["sampled_accuracy"] - row["eval_accuracy"]
        self._snapshot()
        self.history.append(row)
        log.info("FlexHiNM epoch %s: %s", epoch, {k: round(v, 4) for k, v in row.items() if k != "epoch"})
        return {k: v for k, v in row.items() if k != "epoch"}

    @property
    def nm_regions(self) -> dict[str, torch.Tensor]:
        """Where exact 2:4 must hold (for ``validate_nm(regions=...)``): learnable or hardened entries."""
        return {n: g.region | g.hardened for n, g in self.gates.items()}

    def harden_(self) -> dict[str, torch.Tensor]:
        """Finish: the final partition with exact 2:4 masks replaces every gate."""
        if self._last_update is None or self._last_update < self.ramp[1]:
            self._repartition(self.ramp[1])  # make sure the final targets are met
        masks = harden_(self.model)
        _SCHEDULES.pop(self.model, None)
        return masks

