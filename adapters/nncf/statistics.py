"""The controller's report: the plan beside what the model computes with, per weight, from NNCF's own
``pruning_statistic``, the hooks' masks, the learned gates or the weights; and NNCF 2.x's
``prepare_for_tensorboard`` scalars."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mm_plugin.errors import MMError
from mm_plugin.masks import measure_sparsity
from mm_plugin.planning import CompressionStatistics, channel_statistics, weight_statistics

from .wrapping import mask_hooks

if TYPE_CHECKING:
    from .controller import CompressionController


def collect(ctrl: CompressionController, quickly_collected_only: bool = False) -> CompressionStatistics:
    """Per planned weight: from ``nncf.pruning_statistic`` while the masks are NNCF hooks (or, with
    ``quickly_collected_only``, from the hooks' masks directly: no NNCF report is built, for per-step
    logging), from the weights once baked, per channel group when filter-pruning options removed
    channels, from the gates' current 2:4 choices while a ``gradual`` step learns them."""
    import nncf

    if ctrl.plan is None:
        raise MMError("this config has no pruning step; there is nothing to report or verify")
    fields = {"algorithm": ctrl.step.algorithm, "ignored": ctrl.ignored, "quantized": ctrl.quantized}
    if ctrl.channels is not None:
        return channel_statistics(ctrl.plan, ctrl.strategy, ctrl.channels.record, target=ctrl.step.target,
                                  source="torch_pruning", **fields)
    fields |= {"target_sparsity": ctrl.step.target, "unplanned": ctrl.unplanned, "left_dense": dict(ctrl.left_dense),
               "schedule_level": ctrl.scheduler.current_sparsity_level}
    if ctrl.learning is not None:
        was_training = ctrl.model.training
        ctrl.model.eval()  # a gate in evaluation mode applies its exact 2:4 choice
        try:
            measured = {r.name: r.zeros / r.numel for r in measure_sparsity(ctrl.model, list(ctrl.learning.gates))}
        finally:
            ctrl.model.train(was_training)
        return weight_statistics(ctrl.model, ctrl.plan, ctrl.strategy, ops=ctrl.weights, source="gates",
                                 measured=measured, **fields)
    hooks = mask_hooks(ctrl.model)
    if not hooks:
        return weight_statistics(ctrl.model, ctrl.plan, ctrl.strategy, ops=ctrl.weights, **fields)
    if quickly_collected_only:
        measured = {name: 1.0 - float(h.binary_mask.float().mean()) for name, h in hooks.items()}
        return weight_statistics(ctrl.model, ctrl.plan, ctrl.strategy, ops=ctrl.weights, source="masks",
                                 measured=measured, **fields)
    nncf_stat = nncf.pruning_statistic(ctrl.model)
    return weight_statistics(
        ctrl.model, ctrl.plan, ctrl.strategy, ops=ctrl.weights, source="nncf.pruning_statistic", nncf=nncf_stat,
        measured={t.tensor_name: t.pruned_ratio for t in nncf_stat.pruned_tensors},
        pruning_ratio=float(nncf_stat.pruning_ratio), global_pruning_ratio=float(nncf_stat.global_pruning_ratio),
        **fields)


def prepare_for_tensorboard(statistics: CompressionStatistics) -> dict[str, float]:
    """NNCF 2.x's scalars for TensorBoard, ``<algorithm>/<name>``: for masks ``sparsity_level_for_model``
    (zeros over all parameters), ``sparsity_level_for_sparsified_layers`` (over the planned weights),
    ``target_sparsity_level`` (the schedule's level, else the target) and ``planned_sparsity_level``; for
    removed channels ``model_FLOPS_pruning_level`` and ``model_params_pruning_level``."""
    a = statistics.algorithm
    if statistics.structured:
        return {f"{a}/model_FLOPS_pruning_level": statistics.pruning_ratio,
                f"{a}/model_params_pruning_level": statistics.global_pruning_ratio}
    out = {f"{a}/sparsity_level_for_model": statistics.global_pruning_ratio,
           f"{a}/sparsity_level_for_sparsified_layers": statistics.pruning_ratio,
           f"{a}/planned_sparsity_level": statistics.planned_ratio}
    target = statistics.schedule_level if statistics.schedule_level is not None else statistics.target_sparsity
    if target is not None:
        out[f"{a}/target_sparsity_level"] = float(target)
    return out
