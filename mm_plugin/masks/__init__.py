"""The one mask mechanism (parametrizations: ``weight = original * mask``) and pruning with it."""

from .mask import (
    LayerSparsity,
    WeightMask,
    apply_masks_,
    bake_masks_,
    current_masks,
    global_sparsity,
    mask_module,
    masked_weights,
    measure_sparsity,
    param_module,
    set_mask_module_,
)
from .pruning import compute_masks, masks_from_scores, prune

__all__ = [
    "LayerSparsity", "WeightMask", "apply_masks_", "bake_masks_", "compute_masks", "current_masks",
    "global_sparsity", "mask_module", "masked_weights", "masks_from_scores", "measure_sparsity", "param_module",
    "prune", "set_mask_module_",
]
