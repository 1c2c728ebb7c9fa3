"""Attention modules with a fused ``qkv`` Linear and an integer ``num_heads`` (timm ViT, DeiT, Swin...),
and how to keep them consistent once structured pruning has narrowed their heads."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UnsupportedModelError


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with a fused ``qkv`` Linear and an integer ``num_heads`` (timm ViT, DeiT, Swin, ...)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)
    ]


@torch.no_grad()
def update_attention_(model: nn.Module) -> list[str]:
    """After pruning, make attention modules consistent with their pruned ``qkv``; returns their names.

    Sets ``head_dim`` / ``attn_dim`` (timm ``Attention``) and keeps the softmax temperature of the dense
    model: the old scale ``1/sqrt(d_old)`` is folded into the query rows of ``qkv`` and ``scale`` becomes
    ``1/sqrt(d_new)``, so the fused (``scaled_dot_product_attention``) and the explicit paths agree.
    Idempotent: a second call changes nothing.
    """
    changed = []
    for name, m in attention_modules(model):
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
