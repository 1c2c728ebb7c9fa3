"""A validated config into NNCF 3.4's machinery: the core's plan and masks as NNCF pruning hooks, NNCF's
statistics and strip, int8 with ``nncf.quantize``, and the export checked zero by zero.

Each keep-mask goes in as NNCF's stock ``UnstructuredPruningMask`` on the weight constant (the raw values
of the weights it prunes are set to zero, at creation and at every level change), so
``nncf.pruning_statistic``, ``nncf.strip`` and ``nncf.torch.get_config`` / ``load_from_config`` work
unchanged. NNCF's own ratio updates rewrite every mask with one ratio: do not run them on these models;
NNCF 2.x schedules run through ``ctrl.scheduler``, which re-masks with the core's masks. Filter-pruning
options remove channels instead (:func:`mm_plugin.portfolio.channels.prune_channels`).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

import mm_plugin
from mm_plugin.deploy import ExportReport, export_checked
from mm_plugin.errors import (
    CalibrationRequiredError,
    ConfigError,
    MMError,
    NoPrunableLayersError,
    UnsupportedModelError,
    ValidationError,
    check_fraction,
    one_line,
)
from mm_plugin.flexhinm import GradualFlexHiNM, flexhinm_sparsify_
from mm_plugin.masks import bake_masks_, measure_sparsity
from mm_plugin.model import Unit, forward_eval
from mm_plugin.planning import (
    CompressionStatistics,
    Plan,
    Scheduler,
    SparsitySchedule,
    Strategy,
    batch_inputs,
    calibration_need,
    channel_statistics,
    compute_scores,
    weight_statistics,
)
from mm_plugin.planning.reach import check_reach, range_targets_for
from mm_plugin.portfolio.channels import ChannelPruning, prune_channels
from mm_plugin.training import optimizer_groups

from .config import CompressionConfig, PruningStep, Step, load_config
from .scopes import ignored_modules, resolve
from .wrapping import (
    bake_mask_hooks,
    build_graph,
    check_model,
    hook_storage,
    mask_hooks,
    nncf_hooks,
    require_nncf,
    unwrap_model,
    weight_metatypes,
)

log = logging.getLogger(__name__)

#: Passed to ``mm_plugin.plan``: every weight tensor keeps at least this fraction of its weights.
MIN_DENSITY = 0.01

#: NNCF's C++ quantization kernels compile on first use (about 2.5 min on 2 cores); the stock 60 s
#: timeout then fails. Used only when NNCF_EXTENSION_LOAD_TIMEOUT is not set.
EXTENSION_LOAD_TIMEOUT_S = "900"
#: How ``create_compressed_model`` callers pass calibration data (the CLI names its own flag).
PYTHON_CALIBRATION = ("create_compressed_model(..., calibration=<batches>) (tensors, (inputs, targets) pairs or "
                      "dicts with 'x')")


# --- the controller -----------------------------------------------------------------------------
class CompressionController:
    """What ``create_compressed_model`` returns beside the model (the NNCF 2.x controller's role)."""

    def __init__(self, model: nn.Module, config: CompressionConfig, example_inputs: Any) -> None:
        self.model, self.config, self.example_inputs = model, config, example_inputs
        self.plan: Plan | None = None
        self.strategy: Strategy | None = None  # the strategy the masks hold now
        self.step: PruningStep | None = None
        self.quantized = False
        self.weights: dict[str, tuple[str, ...]] = {}  # weight -> NNCF metatypes of the ops using it
        self.unplanned: tuple[str, ...] = ()
        self.ignored: tuple[str, ...] = ()
        self.seconds: dict[str, float] = {}
        self.left_dense: dict[str, str] = {}  # FlexHiNM: planned weights it could not give the pattern
        self.flexhinm_result: Any = None
        self.learning: GradualFlexHiNM | None = None  # flexhinm with "gradual": the gates, until harden()
        self.channels: ChannelPruning | None = None  # filter_pruning options: what Torch-Pruning removed
        self.scheduler = Scheduler(None, self.set_sparsity_level)
        self._base: Strategy | None = None  # the named strategy, before it is brought to a level
        self._calibration: Iterable | None = None  # what the plan's signal reads, kept for re-masking
        self._loss_fn: Callable | None = None
        self._planned_zeros: dict[str, np.ndarray] = {}  # param -> flat bool "must be zero"

    @property
    def notes(self) -> tuple:
        """The config's NNCF 2.x options that are not honoured as NNCF 2.x did (logged when loaded)."""
        return self.config.notes

    @property
    def schedule(self) -> SparsitySchedule | None:
        """The NNCF 2.x gradual schedule (``sparsity_at(epoch)``, ``final_level``), or None: one shot."""
        return self.scheduler.schedule

    def loss(self) -> torch.Tensor:
        """NNCF 2.x's compression loss term: the learned 2:4 gates' penalty while they learn (zero for
        the default pattern gates), otherwise zero: the masks are not trained."""
        return self.learning.penalty() if self.learning is not None else torch.zeros(())

    def param_groups(self) -> list[dict]:
        """Optimizer groups for the compressed model: its weights, then the learned gates' own group
        (their learning rate, no weight decay), e.g. ``torch.optim.AdamW(ctrl.param_groups(), lr=...)``.
        With one group for everything, the gates would move at the weights' rate: too slowly to learn."""
        return optimizer_groups(self.model, (self.learning,) if self.learning is not None else ())

    def harden(self) -> None:
        """End the learned path: every gate's current 2:4 choice becomes a fixed NNCF mask hook, as after
        a one-shot step. ``ctrl.scheduler`` calls it after the schedule's last step; ``strip``,
        ``prepare_for_export`` and ``export`` call it if training stopped earlier."""
        if self.learning is None:
            return
        unwrap_model(self.model)
        masks = self.learning.harden_()
        bake_masks_(self.model)
        self._register_masks(self.model, masks)
        self.learning = None
        log.info("%s: the learned 2:4 choices are hardened into NNCF mask hooks", self.step.path)

    def _timed(self, what: str, start: float) -> None:
        self.seconds[what] = time.perf_counter() - start

    def _apply_pruning(self, step: PruningStep, calibration: Iterable | None, loss_fn: Callable | None,
                       final_level: bool) -> None:
        from nncf.torch.function_hook.pruning.prune_model import get_prunable_parameters
        from nncf.torch.function_hook.wrapper import wrap_model

        t = time.perf_counter()
        model = wrap_model(self.model)
        graph = build_graph(model, self.example_inputs)
        self._timed("nncf_graph", t)
        t = time.perf_counter()
        scope = resolve(step.scopes, graph, model)
        all_weights = get_prunable_parameters(graph, None)
        prunable = get_prunable_parameters(graph, scope) if scope is not None else set(all_weights)
        self.weights, self.step = weight_metatypes(graph), step
        self.ignored = tuple(sorted(all_weights - prunable))
        signal, allocations = step.get("signal"), step.get("allocations")
        solve_on = calibration if step.get("reconstruct") else None  # the flexhinm step's reconstruction
        if calibration_need(signal, allocations or ()) is None:
            calibration = None  # data given for int8 calibration alone does not change the plan
        self._calibration, self._loss_fn = calibration, loss_fn
        if step.structured:
            keep_whole = ignored_modules(scope, graph) if scope is not None else set()
            self.channels = prune_channels(
                unwrap_model(model), self.example_inputs, target=step.target, signal=signal,
                strategy=step.get("strategy"), rules=step.rules or (), default_rules=step.get("default_rules"),
                range_targets=step.range_targets, calibration=calibration, keep_whole=keep_whole,
                where={"inputs": "input_info", "signal": f"{step.path}.signal", "strategy": f"{step.path}.strategy",
                       "target": step.target_path, "step": step.path})
            self.model, self.plan, self.strategy = model, self.channels.plan, self.channels.strategy
            self._timed("plan", t)
            return
        inventory = {u.name: u for u in mm_plugin.inventory(model, self.example_inputs).units}
        self.unplanned = tuple(sorted(prunable - set(inventory)))
        if self.unplanned:
            log.warning("NNCF finds weights the Mix-and-Match inventory does not plan (left dense): %s",
                        ", ".join(f"{n} ({'/'.join(self.weights[n])})" for n in self.unplanned))
        units = [u for name, u in inventory.items() if name in prunable]
        if not units:
            where = step.scopes.path if step.scopes is not None else step.path
            raise ConfigError(f"{where}: no prunable weight is left: every Conv/Linear/Embedding weight is ignored")
        dense = sorted(set(inventory) - prunable)  # ignored by scope, or not a weight in NNCF's graph
        targets = _range_targets(step, units)
        try:
            plan = mm_plugin.plan(
                model, self.example_inputs, signal=signal, calibration=calibration, loss_fn=loss_fn,
                rules=list(step.rules) if step.rules is not None else None, default_rules=step.get("default_rules"),
                ignored_scope=mm_plugin.IgnoredScope(names=tuple(dense)) if dense else None,
                targets=targets, allocations=allocations, range_mode=step.get("range_mode"),
                samples=step.get("samples"), seed=step.get("seed"), min_density=MIN_DENSITY,
            )
        except NoPrunableLayersError as e:
            raise ConfigError(f"{step.path}.ignored_scopes: {e}") from None
        except ValidationError as e:
            raise ConfigError(f"{step.path}: {one_line(e)}") from None
        names = [s.name for s in plan.strategies]
        if step.get("strategy") not in names:
            raise ConfigError(f"{step.path}.strategy: strategy {step.get('strategy')!r} is not in this model's plan "
                              f"(the ranges are too narrow to tell it apart); allowed values: {', '.join(names)}")
        self.plan, self._base = plan, plan.strategy(step.get("strategy"))
        if step.target is not None:
            _check_reach(plan, step, *_peak(step))
        self.scheduler = Scheduler(step.schedule, self.set_sparsity_level)
        schedule = step.schedule
        level = step.target if schedule is None else schedule.final_level if final_level else schedule.sparsity_at(-1)
        strategy = plan.at_target(self._base, level)
        self._timed("plan", t)
        t = time.perf_counter()
        self.model, self.strategy = model, strategy
        if step.algorithm == "flexhinm":
            masks = self._flexhinm_masks(model, step, strategy, calibration, loss_fn, solve_on)
        else:
            masks = self._masks(model, strategy)
        if masks is not None:  # None: learned gates hold the masks until harden()
            self._register_masks(model, masks)
        self._timed("masks", t)
        log.info("%s: %d weights masked, planned global sparsity %.4f", step.path, len(plan.units),
                 plan.global_sparsity(strategy))

    def _register_masks(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        """Every planned weight's keep-mask as NNCF's stock mask hook (all-ones where none is given); the
        raw value of every weight it prunes is set to zero (:func:`_zero_pruned`)."""
        from nncf.torch.function_hook.pruning.magnitude.modules import UnstructuredPruningMask
        from nncf.torch.function_hook.wrapper import register_post_function_hook, wrap_model

        wrap_model(model)
        masks = {u.name: masks[u.name] if u.name in masks else
                 torch.ones_like(model.get_parameter(u.name), dtype=torch.bool) for u in self.plan.units}
        for name, keep in masks.items():
            hook = UnstructuredPruningMask(tuple(keep.shape)).to(device=keep.device)
            hook.binary_mask.copy_(keep)
            register_post_function_hook(model, name, 0, hook)
        _zero_pruned(model, masks)
        self._record(masks)

    def _masks(self, model: nn.Module, strategy: Strategy) -> dict[str, torch.Tensor]:
        return mm_plugin.compute_masks(model, strategy, signal=self.step.get("signal"), calibration=self._calibration,
                                       loss_fn=self._loss_fn, plan=self.plan)

    def _record(self, masks: Mapping[str, torch.Tensor]) -> None:
        self._planned_zeros.update({name: (~keep).reshape(-1).cpu().numpy() for name, keep in masks.items()})

    def set_sparsity_level(self, level: float) -> None:
        """NNCF 2.x's ``set_sparsity_level``: re-mask every planned weight for a new global level (the
        plan's strategy at that level, the core's masks for it, written into the NNCF hooks). The
        scheduler calls it; a run without training can pass ``ctrl.schedule.final_level``.

        A pruned weight's raw value is zero, never its stale pre-pruning value: the weights the current
        masks prune are zeroed before the new masks are scored (an optimizer's momentum may have moved
        them), and those the new masks prune are zeroed after. Under magnitude and |w*g| a pruned weight
        therefore scores 0 and stays pruned as the level rises; one that comes back (a falling level, or a
        gradient signal picking it) starts from zero. NNCF 2.x re-masked from the raw weight, so a revived
        weight came back with its stale, weight-decayed value; zero is what gradual magnitude pruning
        (Zhu & Gupta 2017), TF-MOT's ``prune_low_magnitude`` and the core's ``apply_masks_`` do."""
        if self.plan is None or self.step.algorithm != "mix_and_match" or self.channels is not None:
            raise MMError("set_sparsity_level: only a mix_and_match step with unstructured masks changes level "
                          "(flexhinm and filter-pruning steps prune once)")
        hooks = mask_hooks(self.model)
        if not hooks:
            raise MMError("set_sparsity_level: the masks are baked into the weights (strip / prepare_for_export); "
                          "compress the model again to change the level")
        level = check_fraction(level, "sparsity level")
        _check_reach(self.plan, self.step, max(level, self.plan.reach()[0]), "set_sparsity_level")
        strategy = self.plan.at_target(self._base, level)
        _zero_pruned(self.model, {n: h.binary_mask for n, h in hooks.items()})  # score the effective weights
        masks = self._masks(self.model, strategy)
        with torch.no_grad():
            for name, keep in masks.items():
                hooks[name].binary_mask.copy_(keep)
        _zero_pruned(self.model, masks)
        self._record(masks)
        self.strategy = strategy

    def _flexhinm_masks(self, model: nn.Module, step: PruningStep, strategy: Strategy,
                        calibration: Iterable | None, loss_fn: Callable | None,
                        solve_on: Iterable | None) -> dict[str, torch.Tensor] | None:
        """FlexHiNM on the plan's per-layer amounts: the one-shot verb's masks (they become NNCF hooks),
        or, with ``gradual``, learnable 2:4 gates that ``ctrl.scheduler`` drives (None is returned).

        FlexHiNM traces and permutes the plain model (permutations folded into neighbouring weights,
        outputs checked), so NNCF's wrapper comes off for that step and goes back on. With a gradient
        signal the core's scores replace FlexHiNM's ``|w|``; with ``solve_on`` (the step's
        ``reconstruct``) the kept weights are re-solved on those batches.
        """
        from nncf.torch.function_hook.wrapper import wrap_model

        unwrap_model(model)
        scores = None
        if step.get("signal") != "magnitude":
            scores = compute_scores(model, list(strategy.sparsity), step.get("signal"), calibration, loss_fn)
        inputs = self.example_inputs if isinstance(self.example_inputs, tuple) else (self.example_inputs,)
        if step.gradual is not None:
            self.learning = GradualFlexHiNM(model, strategy.sparsity, step.flexhinm, total_steps=step.total_steps,
                                            schedule=step.gradual, example_inputs=inputs, scores=scores,
                                            calibration=solve_on)
            self.scheduler = LearningScheduler(self.learning, self.harden)
            self.left_dense = dict(self.learning.skipped)
            wrap_model(model)
            return None
        result = flexhinm_sparsify_(model, strategy.sparsity, step.flexhinm, example_inputs=inputs, scores=scores,
                                    calibration=solve_on)
        bake_masks_(model)
        self.flexhinm_result, self.left_dense = result, dict(result.skipped)
        return result.masks

    def _apply_quantization(self, step: Step, calibration: Iterable | None) -> None:
        import nncf
        from nncf.torch.function_hook.wrapper import wrap_model

        os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", EXTENSION_LOAD_TIMEOUT_S)
        scope = None
        if step.scopes is not None:
            model = wrap_model(self.model)
            scope = resolve(step.scopes, build_graph(model, self.example_inputs), model)
        device = self.config.raw.get("target_device", "ANY")
        t = time.perf_counter()
        try:
            self.model = nncf.quantize(
                self.model, nncf.Dataset(calibration, batch_inputs),
                preset=nncf.QuantizationPreset.PERFORMANCE if step.get("preset") == "performance" else
                nncf.QuantizationPreset.MIXED,
                target_device=nncf.TargetDevice[device if device != "TRIAL" else "ANY"],
                subset_size=step.get("subset_size"), fast_bias_correction=step.get("fast_bias_correction"),
                model_type=nncf.ModelType.TRANSFORMER if step.get("model_type") == "transformer" else None,
                ignored_scope=scope,
            )
        except Exception as e:
            raise UnsupportedModelError(f"{step.path}: nncf.quantize failed: {one_line(e)}") from e
        self.quantized = True
        self._timed("quantize", t)

    def statistics(self) -> CompressionStatistics:
        """Plan vs. what the model computes with, per weight: from ``nncf.pruning_statistic`` while the
        masks are NNCF hooks, from the weights themselves once baked (per channel group, as Torch-Pruning
        measured it, when filter-pruning options removed channels; from the gates' current 2:4 choices
        while a ``gradual`` step learns them)."""
        import nncf

        if self.plan is None:
            raise MMError("this config has no pruning step; there is nothing to report or verify")
        fields = {"algorithm": self.step.algorithm, "ignored": self.ignored, "quantized": self.quantized}
        if self.channels is not None:
            return channel_statistics(self.plan, self.strategy, self.channels.record, target=self.step.target,
                                      source="torch_pruning", **fields)
        fields |= {"target_sparsity": self.step.target, "unplanned": self.unplanned, "left_dense": dict(self.left_dense),
                   "schedule_level": self.scheduler.current_sparsity_level}
        if self.learning is not None:
            was_training = self.model.training
            self.model.eval()  # a gate in evaluation mode applies its exact 2:4 choice
            try:
                measured = {r.name: r.zeros / r.numel for r in measure_sparsity(self.model, list(self.learning.gates))}
            finally:
                self.model.train(was_training)
            return weight_statistics(self.model, self.plan, self.strategy, ops=self.weights, source="gates",
                                     measured=measured, **fields)
        nncf_stat = nncf.pruning_statistic(self.model) if mask_hooks(self.model) else None
        if nncf_stat is None:
            return weight_statistics(self.model, self.plan, self.strategy, ops=self.weights, **fields)
        return weight_statistics(
            self.model, self.plan, self.strategy, ops=self.weights, source="nncf.pruning_statistic", nncf=nncf_stat,
            measured={t.tensor_name: t.pruned_ratio for t in nncf_stat.pruned_tensors},
            pruning_ratio=float(nncf_stat.pruning_ratio), global_pruning_ratio=float(nncf_stat.global_pruning_ratio),
            **fields)

    def strip(self, do_copy: bool = True) -> nn.Module:
        """``nncf.strip``: masks baked into the weights (``StripFormat.IN_PLACE``); with int8, quantizers
        become native torch FakeQuantize (``StripFormat.NATIVE``) after the masks are baked. Learned gates
        are hardened first (:meth:`harden`)."""
        import nncf

        self.harden()
        model = copy.deepcopy(self.model) if do_copy else self.model
        if hook_storage(model) is None:
            return model
        if any(not is_mask for *_, is_mask in nncf_hooks(model)):
            bake_mask_hooks(model)
            return nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.NATIVE,
                              example_input=self.example_inputs)
        return nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.IN_PLACE)

    @staticmethod
    def _ready_for_export(model: nn.Module) -> nn.Module:
        """In place: masks baked; then a plain module (pruning only) or, with int8, the NNCF model whose
        quantizer hooks ``openvino.convert_model`` turns into FakeQuantize ops (NNCF's own export path)."""
        import nncf

        if hook_storage(model) is None:
            return model
        if any(not is_mask for *_, is_mask in nncf_hooks(model)):
            bake_mask_hooks(model)
            return model
        return unwrap_model(nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.IN_PLACE))

    def prepare_for_export(self) -> nn.Module:
        """Bake the masks in place; without quantizers the model is unwrapped into a plain ``nn.Module``.
        ``self.model`` is replaced by the result, which is also returned. Learned gates are hardened first."""
        self.harden()
        self.model = self._ready_for_export(self.model)
        return self.model

    def export(self, path: str | os.PathLike, *, compress_to_fp16: bool = False, verify: bool = True,
               backend_name: str = "openvino") -> ExportReport:
        """Export a stripped copy (``self.model`` is left as it is) with the deployment backend (OpenVINO
        IR by default), then check the file's zeros against the plan (:func:`mm_plugin.deploy.export_checked`).
        Learned gates are hardened first."""
        self.harden()
        t = time.perf_counter()
        model = self._ready_for_export(copy.deepcopy(self.model))
        self._timed("strip", t)
        report = export_checked(model, self.example_inputs, path, self._planned_zeros,
                                backend_name=backend_name, compress_to_fp16=compress_to_fp16, verify=verify,
                                quantized=self.quantized, seconds={"strip": self.seconds["strip"]})
        self.seconds.update(report.seconds)
        return report


class LearningScheduler:
    """``ctrl.scheduler`` of a flexhinm step with ``gradual``: NNCF 2.x's calls (``epoch_step()`` at the
    start of every epoch, ``step()`` before every optimizer step) advance the
    :class:`~mm_plugin.flexhinm.GradualFlexHiNM`; the first ``step()`` past its budget hardens the
    gates (``finish``), after which training goes on under fixed masks."""

    schedule = None  # no NNCF 2.x level schedule: every layer holds its planned amount from the first step
    current_sparsity_level = None

    def __init__(self, learning: GradualFlexHiNM, finish: Callable[[], None]) -> None:
        self.learning, self._finish = learning, finish
        self.current_epoch = -1
        self.current_step = -1

    def epoch_step(self, next_epoch: int | None = None) -> None:
        self.current_epoch = self.current_epoch + 1 if next_epoch is None else next_epoch

    def step(self, next_step: int | None = None) -> None:
        self.current_step = self.current_step + 1 if next_step is None else next_step
        if self.current_step >= self.learning.total_steps:
            self._finish()
        else:
            self.learning.on_step(step=self.current_step)

    def get_state(self) -> dict[str, int]:
        return {"current_epoch": self.current_epoch, "current_step": self.current_step}

    def load_state(self, state: dict[str, int]) -> None:
        self.current_epoch, self.current_step = state["current_epoch"], state["current_step"]


@torch.no_grad()
def _zero_pruned(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Set the raw value of every weight a keep-mask prunes to zero, so the parameters agree with the NNCF
    mask hooks (as the core's ``apply_masks_`` zeroes ``original``): a weight a later level revives starts
    from zero, not from the stale value it had before it was pruned."""
    for name, keep in masks.items():
        param = model.get_parameter(name)
        param.masked_fill_(~keep.to(device=param.device, dtype=torch.bool), 0.0)


def _range_targets(step: PruningStep, units: Sequence[Unit]) -> tuple[float, ...]:
    """The step's range targets: as given, or ``target`` +- 0.1 clipped to what the guard allows."""
    return range_targets_for(step.target, units, MIN_DENSITY, given=step.range_targets,
                             where=f"{step.path}.range_targets")


def _check_reach(plan: Plan, step: PruningStep, level: float, path: str) -> None:
    ranges = (f"range_targets {list(step.range_targets)}" if step.range_targets is not None else
              f"range_targets derived as {list(_range_targets(step, plan.units))}")
    check_reach(plan, level, path, ranges=ranges, fix_low=f"set {step.path}.range_targets to bracket the target",
                min_density=MIN_DENSITY)


def _peak(step: PruningStep) -> tuple[float, str]:
    """The highest level the step asks for (the plan must reach it) and where the config says it."""
    schedule = step.schedule
    if schedule is not None and schedule.kind == "multistep":
        i = max(range(len(schedule.levels)), key=lambda k: schedule.levels[k])
        return schedule.levels[i], f"{step.path}.params.multistep_sparsity_levels[{i}]"
    if schedule is not None and schedule.init > schedule.target:
        return schedule.init, f"{step.path}.sparsity_init"
    return step.target, step.target_path


def check_calibration(cfg: CompressionConfig, calibration: Iterable | None, how: str = PYTHON_CALIBRATION) -> None:
    """Fail before any work when a step needs calibration data that was not given; ``how`` says how to
    pass it (the CLI names its flag)."""
    if calibration is not None:
        return
    for step in cfg.steps:
        if step.algorithm == "quantization":
            raise CalibrationRequiredError(f"{step.path}: 'quantization' needs calibration data: pass {how}; or "
                                           f"remove {step.path} from the config to stop after pruning")
        if step.algorithm == "knowledge_distillation":
            continue
        if step.get("reconstruct"):
            raise CalibrationRequiredError(f"{step.path}.reconstruct: re-solving the kept weights needs calibration "
                                           f"data: pass {how}; or set it to false")
        need = calibration_need(step.get("signal"), step.get("allocations") or ())
        if need is None:
            continue
        where, what = need
        raise CalibrationRequiredError(f"{step.path}.{where}: {what!r} needs calibration data: pass {how}; or "
                                       "use 'magnitude'")


def check_inputs(model: nn.Module, inputs: Any, cfg: CompressionConfig, given: bool) -> None:
    """Run the model once on its example inputs, so a wrong ``input_info`` is one line naming it."""
    try:
        forward_eval(model, inputs)
    except UnsupportedModelError as e:
        what = "example_inputs" if given else "input_info"
        shapes = ", ".join(i.describe() for i in cfg.input_info) if not given else "the example inputs"
        raise ConfigError(f"{what}: {type(model).__name__} fails on {shapes}: {one_line(e)}; give the inputs its "
                          "forward() takes") from e


def create_compressed_model(
    model: nn.Module,
    config: CompressionConfig | Mapping[str, Any] | str | os.PathLike,
    *,
    calibration: Iterable | None = None,
    loss_fn: Callable | None = None,
    example_inputs: Any = None,
    final_level: bool = False,
) -> tuple[CompressionController, nn.Module]:
    """NNCF 2.x-style entry point: ``(controller, compressed_model)`` from a JSON-like config.

    ``config``: a dict, the path of a JSON file, or JSON text. ``calibration``: batches for the gradient
    signals (``(inputs, targets)`` pairs) and for int8 quantization (tensors or pairs).
    ``example_inputs`` overrides the tensors built from ``input_info``. The model is wrapped by NNCF in
    place (as NNCF 3.x does); with quantization the returned model is NNCF's quantized copy. With an
    NNCF 2.x schedule the masks start at its first level: drive ``ctrl.scheduler`` from the training loop;
    ``final_level`` starts them at the level the schedule ends at instead (for runs without training).
    """
    cfg = config if isinstance(config, CompressionConfig) else load_config(config)
    require_nncf()
    check_model(model)
    check_calibration(cfg, calibration)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    given = example_inputs is not None
    inputs = example_inputs if given else cfg.example_inputs(device, model.forward)
    check_inputs(model, inputs, cfg, given)
    ctrl = CompressionController(model, cfg, inputs)
    was_training = model.training
    model.eval()
    try:
        for step in cfg.steps:
            if isinstance(step, PruningStep):
                ctrl._apply_pruning(step, calibration, loss_fn, final_level)
            elif step.algorithm == "quantization":
                ctrl._apply_quantization(step, calibration)
    finally:
        ctrl.model.train(was_training)
    return ctrl, ctrl.model
