"""FlexHiNM-GP: hybrid dense / 2:4 / vector-pruned sparsity with Gyro-Permutation.

One-shot::

    result = flexhinm_sparsify_(model, {"fc1.weight": 0.6, ...}, FlexHiNMConfig(), example_inputs=(x,))

permutes channels (folded into neighbouring layers, outputs checked against ``example_inputs``),
partitions every layer into dense / 2:4 / vector-pruned regions meeting its target, and attaches
the masks with the project's mask mechanism (``mm_plugin.masks``). Gradual, with learned 2:4
choices: :class:`GradualFlexHiNM` (``on_step`` + ``penalty`` in any training loop, ``harden_`` at
the end). NVIDIA hand-off: :func:`validate_nm`, :func:`export_onnx`, and on CUDA
:func:`to_semi_structured_` / :func:`benchmark_matmul`. See ``docs/flexhinm.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ValidationError, check_fraction
from ..masks import apply_masks_, reconstructing
from .config import FlexHiNMConfig, GradualConfig
from .folding import ChannelGroup, find_channel_groups, fold_permutation_, fold_verified_, model_outputs
from .gates import GATES, HardConcreteGate, NMGate, PatternGate, sampling
from .gradual import GradualFlexHiNM, cubic_sparsity, gates, harden_, on_step, penalty, schedule_of
from .layout import nm_ineligibility
from .nm import NMReport, benchmark_matmul, export_onnx, to_semi_structured_, validate_nm
from .partition import HybridPartition, RegionCounts, hybrid_partition
from .permutation import PERMUTATIONS, ChannelProblem, LayerTerm, matrix_problem, permute_layer

log = logging.getLogger(__name__)

__all__ = [
    "GATES",
    "PERMUTATIONS",
    "ChannelGroup",
    "ChannelProblem",
    "FlexHiNMConfig",
    "FlexHiNMResult",
    "GradualConfig",
    "GradualFlexHiNM",
    "HardConcreteGate",
    "HybridPartition",
    "LayerTerm",
    "NMGate",
    "NMReport",
    "PatternGate",
    "PermutationReport",
    "RegionCounts",
    "benchmark_matmul",
    "cubic_sparsity",
    "export_onnx",
    "find_channel_groups",
    "flexhinm_permute_",
    "flexhinm_sparsify_",
    "fold_permutation_",
    "gates",
    "harden_",
    "hybrid_partition",
    "matrix_problem",
    "on_step",
    "penalty",
    "permute_layer",
    "sampling",
    "schedule_of",
    "to_semi_structured_",
    "validate_nm",
]


@dataclass
class PermutationReport:
    """What :func:`flexhinm_permute_` did to each channel dimension it found."""

    applied: dict[str, dict] = field(default_factory=dict)  # producer -> stats of folded permutations
    skipped: dict[str, str] = field(default_factory=dict)  # producer / subtree -> reason

    def summary(self) -> dict:
        return {"applied": self.applied, "skipped": self.skipped}


@dataclass
class FlexHiNMResult:
    """Partitions of every masked layer, layers left dense (with reasons) and the permutations."""

    partitions: dict[str, HybridPartition]
    skipped: dict[str, str]
    permutation: PermutationReport | None

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return {n: p.mask for n, p in self.partitions.items()}

    @property
    def nm_regions(self) -> dict[str, torch.Tensor]:
        return {n: p.nm_region for n, p in self.partitions.items()}

    def summary(self) -> dict:
        return {
            "layers": {n: p.summary() for n, p in self.partitions.items()},
            "left_dense": self.skipped,
            "permutation": self.permutation.summary() if self.permutation else None,
        }


def _resolve(model: nn.Module, sparsity: Mapping[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """Targets for layers that can take the hybrid pattern, and why the others are left dense."""
    if not isinstance(sparsity, Mapping):
        raise ValidationError(
            f"sparsity must map parameter names to fractions, got {type(sparsity).__name__}"
        )
    targets, skipped = {}, {}
    for key, t in sparsity.items():
        t = check_fraction(t, f"sparsity[{key!r}]", upper_inclusive=True)
        try:
            model.get_parameter(key)
            is_param = True
        except AttributeError:
            is_param = False
        if is_param and not key.endswith(".weight") and key != "weight":
            skipped[key] = ("only the weight of a Conv / Linear is given the hybrid pattern (biases, packed "
                            "attention projections and other tensors stay dense)")
            continue
        name = key if key.endswith(".weight") else f"{key}.weight"
        module_name = name[: -len(".weight")]
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise ValidationError(
                f"sparsity names {key!r}, but the model has no module {module_name!r}"
            ) from None
        reason = nm_ineligibility(module)
        if reason and t > 0.0:  # asked to be sparse, it cannot be: say so
            log.warning("FlexHiNM leaves %s dense instead of %.0f %% sparse: %s", name, 100 * t, reason)
        if reason is None and t == 0.0:
            reason = "target sparsity is 0"
        if reason:
            skipped[name] = reason
        else:
            targets[name] = t
    return targets, skipped


def _scores(model: nn.Module, names, scores: Mapping[str, torch.Tensor] | None):
    """Each weight's scores: given (any signal's), or ``|w|`` (magnitude, what NVIDIA ASP keeps)."""
    out = {}
    for name in names:
        w = model.get_submodule(name[: -len(".weight")]).weight.detach()
        given = None if scores is None else scores.get(name, scores.get(name[: -len(".weight")]))
        if given is None:
            out[name] = w.abs().float().cpu()
        else:
            if tuple(given.shape) != tuple(w.shape):
                raise ValidationError(
                    f"score for {name!r} has shape {tuple(given.shape)}, the weight {tuple(w.shape)}"
                )
            if bool((given < 0).any()):
                raise ValidationError(f"score for {name!r} has negative entries; scores must be >= 0")
            out[name] = given.detach().float().cpu().clone()
    return out


def _permute(
    model: nn.Module,
    targets: dict[str, float],
    score: dict[str, torch.Tensor],
    config: FlexHiNMConfig,
    example_inputs: Sequence | None,
) -> PermutationReport:
    report = PermutationReport()
    found = find_channel_groups(model, example_inputs)
    report.skipped.update(found.skipped)
    method = PERMUTATIONS.get(config.permutation)
    counts = {n: hybrid_partition(score[n], t, config.tile_rows).counts for n, t in targets.items()}
    reference = model_outputs(model, example_inputs) if example_inputs is not None else None
    for group in found.groups:
        pname = f"{group.producer}.weight"
        producer = (
            LayerTerm(pname, score[pname], "producer", counts[pname], config.tile_rows)
            if pname in targets
            else None
        )
        consumers = [
            LayerTerm(
                f"{c}.weight", score[f"{c}.weight"], "consumer", counts[f"{c}.weight"], config.tile_rows
            )
            for c in group.consumers
            if f"{c}.weight" in targets
        ]
        if not consumers and (producer is None or not producer.row_sensitive):
            report.skipped[group.producer] = "no pruned layer whose result depends on this channel order"
            continue
        problem = ChannelProblem(group.size, consumers, producer)
        identity = torch.arange(group.size)
        before = problem.objective(identity)
        perm = method(problem, seed=config.seed, effort=config.effort)
        after = problem.objective(perm)
        if after <= before or torch.equal(perm, identity):
            report.skipped[group.producer] = "the search found no better order"
            continue
        if not fold_verified_(model, group, perm, example_inputs, reference, config.verify_atol):
            report.skipped[group.producer] = "folding changed the model output (undone)"
            continue
        for term in ([producer] if producer else []) + consumers:
            score[term.name] = term.permuted(perm)
        report.applied[group.producer] = {
            "size": group.size,
            "consumers": list(group.consumers),
            "channelwise": list(group.channelwise),
            "retained_before": before,
            "retained_after": after,
            "gain": (after - before) / before if before else 0.0,
        }
    if example_inputs is None and report.applied:
        log.warning(
            "FlexHiNM folded permutations without example_inputs: outputs were not checked numerically"
        )
    return report


def _permuted(model: nn.Module, sparsity: Mapping[str, float], config: FlexHiNMConfig | None,
              example_inputs: Sequence | None, scores: Mapping[str, torch.Tensor] | None):
    """Targets, layers left dense, (permuted) scores and the permutation report, the model permuted in place."""
    config = config or FlexHiNMConfig()
    targets, skipped = _resolve(model, sparsity)
    score = _scores(model, targets, scores)
    report = None
    if config.permutation != "none" and targets:
        report = _permute(model, targets, score, config, example_inputs)
    return config, targets, skipped, score, report


def flexhinm_permute_(model: nn.Module, sparsity: Mapping[str, float], config: FlexHiNMConfig | None = None, *,
                      example_inputs: Sequence | None = None, scores: Mapping[str, torch.Tensor] | None = None
                      ) -> PermutationReport:
    """Only the permutation stage: reorder channels (folded, function-preserving) for these targets."""
    return _permuted(model, sparsity, config, example_inputs, scores)[4] or PermutationReport()


def flexhinm_sparsify_(model: nn.Module, sparsity: Mapping[str, float], config: FlexHiNMConfig | None = None, *,
                       example_inputs: Sequence | None = None, scores: Mapping[str, torch.Tensor] | None = None,
                       calibration: Iterable | None = None) -> FlexHiNMResult:
    """One-shot FlexHiNM(-GP): permute (+fold), partition each layer, attach masks. In place.

    ``sparsity`` maps parameter (or module) names to target fractions, e.g. one Mix-and-Match
    strategy. Layers that cannot carry the pattern (input dim not a multiple of 4, grouped convs,
    non-GEMM weights) are left dense and listed with the reason in ``result.skipped``.
    ``example_inputs`` enables shape-aware tracing and the numerical check of every folded
    permutation. ``scores`` (any signal's, same shape as the weight) replaces ``|w|`` per layer.
    ``calibration`` (batches of inputs): re-solve the kept weights so each layer's output stays close to
    the dense one (:func:`mm_plugin.masks.reconstruct_`); the masks are unchanged.
    """
    config, targets, skipped, score, report = _permuted(model, sparsity, config, example_inputs, scores)
    partitions = {n: hybrid_partition(score[n], t, config.tile_rows) for n, t in targets.items()}
    with reconstructing(model, targets, calibration):
        apply_masks_(model, {n: p.mask for n, p in partitions.items()})
    return FlexHiNMResult(partitions, skipped, report)
