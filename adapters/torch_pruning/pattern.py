"""``mm-prune run --sparsity structured``: whole channels removed with Torch-Pruning, every method brought
to the same multiply-adds.

A target is the fraction of the model's multiply-adds removed, as ``tp.utils.count_ops_and_params``
counts them. Each Mix-and-Match strategy is rescaled inside its ranges (weighted by the groups'
multiply-adds) and Torch-Pruning's uniform and global pruning get their ``pruning_ratio``, each planned target found
by the core's bisection on the measured count, so every method is compared at the same compute. The
runner then times each configuration with the installed latency backend (OpenVINO on the CPU).
"""

from __future__ import annotations

import copy
from typing import Any

import torch_pruning as tp
from torch import nn

from mm_plugin.errors import ConfigError, ValidationError
from mm_plugin.model import count_prunable
from mm_plugin.planning import Plan, Strategy
from mm_plugin.portfolio import BaselineJob, Job, Pattern, RunConfig, RunContext
from mm_plugin.portfolio.search import is_usual
from mm_plugin.registry import Needs, Registry

from .groups import DEFAULT_GROUP_TARGETS, plan_groups, signal_importance
from .pruner import kept_channels, prune_baseline, prune_structured

#: Torch-Pruning's own pruning at one ratio, as the structured pattern's baselines.
BASELINES: Registry[str] = Registry("structured baseline")
BASELINES.register("tp_uniform")("uniform")  # every group at the same ratio
BASELINES.register("tp_global")("global")  # one threshold over all groups' normalized importances


def macs_of(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-adds of one inference, as Torch-Pruning counts them."""
    was_training = model.training
    model.eval()
    try:
        return int(tp.utils.count_ops_and_params(model, example_inputs)[0])
    finally:
        model.train(was_training)


def _dense_macs(ctx: RunContext) -> int:
    """The dense model's multiply-adds, counted once per run (the core's planned targets share the count)."""
    return ctx.memo("dense_cost", lambda: macs_of(ctx.dense, ctx.example))


class StructuredPattern(Pattern):
    """Channels removed by Torch-Pruning at equal multiply-adds, timed against the dense model."""

    needs = Needs(example_inputs=True, structured=True)
    default_baselines = ("tp_uniform", "tp_global")
    baseline_registry = BASELINES
    default_targets = (0.2, 0.4)
    default_range_targets = DEFAULT_GROUP_TARGETS
    cost = "macs"
    timed = True
    BASELINE_RANGE = (0.0, 0.85)  # TP's pruning_ratio; its max_pruning_ratio is 0.9

    @classmethod
    def range_targets_for(cls, targets: tuple[float, ...]) -> tuple[float, ...]:
        return cls.default_range_targets  # targets count multiply-adds, range targets channel ratios

    def check(self, config: RunConfig) -> None:
        super().check(config)
        for name in config.signals:
            signal_importance(name)
        if not config.targets:
            raise ConfigError("structured runs need targets (fractions of multiply-adds to remove), e.g. 0.2,0.4")
        if config.reconstruct:
            raise ConfigError("--reconstruct re-solves the weights a mask keeps; structured runs remove channels "
                              "instead: drop --reconstruct, or use --sparsity unstructured or flexhinm")

    def plan(self, ctx: RunContext, signal: str) -> Plan:
        c = ctx.config
        return plan_groups(ctx.dense, ctx.example, signal=signal, calibration=ctx.calibration, rules=c.rules,
                           targets=c.range_targets, samples=c.samples, sensitivity=ctx.sensitivity())

    def scaled(self, plan: Plan, strategy: Strategy, target: float) -> dict[str, float]:
        """The strategy's shape at ``target`` by the plan's own multiply-add estimate, so strategies that differ
        only by a constant position in the ranges become one (a search scores it once); pruning then brings it
        to the measured count by bisection. As it is where the estimate cannot reach ``target``."""
        try:
            return plan.rescale(strategy, target, self.cost).sparsity
        except ValidationError:
            return strategy.sparsity

    def baselines(self, ctx: RunContext, target: float) -> list[BaselineJob]:
        return [BaselineJob(name, "magnitude", {}) for name in ctx.config.baselines]

    def allocations(self, ctx: RunContext, target: float) -> dict[str, dict[str, float]]:
        """Torch-Pruning's baselines as per-group allocations: the share of each group's channels they remove at
        ``target`` (TP global ranks channels over all groups, so its shares differ by group), for a search's pool
        to hold exactly, as it holds the unstructured baselines' allocations."""
        def shares(b: BaselineJob) -> dict[str, float]:
            job, plan = Job("baseline", b.signal, b.name, target, 0, {}), ctx.plans[b.signal]
            kept = kept_channels(self._pruned(ctx.dense, job, ctx, self._planned_target(job, ctx), False), plan)
            return {u.name: 1.0 - kept[u.name] / (u.items * u.copies) for u in plan.units}

        return ctx.memo(f"allocations/{target:.6f}", lambda: {b.name: shares(b) for b in self.baselines(ctx, target)})

    def _pruned(self, model: nn.Module, job: Job, ctx: RunContext, planned: float | None, inplace: bool) -> nn.Module:
        """``job`` pruned at ``planned`` (None: a usual allocation, at its own channel counts)."""
        plan = ctx.plans[job.signal]
        fixed = plan.config.get("fixed_groups", [])
        if job.method == "baseline":
            return prune_baseline(model, ctx.example, BASELINES.get(job.name), planned, ignored_layers=fixed,
                                  inplace=inplace, importance=signal_importance(plan.signal))[0]
        strategy = Strategy(job.name, job.sparsity, job.signal)
        strategy = strategy if planned is None else plan.rescale(strategy, planned, "macs")
        return prune_structured(model, ctx.example, strategy, plan=plan, ignored_layers=fixed, inplace=inplace)[0]

    def _planned_target(self, job: Job, ctx: RunContext) -> float | None:
        """The target ``job`` is pruned at to remove ``job.target`` of the multiply-adds; None for a usual
        allocation, which removes what Torch-Pruning removed with it. A strategy's first measurement is at
        the plan's first-order count: a group's multiply-adds are those of the layers that make its channels
        and of those that read them, so the groups count most layers twice, and the planned target that
        removes ``job.target`` of the model is about ``job.target`` times the model's count over theirs
        (a copy pruned at ``job.target`` itself removes about twice the target, and is one more to prune)."""
        if is_usual(job.name):
            return None
        if job.method == "baseline":
            bounds, start = self.BASELINE_RANGE, None
        else:
            plan = ctx.plans[job.signal]
            bounds = plan.reach("macs")
            start = job.target * _dense_macs(ctx) / sum(u.macs for u in plan.units)
        return self.planned_target_at(job, ctx, lambda m: macs_of(m, ctx.example),
                                      lambda t: self._pruned(ctx.dense, job, ctx, t, False), bounds, start)

    def prune_(self, model: nn.Module, job: Job, ctx: RunContext) -> tuple[nn.Module, dict[str, Any]]:
        return self._pruned(model, job, ctx, self._planned_target(job, ctx), True), {}

    def prune_units_(self, model: nn.Module, sparsity: dict[str, float], signal: str, ctx: RunContext) -> nn.Module:
        """Channels removed at exactly ``sparsity`` per group (no rescale to a multiply-add target)."""
        plan = ctx.plans[signal]
        return prune_structured(model, ctx.example, Strategy("probe", dict(sparsity), signal), plan=plan,
                                ignored_layers=plan.config.get("fixed_groups", []), inplace=True)[0]

    def measure(self, model: nn.Module, job: Job, ctx: RunContext) -> dict[str, Any]:
        plan = ctx.plans[job.signal]
        params = ctx.memo("dense_params", lambda: count_prunable(ctx.dense))  # what unstructured counts too
        nonzeros = count_prunable(model)
        macs = macs_of(model, ctx.example)
        kept = kept_channels(model, plan)
        return {"sparsity": 1.0 - nonzeros / params, "params": params, "nonzeros": nonzeros,
                "layer_sparsity": {u.name: 1.0 - kept[u.name] / (u.items * u.copies) for u in plan.units},
                "planned_target": self._planned_target(job, ctx), "macs": macs,
                "macs_ratio": macs / _dense_macs(ctx)}

    def checkpoint(self, model: nn.Module, record: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """Readable by :func:`load_pruned` (pass a freshly built dense model of the same architecture)."""
        return {"mm_format": "state_dict", "data": tp.state_dict(model), "record": record, **extra}

    def load(self, payload: dict[str, Any], ctx: RunContext) -> nn.Module:
        return tp.load_state_dict(copy.deepcopy(ctx.dense), payload["data"])
