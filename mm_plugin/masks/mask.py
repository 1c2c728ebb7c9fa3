"""The one mask mechanism of the project.

A mask is a ``torch.nn.utils.parametrize`` parametrization on a module's ``weight``: the weight
the module sees is ``original * mask``. Pruned entries are therefore exactly zero after any
optimizer step (Adam moments, weight decay and all), because the optimizer only ever touches
``original``. ``bake_masks_`` folds the masks into plain weights for export and checkpoints.

A mask is a :class:`MaskModule`, found by type, never by position: it goes after any parametrization
the user already has on the weight (``weight_norm``, their own), so it masks what they compute, and
``bake_masks_`` removes the plugin's masks only.

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


class MaskModule(nn.Module):
    """Base of the plugin's mask parametrizations (fixed masks, FlexHiNM's learnable gates): what tells
    them apart from the user's own parametrizations."""

    def hard_mask(self) -> torch.Tensor:
        """The binary keep-mask the module applies now."""
        raise NotImplementedError


class WeightMask(MaskModule):
    """Fixed binary mask; a buffer, so it moves with ``.to()`` and lives in the state dict."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)

    def hard_mask(self) -> torch.Tensor:
        return self.mask


def param_module(model: nn.Module, param_name: str) -> tuple[nn.Module, str]:
    """The module holding ``param_name`` and the attribute name (a missing module is a ValidationError)."""
    module_name, _, attr = param_name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        raise ValidationError(f"mask for {param_name!r}: the model has no module {module_name!r}") from None
    return module, attr


def _mask_index(module: nn.Module, attr: str) -> int | None:
    """Where the plugin's mask sits among the parametrizations of ``module.<attr>``, or None."""
    if not parametrize.is_parametrized(module, attr):
        return None
    return next((i for i, p in enumerate(module.parametrizations[attr]) if isinstance(p, MaskModule)), None)


def mask_module(module: nn.Module, attr: str = "weight") -> MaskModule | None:
    """The mask module parametrizing ``module.<attr>``, or None."""
    i = _mask_index(module, attr)
    return None if i is None else module.parametrizations[attr][i]


def set_mask_module_(model: nn.Module, param_name: str, mask_mod: MaskModule) -> None:
    """Install (or replace) the mask module of one weight, after any parametrization of the user's."""
    module, attr = param_module(model, param_name)
    current = getattr(module, attr, None)
    if not isinstance(current, torch.Tensor):
        raise ValidationError(f"cannot mask {param_name!r}: it is not a tensor attribute")
    i = _mask_index(module, attr)
    if i is not None:
        module.parametrizations[attr][i] = mask_mod
    else:
        parametrize.register_parametrization(module, attr, mask_mod, unsafe=True)


def masked_original(model: nn.Module, param_name: str) -> torch.Tensor:
    """The tensor a mask multiplies directly (``original``), for the code that re-solves or re-scores the
    weights under a mask; a weight that also carries a parametrization of the user's has no such tensor."""
    module, attr = param_module(model, param_name)
    if _mask_index(module, attr) != 0 or len(module.parametrizations[attr]) != 1:
        others = [type(p).__name__ for p in module.parametrizations[attr] if not isinstance(p, MaskModule)]
        raise ValidationError(
            f"{param_name!r} carries the parametrizations {others} besides the mask, so its kept weights cannot be "
            "rewritten under the mask (reconstruction, FlexHiNM's learned path); remove them first "
            "(torch.nn.utils.parametrize.remove_parametrizations(module, 'weight')) or fold them into the weight")
    return module.parametrizations[attr].original


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach fixed binary masks (``True`` = keep) to the named weights, in place.

    Where the mask is the weight's only parametrization, the stored ``original`` is zeroed where the mask
    is False, so a baked or re-masked model starts from the same numbers.
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
        plist = module.parametrizations[attr]
        if len(plist) == 1:
            with torch.no_grad():
                plist.original.mul_(mask.to(weight.dtype))
    return model


def masked_weights(model: nn.Module) -> dict[str, MaskModule]:
    """Map ``param_name -> mask module`` for every masked weight of ``model``."""
    found = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr in module.parametrizations:
            mask_mod = mask_module(module, attr)
            if mask_mod is not None:
                found[f"{module_name}.{attr}" if module_name else attr] = mask_mod
    return found


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The fixed binary masks currently attached (``True`` = keep)."""
    return {n: m.mask.clone() for n, m in masked_weights(model).items() if isinstance(m, WeightMask)}


def bake_masks_(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight and remove the plugin's parametrizations (and only those): a plain
    model for export, or the user's parametrizations computing the masked weight."""
    for name in list(masked_weights(model)):
        module, attr = param_module(model, name)
        plist, i = module.parametrizations[attr], _mask_index(module, attr)
        if len(plist) == 1:
            # parametrize gives each module a generated class that deep copies share; removal edits that
            # class, so give this module a private one first or its copies lose their weights too.
            cls = module.__class__
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
            continue
        with torch.no_grad():
            if i == 0 and plist.is_tensor:  # the mask sees the stored tensor: zero it there
                plist.original.mul_(plist[0].hard_mask().to(plist.original.dtype))
                del plist[0]
                continue
            _fold_under_users_(module, attr, i, name)
    return model


def _fold_under_users_(module: nn.Module, attr: str, i: int, name: str) -> None:
    """Remove the mask at position ``i`` and hand the masked weight to the user's parametrizations
    through their ``right_inverse``; if they cannot represent it (its zeros exactly), nothing changes."""
    plist = module.parametrizations[attr]
    value = getattr(module, attr).detach().clone()
    stored = [t.detach().clone() for t in plist.parameters(recurse=False)]
    mask_mod = plist[i]
    del plist[i]
    try:
        setattr(module, attr, value)
        now = getattr(module, attr)  # the zeros exactly, the rest to rounding (weight_norm divides by a norm)
        same = torch.equal(now == 0, value == 0) and torch.allclose(now, value, rtol=1e-5, atol=1e-7)
        problem = None if same else "do not reproduce it exactly"
    except NotImplementedError:
        problem = "define no right_inverse"
    if problem:
        plist.insert(i, mask_mod)
        for t, old in zip(plist.parameters(recurse=False), stored):
            t.copy_(old)
        raise ValidationError(
            f"cannot bake the mask of {name!r} into the parametrization(s) {[type(p).__name__ for p in plist if p is not mask_mod]}: "
            f"they {problem} for the masked weight; give them a right_inverse that does, or remove them first "
            "(torch.nn.utils.parametrize.remove_parametrizations(module, 'weight'))")


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
