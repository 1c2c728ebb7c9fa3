"""Sparsity patterns: what a run does differently for unstructured masks, FlexHiNM's hybrid masks, or
(from the Torch-Pruning adapter) removed channels.

The runner owns the portfolio (jobs, seeds, fine-tuning, results, resume); a :class:`Pattern` owns the
four steps that depend on the pattern: planning, the baselines, pruning a copy of the dense model and
measuring the fine-tuned result. Patterns are found by name in :data:`PATTERNS`; toolkits outside the
core add theirs through the ``mm_plugin.patterns`` entry-point group, so ``--sparsity structured``
works once the Torch-Pruning extra is installed and never imports it otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .allocations import ALLOCATIONS, AllocationInputs, allocate
from .errors import ConfigError, UnknownNameError, ValidationError
from .masks import apply_masks_, bake_masks_, global_sparsity, measure_sparsity
from .plan import GRADIENT_SIGNALS, Plan, effective_weights, plan
from .pruning import compute_masks
from .registry import Registry
from .signals import SIGNALS, compute_scores, mean_abs_gradients
from .strategies import Strategy

if TYPE_CHECKING:  # the runner imports this module
    from .runner import Job, RunConfig

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mm_plugin.patterns"

#: Each baseline allocation is paired with the scores its authors rank weights by.
BASELINE_SIGNAL = {"snip": "product"}


@dataclass
class RunContext:
    """What every step of a run may read: the settings, the dense model and its data."""

    config: RunConfig
    dense: nn.Module
    example: torch.Tensor
    calibration: list | None
    plans: dict[str, Plan]


@dataclass(frozen=True)
class BaselineJob:
    name: str
    signal: str
    sparsity: dict[str, float]  # per planned unit; empty when the baseline sets it itself


class Pattern:
    """Unstructured masks: the base every pattern refines. One instance serves one run."""

    default_baselines: tuple[str, ...] = ("global_magnitude", "lamp", "erk")
    default_targets: tuple[float, ...] = ()  # each strategy at its own sparsity, baselines matched to it
    default_range_targets: tuple[float, ...] = (0.7, 0.8, 0.9)
    #: What a target measures: ``params`` (fraction of weights) or ``macs`` (fraction of multiply-adds).
    cost = "params"

    def __init__(self) -> None:
        self._inputs: AllocationInputs | None = None  # the baselines' weights (and gradients), read once

    def check(self, config: RunConfig) -> None:
        """Refuse names this pattern cannot run, before anything is computed."""
        for name in config.signals:
            SIGNALS.get(name, where="signals")
        for name in config.baselines:
            ALLOCATIONS.get(name, where="baselines")

    def needs_calibration(self, config: RunConfig) -> bool:
        return any(s in GRADIENT_SIGNALS for s in config.signals) or "snip" in config.baselines

    def plan(self, ctx: RunContext, signal: str) -> Plan:
        c = ctx.config
        return plan(ctx.dense, ctx.example, signal=signal, calibration=ctx.calibration, rules=c.rules,
                    targets=c.range_targets)

    def scaled(self, plan: Plan, strategy: Strategy, target: float) -> dict[str, float]:
        """The strategy's per-unit sparsities at ``target`` (computed before any run, so an unreachable
        target stops the run at once)."""
        try:
            return plan.rescale(strategy, target, self.cost).sparsity
        except ValidationError as e:
            raise ConfigError(f"strategy {strategy.name!r} cannot reach target {target}: {e}") from None

    def baselines(self, ctx: RunContext, target: float) -> list[BaselineJob]:
        """Every configured baseline at ``target``, as per-layer sparsities of the first plan."""
        first = next(iter(ctx.plans.values()))
        names = [layer.name for layer in first.layers]
        if self._inputs is None:
            grads = mean_abs_gradients(ctx.dense, names, ctx.calibration) if "snip" in ctx.config.baselines else None
            self._inputs = AllocationInputs(first.layers, effective_weights(ctx.dense, first.layers), grads)
        return [
            BaselineJob(name, BASELINE_SIGNAL.get(name, "magnitude"),
                        {n: float(s) for n, s in zip(names, allocate(name, self._inputs, target))})
            for name in ctx.config.baselines
        ]

    def prune_(self, model: nn.Module, job: Job, ctx: RunContext) -> tuple[nn.Module, dict[str, Any]]:
        """Prune a copy of the dense model; return it and extra checkpoint entries."""
        apply_masks_(model, compute_masks(model, job.sparsity, signal=job.signal, calibration=ctx.calibration))
        return model, {}

    def measure(self, model: nn.Module, job: Job, ctx: RunContext) -> dict[str, Any]:
        """Record fields of the fine-tuned model: ``sparsity``, ``params``, ``nonzeros`` and more."""
        report = measure_sparsity(model)
        return {"sparsity": global_sparsity(report), "layer_sparsity": {r.name: r.sparsity for r in report},
                "params": sum(r.numel for r in report), "nonzeros": sum(r.numel - r.zeros for r in report)}

    def checkpoint(self, model: nn.Module, record: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """What goes into the checkpoint file (masks baked in: exact zeros, plain weight names)."""
        bake_masks_(model)
        return {"state_dict": model.state_dict(), "record": record, **extra}


class FlexHiNMPattern(Pattern):
    """The strategy's per-layer targets as hybrid dense / 2:4 / vector-pruned masks (Gyro-Permutation)."""

    def prune_(self, model: nn.Module, job: Job, ctx: RunContext) -> tuple[nn.Module, dict[str, Any]]:
        from .flexhinm import FlexHiNMConfig, flexhinm_sparsify_

        scores = compute_scores(model, list(job.sparsity), job.signal, ctx.calibration)
        result = flexhinm_sparsify_(model, job.sparsity, FlexHiNMConfig(seed=job.seed),
                                    example_inputs=(ctx.example,), scores=scores)
        return model, {"nm_regions": result.nm_regions}  # where 2:4 must hold, for validate_nm


PATTERNS: Registry[type[Pattern]] = Registry("sparsity pattern")
PATTERNS.register("unstructured")(Pattern)
PATTERNS.register("flexhinm")(FlexHiNMPattern)


def _plugin_patterns() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def pattern_names() -> list[str]:
    return sorted(set(PATTERNS.names()) | set(_plugin_patterns()))


def get_pattern(name: str) -> type[Pattern]:
    """The pattern class called ``name``: built in, or loaded from its entry point (importing the
    toolkit it needs, with a clear error when that extra is not installed)."""
    if name not in PATTERNS:
        ep = _plugin_patterns().get(name)
        if ep is None:
            raise UnknownNameError("sparsity pattern", name, pattern_names(), where="sparsity")
        try:
            cls = ep.load()
        except ImportError as e:
            raise ConfigError(f"sparsity pattern {name!r} needs a toolkit that is not installed: {e}") from None
        if name not in PATTERNS:
            PATTERNS.register(name)(cls)
    return PATTERNS.get(name)
