"""A plan into Torch-Pruning's own calls: ``pruning_ratio_dict``, ``BasePruner`` and its checks.

Two ways in, both one-line changes to an existing TP script::

    pruner = tp.pruner.BasePruner(model, x, imp, ignored_layers=ignored,
        pruning_ratio_dict=MixAndMatchScheduler("balanced").ratio_dict(model, x, ignored))
    pruner = MixAndMatchPruner(model, x, imp, ignored_layers=ignored, strategy="balanced")

A pruner either ends on the plan's widths or logs one WARNING naming the groups off plan and the fix
(:class:`PlanWatch`): at its last ``step()``, or when it is released before that step (a loop that stopped
early). The scheduler's dict takes the pruner's ``round_to`` and refuses ``global_pruning``.
"""

from __future__ import annotations

import copy
import logging
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from mm_plugin.errors import UnknownNameError, UnsupportedModelError, ValidationError, check_fraction
from mm_plugin.model import (
    check_forward,
    count_params,
    forward_eval,
    names_of,
    resolve_names,
    submodule,
    update_attention_,
)
from mm_plugin.planning import ChannelReport, Plan, Strategy, accumulate_gradients, kept_report

from . import tp_internals
from .groups import (
    DEFAULT_GROUP_TARGETS,
    DEFAULT_MIN_DENSITY,
    plan_groups,
    signal_importance,
)
from .timm_support import tp_support

log = logging.getLogger(__name__)

#: How to make Torch-Pruning prune a group as planned.
TP_HINT = ("Pass every attention qkv in num_heads, register customized_pruners for custom layers, keep per-head "
           "tables (relative position bias) in ignored_layers (see tp_support), give an attention model's round_to "
           "to the scheduler, not to BasePruner, and no max_pruning_ratio below the plan's ratios")

#: Keyword arguments of ``BasePruner`` that shape its groups, so planning must see them too.
GROUP_KWARGS = ("num_heads", "customized_pruners", "root_module_types", "unwrapped_parameters", "forward_fn",
                "output_transform")


def ratio_dict(model: nn.Module, plan: Plan, strategy: Strategy | str, round_to: int | None = None
               ) -> dict[nn.Module, float]:
    """``pruning_ratio_dict`` for ``tp.pruner.BasePruner``: one entry per group (0.0 for fixed groups),
    keyed by ``model``'s own modules (the plan is by name, so a deep copy of the planned model works)."""
    kept = plan.kept(strategy, round_to)
    out = {submodule(model, u.name): tp_internals.ratio_for(kept[u.name], u.items) for u in plan.units}
    out.update({submodule(model, name): 0.0 for name in plan.config.get("fixed_groups", [])})
    return out


# --- what pruning did ---------------------------------------------------------------------------
def channels_of(module: nn.Module, side: str) -> int:
    """Out (``side="out"``) or in channels of a layer TP knows."""
    pruner = tp.pruner.function.PrunerBox.get(tp.ops.module2type(module))
    if pruner is None:
        raise UnsupportedModelError(f"cannot count the channels of {type(module).__name__}")
    return pruner.get_out_channels(module) if side == "out" else pruner.get_in_channels(module)


def kept_channels(model: nn.Module, plan: Plan) -> dict[str, int]:
    """Channels each planned group has left in ``model`` (pruned), all heads together."""
    return {u.name: channels_of(submodule(model, u.probe[0]), u.probe[1]) for u in plan.units}


def channel_report(model: nn.Module, plan: Plan, strategy: Strategy | str, round_to: int | None = None,
                   params_before: int | None = None) -> ChannelReport:
    """Channels of every group on ``model`` (pruned) against what ``strategy`` asked for."""
    after = count_params(model)
    return kept_report(plan, strategy, kept_channels(model, plan), round_to,
                       params_before if params_before is not None else after, after)


# --- a pruner ends on the plan or says why --------------------------------------------------------
MAX_NAMED_GROUPS = 6


class PlanWatch:
    """Logs one WARNING when a pruner leaves groups off a plan: after its last ``step()`` (``final=True``;
    :class:`MixAndMatchPruner` raises there instead), or when the pruner is released before that step (a
    loop that stopped early, e.g. on a speed-up target). It holds the model, never the pruner, so
    ``del pruner`` releases the pruner at once."""

    def __init__(self, pruner: tp.pruner.BasePruner, plan: Plan, strategy: Strategy, round_to: int | None,
                 params_before: int, *, final: bool = True) -> None:
        self.model, self.plan, self.strategy, self.round_to = pruner.model, plan, strategy, round_to
        self.params_before, self.final = params_before, final
        self.pruner_name = type(pruner).__name__
        self.steps = int(pruner.iterative_steps)
        self.max_pruning_ratio = float(pruner.max_pruning_ratio)
        self.step, self.closed = 0, False
        weakref.finalize(pruner, self.released)

    def stepped(self, step: int) -> None:
        """Call after each step of the pruner; checks the widths once, at its last step."""
        self.step = step
        if step >= self.steps and not self.closed:
            self.closed = True
            if self.final:
                self._check(last=True)

    def released(self) -> None:
        if not self.closed and self.step > 0:
            self.closed = True
            self._check(last=False)

    def off_plan(self) -> tuple[ChannelReport, list[Any]]:
        report = channel_report(self.model, self.plan, self.strategy, self.round_to, self.params_before)
        return report, report.mismatches()

    def _check(self, last: bool) -> None:
        report, bad = self.off_plan()
        if not bad:
            return
        named = "; ".join(f"'{r.group}' {r.actual} channels, plan {r.expected}" for r in bad[:MAX_NAMED_GROUPS])
        if len(bad) > MAX_NAMED_GROUPS:
            named += f"; {len(bad) - MAX_NAMED_GROUPS} more"
        where = (f"ended its last step ({self.step} of {self.steps})" if last else
                 f"was released at step {self.step} of {self.steps}, before its last step,")
        log.warning("%s %s with %d of %d groups off the Mix-and-Match plan %r: %s. Fix: %s", self.pruner_name, where,
                    len(bad), len(report.rows), self.strategy.name, named, self._fix(bad) if last else (
                        "step the pruner to its last step (pruner.step() until pruner.current_step == "
                        "pruner.iterative_steps): with a Mix-and-Match ratio dict the plan alone sets the widths, so "
                        "a loop that stops on a speed-up target (reproduce/main.py's --speed-up) must not reach it "
                        "before the last step: set the target above the plan's speed-up, or give the plan a smaller "
                        "budget (MixAndMatchScheduler(..., pruning_ratio=..., cost='macs'))"))

    def _fix(self, bad: list[Any]) -> str:
        top = max(r.ratio for r in bad)
        if top > self.max_pruning_ratio:
            return (f"raise max_pruning_ratio to at least {top:.3f} (TP caps every group's ratio at "
                    f"{self.max_pruning_ratio:g}), or plan within it (rules=[Rule('cap', max={self.max_pruning_ratio:g})])")
        return TP_HINT


def _watched_groups(groups: Any, ref: weakref.ref, watch: PlanWatch) -> Any:
    yield from groups
    pruner = ref()
    if pruner is not None:
        watch.stepped(pruner.current_step)


def watch_steps(pruner: tp.pruner.BasePruner, watch: PlanWatch) -> None:
    """Route ``pruner.step`` (both modes) through ``watch``; the wrapper holds the pruner weakly."""
    ref, step = weakref.ref(pruner), type(pruner).step

    def watched_step(interactive: bool = False) -> Any:
        """BasePruner.step, then :meth:`PlanWatch.stepped` (for ``interactive=True``: once the groups are pruned)."""
        p = ref()
        if interactive:
            return _watched_groups(step(p, interactive=True), ref, watch)
        out = step(p, interactive=False)
        watch.stepped(p.current_step)
        return out

    pruner.step = watched_step


class PlanRatios(dict):
    """What :meth:`MixAndMatchScheduler.ratio_dict` returns: a plain ``pruning_ratio_dict`` to Torch-Pruning.
    When a ``BasePruner`` (or a subclass) reads it, its scheduler binds to that pruner: it refuses
    ``global_pruning`` and ``isomorphic``, recomputes the ratios for the pruner's ``round_to`` and watches
    its steps (:class:`PlanWatch`)."""

    def __init__(self, scheduler: MixAndMatchScheduler, model: nn.Module, plan: Plan, strategy: Strategy,
                 round_to: int | None, params_before: int) -> None:
        super().__init__(ratio_dict(model, plan, strategy, round_to))
        self.scheduler, self.model, self.plan, self.strategy = scheduler, model, plan, strategy
        self.round_to, self.params_before = round_to, params_before

    def __iter__(self):
        pruner = tp_internals.pruner_reading_ratio_dict()
        if pruner is not None:
            self.scheduler.bind(pruner, self)
        return super().__iter__()


# --- the two Torch-Pruning entry points ---------------------------------------------------------
def _resolve(plan: Plan, strategy: Strategy | str, pruning_ratio: float | None, cost: str) -> Strategy:
    s = plan.strategy(strategy)
    return plan.rescale(s, pruning_ratio, cost) if pruning_ratio is not None else s


class MixAndMatchScheduler:
    """Mix-and-Match channel ratios for Torch-Pruning's ``pruning_ratio_dict`` (one line to change).

    Example::

        import torch, timm, torch_pruning as tp
        from mm_plugin.adapters.torch_pruning import MixAndMatchScheduler

        model = timm.create_model("resnet18", num_classes=10)
        x = torch.randn(1, 3, 64, 64)
        ignored = [model.fc]
        pruner = tp.pruner.BasePruner(
            model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), ignored_layers=ignored,
            pruning_ratio_dict=MixAndMatchScheduler("balanced").ratio_dict(model, x, ignored), round_to=8,
        )
        pruner.step()

    ``strategy`` is one of the plan's names; ``pruning_ratio`` rescales it to that parameter-weighted
    (``cost="macs"``: multiply-add-weighted) mean channel ratio inside the ranges. ``round_to`` rounds each
    group's kept channels (per head); without it, the ``round_to`` of the BasePruner that reads the dict is
    used, so every width survives TP's rounding. That pruner ends on the plan's widths or logs one WARNING
    (:class:`PlanWatch`); ``global_pruning=True`` and ``isomorphic=True`` are refused (TP would rank each
    group alone, ignoring them). For ViT / Swin also pass ``**tp_support(model, ignored)`` to BasePruner
    and call :func:`update_attention_` after ``step()``. The last plan is kept in ``self.plan_``.
    """

    def __init__(self, strategy: Strategy | str = "balanced", *, pruning_ratio: float | None = None,
                 cost: str = "params", round_to: int | None = None, **plan_kwargs: Any) -> None:
        if pruning_ratio is not None:
            check_fraction(pruning_ratio, "pruning_ratio")
        self.strategy, self.pruning_ratio, self.cost, self.round_to = strategy, pruning_ratio, cost, round_to
        self.plan_kwargs = plan_kwargs  # plan_groups' keywords: signal, range_importances, targets, rules, ...
        self.plan_: Plan | None = None
        self.strategy_: Strategy | None = None
        self.round_to_: int | None = round_to  # the rounding of the last ratio dict (the pruner's, once bound)
        self.params_before_: int | None = None

    def plan(self, model: nn.Module, example_inputs: Any, ignored_layers: Iterable[Any] | None = None) -> Plan:
        self.plan_ = plan_groups(model, example_inputs, ignored_layers, **self.plan_kwargs)
        return self.plan_

    def ratio_dict(self, model: nn.Module, example_inputs: Any, ignored_layers: Iterable[Any] | None = None
                   ) -> PlanRatios:
        plan = self.plan(model, example_inputs, ignored_layers)
        self.strategy_ = _resolve(plan, self.strategy, self.pruning_ratio, self.cost)
        self.round_to_, self.params_before_ = self.round_to, count_params(model)
        return PlanRatios(self, model, plan, self.strategy_, self.round_to, self.params_before_)

    def bind(self, pruner: tp.pruner.BasePruner, ratios: PlanRatios) -> None:
        """Called when ``pruner``'s ``__init__`` reads ``ratios``: refuse what it would ignore, take its
        ``round_to``, watch its steps."""
        name = type(pruner).__name__
        for flag in ("global_pruning", "isomorphic"):
            if getattr(pruner, flag, False):
                raise ValidationError(
                    f"{name}({flag}=True) cannot follow a Mix-and-Match ratio dict: the dict gives every group its "
                    f"own ratio, so Torch-Pruning ranks each group on its own and {flag} would be silently ignored. "
                    f"Leave {flag}=False (drop --global_pruning / --global-pruning) to prune to the plan, or drop the "
                    "ratio dict to run TP's global ranking as a baseline (prune_baseline(model, x, 'global', ratio))"
                )
        round_to = self.round_to or pruner.round_to
        if self.round_to and pruner.round_to and self.round_to % pruner.round_to:
            raise ValidationError(
                f"round_to={self.round_to} given to MixAndMatchScheduler and round_to={pruner.round_to} to {name}: "
                f"TP floors every kept count to a multiple of {pruner.round_to}, which would move the plan's "
                f"multiples of {self.round_to}; give round_to once (the scheduler reads BasePruner's)"
            )
        if round_to != ratios.round_to:
            dict.update(ratios, ratio_dict(ratios.model, ratios.plan, ratios.strategy, round_to))
            ratios.round_to = round_to
        if pruner.round_to and any(u.copies > 1 for u in ratios.plan.units):
            # the ratios are rounded per head (or channel group) already; TP would round each group's total width
            tp_internals.stop_rounding(pruner)
        self.round_to_ = round_to
        watch_steps(pruner, PlanWatch(pruner, ratios.plan, ratios.strategy, round_to, ratios.params_before))

    def report(self, model: nn.Module) -> ChannelReport:
        """Channel counts of the pruned ``model`` against the last ratio dict (at the rounding it used)."""
        if self.plan_ is None or self.strategy_ is None:
            raise ValidationError("call ratio_dict(model, example_inputs, ignored_layers) first")
        return channel_report(model, self.plan_, self.strategy_, self.round_to_, self.params_before_)


class MixAndMatchPruner(tp.pruner.BasePruner):
    """``tp.pruner.BasePruner`` with Mix-and-Match per-group ratios; same arguments, plus ``strategy``.

    Swap the class name in an existing script::

        pruner = MixAndMatchPruner(model, x, importance=imp, ignored_layers=ignored, strategy="balanced")
        pruner.step()           # prunes, updates ViT / Swin attention, checks every group's channels
        print(pruner.report.table())

    ``pruning_ratio`` (default ``None``: the strategy as planned) rescales the strategy to that mean
    channel ratio, weighted by parameters or, with ``cost="macs"``, by multiply-adds; ``round_to`` rounds
    each group's kept channels (per head). ``importance`` defaults to the ``signal``'s TP importance; with
    ``calibration`` and a Taylor importance, gradients are computed before ``step()``. Timm attention
    heads, PatchMerging and relative position bias tables are set up (:func:`tp_support`).
    ``global_pruning``, ``pruning_ratio_dict`` and ``prune_num_heads`` are refused: the strategy sets
    every group.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, importance: Callable | None = None, *,
                 pruning_ratio: float | None = None, cost: str = "params", ignored_layers: Iterable[Any] | None = None,
                 round_to: int | None = None, strategy: Strategy | str = "balanced", signal: str | None = None,
                 range_importances: Sequence[str] | None = None, targets: Sequence[float] = DEFAULT_GROUP_TARGETS,
                 rules: Any = None, default_rules: bool = True, calibration: Iterable | None = None,
                 loss_fn: Callable | None = None, min_density: float = DEFAULT_MIN_DENSITY, plan: Plan | None = None,
                 **kwargs: Any) -> None:
        for bad in ("pruning_ratio_dict", "ch_sparsity_dict", "global_pruning", "prune_num_heads", "isomorphic"):
            if kwargs.pop(bad, None):
                raise ValidationError(
                    f"MixAndMatchPruner sets one ratio per group from the strategy; {bad} is not supported "
                    "(use tp.pruner.BasePruner for it)"
                )
        if pruning_ratio is not None:
            check_fraction(pruning_ratio, "pruning_ratio")
        if signal is None:
            signal = "product" if isinstance(importance, tp.importance.GroupTaylorImportance) else "magnitude"
        importance = importance if importance is not None else signal_importance(signal)
        group_kwargs = {k: kwargs.pop(k) for k in GROUP_KWARGS if k in kwargs}
        if plan is None:
            plan = plan_groups(model, example_inputs, ignored_layers, signal=signal,
                               range_importances=range_importances, targets=targets, rules=rules,
                               default_rules=default_rules, calibration=calibration, loss_fn=loss_fn,
                               min_density=min_density, **group_kwargs)
        support = tp_support(model, ignored_layers, num_heads=group_kwargs.pop("num_heads", None),
                             customized_pruners=group_kwargs.pop("customized_pruners", None))
        for k in ("in_channel_groups", "out_channel_groups"):
            support[k] = dict(kwargs.pop(k, None) or {})
        self.mm_plan = plan
        self.mm_strategy = _resolve(plan, strategy, pruning_ratio, cost)
        self.mm_round_to = round_to
        self.mm_calibration, self.mm_loss_fn = calibration, loss_fn
        self.report: ChannelReport | None = None
        self._mm_params_before = count_params(model)
        out = forward_eval(model, example_inputs)
        self._mm_output_shape = None if out is None else out.shape
        self._mm_example_inputs = example_inputs
        was_training = model.training
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Unwrapped parameters detected.*")
            super().__init__(model, example_inputs, importance, pruning_ratio=0.0,
                             pruning_ratio_dict=ratio_dict(model, plan, self.mm_strategy, round_to), round_to=None,
                             **support, **group_kwargs, **kwargs)
        model.train(was_training)
        self._mm_watch = PlanWatch(self, plan, self.mm_strategy, round_to, self._mm_params_before, final=False)

    def _after_step(self) -> None:
        update_attention_(self.model)
        self._mm_watch.stepped(self.current_step)  # warns if released before its last step
        if self.current_step < self.iterative_steps:
            return
        check_forward(self.model, self._mm_example_inputs, self._mm_output_shape, after="pruning",
                      fix="Torch-Pruning cannot handle this layer as it is; register customized_pruners={{{cls}: ...}} "
                          "or keep it out of pruning with ignored_layers", keep="pass the head in ignored_layers")
        self.report = channel_report(self.model, self.mm_plan, self.mm_strategy, self.mm_round_to,
                                     self._mm_params_before)
        self.report.check(self.mm_plan, TP_HINT)
        self.model.zero_grad(set_to_none=True)

    def _interactive_step(self):
        yield from super().step(interactive=True)
        self._after_step()

    def step(self, interactive: bool = False):
        if isinstance(self.importance, tp.importance.GroupTaylorImportance) and self.mm_calibration is not None:
            accumulate_gradients(self.model, self.mm_calibration, self.mm_loss_fn)
        if interactive:
            return self._interactive_step()
        super().step(interactive=False)
        self._after_step()
        return None


# --- model in, pruned model out ------------------------------------------------------------------
def prune_structured(model: nn.Module, example_inputs: Any, strategy: Strategy | str = "balanced", *,
                     plan: Plan | None = None, pruning_ratio: float | None = None, cost: str = "params",
                     ignored_layers: Iterable[str | nn.Module] | None = None, round_to: int | None = None,
                     signal: str = "magnitude", importance: Callable | None = None,
                     calibration: Iterable | None = None, loss_fn: Callable | None = None, inplace: bool = False,
                     **plan_kwargs: Any) -> tuple[nn.Module, ChannelReport]:
    """Prune ``model`` (a deep copy unless ``inplace``) with one strategy; return it and its report.

    Give ``plan`` (from :func:`plan_groups` on the same architecture) to prune several copies from one
    plan; ``ignored_layers`` (modules, parameters or their names) resolve on the copy.
    """
    target = model if inplace else copy.deepcopy(model)
    ignored = resolve_names(target, names_of(model, ignored_layers))
    if plan is None:
        plan = plan_groups(target, example_inputs, ignored, signal=signal, calibration=calibration,
                           loss_fn=loss_fn, **plan_kwargs)
    pruner = MixAndMatchPruner(
        target, example_inputs, importance or signal_importance(plan.signal), pruning_ratio=pruning_ratio,
        cost=cost, ignored_layers=ignored, round_to=round_to, strategy=strategy, plan=plan,
        calibration=calibration, loss_fn=loss_fn, **{k: v for k, v in plan_kwargs.items() if k in GROUP_KWARGS},
    )
    pruner.step()
    return target, pruner.report


def prune_baseline(model: nn.Module, example_inputs: Any, method: str = "uniform", pruning_ratio: float = 0.5, *,
                   ignored_layers: Iterable[str | nn.Module] | None = None, round_to: int | None = None,
                   importance: Callable | None = None, max_pruning_ratio: float = 0.9, inplace: bool = False,
                   **tp_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Torch-Pruning's own baselines on a copy: ``uniform`` (every group at ``pruning_ratio``) or
    ``global`` (one threshold over all groups' normalized importances, each group capped at
    ``max_pruning_ratio``). Returns the model and ``{"method", "pruning_ratio", "params_before",
    "params_after"}``."""
    if method not in ("uniform", "global"):
        raise UnknownNameError("baseline", method, ("uniform", "global"))
    check_fraction(pruning_ratio, "pruning_ratio")
    target = model if inplace else copy.deepcopy(model)
    ignored = resolve_names(target, names_of(model, ignored_layers))
    before = count_params(target)
    support = tp_support(target, ignored, num_heads=tp_kwargs.pop("num_heads", None),
                         customized_pruners=tp_kwargs.pop("customized_pruners", None))
    was_training = target.training
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Unwrapped parameters detected.*")
        tp.pruner.BasePruner(target, example_inputs, importance or signal_importance("magnitude"),
                             global_pruning=method == "global", pruning_ratio=pruning_ratio,
                             max_pruning_ratio=max_pruning_ratio, round_to=round_to, **support, **tp_kwargs).step()
    target.train(was_training)
    update_attention_(target)
    return target, {"method": method, "pruning_ratio": pruning_ratio, "params_before": before,
                    "params_after": count_params(target)}


# --- save and reload ----------------------------------------------------------------------------
SAVE_FORMATS = ("state_dict", "module")


def save_pruned(model: nn.Module, path: str | Path, *, format: str = "state_dict") -> Path:
    """``state_dict``: ``tp.state_dict`` (reload into a freshly built dense model of the same
    architecture); ``module``: ``torch.save(model)``. Both are pickles: load only files you trust."""
    if format not in SAVE_FORMATS:
        raise UnknownNameError("save format", format, SAVE_FORMATS)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mm_format": format, "data": tp.state_dict(model) if format == "state_dict" else model}, path)
    return path


def load_pruned(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Reload what :func:`save_pruned` (or a structured run's checkpoint) holds; ``state_dict`` files need
    ``model``, a dense model of the same architecture, which is reshaped in place and returned."""
    path = Path(path)
    if not path.exists():
        raise ValidationError(f"pruned model file {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("mm_format") not in SAVE_FORMATS:
        raise ValidationError(f"{path} was not written by save_pruned")
    if payload["mm_format"] == "module":
        return payload["data"]
    if model is None:
        raise ValidationError(
            f"{path} holds a tp.state_dict: pass model=<a freshly built dense model of the same architecture>"
        )
    missing = [n for n in payload["data"]["full_state_dict"] if n and n not in dict(model.named_modules())]
    if missing:
        raise ValidationError(
            f"{path} does not match {type(model).__name__}: modules {missing[:5]} are missing; "
            "build the same architecture (same constructor arguments) before loading"
        )
    return tp.load_state_dict(model, payload["data"])
