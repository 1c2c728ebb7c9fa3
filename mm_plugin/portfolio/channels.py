"""One model's channels removed in place, to a fraction of its multiply-adds, through the ``structured``
pattern (found by name: the Torch-Pruning adapter's), as ``mm-prune run --sparsity structured`` prunes
each job of a portfolio. For callers that prune one model: the NNCF adapter's filter-pruning options."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import ConfigError, MMError, UnsupportedModelError, one_line
from ..planning import DEFAULT_RULES, Plan, Strategy
from .config import RunConfig
from .jobs import Job, RunContext
from .patterns import get_pattern


@dataclass
class ChannelPruning:
    """What the structured pattern did: its plan, the strategy at the planned target that met the measured one, the
    measured record (``macs_ratio``, ``layer_sparsity`` per group ...) and its checkpoint entries."""

    plan: Plan
    strategy: Strategy
    record: dict[str, Any]
    checkpoint: dict[str, Any]


def _rules(rules: Sequence[Any], default_rules: bool, keep_whole: Iterable[str]) -> list[Any]:
    """``rules``, the defaults switched off by name unless ``default_rules``, and a rule keeping whole the
    groups led by the ``keep_whole`` modules."""
    out: list[Any] = list(rules)
    if not default_rules:
        out += [{"name": r.name, "enabled": False} for r in DEFAULT_RULES]
    modules = sorted(set(keep_whole))
    if modules:
        out.append({"name": "ignored-scopes", "pattern": "^(" + "|".join(m.replace(".", r"\.") for m in modules) + ")$",
                    "max": 0.0})
    return out


def prune_channels(model: nn.Module, example_inputs: Any, *, target: float, signal: str = "magnitude",
                   strategy: str = "balanced", rules: Sequence[Any] = (), default_rules: bool = True,
                   range_targets: Sequence[float] | None = None, calibration: list | None = None,
                   keep_whole: Iterable[str] = (), where: Mapping[str, str] | None = None) -> ChannelPruning:
    """Prune ``model``'s channels in place to ``target`` of its multiply-adds removed, with the named
    ``strategy`` of the structured plan. ``keep_whole``: modules whose groups keep all their channels.
    ``where``: how errors name ``inputs``, ``signal``, ``strategy``, ``target`` and the whole call
    (``step``), e.g. their paths in a config."""
    where = {k: k for k in ("inputs", "signal", "strategy", "target")} | {"step": "structured pruning"} | dict(where or {})
    if isinstance(example_inputs, tuple):
        raise ConfigError(f"{where['inputs']}: structured pruning takes a model with one input, got "
                          f"{len(example_inputs)}")
    try:
        pattern = get_pattern("structured")()
    except MMError as e:
        raise ConfigError(f"{where['target']}: structured pruning needs the structured pattern ({e}); install it "
                          "with pip install 'mm-plugin[torch-pruning]'") from None
    try:
        config = RunConfig(sparsity="structured", signals=(signal,), targets=(target,),
                           rules=_rules(rules, default_rules, keep_whole) or None,
                           range_targets=None if range_targets is None else tuple(range_targets))
    except MMError as e:
        raise ConfigError(f"{where['signal']}: {e}") from None
    ctx = RunContext(config, copy.deepcopy(model).eval(), example_inputs, calibration, plans={})
    try:
        ctx.plans[signal] = plan = pattern.plan(ctx, signal)
        names = [s.name for s in plan.strategies]
        if strategy not in names:
            raise ConfigError(f"{where['strategy']}: strategy {strategy!r} is not in this model's structured plan; "
                              f"allowed values: {', '.join(names)}")
        chosen = plan.strategy(strategy)
        job = Job("mix_and_match", signal, chosen.name, target, 0, chosen.sparsity)
        try:
            model, extra = pattern.prune_(model, job, ctx)
        except ConfigError as e:
            raise ConfigError(f"{where['target']}: {e}") from None
        record = pattern.measure(model, job, ctx)
    except MMError:
        raise
    except Exception as e:
        raise UnsupportedModelError(f"{where['step']}: the structured pattern cannot prune {type(model).__name__}: "
                                    f"{one_line(e)}") from e
    return ChannelPruning(plan, plan.rescale(chosen, record["planned_target"], "macs"), record,
                          copy.deepcopy(pattern.checkpoint(model, record, extra)))
