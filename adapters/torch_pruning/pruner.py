"""A plan into Torch-Pruning's own calls: ``pruning_ratio_dict``, ``BasePruner`` and its checks.

Two ways in, both one-line changes to an existing TP script::

    pruner = tp.pruner.BasePruner(model, x, imp, ignored_layers=ignored,
        pruning_ratio_dict=MixAndMatchScheduler("balanced").ratio_dict(model, x, ignored))
    pruner = MixAndMatchPruner(model, x, imp, ignored_layers=ignored, strategy="balanced")
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from mm_plugin.errors import UnknownNameError, UnsupportedModelError, ValidationError, check_fraction
from mm_plugin.model import forward_eval, trace
from mm_plugin.planning import Plan, Strategy
from mm_plugin.tables import format_table

from .groups import (
    DEFAULT_GROUP_TARGETS,
    DEFAULT_MIN_DENSITY,
    accumulate_gradients,
    plan_groups,
    signal_importance,
)
from .timm_support import tp_support, update_attention_

#: Keyword arguments of ``BasePruner`` that shape its groups, so planning must see them too.
GROUP_KWARGS = ("num_heads", "customized_pruners", "root_module_types", "unwrapped_parameters", "forward_fn",
                "output_transform")


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValidationError(
            f"the plan names module '{name}', which {type(model).__name__} does not have; "
            "plan and prune the same architecture"
        ) from None


def _tp_ratio(kept: int, n: int) -> float:
    """A ratio for which BasePruner keeps exactly ``kept`` of ``n`` (it keeps ``int(n * (1 - r))``)."""
    r = (n - kept) / n
    while int(n * (1 - r)) < kept:
        r = float(np.nextafter(r, -1.0))
    return max(r, 0.0)


def ratio_dict(model: nn.Module, plan: Plan, strategy: Strategy | str, round_to: int | None = None
               ) -> dict[nn.Module, float]:
    """``pruning_ratio_dict`` for ``tp.pruner.BasePruner``: one entry per group (0.0 for fixed groups),
    keyed by ``model``'s own modules (the plan is by name, so a deep copy of the planned model works)."""
    kept = plan.kept(strategy, round_to)
    out = {_module(model, u.name): _tp_ratio(kept[u.name], u.items) for u in plan.units}
    out.update({_module(model, name): 0.0 for name in plan.config.get("fixed_groups", [])})
    return out


# --- what pruning did ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupRow:
    group: str
    kind: str
    channels: int  # before pruning (all heads)
    expected: int  # after pruning, from the strategy (and round_to)
    actual: int  # after pruning, measured on the model
    ratio: float  # the strategy's ratio for the group

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass(frozen=True)
class ChannelReport:
    strategy: str
    rows: list[GroupRow]
    params_before: int
    params_after: int

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def channel_ratio(self) -> float:
        """Fraction of all group channels removed."""
        before = sum(r.channels for r in self.rows)
        return 1.0 - sum(r.actual for r in self.rows) / before if before else 0.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def mismatches(self) -> list[GroupRow]:
        return [r for r in self.rows if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "params_before": self.params_before, "params_after": self.params_after,
                "channel_ratio": self.channel_ratio, "rows": [asdict(r) for r in self.rows]}

    def table(self) -> str:
        title = (f"strategy {self.strategy}: params {self.params_before:,} -> {self.params_after:,} "
                 f"({self.params_ratio:.3f}x), channels removed {self.channel_ratio:.3f}")
        rows = [[r.group, r.kind, f"{r.ratio:.3f}", r.channels, r.expected, r.actual, "" if r.ok else "MISMATCH"]
                for r in self.rows]
        return title + "\n" + format_table(["group", "kind", "ratio", "before", "expected", "actual", ""], rows, 2)


def channels_of(module: nn.Module, side: str) -> int:
    """Out (``side="out"``) or in channels of a layer TP knows."""
    pruner = tp.pruner.function.PrunerBox.get(tp.ops.module2type(module))
    if pruner is None:
        raise UnsupportedModelError(f"cannot count the channels of {type(module).__name__}")
    return pruner.get_out_channels(module) if side == "out" else pruner.get_in_channels(module)


def kept_channels(model: nn.Module, plan: Plan) -> dict[str, int]:
    """Channels each planned group has left in ``model`` (pruned), all heads together."""
    return {u.name: channels_of(_module(model, u.probe[0]), u.probe[1]) for u in plan.units}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def channel_report(model: nn.Module, plan: Plan, strategy: Strategy | str, round_to: int | None = None,
                   params_before: int | None = None) -> ChannelReport:
    """Channels of every group on ``model`` (pruned) against what ``strategy`` asked for."""
    s = plan.strategy(strategy)
    kept, actual = plan.kept(s, round_to), kept_channels(model, plan)
    rows = [GroupRow(u.name, u.kind, u.items * u.copies, kept[u.name] * u.copies, actual[u.name],
                     float(s.sparsity[u.name])) for u in plan.units]
    after = _params(model)
    return ChannelReport(s.name, rows, params_before if params_before is not None else after, after)


def _raise_on_mismatch(report: ChannelReport, plan: Plan) -> None:
    bad = report.mismatches()
    if not bad:
        return
    units = {u.name: u for u in plan.units}
    details = "; ".join(
        f"group '{r.group}' ({r.kind}; layers {', '.join(units[r.group].members[:4])}"
        f"{', ...' if len(units[r.group].members) > 4 else ''}): expected {r.expected} channels, got {r.actual}"
        for r in bad[:5]
    )
    raise UnsupportedModelError(
        f"Torch-Pruning did not prune {len(bad)} group(s) as planned, so layers would be silently left "
        f"unpruned: {details}. Pass every attention qkv in num_heads, register customized_pruners for "
        "custom layers, keep per-head tables (relative position bias) in ignored_layers (see tp_support), "
        "and give round_to to the scheduler, not to BasePruner (nor a max_pruning_ratio below the plan's)"
    )


def _check_forward(model: nn.Module, example_inputs: Any, expected_shape: torch.Size | None) -> None:
    """Run the pruned model; a failure names the innermost module that raised, and how to fix it."""
    try:
        out = trace(model, example_inputs).output
    except UnsupportedModelError as e:
        raise UnsupportedModelError(
            f"after pruning, {e}. Torch-Pruning cannot handle this layer as it is; register customized_pruners="
            f"{{{e.cls or 'YourLayer'}: ...}} or keep it out of pruning with ignored_layers", module=e.module, cls=e.cls,
        ) from e.__cause__
    if expected_shape is not None and out is not None and out.shape != expected_shape:
        raise UnsupportedModelError(
            f"pruning changed the model output from {tuple(expected_shape)} to {tuple(out.shape)}; "
            "the classifier's outputs must stay (pass the head in ignored_layers)"
        )


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
            pruning_ratio_dict=MixAndMatchScheduler("balanced").ratio_dict(model, x, ignored),
        )
        pruner.step()

    ``strategy`` is one of the plan's names; ``pruning_ratio`` rescales it to that parameter-weighted
    (``cost="macs"``: multiply-add-weighted) mean channel ratio inside the ranges. ``round_to`` belongs
    here, not in BasePruner. For ViT / Swin also pass ``**tp_support(model, ignored)`` to BasePruner and
    call :func:`update_attention_` after ``step()``. The last plan is kept in ``self.plan_``.
    """

    def __init__(self, strategy: Strategy | str = "balanced", *, pruning_ratio: float | None = None,
                 cost: str = "params", round_to: int | None = None, **plan_kwargs: Any) -> None:
        if pruning_ratio is not None:
            check_fraction(pruning_ratio, "pruning_ratio")
        self.strategy, self.pruning_ratio, self.cost, self.round_to = strategy, pruning_ratio, cost, round_to
        self.plan_kwargs = plan_kwargs  # plan_groups' keywords: signal, range_importances, targets, rules, ...
        self.plan_: Plan | None = None
        self.strategy_: Strategy | None = None

    def plan(self, model: nn.Module, example_inputs: Any, ignored_layers: Iterable[Any] | None = None) -> Plan:
        self.plan_ = plan_groups(model, example_inputs, ignored_layers, **self.plan_kwargs)
        return self.plan_

    def ratio_dict(self, model: nn.Module, example_inputs: Any, ignored_layers: Iterable[Any] | None = None
                   ) -> dict[nn.Module, float]:
        plan = self.plan(model, example_inputs, ignored_layers)
        self.strategy_ = _resolve(plan, self.strategy, self.pruning_ratio, self.cost)
        return ratio_dict(model, plan, self.strategy_, self.round_to)

    def report(self, model: nn.Module) -> ChannelReport:
        """Channel counts of the pruned ``model`` against the last ratio dict."""
        if self.plan_ is None or self.strategy_ is None:
            raise ValidationError("call ratio_dict(model, example_inputs, ignored_layers) first")
        return channel_report(model, self.plan_, self.strategy_, self.round_to)


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
        self._mm_params_before = _params(model)
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

    def _after_step(self) -> None:
        update_attention_(self.model)
        if self.current_step < self.iterative_steps:
            return
        _check_forward(self.model, self._mm_example_inputs, self._mm_output_shape)
        self.report = channel_report(self.model, self.mm_plan, self.mm_strategy, self.mm_round_to,
                                     self._mm_params_before)
        _raise_on_mismatch(self.report, self.mm_plan)
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
def _as_names(model: nn.Module, ignored: Iterable[Any] | None) -> list[str]:
    """Ignored modules / parameters of ``model`` as names, so they resolve on a deep copy too."""
    modules = {m: n for n, m in model.named_modules()}
    params = {p: n for n, p in model.named_parameters()}
    out = []
    for item in ignored or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, nn.Parameter) and item in params:
            out.append(params[item])
        elif isinstance(item, nn.Module) and item in modules:
            out.append(modules[item])
        else:
            raise ValidationError(
                f"ignored_layers holds {type(item).__name__} that is not part of {type(model).__name__}; "
                "pass modules or parameters of this model, or their names"
            )
    return out


def _copy(model: nn.Module, ignored: Iterable[Any] | None, inplace: bool) -> tuple[nn.Module, list[Any]]:
    """The model to prune (``model`` or a deep copy) and its ignored layers, resolved on it."""
    names = _as_names(model, ignored)
    target = model if inplace else copy.deepcopy(model)
    params = dict(target.named_parameters())
    return target, [params[n] if n in params else _module(target, n) for n in names]


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
    target, ignored = _copy(model, ignored_layers, inplace)
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
    target, ignored = _copy(model, ignored_layers, inplace)
    before = _params(target)
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
                    "params_after": _params(target)}


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
