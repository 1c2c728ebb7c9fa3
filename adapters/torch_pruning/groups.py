"""Torch-Pruning dependency groups as core units, planned by the core's engine.

TP prunes *dependency groups*: every layer whose channels must go together (a residual stream, a ViT
embedding dimension, an attention block's head dims) forms one group, and ``pruning_ratio_dict`` needs
one ratio per group, keyed by the module through which ``BasePruner`` looks it up. Groups are listed
exactly as ``BasePruner`` will, through its private helpers (all in :mod:`.tp_internals`, for TP 1.6). Each
becomes a :class:`~mm_plugin.model.Unit` whose items are its channels (per head); its ranges come from
global thresholds over TP importances of every group's channels; the rest is the core's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from mm_plugin.errors import (
    CalibrationRequiredError,
    NoPrunableLayersError,
    UnknownNameError,
    UnsupportedModelError,
    check_fraction,
)
from mm_plugin.model import ChannelGroup, Unit, group_units, inventory, param_owner
from mm_plugin.planning import (
    SIGNALS,
    AllocationInputs,
    Plan,
    Sensitivity,
    accumulate_gradients,
    bind_allocations,
    plan_units,
    threshold_allocations,
)
from mm_plugin.registry import Needs, Registry

from . import tp_internals
from .timm_support import PatchMergingPruner, tp_support

DEFAULT_GROUP_TARGETS = (0.3, 0.5, 0.7)
"""Global channel ratios at which the range importances are thresholded (structured pruning removes a
channel's whole row and column, so 0.5 of the channels is already about 0.75 of the weights)."""

DEFAULT_MIN_DENSITY = 0.1
"""Minimum-density guard of the range thresholds: every group keeps at least 10 % of its channels."""

#: TP importances: ranges threshold them globally; a signal picks one to choose channels inside a group.
IMPORTANCES: Registry[Callable[[], tp.importance.Importance]] = Registry("Torch-Pruning importance")
IMPORTANCES.register("magnitude")(lambda: tp.importance.GroupMagnitudeImportance(p=2))  # L2 / group mean
IMPORTANCES.register("lamp")(lambda: tp.importance.LAMPImportance(p=2))
IMPORTANCES.register("filter_l1")(  # L1 of the root layer's filters only (Li et al. 2017)
    lambda: tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first"))
IMPORTANCES.register("fpgm")(lambda: tp.importance.FPGMImportance(p=2))  # slower: pairwise distances
IMPORTANCES.register("taylor", Needs(calibration=True))(lambda: tp.importance.GroupTaylorImportance())

#: The core signals that serve channel groups, as the TP importance that computes them.
SIGNAL_IMPORTANCE = {"magnitude": "magnitude", "product": "taylor"}  # |w g| summed over a group is Taylor
DATA_FREE_IMPORTANCES = ("magnitude", "lamp", "filter_l1")
CALIBRATED_IMPORTANCES = ("magnitude", "lamp", "taylor")


def signal_importance(signal: str) -> tp.importance.Importance:
    """The TP importance of a core signal that serves channel groups (its registry entry says so)."""
    allowed = [s for s in SIGNALS.names() if SIGNALS.needs(s).structured]
    if signal not in allowed:
        raise UnknownNameError("structured signal", signal, allowed, where="signals")
    return IMPORTANCES.get(SIGNAL_IMPORTANCE[signal])()


@dataclass
class Groups:
    units: list[Unit]
    fixed: list[str]  # key modules of groups kept whole (they reach the model output)
    skipped: dict[str, str]  # root -> why TP will not prune it
    scores: dict[str, dict[str, torch.Tensor]]  # importance -> unit -> per-channel scores


def _scope_key(dg: Any, group: Any, names: dict[nn.Module, str], types: tuple[type, ...]) -> nn.Module | None:
    """The module through which BasePruner finds a group's ``pruning_ratio_dict`` entry (same scan)."""
    for dep, _ in group:
        for module, fn in ((dep.source.module, dep.trigger), (dep.target.module, dep.handler)):
            if isinstance(module, nn.Module) and module in names and isinstance(module, types) \
                    and dg.is_out_channel_pruning_fn(fn):
                return module
    return None


def _check_group(model: nn.Module, dg: Any, group: Any, root_name: str) -> None:
    """Fail, naming the module, when TP would prune a parameter along the wrong dimension."""
    n = len(group[0].idxs)
    for item in group:
        target = item.dep.target.module
        if not isinstance(target, nn.Parameter):
            continue
        dim = dg.module2node[target].pruning_dim
        size = target.shape[dim]
        idxs = list(item.idxs)
        if len(idxs) != size or (idxs and max(idxs) >= size):
            mname, pname, cls = param_owner(model, target)
            raise UnsupportedModelError(
                f"module '{mname}' ({cls}) cannot be pruned by Torch-Pruning: its parameter '{pname}' of "
                f"shape {tuple(target.shape)} is used outside any layer TP knows (Conv, Linear, norms, "
                f"Embedding), and TP would cut its dim {dim} (size {size}) with the {n} channels of the "
                f"group rooted at '{root_name}'. Register a pruner for it (customized_pruners={{{cls}: "
                "<tp.pruner.BasePruningFunc>}), give unwrapped_parameters=[(param, dim)] with the right "
                "dimension, or rebuild it from nn.Conv2d / nn.Linear; if no dimension of it follows the "
                f"channels (a per-head table), keep it whole by passing model.{mname}.{pname} in "
                "ignored_layers", module=mname, cls=cls,
            )


def _coupled_params(item: Any, dg: Any) -> int:
    """Weights (not norms or biases) of one group member that the group's channels index."""
    module, fn, k = item.dep.target.module, item.dep.handler, len(item.idxs)
    out = dg.is_out_channel_pruning_fn(fn)
    if isinstance(module, nn.Parameter):
        return int(module.numel() // max(module.shape[dg.module2node[module].pruning_dim], 1) * k)
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        channels = dg.get_out_channels(module) if out else dg.get_in_channels(module)
        return int(module.weight.numel() * k // max(channels, 1))
    if isinstance(module, nn.Embedding):
        return int(module.num_embeddings * k)
    if isinstance(module, PatchMergingPruner.TARGET_MODULES or ()):
        red = module.reduction
        return int(red.in_features * k) if out else int(4 * red.out_features * k)
    return 0


def _coupled_macs(item: Any, dg: Any, positions: dict[nn.Module, int]) -> int:
    """Multiply-adds per inference of the weights :func:`_coupled_params` counts (norms, biases and
    free parameters add none; attention's own matmuls are left out)."""
    module = item.dep.target.module
    if isinstance(module, PatchMergingPruner.TARGET_MODULES or ()):
        module = module.reduction
    return _coupled_params(item, dg) * positions.get(module, 0) if isinstance(module, nn.Module) else 0


def _reaches_output(group: Any, dg: Any) -> bool:
    """Whether the group's channels are the model's output channels (e.g. the classifier's logits)."""
    for item in group:
        node, fn = item.dep.target, item.dep.handler
        if tp_internals.is_output_op(node.module):
            return True
        if dg.is_out_channel_pruning_fn(fn) and (
            not node.outputs or any(tp_internals.is_output_op(o.module) for o in node.outputs)
        ):
            return True
    return False


def analysis_pruner(model: nn.Module, example_inputs: Any, ignored_layers: Iterable[Any] | None,
                    tp_kwargs: dict[str, Any]) -> tp.pruner.BasePruner:
    """A ``BasePruner`` that prunes nothing, set up as the real one will be: its groups are the plan's."""
    support = tp_support(model, ignored_layers, num_heads=tp_kwargs.pop("num_heads", None),
                         customized_pruners=tp_kwargs.pop("customized_pruners", None))
    was_training = model.training
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Unwrapped parameters detected.*")
            return tp.pruner.BasePruner(model, example_inputs, importance=IMPORTANCES.get("magnitude")(),
                                        pruning_ratio=0.0, **tp_kwargs, **support)
    finally:
        model.train(was_training)


def find_groups(model: nn.Module, example_inputs: Any, ignored_layers: Iterable[Any] | None = None,
                importances: Sequence[str] = (), **tp_kwargs: Any) -> Groups:
    """The model's prunable groups in execution order as units, with ``importances``' channel scores."""
    pruner = analysis_pruner(model, example_inputs, ignored_layers, dict(tp_kwargs))
    dg = pruner.DG
    names = {m: n for n, m in model.named_modules()}
    types = tuple(c for c in (tp.ops.type2class(t) for t in dg.REGISTERED_PRUNERS) if isinstance(c, type))
    inv = {u.module: u for u in inventory(model, example_inputs).units}
    positions = {model.get_submodule(u.module): u.macs // u.params for u in inv.values()}
    scorers = {c: IMPORTANCES.get(c)() for c in importances}
    found: list[ChannelGroup] = []
    fixed: list[str] = []
    skipped: dict[str, str] = {}
    scores: dict[str, dict[str, torch.Tensor]] = {c: {} for c in importances}
    for group in dg.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        root_name = names.get(group[0].dep.target.module, "?")
        if not tp_internals.group_is_prunable(pruner, group):
            skipped[root_name] = "a layer of the group has a single channel left"
            continue
        is_attn, _ = tp_internals.attention_group(pruner, group)
        if is_attn:
            group = tp_internals.attention_root(pruner, group)
            if group is None:
                skipped[root_name] = "attention group without a downstream projection"
                continue
        key = _scope_key(dg, group, names, types)
        if key is None:
            skipped[root_name] = "no layer of the group can carry a pruning_ratio_dict entry"
            continue
        key_name = names[key]
        if _reaches_output(group, dg):
            fixed.append(key_name)
            continue
        _check_group(model, dg, group, key_name)
        ch_groups = tp_internals.channel_groups(pruner, group)
        group_scores = {}
        for c, scorer in scorers.items():
            with torch.no_grad():
                s = scorer(group)
            if s is None:
                break
            s = s.detach().float().cpu()
            group_scores[c] = s.view(ch_groups, -1).mean(0) if ch_groups > 1 else s
        if len(group_scores) < len(scorers) or (not scorers and pruner.estimate_importance(group) is None):
            skipped[key_name] = "no parameterized layer in the group"
            continue
        for c, s in group_scores.items():
            scores[c][key_name] = s
        members: list[str] = []
        producers: list[str] = []  # members met first through their output channels
        for item in group:
            mod = item.dep.target.module
            if isinstance(mod, nn.Module) and mod in names and names[mod] not in members:
                members.append(names[mod])
                if dg.is_out_channel_pruning_fn(item.dep.handler):
                    producers.append(names[mod])
        root = group[0].dep.target.module
        found.append(ChannelGroup(
            key=key_name, channels=len(group[0].idxs), heads=ch_groups, members=tuple(members),
            producers=tuple(producers), attention=is_attn, params=sum(_coupled_params(item, dg) for item in group),
            macs=sum(_coupled_macs(item, dg, positions) for item in group),
            probe=(names[root], "out" if dg.is_out_channel_pruning_fn(group[0].dep.handler) else "in"),
        ))
    model.zero_grad(set_to_none=True)
    if not found:
        raise NoPrunableLayersError(
            f"Torch-Pruning finds no prunable channel group in {type(model).__name__} "
            f"(skipped: {skipped or 'none'}); check ignored_layers and root_module_types"
        )
    return Groups(group_units(found, inv), fixed, skipped, scores)


def plan_groups(
    model: nn.Module,
    example_inputs: Any,
    ignored_layers: Iterable[Any] | None = None,
    *,
    signal: str = "magnitude",
    range_importances: Sequence[str] | None = None,
    targets: Sequence[float] = DEFAULT_GROUP_TARGETS,
    rules: Any = None,
    default_rules: bool = True,
    calibration: Iterable | None = None,
    loss_fn: Callable | None = None,
    min_density: float = DEFAULT_MIN_DENSITY,
    samples: int = 0,
    seed: int = 0,
    sensitivity: Sensitivity | None = None,
    **tp_kwargs: Any,
) -> Plan:
    """Per-group channel-ratio ranges and the ten named strategies, as a core :class:`~mm_plugin.Plan`
    (``unit_kind="channel_group"``; ``strategy.sparsity`` maps each group to the fraction of its
    channels to remove).

    Ranges: each of ``range_importances`` (TP importances; default magnitude, LAMP, filter L1, with
    Taylor instead of filter L1 when ``calibration`` is given) is thresholded globally at every
    ``targets`` channel ratio, with at least ``min_density`` of every group kept; a group's range is the
    min / max of what it got, bounded by the rules. ``signal`` (``magnitude`` or ``product``, i.e.
    Taylor) chooses channels inside each group when pruning. ``sensitivity`` (measured per group, see
    :func:`mm_plugin.portfolio.measure_sensitivity`) adds the ``sensitivity`` allocation to the ranges and
    lets rules with measured limits follow it. ``tp_kwargs`` go to Torch-Pruning
    (``num_heads``, ``customized_pruners``, ``root_module_types``, ``unwrapped_parameters``, ...).
    """
    signal_importance(signal)
    importances = tuple(range_importances or (CALIBRATED_IMPORTANCES if calibration is not None
                                              else DATA_FREE_IMPORTANCES))
    for c in importances:
        IMPORTANCES.get(c, where="range_importances")
    needs_grads = IMPORTANCES.any_needs(importances, "calibration")
    if calibration is None and (needs_grads or SIGNALS.needs(signal).calibration):
        raise CalibrationRequiredError(
            f"signal {signal!r} with range importances {list(importances)} needs gradients: pass "
            f"calibration=<(inputs, targets) batches>, or use range_importances {DATA_FREE_IMPORTANCES} "
            "and signal='magnitude'"
        )
    check_fraction(min_density, "min_density")
    if needs_grads:
        accumulate_gradients(model, calibration, loss_fn)
    groups = find_groups(model, example_inputs, ignored_layers, importances, **tp_kwargs)
    inputs = AllocationInputs(groups.units, {}, None, min_density, sensitivity)
    allocations = threshold_allocations(inputs, groups.scores)
    if sensitivity is not None:
        allocations.update(bind_allocations(inputs, ["sensitivity"]))
    return plan_units(
        groups.units, allocations, signal=signal, rules=rules, default_rules=default_rules, targets=targets,
        samples=samples, seed=seed, unit_kind="channel_group", sensitivity=sensitivity,
        config={"backend": "torch-pruning", "range_importances": list(importances), "min_density": min_density,
                "fixed_groups": groups.fixed, "skipped_groups": groups.skipped},
    )
