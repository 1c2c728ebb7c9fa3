"""A config's pruning step applied to the model: NNCF's graph and its prunable weights, the core's plan
(or the structured pattern's channels), the first masks; or, with a saved compression state, the plan,
strategy and masks restored as they were."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import mm_plugin
from mm_plugin.errors import ConfigError, NoPrunableLayersError, ValidationError, one_line
from mm_plugin.planning import Scheduler, calibration_need
from mm_plugin.portfolio.channels import prune_channels

from . import masking
from .config import PruningStep
from .scopes import ignored_modules, resolve
from .wrapping import build_graph, prunable_parameters, unwrap_model, weight_metatypes, wrap

if TYPE_CHECKING:
    from .controller import CompressionController
    from .state import Restored

log = logging.getLogger(__name__)


def apply_pruning(ctrl: CompressionController, step: PruningStep, calibration: Iterable | None,
                  loss_fn: Callable | None, final_level: bool, restored: Restored | None = None) -> None:
    t = time.perf_counter()
    model = wrap(ctrl.model)
    graph = build_graph(model, ctrl.example_inputs)
    ctrl.timed("nncf_graph", t)
    t = time.perf_counter()
    scope = resolve(step.scopes, graph, model)
    all_weights = prunable_parameters(graph)
    prunable = prunable_parameters(graph, scope) if scope is not None else all_weights
    ctrl.weights, ctrl.step = weight_metatypes(graph), step
    ctrl.ignored = tuple(sorted(all_weights - prunable))
    signal, allocations = step.get("signal"), step.get("allocations")
    solve_on = calibration if step.get("reconstruct") else None  # the flexhinm step's reconstruction
    if calibration_need(signal, allocations or ()) is None:
        calibration = None  # data given for int8 calibration alone does not change the plan
    ctrl.calibration, ctrl.loss_fn = calibration, loss_fn
    if step.structured:
        keep_whole = ignored_modules(scope, graph) if scope is not None else set()
        ctrl.channels = prune_channels(
            unwrap_model(model), ctrl.example_inputs, target=step.target, signal=signal,
            strategy=step.get("strategy"), rules=step.rules or (), default_rules=step.get("default_rules"),
            range_targets=step.range_targets, calibration=calibration, keep_whole=keep_whole,
            where={"inputs": "input_info", "signal": f"{step.path}.signal", "strategy": f"{step.path}.strategy",
                   "target": step.target_path, "step": step.path})
        ctrl.model, ctrl.plan, ctrl.strategy = model, ctrl.channels.plan, ctrl.channels.strategy
        ctrl.timed("plan", t)
        return
    inventory = {u.name: u for u in mm_plugin.inventory(model, ctrl.example_inputs).units}
    ctrl.unplanned = tuple(sorted(prunable - set(inventory)))
    if ctrl.unplanned:
        log.warning("NNCF finds weights the Mix-and-Match inventory does not plan (left dense): %s",
                    ", ".join(f"{n} ({'/'.join(ctrl.weights[n])})" for n in ctrl.unplanned))
    units = [u for name, u in inventory.items() if name in prunable]
    if not units:
        where = step.scopes.path if step.scopes is not None else step.path
        raise ConfigError(f"{where}: no prunable weight is left: every Conv/Linear/Embedding weight is ignored")
    ctrl.scheduler = Scheduler(step.schedule, ctrl.set_sparsity_level)
    if restored is not None:
        restored.check(model, {u.name for u in units})
        ctrl.plan, ctrl.base, ctrl.strategy, ctrl.level = restored.plan, restored.base, restored.strategy, restored.level
        ctrl.target_level = restored.target_level
        ctrl.scheduler.load_state(restored.scheduler_state)
        if restored.scheduler_disabled:
            ctrl.disable_scheduler()
        ctrl.left_dense = dict(restored.left_dense)
        ctrl.model = model
        masking.register_masks(ctrl, model, restored.masks)
        ctrl.timed("plan", t)
        log.info("%s: resumed from its compression state at level %s, epoch %d", step.path, ctrl.level,
                 ctrl.scheduler.current_epoch)
        return
    dense = sorted(set(inventory) - prunable)  # ignored by scope, or not a weight in NNCF's graph
    targets = masking.range_targets(ctrl, units)
    try:
        plan = mm_plugin.plan(
            model, ctrl.example_inputs, signal=signal, calibration=calibration, loss_fn=loss_fn,
            rules=list(step.rules) if step.rules is not None else None, default_rules=step.get("default_rules"),
            ignored_scope=mm_plugin.IgnoredScope(names=tuple(dense)) if dense else None,
            targets=targets, allocations=allocations, range_mode=step.get("range_mode"),
            samples=step.get("samples"), seed=step.get("seed"), min_density=masking.MIN_DENSITY,
        )
    except NoPrunableLayersError as e:
        raise ConfigError(f"{step.path}.ignored_scopes: {e}") from None
    except ValidationError as e:
        raise ConfigError(f"{step.path}: {one_line(e)}") from None
    names = [s.name for s in plan.strategies]
    if step.get("strategy") not in names:
        raise ConfigError(f"{step.path}.strategy: strategy {step.get('strategy')!r} is not in this model's plan "
                          f"(the ranges are too narrow to tell it apart); allowed values: {', '.join(names)}")
    ctrl.plan, ctrl.base = plan, plan.strategy(step.get("strategy"))
    if step.target is not None:
        masking.check_level(ctrl, *peak(step))
    schedule = step.schedule
    level = step.target if schedule is None else schedule.final_level if final_level else schedule.sparsity_at(-1)
    strategy = plan.at_target(ctrl.base, level)
    ctrl.timed("plan", t)
    t = time.perf_counter()
    ctrl.model, ctrl.strategy, ctrl.level, ctrl.target_level = model, strategy, level, step.target
    if step.algorithm == "flexhinm":
        masks = masking.flexhinm_masks(ctrl, model, strategy, calibration, loss_fn, solve_on)
    else:
        masks = masking.core_masks(ctrl, model, strategy)
    if masks is not None:  # None: learned gates hold the masks until harden()
        masking.register_masks(ctrl, model, masks)
    ctrl.timed("masks", t)
    log.info("%s: %d weights masked, planned global sparsity %.4f", step.path, len(plan.units),
             plan.global_sparsity(strategy))


def peak(step: PruningStep) -> tuple[float, str]:
    """The highest level the step asks for (the plan must reach it) and where the config says it."""
    schedule = step.schedule
    if schedule is not None and schedule.kind == "multistep":
        i = max(range(len(schedule.levels)), key=lambda k: schedule.levels[k])
        return schedule.levels[i], f"{step.path}.params.multistep_sparsity_levels[{i}]"
    if schedule is not None and schedule.init > schedule.target:
        return schedule.init, f"{step.path}.sparsity_init"
    return step.target, step.target_path
