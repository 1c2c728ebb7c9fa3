"""NNCF 2.x filter pruning as structured Mix-and-Match: Torch-Pruning removes whole channels.

The adapter reaches the Torch-Pruning adapter the way ``mm-prune run --sparsity structured`` does,
through the core's pattern registry (``get_pattern("structured")``, an entry point): the pattern plans
channel groups, brings the strategy to the target's multiply-adds by bisection on measured counts and
prunes in place. Adapters never import each other.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from mm_plugin.errors import ConfigError, MMError, UnsupportedModelError
from mm_plugin.planning import DEFAULT_RULES, Plan, Strategy

from .config import PruningStep
from .wrapping import one_line


@dataclass
class ChannelPruning:
    """What the structured pattern did: its plan, the strategy at the knob that met the target, the
    measured record (``macs_ratio``, ``layer_sparsity`` per group ...) and its checkpoint entries."""

    plan: Plan
    strategy: Strategy
    record: dict[str, Any]
    checkpoint: dict[str, Any]


def _rules(step: PruningStep, keep_whole: Iterable[str]) -> list[Any]:
    """The step's rules, its ``default_rules: false`` as defaults switched off by name, and a rule keeping
    whole the groups led by modules the scopes leave out."""
    rules: list[Any] = list(step.rules or ())
    if not step.get("default_rules"):
        rules += [{"name": r.name, "enabled": False} for r in DEFAULT_RULES]
    modules = sorted(set(keep_whole))
    if modules:
        rules.append({"name": "ignored-scopes", "pattern": "^(" + "|".join(m.replace(".", r"\.") for m in modules) + ")$",
                      "max": 0.0})
    return rules


def prune_channels(model: nn.Module, example_inputs: Any, step: PruningStep, calibration: list | None,
                   keep_whole: Iterable[str] = ()) -> ChannelPruning:
    """Prune ``model``'s channels in place to ``step.target`` of its multiply-adds removed."""
    from mm_plugin.portfolio import Job, RunConfig, RunContext, get_pattern

    if isinstance(example_inputs, tuple):
        raise ConfigError("input_info: structured Mix-and-Match (filter_pruning options) takes a model with one "
                          f"input, this config gives {len(example_inputs)}")
    try:
        pattern = get_pattern("structured")()
    except MMError as e:
        raise ConfigError(f"{step.target_path}: filter_pruning options need the structured pattern ({e}); install "
                          "it with pip install 'mm-plugin[torch-pruning]'") from None
    signal, name = step.get("signal"), step.get("strategy")
    try:
        config = RunConfig(model=type(model).__name__, sparsity="structured", signals=(signal,), targets=(step.target,),
                           rules=_rules(step, keep_whole) or None, range_targets=step.range_targets)
    except MMError as e:
        raise ConfigError(f"{step.path}.signal: {e}") from None
    ctx = RunContext(config, copy.deepcopy(model).eval(), example_inputs, calibration, plans={})
    try:
        ctx.plans[signal] = plan = pattern.plan(ctx, signal)
        names = [s.name for s in plan.strategies]
        if name not in names:
            raise ConfigError(f"{step.path}.strategy: strategy {name!r} is not in this model's structured plan; "
                              f"allowed values: {', '.join(names)}")
        strategy = plan.strategy(name)
        job = Job("mix_and_match", signal, strategy.name, step.target, 0, strategy.sparsity)
        try:
            model, extra = pattern.prune_(model, job, ctx)
        except ConfigError as e:
            raise ConfigError(f"{step.target_path}: {e}") from None
        record = pattern.measure(model, job, ctx)
    except MMError:
        raise
    except Exception as e:
        raise UnsupportedModelError(f"{step.path}: Torch-Pruning cannot prune {type(model).__name__}: "
                                    f"{one_line(e)}") from e
    return ChannelPruning(plan, plan.rescale(strategy, record["knob"], "macs"), record,
                          copy.deepcopy(pattern.checkpoint(model, record, extra)))
