"""NNCF 2.x's options, read on Mix-and-Match steps: what maps to what, and what is ignored.

A ``magnitude_sparsity``, ``rb_sparsity``, ``const_sparsity`` or ``filter_pruning`` step keeps its
options once its algorithm is renamed ``mix_and_match``. Sparsity options (``sparsity_init``,
``params.schedule`` ...) become a gradual :class:`mm_plugin.planning.SparsitySchedule`; filter-pruning options
(``pruning_init``, ``params.pruning_target`` / ``pruning_flops_target`` ...) select structured
Mix-and-Match. An option that cannot be honoured becomes a :class:`Note` (its JSON path, and what is
done instead), logged once as a WARNING. No target is ever assumed: NNCF 2.x's default of 0.5 is not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mm_plugin.errors import ConfigError
from mm_plugin.planning import SparsitySchedule

#: ``params`` keys that NNCF 2.x's sparsity algorithms read to schedule the level.
SCHEDULE_KEYS = frozenset({"schedule", "sparsity_target", "sparsity_target_epoch", "sparsity_freeze_epoch",
                           "update_per_optimizer_step", "steps_per_epoch", "multistep_steps",
                           "multistep_sparsity_levels", "patience", "power", "concave"})
SPARSITY_KEYS = SCHEDULE_KEYS | {"sparsity_level_setting_mode", "weight_importance"}
PRUNING_KEYS = frozenset({"pruning_target", "pruning_flops_target", "pruning_steps", "num_init_steps",
                          "filter_importance", "interlayer_ranking_type", "all_weights", "prune_first_conv",
                          "prune_downsample_convs", "prune_batch_norms", "legr_params", "save_ranking_coeffs_path",
                          "load_ranking_coeffs_path"})
PRUNING_SCHEDULES = ("exponential_with_bias", "baseline")
#: Mix-and-Match options the structured pattern plans without (it thresholds Torch-Pruning importances).
UNSTRUCTURED_ONLY = ("allocations", "range_mode", "samples", "seed")
_NOT_TRAINABLE = "ignored: the masks have no trainable parameters, the optimizer's learning rates apply as they are"
_NO_BN_ADAPTATION = "ignored: BatchNorm statistics are not re-estimated after compression (fine-tuning adapts them)"


@dataclass(frozen=True)
class Note:
    """An NNCF 2.x option that is not honoured as NNCF 2.x did: where it is, and what happens instead."""

    path: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}: {self.text}"


@dataclass(frozen=True)
class PruningPlan:
    """What a pruning step's NNCF 2.x and Mix-and-Match options ask for."""

    target: float | None  # the final global target: weights, or multiply-adds when structured
    target_path: str  # where the target was written (errors about it name this path)
    schedule: SparsitySchedule | None  # gradual (NNCF 2.x sparsity schedules), or None: one shot
    structured: bool
    notes: tuple[Note, ...]


def _common(options: Mapping[str, Any], path: str) -> list[Note]:
    notes = [Note(f"{path}.compression_lr_multiplier", _NOT_TRAINABLE)] * ("compression_lr_multiplier" in options)
    init = options.get("initializer", {})
    if "batchnorm_adaptation" in init:
        notes.append(Note(f"{path}.initializer.batchnorm_adaptation", _NO_BN_ADAPTATION))
    notes += [Note(f"{path}.initializer.{k}", "ignored: only quantization steps initialize ranges")
              for k in ("range", "precision") if k in init]
    return notes


def pruning_plan(options: Mapping[str, Any], path: str, algorithm: str) -> PruningPlan:
    """Read a pruning step's target, schedule and structure; refuse options that contradict each other."""
    params = options.get("params", {})
    sparsity = [f"{path}.sparsity_init"] * ("sparsity_init" in options) + [
        f"{path}.params.{k}" for k in params if k in SPARSITY_KEYS and not (k == "schedule" and params[k] == "exponential")]
    pruning = [f"{path}.pruning_init"] * ("pruning_init" in options) + [
        f"{path}.params.{k}" for k in params if k in PRUNING_KEYS or (k == "schedule" and params[k] in PRUNING_SCHEDULES)]
    if sparsity and pruning:
        raise ConfigError(f"{pruning[0]}: a filter_pruning option beside {sparsity[0]}, a sparsity option; keep the "
                          "options of one NNCF 2.x algorithm")
    notes = _common(options, path)
    if pruning:
        if algorithm != "mix_and_match":
            raise ConfigError(f"{pruning[0]}: filter_pruning options select structured Mix-and-Match; set "
                              f"{path}.algorithm to mix_and_match")
        return _structured(options, path, notes)
    return _sparsity(options, path, algorithm, notes)


def _no_target(path: str, hint: str) -> ConfigError:
    return ConfigError(f"{path}: no target: add {hint} (no default is assumed)")


def _sparsity(options: Mapping[str, Any], path: str, algorithm: str, notes: list[Note]) -> PruningPlan:
    params, p = options.get("params", {}), f"{path}.params"
    ours, theirs = options.get("target_sparsity"), params.get("sparsity_target")
    if ours is not None and theirs is not None and ours != theirs:
        raise ConfigError(f"{path}.target_sparsity: {ours:g} differs from {p}.sparsity_target {theirs:g}; keep one")
    if params.get("sparsity_level_setting_mode") == "local":
        notes.append(Note(f"{p}.sparsity_level_setting_mode", "ignored: the level is global, and the plan allocates "
                                                              "it per layer inside its ranges"))
    if "weight_importance" in params and options.get("signal", "magnitude") != "magnitude":
        notes.append(Note(f"{p}.weight_importance", f"ignored: the signal {options['signal']!r} ranks the weights"))
    gradual = "sparsity_init" in options or any(k in SCHEDULE_KEYS for k in params)
    target = ours if ours is not None else theirs
    target_path = f"{path}.target_sparsity" if ours is not None else f"{p}.sparsity_target"
    if not gradual:
        if target is None and "range_targets" not in options:
            raise _no_target(path, '"target_sparsity": <fraction of the weights to prune> (NNCF 2.x: '
                                   '"params": {"sparsity_target": ...}), or range_targets to apply the strategy as planned')
        return PruningPlan(target, target_path, None, False, tuple(notes))
    kind = params.get("schedule")
    if kind is None:
        kind = "polynomial"
        notes.append(Note(f"{p}.schedule", "not given: 'polynomial' is used (NNCF 2.x's default for "
                                           "magnitude_sparsity; rb_sparsity's was 'exponential')"))
    levels = tuple(params.get("multistep_sparsity_levels", ()))
    if kind == "multistep":
        steps = tuple(sorted(params.get("multistep_steps", (90,))))
        if not levels:
            raise _no_target(f"{p}.multistep_sparsity_levels", '"multistep_sparsity_levels": [<first level>, ..., '
                                                               '<target>] for the multistep schedule')
        if len(levels) != len(steps) + 1:
            raise ConfigError(f"{p}.multistep_sparsity_levels: {len(levels)} levels for {len(steps)} multistep_steps; "
                              f"give {len(steps) + 1} (the first applies before the first step)")
        if ours is not None and ours != levels[-1]:
            raise ConfigError(f"{path}.target_sparsity: {ours:g} differs from the last multistep level {levels[-1]:g}; "
                              "keep one")
        if theirs is not None and theirs != levels[-1]:
            notes.append(Note(f"{p}.sparsity_target", f"ignored: the last multistep level {levels[-1]:g} is the "
                                                      "target, as in NNCF 2.x"))
        if options.get("sparsity_init", levels[0]) != levels[0]:
            notes.append(Note(f"{path}.sparsity_init", f"ignored: the first multistep level {levels[0]:g} is the "
                                                       "first level, as in NNCF 2.x"))
        target, target_path = levels[-1], f"{p}.multistep_sparsity_levels[{len(levels) - 1}]"
    else:
        steps = ()
        if levels:
            notes.append(Note(f"{p}.multistep_sparsity_levels", f"ignored: the schedule is {kind!r}; set "
                                                                '"schedule": "multistep" to use the levels'))
        if target is None:
            raise _no_target(p, '"sparsity_target": <fraction of the weights to prune at the end of the schedule>')
    per_step = kind == "polynomial" and params.get("update_per_optimizer_step", False)
    if per_step and "steps_per_epoch" not in params:
        notes.append(Note(f"{p}.update_per_optimizer_step", "ignored: the level changes once per epoch; add "
                                                            "params.steps_per_epoch to change it every optimizer step"))
    schedule = SparsitySchedule(kind, options.get("sparsity_init", 0.0), target, params.get("sparsity_target_epoch", 90),
                        params.get("sparsity_freeze_epoch", 100), params.get("power", 0.9), params.get("concave", True),
                        steps, levels, params.get("patience", 1), params.get("steps_per_epoch") if per_step else None)
    if algorithm != "mix_and_match":
        notes.append(Note(f"{p}.schedule" if "schedule" in params else path,
                          f"ignored: {algorithm} prunes once, to the target {target:g}, when the model is compressed"))
        schedule = None
    return PruningPlan(target, target_path, schedule, False, tuple(notes))


def _structured(options: Mapping[str, Any], path: str, notes: list[Note]) -> PruningPlan:
    params, p = options.get("params", {}), f"{path}.params"
    if "target_sparsity" in options:
        raise ConfigError(f"{path}.target_sparsity: a fraction of the weights beside filter_pruning options; "
                          f"structured Mix-and-Match removes multiply-adds: use {p}.pruning_flops_target")
    flops, filters = params.get("pruning_flops_target"), params.get("pruning_target")
    if flops is not None:
        target, target_path = flops, f"{p}.pruning_flops_target"
        if filters is not None:
            notes.append(Note(f"{p}.pruning_target", "ignored: pruning_flops_target is the target, as in NNCF 2.x"))
    elif filters is not None:
        target, target_path = filters, f"{p}.pruning_target"
        notes.append(Note(target_path, f"used as the fraction of multiply-adds to remove, structured Mix-and-Match's "
                                       f"target (NNCF 2.x removed {filters:g} of every layer's filters, which removes "
                                       "more); write pruning_flops_target to say so"))
    else:
        raise _no_target(p, '"pruning_flops_target": <fraction of the multiply-adds to remove>')
    once = f"ignored: the channels go once, when the model is compressed (to {target:g})"
    notes += [Note(f"{path}.pruning_init", once)] * ("pruning_init" in options)
    notes += [Note(f"{p}.{k}", once) for k in ("schedule", "pruning_steps", "num_init_steps") if k in params]
    signal = options.get("signal", "magnitude")
    if "filter_importance" in params and (params["filter_importance"] != "L2" or signal != "magnitude"):
        notes.append(Note(f"{p}.filter_importance", f"ignored: the signal {signal!r} ranks the channels (magnitude: "
                                                    "each group's L2 norm)"))
    allocated = "ignored: the plan allocates the channels per group inside its ranges"
    notes += [Note(f"{p}.{k}", allocated) for k in ("interlayer_ranking_type", "legr_params", "all_weights",
                                                     "save_ranking_coeffs_path", "load_ranking_coeffs_path") if k in params]
    notes += [Note(f"{p}.prune_first_conv", "ignored: the rules decide (the default rule first-layer caps the first "
                                            "group at 0.10)")] * ("prune_first_conv" in params)
    notes += [Note(f"{p}.prune_downsample_convs", "ignored: downsampling convolutions are planned like every other "
                                                  "group")] * ("prune_downsample_convs" in params)
    notes += [Note(f"{p}.prune_batch_norms", "ignored: a BatchNorm loses the channels of its convolution")] * (
        params.get("prune_batch_norms") is False)
    notes += [Note(f"{path}.{k}", "ignored: structured plans threshold Torch-Pruning's importances")
              for k in UNSTRUCTURED_ONLY if k in options]
    return PruningPlan(target, target_path, None, True, tuple(notes))


def quantization_options(options: Mapping[str, Any], path: str, target_device: str) -> tuple[dict[str, Any], list[Note]]:
    """A quantization step's options for ``nncf.quantize`` (``initializer.range.num_init_samples`` is
    ``subset_size``), and the NNCF 2.x options it cannot honour."""
    out, notes = dict(options), _common({k: v for k, v in options.items() if k != "initializer"}, path)
    init = options.get("initializer", {})
    samples = init.get("range", {}).get("num_init_samples") if isinstance(init.get("range"), Mapping) else None
    if samples is not None:
        if "subset_size" in options and options["subset_size"] != samples:
            raise ConfigError(f"{path}.subset_size: {options['subset_size']} differs from "
                              f"{path}.initializer.range.num_init_samples {samples}; keep one")
        out["subset_size"] = samples
    defaults = "ignored: nncf.quantize's own range initialization (min-max over subset_size samples) is used"
    rng = init.get("range")
    notes += [Note(f"{path}.initializer.range.{k}", defaults) for k in ("type", "params")
              if isinstance(rng, Mapping) and k in rng]
    notes += [Note(f"{path}.initializer.range", defaults)] * isinstance(rng, list)
    notes += [Note(f"{path}.initializer.precision", "ignored: every quantizer is 8-bit")] * ("precision" in init)
    notes += [Note(f"{path}.initializer.batchnorm_adaptation", _NO_BN_ADAPTATION)] * ("batchnorm_adaptation" in init)
    settings = (f"ignored: nncf.quantize's int8 settings for preset {options.get('preset', 'performance')!r} are used "
                "(symmetric weights, so planned zeros stay exact zeros)")
    notes += [Note(f"{path}.{k}", settings) for k in ("weights", "activations", "scope_overrides", "quantize_inputs",
                                                       "quantize_outputs", "export_to_onnx_standard_ops", "overflow_fix",
                                                       "params") if k in options]
    if target_device == "TRIAL":
        notes.append(Note("target_device", "TRIAL (custom quantizer setups) is not an nncf.quantize target: ANY is used"))
    return out, notes


def root_notes(raw: Mapping[str, Any]) -> list[Note]:
    """NNCF 2.x root keys with a meaning the adapter does not give them (training-script keys are silent)."""
    return [Note("compression_lr_multiplier", _NOT_TRAINABLE)] * ("compression_lr_multiplier" in raw)


#: NNCF 2.x's defaults for ``accuracy_aware_training.params`` (``nncf.config.schemata.defaults``).
AA_DEFAULTS = {"maximal_total_epochs": 10000, "initial_training_phase_epochs": 5, "patience_epochs": 3,
               "initial_compression_rate_step": 0.1, "compression_rate_step_reduction_factor": 0.5,
               "lr_reduction_factor": 0.5, "minimal_compression_rate_step": 0.025}
AA_ADAPTIVE_ONLY = frozenset(AA_DEFAULTS) - {"maximal_total_epochs"}


@dataclass(frozen=True)
class AccuracyAware:
    """``accuracy_aware_training``: the mode, the accuracy budget and the loop's epochs (2.x's defaults)."""

    mode: str
    relative: float | None  # percent of the uncompressed accuracy
    absolute: float | None  # in the metric's units
    params: dict[str, Any]  # every other key, defaults filled in

    def minimal_tolerable(self, uncompressed: float) -> float:
        return uncompressed - self.absolute if self.absolute is not None else uncompressed * (1 - 0.01 * self.relative)


def accuracy_aware(raw: Mapping[str, Any], path: str = "accuracy_aware_training") -> AccuracyAware | None:
    """Read ``accuracy_aware_training`` (the schema checked its types): exactly one degradation, and the
    adaptive mode's keys only with that mode, as NNCF 2.x's schema required."""
    section = raw.get("accuracy_aware_training")
    if section is None:
        return None
    mode, params = section["mode"], dict(section["params"])
    given = [k for k in ("maximal_relative_accuracy_degradation", "maximal_absolute_accuracy_degradation") if k in params]
    if len(given) != 1:
        raise ConfigError(f"{path}.params: {'both' if given else 'no'} accuracy budget: give exactly one of "
                          "maximal_relative_accuracy_degradation (percent) or maximal_absolute_accuracy_degradation")
    extra = sorted(AA_ADAPTIVE_ONLY & set(params)) if mode == "early_exit" else []
    if extra:
        raise ConfigError(f"{path}.params.{extra[0]}: an adaptive_compression_level option in early_exit mode; "
                          "allowed keys: maximal_relative_accuracy_degradation, maximal_absolute_accuracy_degradation, "
                          "maximal_total_epochs")
    relative = params.pop("maximal_relative_accuracy_degradation", None)
    absolute = params.pop("maximal_absolute_accuracy_degradation", None)
    return AccuracyAware(mode, relative, absolute, {**AA_DEFAULTS, **params})


def accuracy_aware_notes(raw: Mapping[str, Any], steps: Sequence[Any]) -> list[Note]:
    """``accuracy_aware_training`` is read by ``create_accuracy_aware_training_loop``; its adaptive mode
    changes the level of unstructured ``mix_and_match`` masks only (other steps prune once)."""
    section = accuracy_aware(raw)
    pruning = [s for s in steps if getattr(s, "algorithm", None) in ("mix_and_match", "flexhinm")]
    if section is None or section.mode != "adaptive_compression_level" or (
            pruning and pruning[0].algorithm == "mix_and_match" and not pruning[0].structured):
        return []
    what = ("there is no pruning step" if not pruning else "filter-pruning options remove the channels once"
            if pruning[0].structured else "flexhinm prunes once")
    return [Note("accuracy_aware_training.mode", f"adaptive_compression_level: {what}, so the level cannot adapt; "
                                                 "the loop runs as early_exit at the config's target")]


def distillation_note(path: str) -> Note:
    return Note(path, "ignored: add a distillation loss against the uncompressed model to your training loop")

