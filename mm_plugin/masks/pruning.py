"""From a strategy and a signal to binary masks: the lowest scores of each layer are zeroed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from ..errors import ValidationError
from ..model import prunable_weights
from ..planning import Plan, Strategy, compute_scores
from ..planning.signals import Scores
from .mask import apply_masks_
from .reconstruct import reconstructing


def masks_from_scores(scores: Scores, sparsity: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Keep-masks with ``round(s * n)`` lowest-scored weights dropped per layer (stable on ties)."""
    masks = {}
    for name, s in sparsity.items():
        if name not in scores:
            raise ValidationError(f"sparsity given for {name!r}, which has no score; is it a prunable weight?")
        if not 0.0 <= s <= 1.0:
            raise ValidationError(f"sparsity for {name!r} must lie in [0, 1], got {s}")
        flat = scores[name].flatten()
        k = int(round(s * flat.numel()))
        keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        if k:
            keep[torch.argsort(flat, stable=True)[:k]] = False
        masks[name] = keep.view_as(scores[name])
    return masks


def resolve_strategy(strategy: Strategy | str | Mapping[str, float], plan: Plan | None) -> Strategy:
    """A strategy given as itself, by name in ``plan``, or as ``{weight: sparsity}`` (then its signal is the
    plan's, or magnitude)."""
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str):
        if plan is None:
            raise ValidationError(f"strategy {strategy!r} given by name: pass plan=<Plan> to look it up")
        return plan.strategy(strategy)
    return Strategy("given", dict(strategy), plan.signal if plan is not None else "magnitude")


def compute_masks(
    model: nn.Module,
    strategy: Strategy | str | Mapping[str, float],
    *,
    signal: str | Callable | None = None,
    calibration: Iterable | None = None,
    loss_fn: Callable | None = None,
    plan: Plan | None = None,
) -> dict[str, torch.Tensor]:
    """Masks for ``strategy`` under ``signal`` (default: the strategy's own), not yet attached (adapters
    translate these)."""
    resolved = resolve_strategy(strategy, plan)
    sparsity, signal = resolved.sparsity, signal or resolved.signal
    for name in sparsity:
        module_name, _, attr = name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        if module is None or attr not in prunable_weights(module):
            raise ValidationError(
                f"{name!r} is not a prunable weight (Conv, Linear and Embedding weights and packed attention "
                "projections are; norms and biases stay dense); list them with mm_plugin.inventory(model)"
            )
    scores = compute_scores(model, list(sparsity), signal, calibration, loss_fn)
    return masks_from_scores(scores, sparsity)


def prune_(
    model: nn.Module,
    strategy: Strategy | str | Mapping[str, float],
    *,
    signal: str | Callable | None = None,
    calibration: Iterable | None = None,
    loss_fn: Callable | None = None,
    plan: Plan | None = None,
    reconstruct: bool = False,
) -> nn.Module:
    """Prune ``model`` in place, one shot: compute masks and attach them with the shared mechanism.

    ``signal`` defaults to the strategy's own (a ``{weight: sparsity}`` dict: the plan's, or magnitude).
    ``reconstruct`` re-solves the kept weights
    on ``calibration`` so each layer's output stays close to the dense one (:func:`.reconstruct.reconstruct_`).
    The masks stay fixed through fine-tuning; ``mm_plugin.bake_masks_`` makes the zeros plain weights
    for export.
    """
    if reconstruct and calibration is None:
        raise ValidationError("prune_(reconstruct=True) needs calibration batches to solve the kept weights on")
    masks = compute_masks(
        model, strategy, signal=signal, calibration=calibration, loss_fn=loss_fn, plan=plan
    )
    with reconstructing(model, masks, calibration if reconstruct else None):
        apply_masks_(model, masks)
    return model
