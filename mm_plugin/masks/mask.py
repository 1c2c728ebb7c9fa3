"""The one mask mechanism of the project.

A mask is a ``torch.nn.utils.parametrize`` parametrization on a module's ``weight``: the weight
the module sees is ``original * mask``. Pruned entries are therefore exactly zero after any
optimizer step (Adam moments, weight decay and all), because the optimizer only ever touches
``original``. ``bake_masks_`` folds the masks into plain weights for export and checkpoints.

Every adapter and FlexHiNM reuse these functions; FlexHiNM's learnable Hard Concrete gate is just
another mask module plugged into the same parametrization slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ValidationError


class WeightMask(nn.Module):
    """Fixed binary mask; a buffer, so it moves with ``.to()`` and lives in the state dict."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)

    def hard_mask(self) -> torch.Tensor:
        """The binary keep-mask (what every mask module answers, learnable gates included)."""
        return self.mask


def param_module(model: nn.Module, param_name: str) -> tuple[nn.Module, str]:
    """The module holding ``param_name`` and the attribute name (a missing module is a ValidationError)."""
    module_name, _, attr = param_name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        raise ValidationError(f"mask for {param_name!r}: the model has no module {module_name!r}") from None
    return module, attr


def mask_module(module: nn.Module, attr: str = "weight") -> nn.Module | None:
    """The mask module parametrizing ``module.<attr>``, or None."""
    if not parametrize.is_parametrized(module, attr):
        return None
    return module.parametrizations[attr][-1]


def set_mask_module_(model: nn.Module, param_name: str, mask_mod: nn.Module) -> None:
    """Install (or replace) the mask module of one weight, keeping ``original`` as the trainable tensor."""
    module, attr = param_module(model, param_name)
    current = getattr(module, attr, None)
    if not isinstance(current, torch.Tensor):
        raise ValidationError(f"cannot mask {param_name!r}: it is not a tensor attribute")
    if parametrize.is_parametrized(module, attr):
        module.parametrizations[attr][-1] = mask_mod
    else:
        parametrize.register_parametrization(module, attr, mask_mod, unsafe=True)


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach fixed binary masks (``True`` = keep) to the named weights, in place.

    The stored ``original`` is zeroed where the mask is False, so a baked or re-masked model starts
    from the same numbers.
    """
    for name, mask in masks.items():
        module, attr = param_module(model, name)
        weight = getattr(module, attr, None)
        if not isinstance(weight, torch.Tensor):
            raise ValidationError(f"cannot mask {name!r}: the model has no such weight")
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValidationError(
                f"mask for {name!r} has shape {tuple(mask.shape)} but the weight is {tuple(weight.shape)}"
            )
        mask = mask.to(device=weight.device, dtype=torch.bool)
        set_mask_module_(model, name, WeightMask(mask))
        with torch.no_grad():
            module.parametrizations[attr].original.mul_(mask.to(weight.dtype))
    return model


def masked_weights(model: nn.Module) -> dict[str, nn.Module]:
    """Map ``param_name -> mask module`` for every masked weight of ``model``."""
    found = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, plist in module.parametrizations.items():
            found[f"{module_name}.{attr}" if module_name else attr] = plist[-1]
    return found


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The fixed binary masks currently attached (``True`` = keep)."""
    return {n: m.mask.clone() for n, m in masked_weights(model).items() if isinstance(m, WeightMask)}


def bake_masks_(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight and drop the parametrizations: a plain model for export."""
    for name in list(masked_weights(model)):
        module, attr = param_module(model, name)
        # parametrize gives each module a generated class that deep copies share; removal edits that
        # class, so give this module a private one first or its copies lose their weights too.
        cls = module.__class__
        module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    numel: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


def measure_sparsity(model: nn.Module, names: list[str] | None = None) -> list[LayerSparsity]:
    """Exact zeros per weight as the model computes with them (masked or baked alike)."""
    if names is None:
        names = list(masked_weights(model))
    out = []
    for name in names:
        module, attr = param_module(model, name)
        w = getattr(module, attr).detach()
        out.append(LayerSparsity(name, w.numel(), int((w == 0).sum())))
    return out


def global_sparsity(report: list[LayerSparsity]) -> float:
    total = sum(r.numel for r in report)
    return sum(r.zeros for r in report) / total if total else 0.0
