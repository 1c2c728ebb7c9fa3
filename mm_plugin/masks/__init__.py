"""The one mask mechanism (parametrizations: ``weight = original * mask``) and pruning with it."""

from .mask import (
    LayerSparsity,
    MaskModule,
    WeightMask,
    apply_masks_,
    bake_masks_,
    current_masks,
    global_sparsity,
    mask_module,
    masked_original,
    masked_weights,
    measure_sparsity,
    param_module,
    set_mask_module_,
)
from .pruning import compute_masks, masks_from_scores, prune_
from .reconstruct import LayerInputs, capture_inputs, reconstruct_, reconstructing

__all__ = [
    "LayerInputs", "LayerSparsity", "MaskModule", "WeightMask", "apply_masks_", "bake_masks_", "capture_inputs", "compute_masks",
    "current_masks", "global_sparsity", "mask_module", "masked_original", "masked_weights", "masks_from_scores", "measure_sparsity",
    "param_module", "prune_", "reconstruct_", "reconstructing", "set_mask_module_",
]
