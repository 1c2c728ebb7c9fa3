"""What timm ViT and Swin need from Torch-Pruning: head counts for every ``qkv``, a pruner for Swin's
``PatchMerging``, per-head tables kept whole, and attention modules fixed up after pruning."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch_pruning as tp
from torch import nn

from mm_plugin.model import attention_modules


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
    then call :func:`mm_plugin.model.update_attention_` after ``pruner.step()``.
    """
    ignored = list(ignored_layers or [])
    heads = dict(num_heads or {})
    for _, m in attention_modules(model):
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
