"""Sparsity patterns: what a run does differently for unstructured masks, FlexHiNM's hybrid masks, or
(from the Torch-Pruning adapter) removed channels.

The runner owns the portfolio (jobs, seeds, fine-tuning, results, resume); a :class:`Pattern` owns the
steps that depend on the pattern: planning, the baselines, pruning a copy of the dense model and
measuring the fine-tuned result. Patterns are found by name in :data:`PATTERNS`; toolkits outside the
core add theirs through the ``mm_plugin.patterns`` entry-point group, so ``--sparsity structured``
works once the Torch-Pruning extra is installed and never imports it otherwise.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import ConfigError, ValidationError
from ..flexhinm import FlexHiNMConfig, GradualFlexHiNM, flexhinm_sparsify_, schedule_of
from ..flexhinm.layout import nm_ineligibility
from ..flexhinm.partition import achievable_targets, region_shares
from ..masks import (
    apply_masks_,
    bake_masks_,
    capture_inputs,
    global_sparsity,
    masks_from_scores,
    measure_sparsity,
    reconstruct_,
)
from ..model import IgnoredScope, inventory
from ..planning import (
    ALLOCATIONS,
    SIGNALS,
    AllocationInputs,
    Plan,
    Strategy,
    compute_scores,
    effective_weights,
    plan,
    planned_target_for,
)
from ..planning.allocations import allocate
from ..planning.ranges import around
from ..planning.signals import Scores, mean_abs_gradients
from ..registry import Needs, Registry
from .jobs import BaselineJob, Job, RunContext
from .task import Task

if TYPE_CHECKING:
    from .config import RunConfig

log = logging.getLogger(__name__)

#: Each baseline allocation is paired with the scores its authors rank weights by.
BASELINE_SIGNAL = {"snip": "product"}


class Pattern:
    """Unstructured masks: the base every pattern refines. One instance serves one run."""

    needs = Needs()
    default_baselines: tuple[str, ...] = ("global_magnitude", "lamp", "erk")
    default_targets: tuple[float, ...] = ()  # each strategy at its own sparsity, baselines matched to it
    default_range_targets: tuple[float, ...] = (0.7, 0.8, 0.9)
    #: What a target measures: ``params`` (fraction of weights) or ``macs`` (fraction of multiply-adds).
    cost = "params"
    #: Whether the runner times each configuration against the dense model (a deployment backend is needed).
    timed = False
    #: Whether one-shot scores rank a search's candidates as fine-tuning would (else the usual allocations are
    #: always fine-tuned in rung 1, see :func:`~.search.shortlist`).
    oneshot_ranks = True
    #: Whether the pattern takes ``RunConfig.pattern_options`` (it checks them in :meth:`check`).
    options = False
    #: Where the baselines' names (and what each needs) are registered.
    baseline_registry: Registry = ALLOCATIONS

    @classmethod
    def range_targets_for(cls, targets: tuple[float, ...]) -> tuple[float, ...]:
        """Ranges are derived at and around the requested targets, so that every one is reachable."""
        return around(targets) if targets else cls.default_range_targets

    def check(self, config: RunConfig) -> None:
        """Refuse names and options this pattern cannot run, before anything is computed."""
        if config.pattern_options and not self.options:
            raise ConfigError(f"--sparsity {config.sparsity} takes no pattern options, got "
                              f"{sorted(config.pattern_options)} (they are FlexHiNM's: --sparsity flexhinm or hybrid)")
        for name in config.signals:
            SIGNALS.get(name, where="signals")
        for name in config.baselines:
            self.baseline_registry.get(name, where="baselines")

    def check_task(self, config: RunConfig, task: Task) -> None:
        """Refuse a task that lacks what these settings need, before anything is computed."""
        if task.calibration is None and (config.reconstruct or self.needs_calibration(config)):
            what = "--reconstruct" if config.reconstruct else "a gradient signal or baseline"
            raise ConfigError(f"{what} needs calibration batches: pass calibration=<a few (inputs, targets) batches>")

    def needs_calibration(self, config: RunConfig) -> bool:
        return (SIGNALS.any_needs(config.signals, "calibration")
                or self.baseline_registry.any_needs(config.baselines, "calibration"))

    def context(self, config: RunConfig, task: Task) -> RunContext:
        """A run's context on ``task``: its calibration batches only where a signal or baseline needs them."""
        calibration = task.calibration if self.needs_calibration(config) else None
        return RunContext(config, task.model, task.example_inputs, calibration, plans={}, task=task)

    def plan(self, ctx: RunContext, signal: str) -> Plan:
        c = ctx.config
        return plan(ctx.dense, ctx.example, signal=signal, calibration=ctx.calibration, loss_fn=ctx.loss_fn,
                    rules=c.rules, targets=c.range_targets, reach=c.targets, samples=c.samples,
                    sensitivity=ctx.sensitivity(), ignored_scope=self.ignored(ctx))

    def ignored(self, ctx: RunContext) -> IgnoredScope | None:
        """The units this pattern cannot prune, left out of the plan so that targets count over what it prunes."""
        return None

    def scaled(self, plan: Plan, strategy: Strategy, target: float) -> dict[str, float]:
        """The strategy's per-unit sparsities at ``target`` (computed before any run, so an unreachable
        target stops the run at once)."""
        try:
            return plan.rescale(strategy, target, self.cost).sparsity
        except ValidationError as e:
            raise ConfigError(f"strategy {strategy.name!r} cannot reach target {target}: {e}") from None

    def baselines(self, ctx: RunContext, target: float) -> list[BaselineJob]:
        """Every configured baseline at ``target``, as per-unit sparsities of the first plan."""
        return [BaselineJob(name, BASELINE_SIGNAL.get(name, "magnitude"), self._allocate(ctx, name, target))
                for name in ctx.config.baselines]

    def allocations(self, ctx: RunContext, target: float) -> dict[str, dict[str, float]]:
        """The allocations a search's pool holds exactly as they are: the baselines' and, where the run measured
        sensitivity, the allocation of least measured loss rise (``sensitivity``)."""
        out = {b.name: b.sparsity for b in self.baselines(ctx, target) if b.sparsity}
        if ctx.sensitivity() is not None and "sensitivity" not in out:
            out["sensitivity"] = self._allocate(ctx, "sensitivity", target)
        return out

    def _allocate(self, ctx: RunContext, name: str, target: float) -> dict[str, float]:
        first = next(iter(ctx.plans.values()))
        names = [u.name for u in first.units]
        if "allocation_inputs" not in ctx.cache:  # the baselines' weights (and gradients), read once
            grads = (mean_abs_gradients(ctx.dense, names, ctx.calibration, ctx.loss_fn)
                     if ALLOCATIONS.any_needs(ctx.config.baselines, "calibration") else None)
            ctx.cache["allocation_inputs"] = AllocationInputs(first.units, effective_weights(ctx.dense, first.units), grads,
                                                              sensitivity=ctx.cache.get("sensitivity"))
        return {n: float(s) for n, s in zip(names, allocate(name, ctx.cache["allocation_inputs"], target))}

    def scores(self, job: Job, ctx: RunContext) -> Scores:
        """The job's signal scores of the dense model's weights, computed once per signal and run."""
        return ctx.memo(f"scores/{job.signal}",
                        lambda: compute_scores(ctx.dense, list(job.sparsity), job.signal, ctx.calibration,
                                               ctx.loss_fn))

    def planned_target_at(self, job: Job, ctx: RunContext, cost: Callable[[nn.Module], float],
                          pruned: Callable[[float], nn.Module], bounds: tuple[float, float],
                          start: float | None = None) -> float:
        """The planned target (a strategy's rescale target, a baseline's own ratio) at which ``pruned(t)``
        removes ``job.target`` of the dense model's ``cost``: found on measured costs, the first at ``start``
        (default: the target), once per configuration (what is pruned: a baseline's name, or a strategy's
        sparsities, whatever its rung or seed; a search's candidates of one name differ between seeds), so
        that every method of a cost-matched pattern is compared at the same cost. It depends on the
        configuration alone, never on what was measured before it, so a resumed run and a cluster's workers
        find the very planned target one uninterrupted process would."""
        found = ctx.cache.setdefault("planned_targets", {})
        what = job.name if job.method == "baseline" else tuple(sorted(job.sparsity.items()))
        key = (job.method == "baseline", what, job.target)
        if key not in found:
            dense = ctx.memo("dense_cost", lambda: cost(ctx.dense))
            found[key] = planned_target_for(lambda t: 1.0 - cost(pruned(t)) / dense, job.target,
                                            *bounds, what=f"{job.method} {job.name!r}", start=start)
        return found[key]

    def prune_(self, model: nn.Module, job: Job, ctx: RunContext) -> tuple[nn.Module, dict[str, Any]]:
        """Prune a copy of the dense model; return it and extra checkpoint entries."""
        apply_masks_(model, masks_from_scores(self.scores(job, ctx), job.sparsity))
        if ctx.config.reconstruct:  # every job prunes the same dense model: its layer inputs are read once
            units = [u.name for u in next(iter(ctx.plans.values())).units]
            captured = ctx.memo("reconstruct/inputs", lambda: capture_inputs(ctx.dense, units, ctx.batches()))
            reconstruct_(model, captured)
        return model, {}

    def prune_units_(self, model: nn.Module, sparsity: dict[str, float], signal: str, ctx: RunContext) -> nn.Module:
        """Prune ``model`` in place to exactly ``sparsity`` (every planned unit named; no rescale to a target),
        the way :meth:`prune_` does: the measured sensitivity's step (one unit non-zero at a time)."""
        self.scores(Job("sensitivity", signal, "probe", None, 0, dict(sparsity)), ctx)  # every unit's, memoized
        job = Job("sensitivity", signal, "probe", None, 0, {n: s for n, s in sparsity.items() if s > 0})
        return self.prune_(model, job, ctx)[0]

    def hooks(self, model: nn.Module, job: Job, ctx: RunContext, steps: int) -> tuple:
        """Training hooks for the ``steps`` of fine-tuning that follow ``prune_`` (none: masks stay fixed)."""
        return ()

    def finish_(self, model: nn.Module, hooks: tuple) -> dict[str, Any]:
        """After fine-tuning: settle what ``hooks`` still learn; returns extra checkpoint entries."""
        return {}

    def measure(self, model: nn.Module, job: Job, ctx: RunContext) -> dict[str, Any]:
        """Record fields of the fine-tuned model: ``sparsity``, ``params``, ``nonzeros`` and more, over every
        weight of the plan (those a pattern leaves dense, without a mask, included)."""
        report = measure_sparsity(model, [u.name for u in ctx.plans[job.signal].units])
        return {"sparsity": global_sparsity(report), "layer_sparsity": {r.name: r.sparsity for r in report},
                "params": sum(r.numel for r in report), "nonzeros": sum(r.numel - r.zeros for r in report)}

    def checkpoint(self, model: nn.Module, record: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """What goes into the checkpoint file (masks baked in: exact zeros, plain weight names)."""
        bake_masks_(model)
        return {"state_dict": model.state_dict(), "record": record, **extra}

    def load(self, payload: dict[str, Any], ctx: RunContext) -> nn.Module:
        """The fine-tuned model a :meth:`checkpoint` payload holds (the final evaluation reads it back)."""
        model = copy.deepcopy(ctx.dense)
        model.load_state_dict(payload["state_dict"])
        return model


class HybridPattern(Pattern):
    """FlexHiNM's hybrid dense / 2:4 / vector-pruned masks at the strategy's per-layer targets, fixed during
    fine-tuning (the one-shot verb, :func:`~mm_plugin.flexhinm.flexhinm_sparsify_`). Targets count over the
    layers that can hold the pattern; ``pattern_options`` are :class:`~mm_plugin.flexhinm.FlexHiNMConfig` fields
    (``tile_rows``, ``permutation``...)."""

    options = True

    def check(self, config: RunConfig) -> None:
        super().check(config)
        self.flexhinm(config, seed=0)  # an unknown or invalid option stops the run before any work

    @staticmethod
    def flexhinm(config: RunConfig, seed: int) -> FlexHiNMConfig:
        return FlexHiNMConfig.from_dict({**config.pattern_options, "seed": seed})

    def ignored(self, ctx: RunContext) -> IgnoredScope | None:
        """Layers no N:M kernel runs (grouped convolutions, input dimensions not a multiple of 4...)."""
        units = inventory(ctx.dense, ctx.example).units
        why = {u.name: nm_ineligibility(ctx.dense.get_submodule(u.module)) if u.name.endswith(".weight")
               else "not a Conv / Linear weight" for u in units}
        left = {n: w for n, w in why.items() if w}
        for name, reason in left.items():
            log.info("--sparsity %s leaves %s dense (not in the plan): %s", ctx.config.sparsity, name, reason)
        return IgnoredScope(names=tuple(left)) if left else None

    @staticmethod
    def targets(model: nn.Module, job: Job) -> dict[str, float]:
        """The job's per-layer targets as the partition can meet them (steps of half a vector per row tile),
        with the global target kept: otherwise small layers' rounding moves it by up to a point."""
        return achievable_targets(job.sparsity, {n: tuple(model.get_parameter(n).shape) for n in job.sparsity})

    def prune_(self, model: nn.Module, job: Job, ctx: RunContext) -> tuple[nn.Module, dict[str, Any]]:
        result = flexhinm_sparsify_(model, self.targets(model, job), self.flexhinm(ctx.config, job.seed),
                                    example_inputs=(ctx.example,), scores=self.scores(job, ctx),
                                    calibration=ctx.batches() if ctx.config.reconstruct else None)
        return model, {"nm_regions": result.nm_regions}  # where 2:4 must hold, for validate_nm

    def measure(self, model: nn.Module, job: Job, ctx: RunContext) -> dict[str, Any]:
        """Also the shares of the planned weights that end dense, 2:4 and vector-pruned (``share_*``)."""
        kept = {n: w != 0 for n, w in effective_weights(model, ctx.plans[job.signal].units).items()}
        return {**super().measure(model, job, ctx), **region_shares(kept)}


class FlexHiNMPattern(HybridPattern):
    """FlexHiNM-GP: the hybrid masks with the 2:4 choices learned during fine-tuning (Hard Concrete or pattern
    gates, :class:`~mm_plugin.flexhinm.GradualFlexHiNM`) and hardened to exact 2:4 at the end."""

    needs = Needs(example_inputs=True)
    #: Learning the 2:4 choices recovers more of some allocations' one-shot loss than of others': on ResNet-8 at
    #: 75 % uniform targets scored last of 24 candidates one-shot on every seed and best of all fully fine-tuned
    #: (docs/results/flexhinm.md), so a search gives the usual allocations a short fine-tune whatever their score.
    oneshot_ranks = False

    def check_task(self, config: RunConfig, task: Task) -> None:
        super().check_task(config, task)
        if task.steps_per_epoch is None:
            raise ConfigError("--sparsity flexhinm learns its 2:4 choices on a schedule of optimizer steps: pass "
                              "steps_per_epoch=<optimizer steps in one epoch of your finetune>")

    def prune_(self, model: nn.Module, job: Job, ctx: RunContext) -> tuple[nn.Module, dict[str, Any]]:
        steps = max(1, round(ctx.config.epochs * ctx.task.steps_per_epoch))  # hooks() sets the job's own budget
        GradualFlexHiNM(model, self.targets(model, job), self.flexhinm(ctx.config, job.seed), total_steps=steps,
                        example_inputs=(ctx.example,), scores=self.scores(job, ctx),
                        calibration=ctx.batches() if ctx.config.reconstruct else None)
        return model, {}

    def hooks(self, model: nn.Module, job: Job, ctx: RunContext, steps: int) -> tuple:
        sched = schedule_of(model)
        sched.total_steps = steps
        return (sched,)

    def finish_(self, model: nn.Module, hooks: tuple) -> dict[str, Any]:
        (sched,) = hooks
        sched.harden_()
        return {"nm_regions": sched.nm_regions}  # where 2:4 must hold, for validate_nm


PATTERNS: Registry[type[Pattern]] = Registry("sparsity pattern", entry_point_group="mm_plugin.patterns")
PATTERNS.register("unstructured")(Pattern)
PATTERNS.register("flexhinm")(FlexHiNMPattern)
PATTERNS.register("hybrid")(HybridPattern)


def pattern_names() -> list[str]:
    return PATTERNS.names()


def get_pattern(name: str) -> type[Pattern]:
    """The pattern class called ``name``: built in, or loaded from its entry point (importing the
    toolkit it needs, with a clear error when that extra is not installed)."""
    return PATTERNS.get(name, where="sparsity")
