"""Structured Mix-and-Match over Torch-Pruning dependency groups.

Torch-Pruning (TP) removes whole channels, which is what speeds up OpenVINO on CPUs without AMX
(unstructured zeros give about 1.0x there). TP prunes *dependency groups*: every layer whose channels
must go together (a residual stream, a ViT embedding dimension, an attention block's head dims) forms
one group, and ``pruning_ratio_dict`` needs one ratio per group, keyed by the group's root module (when
two keys fall in one group the first one found wins). This module turns the core Mix-and-Match engine
(:mod:`mm_plugin.strategies`, :mod:`mm_plugin.rules`, :mod:`mm_plugin.ranges`) into such a dict:

* each group becomes a :class:`GroupUnit` (name, kind, params, order, depth, channels), which the core's
  strategies and rules accept like a layer;
* per-group ranges come from global thresholds over per-channel group importances (TP's magnitude,
  LAMP and filter L1, or Taylor with calibration data) at global channel ratios 0.3 / 0.5 / 0.7, via the
  core's ``derive_ranges(mode="signal")`` with its minimum-density guard;
* the core's default rules then bound each group (first group <= 0.10, patch embedding <= 0.30, ...);
  the group that feeds the model output (the classifier's outputs) is never pruned.

Two ways in, both one-line changes to an existing TP script::

    pruner = tp.pruner.BasePruner(model, x, imp, ignored_layers=ignored,
        pruning_ratio_dict=MixAndMatchScheduler("balanced").ratio_dict(model, x, ignored))
    pruner = MixAndMatchPruner(model, x, imp, ignored_layers=ignored, strategy="balanced")

``MixAndMatchPruner`` also handles timm ViT (num_heads, head_dim and attn_dim updated after pruning) and
timm Swin (PatchMerging pruner, relative position bias tables kept), checks after ``step()`` that every
group got the channel count asked for, and raises :class:`~mm_plugin.errors.UnsupportedModelError`
naming the module for a layer TP cannot handle.

Uses Torch-Pruning 1.6's ``BasePruner`` helpers (``_is_atten_group``,
``_downstream_node_as_root_if_attention``, ``_get_channel_groups``, ``_check_pruning_ratio``) so that
groups are enumerated exactly as the pruner will enumerate them; ``pyproject`` pins ``<1.7``.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mm_plugin import strategies as strat
from mm_plugin.allocations import AllocationInputs
from mm_plugin.errors import (
    CalibrationRequiredError,
    ConfigError,
    NoPrunableLayersError,
    UnknownNameError,
    UnsupportedModelError,
    ValidationError,
    check_fraction,
)
from mm_plugin.inventory import LayerInfo, forward_eval, inventory
from mm_plugin.patterns import BaselineJob, Pattern, RunContext
from mm_plugin.plan import Plan
from mm_plugin.ranges import derive_ranges
from mm_plugin.rules import apply_rules, explain, resolve_rules
from mm_plugin.signals import split_batch as _split_batch
from mm_plugin.strategies import Strategy

try:
    import torch_pruning as tp
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mm_plugin.adapters.torch_pruning needs Torch-Pruning: pip install 'mm-plugin[torch-pruning]'"
    ) from e

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_GROUP_TARGETS",
    "GROUP_CRITERIA",
    "GROUP_SIGNALS",
    "ChannelReport",
    "GroupRow",
    "GroupUnit",
    "LatencyPoint",
    "baseline_front",
    "measure_against_dense",
    "MixAndMatchPruner",
    "MixAndMatchScheduler",
    "channel_counts",
    "channel_report",
    "group_units",
    "load_group_plan",
    "latency_front",
    "load_pruned",
    "plan_groups",
    "prune_baseline",
    "prune_structured",
    "ratio_dict",
    "save_pruned",
    "tp_support",
    "update_attention_",
]

DEFAULT_GROUP_TARGETS = (0.3, 0.5, 0.7)
"""Global channel ratios at which the range criteria are thresholded (structured pruning removes a
channel's whole row and column, so 0.5 of the channels is already about 0.75 of the weights)."""

DEFAULT_MIN_DENSITY = 0.1
"""Minimum-density guard of the range thresholds: every group keeps at least 10 % of its channels."""


def _magnitude() -> tp.importance.Importance:
    return tp.importance.GroupMagnitudeImportance(p=2)


def _taylor() -> tp.importance.Importance:
    return tp.importance.GroupTaylorImportance()


GROUP_SIGNALS: dict[str, Callable[[], tp.importance.Importance]] = {
    "magnitude": _magnitude,  # group L2 norm, normalized by its mean (TP's default)
    "taylor": _taylor,  # |w * dL/dw| summed over the group (Molchanov 2019); needs calibration
}
"""Signals: which channels go *inside* each group (the pruner's ``importance``)."""

GROUP_CRITERIA: dict[str, Callable[[], tp.importance.Importance]] = {
    "magnitude": _magnitude,
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    "filter_l1": lambda: tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first"),
    "fpgm": lambda: tp.importance.FPGMImportance(p=2),
    "taylor": _taylor,
}
"""Range criteria: per-channel importances thresholded globally to find how much each group can lose.

``magnitude``: L2 norm over every weight of the group, divided by the group's mean (TP's default);
``lamp``: the same norms LAMP-normalized; ``filter_l1``: L1 norm of the root layer's filters only (Li et
al. 2017), blind to consumers; ``fpgm``: distance to the geometric median (slower: pairwise distances);
``taylor``: first-order Taylor, needs calibration batches."""

DATA_FREE_CRITERIA = ("magnitude", "lamp", "filter_l1")
CALIBRATED_CRITERIA = ("magnitude", "lamp", "taylor")
GRADIENT_CRITERIA = ("taylor",)


# --------------------------------------------------------------------------------------------------
# timm support: attention heads, Swin's PatchMerging and relative position bias tables
# --------------------------------------------------------------------------------------------------
def _patch_merging_classes() -> tuple[type, ...]:
    classes = []
    try:
        from timm.models.swin_transformer import PatchMerging as SwinPatchMerging

        classes.append(SwinPatchMerging)
    except ImportError:  # timm is optional
        pass
    try:
        from timm.models.swin_transformer_v2 import PatchMerging as SwinV2PatchMerging

        classes.append(SwinV2PatchMerging)
    except ImportError:
        pass
    return tuple(classes)


class PatchMergingPruner(tp.pruner.BasePruningFunc):
    """Prunes timm's Swin ``PatchMerging`` (2x2 neighbours concatenated, LayerNorm, Linear 4C -> C').

    Input channel ``i`` sits at positions ``i + k C`` (k = 0..3) of the merged 4C vector, so an input
    channel is removed from all four copies in the norm (when it is applied before the reduction, as
    in Swin v1) and in the reduction's columns. Output channels are the reduction's rows (and the
    norm's, when it is applied after the reduction, as in Swin v2).
    """

    TARGET_MODULES = _patch_merging_classes() or None

    @staticmethod
    def _norm_on_input(layer: nn.Module) -> bool:
        return layer.norm.normalized_shape[-1] == layer.reduction.in_features

    @staticmethod
    def _prune_norm(norm: nn.Module, keep: list[int]) -> None:
        if getattr(norm, "weight", None) is not None:
            norm.weight = nn.Parameter(norm.weight.data[keep].clone())
        if getattr(norm, "bias", None) is not None:
            norm.bias = nn.Parameter(norm.bias.data[keep].clone())
        norm.normalized_shape = (len(keep),)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        drop = {int(i) for i in idxs}
        keep = [i for i in range(layer.reduction.out_features) if i not in drop]
        layer.reduction.weight = nn.Parameter(layer.reduction.weight.data[keep].clone())
        if layer.reduction.bias is not None:
            layer.reduction.bias = nn.Parameter(layer.reduction.bias.data[keep].clone())
        layer.reduction.out_features = len(keep)
        if not self._norm_on_input(layer):
            self._prune_norm(layer.norm, keep)
        layer.out_dim = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        dim = layer.reduction.in_features // 4
        drop = {int(i) for i in idxs}
        keep = [k * dim + i for k in range(4) for i in range(dim) if i not in drop]
        if self._norm_on_input(layer):
            self._prune_norm(layer.norm, keep)
        layer.reduction.weight = nn.Parameter(layer.reduction.weight.data[:, keep].clone())
        layer.reduction.in_features = len(keep)
        layer.dim = dim - len(drop)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.reduction.out_features

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.reduction.in_features // 4


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with a fused ``qkv`` Linear and an integer ``num_heads`` (timm ViT, DeiT, Swin, ...)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)
    ]


def tp_support(
    model: nn.Module,
    ignored_layers: Iterable[Any] | None = None,
    *,
    num_heads: dict[nn.Module, int] | None = None,
    customized_pruners: dict[Any, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments that make ``tp.pruner.BasePruner`` handle timm ViT / Swin correctly.

    Returns ``ignored_layers`` (yours, plus per-head tables such as Swin's relative position bias,
    which must stay whole or TP couples them into the attention group and leaves it unpruned),
    ``num_heads`` (every ``qkv`` Linear with its head count, so head dims are pruned evenly),
    ``customized_pruners`` (timm ``PatchMerging``) and fresh ``in/out_channel_groups`` dicts. Spread it
    into the pruner: ``tp.pruner.BasePruner(model, x, imp, **tp_support(model, [model.head]), ...)``,
    then call :func:`update_attention_` after ``pruner.step()``.
    """
    ignored = list(ignored_layers or [])
    heads = dict(num_heads or {})
    for _, m in _attention_modules(model):
        heads.setdefault(m.qkv, m.num_heads)
        for p in m.parameters(recurse=False):
            if p.dim() >= 1 and p.shape[-1] == m.num_heads and not any(p is q for q in ignored):
                ignored.append(p)  # per-head tables (relative position bias): heads are not pruned
    customized = dict(customized_pruners or {})
    present = {type(m) for m in model.modules()}
    for cls in _patch_merging_classes():
        if cls in present:
            customized.setdefault(cls, PatchMergingPruner())
    return {
        "ignored_layers": ignored,
        "num_heads": heads,
        "customized_pruners": customized,
        "in_channel_groups": {},  # TP mutates these dicts; never share its mutable defaults
        "out_channel_groups": {},
    }


@torch.no_grad()
def update_attention_(model: nn.Module) -> list[str]:
    """After pruning, make attention modules consistent with their pruned ``qkv``; returns their names.

    Sets ``head_dim`` / ``attn_dim`` (timm ``Attention``) and keeps the softmax temperature of the dense
    model: the old scale ``1/sqrt(d_old)`` is folded into the query rows of ``qkv`` and ``scale`` becomes
    ``1/sqrt(d_new)``, so the fused (``scaled_dot_product_attention``) and the explicit paths agree.
    Idempotent: a second call changes nothing.
    """
    changed = []
    for name, m in _attention_modules(model):
        qkv, heads = m.qkv, m.num_heads
        if qkv.out_features % (3 * heads):
            raise UnsupportedModelError(
                f"attention '{name}' ({type(m).__name__}): qkv has {qkv.out_features} outputs, not a "
                f"multiple of 3 x {heads} heads after pruning; pass num_heads={{model.{name}.qkv: {heads}}} "
                "to the pruner"
            )
        head_dim = qkv.out_features // (3 * heads)
        new_scale = head_dim**-0.5
        old_scale = getattr(m, "scale", None)
        if isinstance(old_scale, float) and not math.isclose(old_scale, new_scale, rel_tol=1e-9):
            factor = old_scale / new_scale
            rows = heads * head_dim  # query rows come first in timm's (3, heads, head_dim) layout
            qkv.weight.data[:rows] *= factor
            if qkv.bias is not None:
                qkv.bias.data[:rows] *= factor
            m.scale = new_scale
            changed.append(name)
        if hasattr(m, "head_dim"):
            m.head_dim = head_dim
        if hasattr(m, "attn_dim"):
            m.attn_dim = heads * head_dim
    return changed


# --------------------------------------------------------------------------------------------------
# Groups as units for the core engine
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupUnit:
    """One Torch-Pruning dependency group, with the fields core strategies and rules read.

    ``name`` / ``module``: the group's key module (the first out-channel layer TP meets in the group,
    which is where it looks up ``pruning_ratio_dict``). ``params``: weights coupled to the group's
    channels (its producers' rows and consumers' columns). ``channels``: channels a ratio applies to,
    per channel group (per head for attention: every head keeps the same count), ``ch_groups`` copies.
    """

    name: str
    module: str
    kind: str
    params: int
    order: int
    depth: float
    channels: int
    ch_groups: int
    members: tuple[str, ...]
    probe: tuple[str, str]  # (module, "out" | "in") whose channel count measures the group
    stage: str = ""
    block: str = ""
    macs: int = 0  # multiply-adds per inference of the coupled weights (latency follows these)

    @property
    def total_channels(self) -> int:
        return self.channels * self.ch_groups

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.total_channels,)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["members"], d["probe"] = list(self.members), list(self.probe)
        return d


@dataclass
class _Groups:
    units: list[GroupUnit]
    fixed: list[str]  # key modules of groups kept whole (they reach the model output)
    skipped: dict[str, str]  # root -> why TP will not prune it
    support: dict[str, Any]
    scores: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # criterion -> name -> 1-D


_PRIORITY_KINDS = ("patch_embedding", "embedding", "head")


def _registered_types(dg: Any) -> tuple[type, ...]:
    return tuple(c for c in (tp.ops.type2class(t) for t in dg.REGISTERED_PRUNERS) if isinstance(c, type))


def _scope_key(dg: Any, group: Any, names: dict[nn.Module, str], types: tuple[type, ...]) -> nn.Module | None:
    """The module through which BasePruner finds a group's ``pruning_ratio_dict`` entry (same scan)."""
    for dep, _ in group:
        for module, fn in ((dep.source.module, dep.trigger), (dep.target.module, dep.handler)):
            if (
                isinstance(module, nn.Module)
                and module in names
                and isinstance(module, types)
                and dg.is_out_channel_pruning_fn(fn)
            ):
                return module
    return None


def _owner_of(model: nn.Module, param: torch.Tensor) -> tuple[str, str, str]:
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if p is param:
                return mname, pname, type(m).__name__
    return "?", "?", "?"


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
            mname, pname, cls = _owner_of(model, target)
            raise UnsupportedModelError(
                f"module '{mname}' ({cls}) cannot be pruned by Torch-Pruning: its parameter '{pname}' of "
                f"shape {tuple(target.shape)} is used outside any layer TP knows (Conv, Linear, norms, "
                f"Embedding), and TP would cut its dim {dim} (size {size}) with the {n} channels of the "
                f"group rooted at '{root_name}'. Register a pruner for it (customized_pruners={{{cls}: "
                "<tp.pruner.BasePruningFunc>}), give unwrapped_parameters=[(param, dim)] with the right "
                "dimension, or rebuild it from nn.Conv2d / nn.Linear; if no dimension of it follows the "
                f"channels (a per-head table), keep it whole by passing model.{mname}.{pname} in "
                "ignored_layers"
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


def _positions(model: nn.Module, example_inputs: Any) -> dict[nn.Module, int]:
    """Output positions per sample of every Conv / Linear (pixels, tokens): a weight's multiply-adds
    per inference are its size times these."""
    seen: dict[nn.Module, int] = {}

    def hook(m: nn.Module, _inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            channels = out.shape[1] if isinstance(m, nn.modules.conv._ConvNd) else out.shape[-1]
            seen[m] = seen.get(m, 0) + out.numel() // (out.shape[0] * max(channels, 1))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    try:
        forward_eval(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _coupled_macs(item: Any, dg: Any, positions: dict[nn.Module, int]) -> int:
    """Multiply-adds per inference of the weights :func:`_coupled_params` counts (norms, biases and
    free parameters add no multiply-adds; attention's own matmuls are left out)."""
    module = item.dep.target.module
    if isinstance(module, PatchMergingPruner.TARGET_MODULES or ()):
        module = module.reduction
    return _coupled_params(item, dg) * positions.get(module, 0) if isinstance(module, nn.Module) else 0


def _analysis_pruner(
    model: nn.Module, example_inputs: Any, support: dict[str, Any], tp_kwargs: dict[str, Any]
):
    kwargs = {**tp_kwargs, **support}
    return tp.pruner.BasePruner(model, example_inputs, importance=_magnitude(), pruning_ratio=0.0, **kwargs)


def _reaches_output(dg: Any, group: Any) -> bool:
    """Whether the group's channels are the model's output channels (e.g. the classifier's logits)."""
    for item in group:
        node, fn = item.dep.target, item.dep.handler
        if isinstance(node.module, tp.ops._OutputOp):
            return True
        if dg.is_out_channel_pruning_fn(fn) and (
            not node.outputs or any(isinstance(o.module, tp.ops._OutputOp) for o in node.outputs)
        ):
            return True
    return False


def _build_groups(
    model: nn.Module,
    example_inputs: Any,
    ignored_layers: Iterable[Any] | None,
    tp_kwargs: dict[str, Any],
    criteria: Sequence[str] = (),
) -> _Groups:
    support = tp_support(
        model,
        ignored_layers,
        num_heads=tp_kwargs.pop("num_heads", None),
        customized_pruners=tp_kwargs.pop("customized_pruners", None),
    )
    was_training = model.training
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Unwrapped parameters detected.*")
        try:
            pruner = _analysis_pruner(model, example_inputs, support, tp_kwargs)
        finally:
            model.train(was_training)
    dg = pruner.DG
    names = {m: n for n, m in model.named_modules()}
    types = _registered_types(dg)
    inv = {layer.module: layer for layer in inventory(model, example_inputs).layers}
    positions = _positions(model, example_inputs)
    model.train(was_training)

    importances = {c: GROUP_CRITERIA[c]() for c in criteria}
    raw: list[dict[str, Any]] = []
    fixed: list[str] = []
    skipped: dict[str, str] = {}
    scores: dict[str, dict[str, torch.Tensor]] = {c: {} for c in criteria}
    for group in dg.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        root_name = names.get(group[0].dep.target.module, "?")
        if not pruner._check_pruning_ratio(group):
            skipped[root_name] = "a layer of the group has a single channel left"
            continue
        is_attn, _ = pruner._is_atten_group(group)
        if is_attn:
            group = pruner._downstream_node_as_root_if_attention(group)
            if group is None:
                skipped[root_name] = "attention group without a downstream projection"
                continue
        key = _scope_key(dg, group, names, types)
        if key is None:
            skipped[root_name] = "no layer of the group can carry a pruning_ratio_dict entry"
            continue
        key_name = names[key]
        if _reaches_output(dg, group):
            fixed.append(key_name)  # channels that reach the model output (the classifier's outputs)
            continue
        _check_group(model, dg, group, key_name)
        ch_groups = pruner._get_channel_groups(group)
        total = len(group[0].idxs)
        if not importances and pruner.estimate_importance(group) is None:
            skipped[key_name] = "no parameterized layer in the group"
            continue
        group_scores = {}
        for c, imp in importances.items():
            with torch.no_grad():
                s = imp(group)
            if s is None:
                break
            s = s.detach().float().cpu()
            group_scores[c] = s.view(ch_groups, -1).mean(0) if ch_groups > 1 else s
        if len(group_scores) < len(importances):
            skipped[key_name] = "no parameterized layer in the group"
            continue
        for c, s in group_scores.items():
            scores[c][key_name] = s
        members: list[str] = []
        out_members: list[str] = []
        for item in group:
            mod = item.dep.target.module
            if isinstance(mod, nn.Module) and mod in names and names[mod] not in members:
                members.append(names[mod])
                if dg.is_out_channel_pruning_fn(item.dep.handler):
                    out_members.append(names[mod])
        root = group[0].dep.target.module
        probe = (names[root], "out" if dg.is_out_channel_pruning_fn(group[0].dep.handler) else "in")
        raw.append(
            {
                "key": key_name,
                "total": total,
                "ch_groups": ch_groups,
                "members": tuple(members),
                "out_members": out_members,
                "params": sum(_coupled_params(item, dg) for item in group),
                "macs": sum(_coupled_macs(item, dg, positions) for item in group),
                "probe": probe,
                "is_attn": is_attn,
            }
        )
    model.zero_grad(set_to_none=True)

    def layers_of(member: str) -> list[LayerInfo]:
        return [layer for m, layer in inv.items() if m == member or m.startswith(member + ".")]

    for r in raw:
        producers = [layer for m in r["out_members"] for layer in layers_of(m)] or layers_of(r["key"])
        r["order_key"] = min((layer.order for layer in producers), default=len(inv))
        kinds = {layer.kind for layer in producers}
        key_kind = inv[r["key"]].kind if r["key"] in inv else "linear"
        r["kind"] = next(
            (k for k in _PRIORITY_KINDS if k in kinds), "attention" if r["is_attn"] else key_kind
        )
    raw.sort(key=lambda r: (r["order_key"], r["key"]))
    n = len(raw)
    units = []
    for i, r in enumerate(raw):
        info = inv.get(r["key"])
        units.append(
            GroupUnit(
                name=r["key"],
                module=r["key"],
                kind=r["kind"],
                params=max(int(r["params"]), 1),
                macs=int(r["macs"]),
                order=i,
                depth=i / (n - 1) if n > 1 else 0.0,
                channels=r["total"] // r["ch_groups"],
                ch_groups=r["ch_groups"],
                members=r["members"],
                probe=r["probe"],
                stage=info.stage if info else "",
                block=info.block if info else "",
            )
        )
    if not units:
        raise NoPrunableLayersError(
            f"Torch-Pruning finds no prunable channel group in {type(model).__name__} "
            f"(skipped: {skipped or 'none'}); check ignored_layers and root_module_types"
        )
    return _Groups(units, fixed, skipped, support, scores)


def group_units(
    model: nn.Module, example_inputs: Any, ignored_layers: Iterable[Any] | None = None, **tp_kwargs: Any
) -> list[GroupUnit]:
    """The model's Torch-Pruning dependency groups, in execution order, as core units."""
    return _build_groups(model, example_inputs, ignored_layers, dict(tp_kwargs)).units


# --------------------------------------------------------------------------------------------------
# Calibration (Taylor)
# --------------------------------------------------------------------------------------------------
def _accumulate_gradients(model: nn.Module, calibration: Iterable, loss_fn: Callable | None) -> int:
    """Sum dL/dw over the calibration batches into ``.grad`` (what TP's Taylor importance reads)."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    was_training = model.training
    model.eval()  # BN statistics stay put
    model.zero_grad(set_to_none=True)
    batches = 0
    try:
        with torch.enable_grad():
            for batch in calibration:
                x, y = _split_batch(batch)
                loss_fn(model(x), y).backward()
                batches += 1
    finally:
        model.train(was_training)
    if batches == 0:
        raise CalibrationRequiredError("the calibration data yielded no batches")
    return batches


# --------------------------------------------------------------------------------------------------
# Planning: ranges and the ten strategies over groups
# --------------------------------------------------------------------------------------------------
def plan_groups(
    model: nn.Module,
    example_inputs: Any,
    ignored_layers: Iterable[Any] | None = None,
    *,
    signal: str = "magnitude",
    criteria: Sequence[str] | None = None,
    targets: Sequence[float] = DEFAULT_GROUP_TARGETS,
    rules: Any = None,
    default_rules: bool = True,
    calibration: Iterable | None = None,
    loss_fn: Callable | None = None,
    min_density: float = DEFAULT_MIN_DENSITY,
    samples: int = 0,
    seed: int = 0,
    **tp_kwargs: Any,
) -> Plan:
    """Per-group channel-ratio ranges and the ten named strategies, as a core :class:`~mm_plugin.Plan`.

    ``plan.layers`` are :class:`GroupUnit` (one per TP dependency group, keyed by module name);
    ``plan.strategies[i].sparsity`` maps each group to the fraction of its channels to remove. Ranges:
    each ``criteria`` importance (default magnitude, LAMP, filter L1; Taylor instead of filter L1
    when ``calibration`` is given) is thresholded globally at every ``targets`` channel ratio with at least
    ``min_density`` of every group kept; a group's range is the min / max of what it got, then bounded
    by the rules. ``tp_kwargs`` go to Torch-Pruning (``num_heads``, ``customized_pruners``,
    ``root_module_types``, ``unwrapped_parameters``, ``forward_fn``, ...).
    """
    if signal not in GROUP_SIGNALS:
        raise UnknownNameError("group signal", signal, GROUP_SIGNALS)
    criteria = tuple(criteria or (CALIBRATED_CRITERIA if calibration is not None else DATA_FREE_CRITERIA))
    for c in criteria:
        if c not in GROUP_CRITERIA:
            raise UnknownNameError("range criterion", c, GROUP_CRITERIA, where="criteria")
    needs_grads = [c for c in criteria if c in GRADIENT_CRITERIA] + (
        [signal] if signal in GRADIENT_CRITERIA else []
    )
    if needs_grads and calibration is None:
        raise CalibrationRequiredError(
            f"{needs_grads[0]!r} needs gradients: pass calibration=<(inputs, targets) batches>, "
            f"or use criteria {DATA_FREE_CRITERIA} and signal='magnitude'"
        )
    check_fraction(min_density, "min_density")
    rule_list = resolve_rules(rules, defaults=default_rules)
    if any(c in GRADIENT_CRITERIA for c in criteria):
        _accumulate_gradients(model, calibration, loss_fn)
    groups = _build_groups(model, example_inputs, ignored_layers, dict(tp_kwargs), criteria)
    units = groups.units

    sources: dict[str, np.ndarray] = {}
    for c in criteria:
        views = [
            LayerInfo(u.name, u.module, u.kind, (u.channels,), u.channels, u.order, u.depth, u.stage, u.block)
            for u in units
        ]
        inputs = AllocationInputs(views, {}, None, min_density)
        ranges = derive_ranges(inputs, [], targets=targets, mode="signal", signal_scores=groups.scores[c])
        sources.update({f"{c}{k.removeprefix('signal')}": v for k, v in ranges.sources.items()})
    stacked = np.stack(list(sources.values()))
    lo, hi = apply_rules(units, stacked.min(0), stacked.max(0), rule_list)
    strategies = strat.build_strategies(units, lo, hi)
    if samples:
        strategies += strat.sample_strategies(units, lo, hi, samples, seed)
    return Plan(
        layers=units,  # GroupUnit carries every field Plan reads (name, module, kind, params, to_dict)
        lo=lo,
        hi=hi,
        strategies=strategies,
        signal=signal,
        rules={u.name: explain(u, rule_list) for u in units},
        config={
            "backend": "torch-pruning",
            "unit": "channel ratio per dependency group",
            "targets": list(targets),
            "criteria": list(criteria),
            "min_density": min_density,
            "rules": [r.to_dict() for r in rule_list],
            "fixed_groups": groups.fixed,
            "skipped_groups": groups.skipped,
            "range_sources": {k: v.tolist() for k, v in sources.items()},
            "samples": samples,
            "seed": seed,
        },
    )


def _resolve_strategy(plan: Plan, strategy: Strategy | str, pruning_ratio: float | None, cost: str) -> Strategy:
    s = plan.strategy(strategy) if isinstance(strategy, str) else strategy
    if pruning_ratio is not None:
        s = plan.rescale(s, pruning_ratio, cost)
    return s


def channel_counts(plan: Plan, strategy: Strategy | str, round_to: int | None = None) -> dict[str, int]:
    """Channels each group keeps (per channel group, i.e. per head for attention) under ``strategy``.

    ``round(ratio * channels)`` channels go; with ``round_to``, the kept count is moved to the nearest
    multiple of ``round_to`` (at least ``round_to``; a group smaller than ``round_to`` is kept whole).
    """
    s = plan.strategy(strategy) if isinstance(strategy, str) else strategy
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ValidationError(f"round_to must be a positive integer, got {round_to!r}")
    kept = {}
    for u in plan.layers:
        if u.name not in s.sparsity:
            raise ValidationError(
                f"strategy {s.name!r} has no ratio for group '{u.name}'; re-plan this model"
            )
        n = u.channels
        pruned = round(
            check_fraction(s.sparsity[u.name], f"ratio of group '{u.name}'", upper_inclusive=True) * n
        )
        k = min(max(n - pruned, 1), n)
        if round_to and pruned > 0:
            k = n if n <= round_to else min(max(round_to, round(k / round_to) * round_to), n)
        kept[u.name] = k
    return kept


def _tp_ratio(kept: int, n: int) -> float:
    """A ratio for which BasePruner keeps exactly ``kept`` of ``n`` (it keeps ``int(n * (1 - r))``)."""
    r = (n - kept) / n
    while int(n * (1 - r)) < kept:
        r = float(np.nextafter(r, -1.0))
    return max(r, 0.0)


def ratio_dict(
    model: nn.Module, plan: Plan, strategy: Strategy | str, round_to: int | None = None
) -> dict[nn.Module, float]:
    """``pruning_ratio_dict`` for ``tp.pruner.BasePruner``: one entry per group (0.0 for fixed groups),
    keyed by ``model``'s own modules (the plan is by name, so a deep copy of the planned model works)."""
    kept = channel_counts(plan, strategy, round_to)
    out: dict[nn.Module, float] = {}
    for u in plan.layers:
        out[_submodule(model, u.name)] = _tp_ratio(kept[u.name], u.channels)
    for name in plan.config.get("fixed_groups", []):
        out[_submodule(model, name)] = 0.0
    return out


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValidationError(
            f"the plan names module '{name}', which {type(model).__name__} does not have; "
            "plan and prune the same architecture"
        ) from None


def load_group_plan(path: str | Path) -> Plan:
    """Reload a plan saved with ``plan.save(path)``, with its :class:`GroupUnit` layers (a plain
    ``Plan.load`` would give core ``LayerInfo`` rows, which lack the channel counts)."""
    import json

    path = Path(path)
    try:
        d = json.loads(path.read_text())
        plan = Plan.from_dict({**d, "layers": [{**r, "shape": [r["channels"]]} for r in d["layers"]]})
        keys = {f.name for f in fields(GroupUnit)}
        plan.layers = [
            GroupUnit(
                **{
                    **{k: v for k, v in r.items() if k in keys},
                    "members": tuple(r["members"]),
                    "probe": tuple(r["probe"]),
                }
            )
            for r in d["layers"]
        ]
    except FileNotFoundError:
        raise ValidationError(f"plan file {path} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValidationError(f"{path} is not a Torch-Pruning group plan (from plan_groups): {e!r}") from None
    return plan


# --------------------------------------------------------------------------------------------------
# Channel report
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupRow:
    group: str
    kind: str
    channels: int  # before pruning (all channel groups / heads)
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
        return {
            "strategy": self.strategy,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "channel_ratio": self.channel_ratio,
            "rows": [asdict(r) for r in self.rows],
        }

    def table(self) -> str:
        lines = [
            (
                f"strategy {self.strategy}: params {self.params_before:,} -> {self.params_after:,} "
                f"({self.params_ratio:.3f}x), channels removed {self.channel_ratio:.3f}"
            ),
            f"{'group':40s} {'kind':16s} {'ratio':>6s} {'before':>7s} {'expected':>8s} {'actual':>7s}",
        ]
        lines += [
            f"{r.group:40s} {r.kind:16s} {r.ratio:6.3f} {r.channels:7d} {r.expected:8d} {r.actual:7d}"
            + ("" if r.ok else "  MISMATCH")
            for r in self.rows
        ]
        return "\n".join(lines)


def _channels_of(module: nn.Module, side: str) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels if side == "out" else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if side == "out" else module.in_features
    pruner = tp.pruner.function.PrunerBox.get(tp.ops.module2type(module))
    if pruner is None:
        raise UnsupportedModelError(f"cannot count the channels of {type(module).__name__}")
    return pruner.get_out_channels(module) if side == "out" else pruner.get_in_channels(module)


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def channel_report(
    model: nn.Module,
    plan: Plan,
    strategy: Strategy | str,
    round_to: int | None = None,
    params_before: int | None = None,
) -> ChannelReport:
    """Channels of every group on ``model`` (pruned) against what ``strategy`` asked for."""
    s = plan.strategy(strategy) if isinstance(strategy, str) else strategy
    kept = channel_counts(plan, s, round_to)
    rows = []
    for u in plan.layers:
        module = _submodule(model, u.probe[0])
        rows.append(
            GroupRow(
                u.name,
                u.kind,
                u.total_channels,
                kept[u.name] * u.ch_groups,
                _channels_of(module, u.probe[1]),
                float(s.sparsity[u.name]),
            )
        )
    after = _count_params(model)
    return ChannelReport(s.name, rows, params_before if params_before is not None else after, after)


def _raise_on_mismatch(report: ChannelReport, plan: Plan) -> None:
    bad = report.mismatches()
    if not bad:
        return
    units = {u.name: u for u in plan.layers}
    details = "; ".join(
        f"group '{r.group}' ({r.kind}; layers {', '.join(units[r.group].members[:4])}"
        f"{', ...' if len(units[r.group].members) > 4 else ''}): expected {r.expected} channels, "
        f"got {r.actual}"
        for r in bad[:5]
    )
    raise UnsupportedModelError(
        f"Torch-Pruning did not prune {len(bad)} group(s) as planned, so layers would be silently left "
        f"unpruned: {details}. Pass every attention qkv in num_heads, register customized_pruners for "
        "custom layers, keep per-head tables (relative position bias) in ignored_layers (see tp_support), "
        "and give round_to to the scheduler, not to BasePruner (nor a max_pruning_ratio below the plan's)"
    )


def _check_forward(model: nn.Module, example_inputs: Any, expected_shape: torch.Size | None) -> None:
    """Run the pruned model; on failure name the innermost module that raised."""
    stack: list[str] = []
    failed: list[str] = []
    handles = []
    for name, m in model.named_modules():
        if not name:
            continue

        def pre(_m, _i, name=name):
            stack.append(name)

        def post(_m, _i, _o, name=name):
            if stack and stack[-1] == name:
                stack.pop()

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = (
                model(*example_inputs) if isinstance(example_inputs, (tuple, list)) else model(example_inputs)
            )
    except Exception as e:
        failed = list(stack)
        where = failed[-1] if failed else type(model).__name__
        cls = type(model.get_submodule(where)).__name__ if failed else ""
        raise UnsupportedModelError(
            f"the pruned model fails in module '{where}' ({cls}): {type(e).__name__}: {e}. Torch-Pruning "
            f"cannot handle this layer as it is; register customized_pruners={{{cls or 'YourLayer'}: ...}} "
            "or keep it out of pruning with ignored_layers"
        ) from e
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if isinstance(out, (tuple, list)):
        out = out[0]
    if expected_shape is not None and isinstance(out, torch.Tensor) and out.shape != expected_shape:
        raise UnsupportedModelError(
            f"pruning changed the model output from {tuple(expected_shape)} to {tuple(out.shape)}; "
            "the classifier's outputs must stay (pass the head in ignored_layers)"
        )


def _output_shape(model: nn.Module, example_inputs: Any) -> torch.Size | None:
    out = forward_eval(model, example_inputs)
    return None if out is None else out.shape


# --------------------------------------------------------------------------------------------------
# The two Torch-Pruning entry points
# --------------------------------------------------------------------------------------------------
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

    ``strategy`` is one of the ten names (``conservative``, ``aggressive``, ``balanced``,
    ``interp-0.30`` ... ``interp-0.90``, ``parameter-proportional``, ``classifier-heavy``,
    ``feature-heavy``); ``pruning_ratio`` rescales it to that parameter-weighted mean channel ratio
    inside the ranges (``cost="macs"``: weighted by the multiply-adds each group's channels take part
    in, so the budget follows compute, which is what CPU latency follows). ``round_to`` belongs here, not in BasePruner. For ViT / Swin, also pass
    ``**tp_support(model, ignored)`` to BasePruner and call :func:`update_attention_` after ``step()``.
    The last plan is kept in ``self.plan_``.
    """

    def __init__(
        self,
        strategy: Strategy | str = "balanced",
        *,
        pruning_ratio: float | None = None,
        cost: str = "params",
        round_to: int | None = None,
        signal: str = "magnitude",
        criteria: Sequence[str] | None = None,
        targets: Sequence[float] = DEFAULT_GROUP_TARGETS,
        rules: Any = None,
        default_rules: bool = True,
        calibration: Iterable | None = None,
        loss_fn: Callable | None = None,
        min_density: float = DEFAULT_MIN_DENSITY,
        **tp_kwargs: Any,
    ) -> None:
        if pruning_ratio is not None:
            check_fraction(pruning_ratio, "pruning_ratio")
        self.strategy, self.pruning_ratio, self.cost, self.round_to = strategy, pruning_ratio, cost, round_to
        self.plan_kwargs = dict(
            signal=signal,
            criteria=criteria,
            targets=targets,
            rules=rules,
            default_rules=default_rules,
            calibration=calibration,
            loss_fn=loss_fn,
            min_density=min_density,
            **tp_kwargs,
        )
        self.plan_: Plan | None = None
        self.strategy_: Strategy | None = None

    def plan(
        self, model: nn.Module, example_inputs: Any, ignored_layers: Iterable[Any] | None = None
    ) -> Plan:
        self.plan_ = plan_groups(model, example_inputs, ignored_layers, **self.plan_kwargs)
        return self.plan_

    def ratio_dict(
        self, model: nn.Module, example_inputs: Any, ignored_layers: Iterable[Any] | None = None
    ) -> dict[nn.Module, float]:
        plan = self.plan(model, example_inputs, ignored_layers)
        self.strategy_ = _resolve_strategy(plan, self.strategy, self.pruning_ratio, self.cost)
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

    ``pruning_ratio`` (default ``None``: the strategy as planned) rescales the strategy to that
    mean channel ratio, weighted by parameters or, with ``cost="macs"``, by multiply-adds; ``round_to`` rounds each group's kept channels (per head for
    attention). ``importance`` defaults to the ``signal``'s TP importance; with ``calibration`` and a
    Taylor importance, gradients are computed before ``step()``. Timm attention heads, PatchMerging and
    relative position bias tables are set up automatically (:func:`tp_support`). ``global_pruning``,
    ``pruning_ratio_dict`` and ``prune_num_heads`` are not available: the strategy sets every group.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: Callable | None = None,
        *,
        pruning_ratio: float | None = None,
        cost: str = "params",
        ignored_layers: Iterable[Any] | None = None,
        round_to: int | None = None,
        strategy: Strategy | str = "balanced",
        signal: str | None = None,
        criteria: Sequence[str] | None = None,
        targets: Sequence[float] = DEFAULT_GROUP_TARGETS,
        rules: Any = None,
        default_rules: bool = True,
        calibration: Iterable | None = None,
        loss_fn: Callable | None = None,
        min_density: float = DEFAULT_MIN_DENSITY,
        plan: Plan | None = None,
        **kwargs: Any,
    ) -> None:
        for bad in (
            "pruning_ratio_dict",
            "ch_sparsity_dict",
            "global_pruning",
            "prune_num_heads",
            "isomorphic",
        ):
            if kwargs.get(bad):
                raise ValidationError(
                    f"MixAndMatchPruner sets one ratio per group from the strategy; {bad} is not supported "
                    "(use tp.pruner.BasePruner for it)"
                )
            kwargs.pop(bad, None)
        if pruning_ratio is not None:
            check_fraction(pruning_ratio, "pruning_ratio")
        if signal is None:
            signal = "taylor" if isinstance(importance, tp.importance.GroupTaylorImportance) else "magnitude"
        if signal not in GROUP_SIGNALS:
            raise UnknownNameError("group signal", signal, GROUP_SIGNALS)
        importance = importance if importance is not None else GROUP_SIGNALS[signal]()
        num_heads = kwargs.pop("num_heads", None)
        customized = kwargs.pop("customized_pruners", None)
        plan_tp_kwargs = {
            k: v
            for k, v in kwargs.items()
            if k in ("root_module_types", "unwrapped_parameters", "forward_fn", "output_transform")
        }
        if plan is None:
            plan = plan_groups(
                model,
                example_inputs,
                ignored_layers,
                signal=signal,
                criteria=criteria,
                targets=targets,
                rules=rules,
                default_rules=default_rules,
                calibration=calibration,
                loss_fn=loss_fn,
                min_density=min_density,
                num_heads=num_heads,
                customized_pruners=customized,
                **plan_tp_kwargs,
            )
        support = tp_support(model, ignored_layers, num_heads=num_heads, customized_pruners=customized)
        for k in ("in_channel_groups", "out_channel_groups"):
            support[k] = dict(kwargs.pop(k, None) or {})
        self.mm_plan = plan
        self.mm_strategy = _resolve_strategy(plan, strategy, pruning_ratio, cost)
        self.mm_round_to = round_to
        self.mm_calibration, self.mm_loss_fn = calibration, loss_fn
        self.report: ChannelReport | None = None
        self._mm_params_before = _count_params(model)
        self._mm_output_shape = _output_shape(model, example_inputs)
        self._mm_example_inputs = example_inputs
        was_training = model.training
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Unwrapped parameters detected.*")
            super().__init__(
                model,
                example_inputs,
                importance,
                pruning_ratio=0.0,
                pruning_ratio_dict=ratio_dict(model, plan, self.mm_strategy, round_to),
                ignored_layers=support["ignored_layers"],
                round_to=None,
                num_heads=support["num_heads"],
                customized_pruners=support["customized_pruners"],
                in_channel_groups=support["in_channel_groups"],
                out_channel_groups=support["out_channel_groups"],
                **kwargs,
            )
        model.train(was_training)

    def _needs_gradients(self) -> bool:
        return (
            isinstance(self.importance, tp.importance.GroupTaylorImportance)
            and self.mm_calibration is not None
        )

    def _after_step(self) -> None:
        update_attention_(self.model)
        if self.current_step < self.iterative_steps:
            return
        _check_forward(self.model, self._mm_example_inputs, self._mm_output_shape)
        self.report = channel_report(
            self.model, self.mm_plan, self.mm_strategy, self.mm_round_to, self._mm_params_before
        )
        _raise_on_mismatch(self.report, self.mm_plan)
        self.model.zero_grad(set_to_none=True)

    def _interactive_step(self):
        yield from super().step(interactive=True)
        self._after_step()

    def step(self, interactive: bool = False):
        if self._needs_gradients():
            _accumulate_gradients(self.model, self.mm_calibration, self.mm_loss_fn)
        if interactive:
            return self._interactive_step()
        super().step(interactive=False)
        self._after_step()
        return None


# --------------------------------------------------------------------------------------------------
# Model in, pruned model + report out (the building blocks of the latency front)
# --------------------------------------------------------------------------------------------------
def _importance(signal: str, importance: Callable | None) -> Callable:
    if importance is not None:
        return importance
    if signal not in GROUP_SIGNALS:
        raise UnknownNameError("group signal", signal, GROUP_SIGNALS)
    return GROUP_SIGNALS[signal]()


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


def _resolve_names(model: nn.Module, names: Iterable[str]) -> list[Any]:
    params = dict(model.named_parameters())
    return [params[n] if n in params else _submodule(model, n) for n in names]


def prune_structured(
    model: nn.Module,
    example_inputs: Any,
    strategy: Strategy | str = "balanced",
    *,
    plan: Plan | None = None,
    pruning_ratio: float | None = None,
    cost: str = "params",
    ignored_layers: Iterable[str | nn.Module] | None = None,
    round_to: int | None = None,
    signal: str = "magnitude",
    importance: Callable | None = None,
    calibration: Iterable | None = None,
    loss_fn: Callable | None = None,
    inplace: bool = False,
    **plan_kwargs: Any,
) -> tuple[nn.Module, ChannelReport]:
    """Prune ``model`` (a deep copy unless ``inplace``) with one strategy; return it and its report.

    Give ``plan`` (from :func:`plan_groups` on the same architecture) to prune several copies from one
    plan; ``ignored_layers`` (modules, parameters or their names) resolve on the copy. The result runs,
    exports with ``openvino.convert_model`` and fine-tunes like any ``nn.Module``.
    """
    ignored_names = _as_names(model, ignored_layers)
    target = model if inplace else copy.deepcopy(model)
    ignored = _resolve_names(target, ignored_names)
    if plan is None:
        plan = plan_groups(
            target,
            example_inputs,
            ignored,
            signal=signal,
            calibration=calibration,
            loss_fn=loss_fn,
            **plan_kwargs,
        )
    pruner = MixAndMatchPruner(
        target,
        example_inputs,
        _importance(plan.signal, importance),
        pruning_ratio=pruning_ratio,
        cost=cost,
        ignored_layers=ignored,
        round_to=round_to,
        strategy=strategy,
        plan=plan,
        calibration=calibration,
        loss_fn=loss_fn,
        **{
            k: v
            for k, v in plan_kwargs.items()
            if k
            in (
                "num_heads",
                "customized_pruners",
                "root_module_types",
                "unwrapped_parameters",
                "forward_fn",
                "output_transform",
            )
        },
    )
    pruner.step()
    return target, pruner.report


def prune_baseline(
    model: nn.Module,
    example_inputs: Any,
    method: str = "uniform",
    pruning_ratio: float = 0.5,
    *,
    ignored_layers: Iterable[str | nn.Module] | None = None,
    round_to: int | None = None,
    importance: Callable | None = None,
    max_pruning_ratio: float = 0.9,
    inplace: bool = False,
    **tp_kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Torch-Pruning's own baselines on a copy: ``uniform`` (every group at ``pruning_ratio``) or
    ``global`` (one threshold over all groups' normalized importances, each group capped at
    ``max_pruning_ratio``). Timm ViT / Swin support as in :func:`tp_support`. Returns the model and
    ``{"method", "pruning_ratio", "params_before", "params_after"}``."""
    if method not in ("uniform", "global"):
        raise UnknownNameError("baseline", method, ("uniform", "global"))
    check_fraction(pruning_ratio, "pruning_ratio")
    target = model if inplace else copy.deepcopy(model)
    before = _count_params(target)
    support = tp_support(
        target,
        _resolve_names(target, _as_names(model, ignored_layers)),
        num_heads=tp_kwargs.pop("num_heads", None),
        customized_pruners=tp_kwargs.pop("customized_pruners", None),
    )
    was_training = target.training
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Unwrapped parameters detected.*")
        pruner = tp.pruner.BasePruner(
            target,
            example_inputs,
            importance or _magnitude(),
            global_pruning=method == "global",
            pruning_ratio=pruning_ratio,
            max_pruning_ratio=max_pruning_ratio,
            round_to=round_to,
            **support,
            **tp_kwargs,
        )
        pruner.step()
    target.train(was_training)
    update_attention_(target)
    return target, {
        "method": method,
        "pruning_ratio": pruning_ratio,
        "params_before": before,
        "params_after": _count_params(target),
    }


# --------------------------------------------------------------------------------------------------
# Save and reload
# --------------------------------------------------------------------------------------------------
SAVE_FORMATS = ("state_dict", "module")


def save_pruned(model: nn.Module, path: str | Path, *, format: str = "state_dict") -> Path:
    """Save a pruned model. ``state_dict``: ``tp.state_dict`` (tensors and module attributes; reload
    into a freshly built dense model of the same architecture); ``module``: ``torch.save(model)``
    (the whole pickled module; needs the model's classes importable). Both are pickles: load only
    files you trust."""
    if format not in SAVE_FORMATS:
        raise UnknownNameError("save format", format, SAVE_FORMATS)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"mm_format": format, "data": tp.state_dict(model) if format == "state_dict" else model}
    torch.save(payload, path)
    return path


def load_pruned(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Reload what :func:`save_pruned` wrote. For ``state_dict`` files pass ``model``: a dense model of
    the same architecture (e.g. ``timm.create_model(name, pretrained=False, ...)``); it is reshaped in
    place and returned."""
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


# --------------------------------------------------------------------------------------------------
# Latency front (OpenVINO, CPU)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyPoint:
    """One pruned model on the latency front: a Mix-and-Match strategy or a TP baseline."""

    strategy: str  # strategy name, or "tp-uniform@0.5" / "tp-global@0.5" for baselines
    latency_ms: float  # median OpenVINO latency of the pruned model
    dense_latency_ms: float  # median of the dense model, measured interleaved with it
    latency_ratio: float  # pruned / dense
    params_ratio: float
    channel_ratio: float  # fraction of the planned groups' channels removed (nan without a plan)
    report: ChannelReport | None  # per-group channels (None for baselines)
    model: nn.Module | None = None  # the pruned model, when keep_models=True

    def to_dict(self) -> dict[str, Any]:
        keys = (
            "strategy",
            "latency_ms",
            "dense_latency_ms",
            "latency_ratio",
            "params_ratio",
            "channel_ratio",
        )
        d: dict[str, Any] = {k: getattr(self, k) for k in keys}
        d["report"] = self.report.to_dict() if self.report is not None else None
        return d


def _interleaved_latency(
    dense: Any, pruned: Any, inputs: Any, *, threads: int, warmup: int, rounds: int, runs: int
) -> tuple[float, float]:
    """Median ms per inference of two compiled models, timed in alternating blocks of ``runs``
    (machine drift hits both); each block's median, then the median over blocks."""
    from mm_plugin.adapters.openvino import measure_latency

    for compiled in (dense, pruned):
        measure_latency(compiled, inputs, threads, "f32", warmup=warmup, repeats=1)
    d, p = [], []
    for i in range(rounds):
        order = (dense, pruned) if i % 2 == 0 else (pruned, dense)
        for compiled in order:
            ms = measure_latency(compiled, inputs, threads, "f32", warmup=0, repeats=runs).median_ms
            (d if compiled is dense else p).append(ms)
    return statistics.median(d), statistics.median(p)


def _compile(model: nn.Module, example_inputs: Any, threads: int) -> Any:
    from mm_plugin.adapters.openvino import compile_for_latency, convert

    return compile_for_latency(convert(model, example_inputs), threads=threads, precision="f32")


def measure_against_dense(
    dense: nn.Module,
    pruned: nn.Module,
    example_inputs: Any,
    *,
    threads: int = 1,
    warmup: int = 10,
    rounds: int = 7,
    runs: int = 20,
) -> tuple[float, float]:
    """``(dense_ms, pruned_ms)``: OpenVINO CPU medians of both models, converted with
    ``openvino.convert_model``, fp32, ``threads`` threads, timed in alternating blocks."""
    return _interleaved_latency(
        _compile(dense, example_inputs, threads),
        _compile(pruned, example_inputs, threads),
        example_inputs,
        threads=threads,
        warmup=warmup,
        rounds=rounds,
        runs=runs,
    )


def _timed_point(
    dense_compiled: Any, pruned: nn.Module, example_inputs: Any, timing: dict[str, int], keep_model: bool,
    **fields: Any,
) -> LatencyPoint:
    """Time ``pruned`` in alternating blocks with the compiled dense model; one point of a front."""
    dense_ms, pruned_ms = _interleaved_latency(
        dense_compiled, _compile(pruned, example_inputs, timing["threads"]), example_inputs, **timing
    )
    log.info("%s: %.3f ms vs dense %.3f ms (%.3fx)", fields["strategy"], pruned_ms, dense_ms, pruned_ms / dense_ms)
    return LatencyPoint(latency_ms=pruned_ms, dense_latency_ms=dense_ms, latency_ratio=pruned_ms / dense_ms,
                        model=pruned if keep_model else None, **fields)


def latency_front(
    model: nn.Module,
    example_inputs: Any,
    strategies: Sequence[Strategy | str] | None = None,
    *,
    plan: Plan | None = None,
    ignored_layers: Iterable[str | nn.Module] | None = None,
    round_to: int | None = None,
    importance: Callable | None = None,
    threads: int = 1,
    warmup: int = 10,
    rounds: int = 7,
    runs: int = 20,
    keep_models: bool = False,
    **plan_kwargs: Any,
) -> list[LatencyPoint]:
    """Prune a copy of ``model`` per strategy and measure its OpenVINO CPU latency against the dense one.

    Timing: ``threads`` inference threads, fp32 precision hint (the bf16 default is slower without
    AMX), latency hint with one stream, ``warmup`` runs of each model, then ``rounds`` alternating
    blocks of ``runs`` inferences of dense and pruned; medians of the blocks. Strategies default to
    every strategy of ``plan`` (planned here when not given). ``keep_models=True`` keeps the pruned
    models on the points (to fine-tune them with ``mm_plugin.training.finetune`` afterwards).
    """
    ignored_names = _as_names(model, ignored_layers)
    if plan is None:
        plan = plan_groups(model, example_inputs, _resolve_names(model, ignored_names), **plan_kwargs)
    chosen = list(strategies) if strategies is not None else list(plan.strategies)
    dense_compiled = _compile(model, example_inputs, threads)
    timing = {"threads": threads, "warmup": warmup, "rounds": rounds, "runs": runs}
    points = []
    for s in chosen:
        pruned, report = prune_structured(
            model,
            example_inputs,
            s,
            plan=plan,
            ignored_layers=ignored_names,
            round_to=round_to,
            importance=importance,
        )
        points.append(
            _timed_point(
                dense_compiled, pruned, example_inputs, timing, keep_models,
                strategy=report.strategy, params_ratio=report.params_ratio,
                channel_ratio=report.channel_ratio, report=report,
            )
        )
    return points


def baseline_front(
    model: nn.Module,
    example_inputs: Any,
    methods: Sequence[str] = ("uniform", "global"),
    ratios: Sequence[float] = (0.3, 0.5, 0.7),
    *,
    plan: Plan | None = None,
    ignored_layers: Iterable[Any] | None = None,
    round_to: int | None = None,
    importance: Callable | None = None,
    threads: int = 1,
    warmup: int = 10,
    rounds: int = 7,
    runs: int = 20,
    keep_models: bool = False,
) -> list[LatencyPoint]:
    """Torch-Pruning's uniform and global pruning at several ratios, timed like :func:`latency_front`:
    curves to read the baselines off at the strategies' measured latencies. With ``plan``, the
    points also carry the fraction of the planned groups' channels removed."""
    dense_compiled = _compile(model, example_inputs, threads)
    timing = {"threads": threads, "warmup": warmup, "rounds": rounds, "runs": runs}
    points = []
    for method in methods:
        for ratio in ratios:
            pruned, info = prune_baseline(
                model,
                example_inputs,
                method,
                ratio,
                ignored_layers=_as_names(model, ignored_layers),
                round_to=round_to,
                importance=importance,
            )
            channel_ratio = float("nan")
            if plan is not None:
                kept = _kept_channels(pruned, plan)
                channel_ratio = 1.0 - sum(kept.values()) / sum(u.total_channels for u in plan.layers)
            points.append(
                _timed_point(
                    dense_compiled, pruned, example_inputs, timing, keep_models,
                    strategy=f"tp-{method}@{ratio:g}", params_ratio=info["params_after"] / info["params_before"],
                    channel_ratio=channel_ratio, report=None,
                )
            )
    return points


# --------------------------------------------------------------------------------------------------
# The runner's "structured" pattern: mm-prune run --sparsity structured
# --------------------------------------------------------------------------------------------------
def macs_of(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-adds of one inference, as Torch-Pruning counts them."""
    was_training = model.training
    model.eval()
    try:
        return int(tp.utils.count_ops_and_params(model, example_inputs)[0])
    finally:
        model.train(was_training)


def _bisect(measure: Callable[[float], float], goal: float, lo: float, hi: float, what: str,
            tol: float = 0.005, steps: int = 14) -> float:
    """The knob in [lo, hi] whose ``measure`` (increasing in the knob) is closest to ``goal``."""
    m_lo, m_hi = measure(lo), measure(hi)
    if not m_lo - tol <= goal <= m_hi + tol:
        raise ConfigError(
            f"{what} cannot remove {goal:g} of the model's multiply-adds: it spans {m_lo:.3f} to {m_hi:.3f}; "
            "pick targets inside that range (or widen the ranges with rules)"
        )
    best = min(((abs(m_lo - goal), lo), (abs(m_hi - goal), hi)))
    for _ in range(steps):
        if best[0] <= tol:
            break
        mid = (lo + hi) / 2
        m = measure(mid)
        best = min(best, (abs(m - goal), mid))
        lo, hi = (mid, hi) if m < goal else (lo, mid)
    return best[1]


def _kept_channels(model: nn.Module, plan: Plan) -> dict[str, int]:
    """Channels each planned group has left in ``model`` (pruned)."""
    return {u.name: _channels_of(_submodule(model, u.probe[0]), u.probe[1]) for u in plan.layers}


class StructuredPattern(Pattern):
    """Whole channels removed with Torch-Pruning, every method brought to the same multiply-adds.

    A target is the fraction of the model's multiply-adds removed, as Torch-Pruning counts them. Each
    Mix-and-Match strategy is rescaled inside its ranges (weighted by the groups' multiply-adds) and
    Torch-Pruning's uniform and global pruning get their ``pruning_ratio``, each found by bisection on the
    measured count, so every method is compared at the same compute. Each pruned model is timed with
    OpenVINO on the CPU in alternating blocks with the dense one, once per configuration.
    """

    default_baselines = ("tp_uniform", "tp_global")
    default_targets = (0.2, 0.4)
    default_range_targets = DEFAULT_GROUP_TARGETS
    cost = "macs"
    SIGNAL_OF = {"magnitude": "magnitude", "taylor": "taylor", "product": "taylor"}  # |w g| is Taylor
    TIMING = {"threads": 1, "warmup": 10, "rounds": 7, "runs": 20}

    def __init__(self) -> None:
        super().__init__()
        self._knobs: dict[str, float] = {}  # config key -> the knob that meets its target
        self._ratios: dict[str, dict[str, float]] = {}  # config key -> channels removed per group
        self._latency: dict[str, tuple[float, float]] = {}  # config key -> (dense ms, pruned ms)
        self._dense: tuple[Any, int, int] | None = None  # compiled dense model, its MACs and params

    def check(self, config: Any) -> None:
        for name in config.signals:
            if name not in self.SIGNAL_OF:
                raise UnknownNameError("structured signal", name, self.SIGNAL_OF, where="signals")
        for name in config.baselines:
            if name not in self.default_baselines:
                raise UnknownNameError("structured baseline", name, self.default_baselines, where="baselines")
        if not config.targets:
            raise ConfigError("structured runs need targets (fractions of multiply-adds to remove), e.g. 0.2,0.4")

    def needs_calibration(self, config: Any) -> bool:
        return any(self.SIGNAL_OF[s] in GRADIENT_CRITERIA for s in config.signals)

    def plan(self, ctx: RunContext, signal: str) -> Plan:
        c = ctx.config
        return plan_groups(ctx.dense, ctx.example, signal=self.SIGNAL_OF[signal], calibration=ctx.calibration,
                           rules=c.rules, targets=c.range_targets)

    def scaled(self, plan: Plan, strategy: Strategy, target: float) -> dict[str, float]:
        return strategy.sparsity  # brought to the target when pruned (that needs measured counts)

    def baselines(self, ctx: RunContext, target: float) -> list[BaselineJob]:
        return [BaselineJob(name, "magnitude", {}) for name in ctx.config.baselines]

    def _dense_info(self, ctx: RunContext) -> tuple[Any, int, int]:
        if self._dense is None:
            self._dense = (_compile(ctx.dense, ctx.example, self.TIMING["threads"]),
                           macs_of(ctx.dense, ctx.example), _count_params(ctx.dense))
        return self._dense

    def _pruned(self, model: nn.Module, job: Any, ctx: RunContext, knob: float, inplace: bool) -> nn.Module:
        plan = ctx.plans[job.signal]
        fixed = plan.config.get("fixed_groups", [])
        if job.method == "baseline":
            method = job.name.removeprefix("tp_")
            return prune_baseline(model, ctx.example, method, knob, ignored_layers=fixed, inplace=inplace,
                                  importance=_importance(plan.signal, None))[0]
        strategy = plan.rescale(Strategy(job.name, job.sparsity), knob, "macs")
        return prune_structured(model, ctx.example, strategy, plan=plan, ignored_layers=fixed, inplace=inplace)[0]

    def prune_(self, model: nn.Module, job: Any, ctx: RunContext) -> tuple[nn.Module, dict[str, Any]]:
        key = job.config_key
        if key not in self._knobs:
            _, dense_macs, _ = self._dense_info(ctx)

            def removed(knob: float) -> float:
                return 1.0 - macs_of(self._pruned(ctx.dense, job, ctx, knob, False), ctx.example) / dense_macs

            if job.method == "baseline":
                lo, hi = 0.0, 0.85  # TP's pruning_ratio; its max_pruning_ratio is 0.9
            else:  # the strategy's reach inside the ranges, in the same units as plan.rescale(cost="macs")
                plan = ctx.plans[job.signal]
                costs = strat.unit_costs(plan.layers, "macs")
                lo, hi = float(plan.lo @ costs / costs.sum()), float(plan.hi @ costs / costs.sum())
            self._knobs[key] = _bisect(removed, job.target, lo, hi, f"{job.method} {job.name!r}")
        pruned = self._pruned(model, job, ctx, self._knobs[key], True)
        plan = ctx.plans[job.signal]
        kept = _kept_channels(pruned, plan)
        self._ratios[key] = {u.name: 1.0 - kept[u.name] / u.total_channels for u in plan.layers}
        return pruned, {}

    def measure(self, model: nn.Module, job: Any, ctx: RunContext) -> dict[str, Any]:
        compiled, dense_macs, dense_params = self._dense_info(ctx)
        key = job.config_key
        if key not in self._latency:  # fine-tuning changes no shape: one timing serves every seed
            self._latency[key] = _interleaved_latency(compiled, _compile(model, ctx.example, self.TIMING["threads"]),
                                                      ctx.example, **self.TIMING)
        dense_ms, pruned_ms = self._latency[key]
        params = _count_params(model)
        macs = macs_of(model, ctx.example)
        return {"sparsity": 1.0 - params / dense_params, "layer_sparsity": self._ratios[key], "params": params,
                "nonzeros": params, "knob": self._knobs[key], "macs": macs, "macs_ratio": macs / dense_macs,
                "latency_ms": pruned_ms, "dense_latency_ms": dense_ms, "latency_ratio": pruned_ms / dense_ms}

    def checkpoint(self, model: nn.Module, record: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """Readable by :func:`load_pruned` (pass a freshly built dense model of the same architecture)."""
        return {"mm_format": "state_dict", "data": tp.state_dict(model), "record": record, **extra}
