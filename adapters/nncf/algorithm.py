"""A validated config into NNCF 3.4's machinery: the core's plan and masks as NNCF pruning hooks, NNCF's
statistics and strip, int8 with ``nncf.quantize``, and the export checked zero by zero.

Each keep-mask goes in as NNCF's stock ``UnstructuredPruningMask`` on the weight constant, so
``nncf.pruning_statistic``, ``nncf.strip`` and ``nncf.torch.get_config`` / ``load_from_config`` work
unchanged. NNCF's own ratio updates rewrite every mask with one ratio: do not run them on these models.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import mm_plugin
from mm_plugin.deploy import ExportReport, backend, check_export
from mm_plugin.errors import (
    CalibrationRequiredError,
    ConfigError,
    MMError,
    NoPrunableLayersError,
    ValidationError,
)
from mm_plugin.flexhinm import flexhinm_sparsify_
from mm_plugin.masks import bake_masks_
from mm_plugin.planning import ALLOCATIONS, SIGNALS, Plan, Strategy, compute_scores
from mm_plugin.tables import format_table

from .config import CompressionConfig, PruningStep, Step, load_config
from .wrapping import (
    bake_mask_hooks,
    check_model,
    hook_storage,
    mask_hooks,
    model_inputs,
    nncf_hooks,
    require_nncf,
    resolve_scope,
    unwrap_model,
    weight_metatypes,
)

log = logging.getLogger(__name__)

#: NNCF's C++ quantization kernels compile on first use (about 2.5 min on 2 cores); the stock 60 s
#: timeout then fails. Used only when NNCF_EXTENSION_LOAD_TIMEOUT is not set.
EXTENSION_LOAD_TIMEOUT_S = "900"


# --- statistics and export reports --------------------------------------------------------------
@dataclass(frozen=True)
class LayerStatistic:
    name: str  # parameter name == NNCF weight constant name
    kind: str  # the core's unit kind
    metatype: str  # NNCF metatype of the op(s) using the weight
    shape: tuple[int, ...]
    numel: int
    planned_ratio: float
    ratio: float  # from nncf.pruning_statistic (masks) or from the weights once baked
    zeros: int


@dataclass(frozen=True)
class CompressionStatistics:
    algorithm: str
    strategy: str
    target_sparsity: float | None
    planned_ratio: float  # the plan's global sparsity over the planned weights
    pruning_ratio: float  # zeros / planned weights, as measured (NNCF's "Prunable parameters" ratio)
    global_pruning_ratio: float  # zeros / all parameters of the model
    layers: tuple[LayerStatistic, ...]
    unplanned: tuple[str, ...]  # NNCF prunable weights outside the core inventory: left dense
    ignored: tuple[str, ...]  # weights left dense by ignored_scopes
    quantized: bool
    left_dense: dict[str, str]  # flexhinm: planned weights it left dense, with the reason
    source: str  # "nncf.pruning_statistic" or "weights"
    nncf: Any = field(default=None, repr=False, compare=False)  # NNCF's ModelPruningStatistic while masks are hooks

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "nncf"}

    def to_str(self, max_rows: int | None = None) -> str:
        rows = [[s.name, s.kind, s.metatype.removeprefix("PT").removesuffix("Metatype"), "x".join(map(str, s.shape)),
                 f"{s.planned_ratio:.4f}", f"{s.ratio:.4f}"] for s in self.layers]
        footer = [["PLANNED WEIGHTS", "", "", "", f"{self.planned_ratio:.4f}", f"{self.pruning_ratio:.4f}"],
                  ["ALL PARAMETERS", "", "", "", "", f"{self.global_pruning_ratio:.4f}"]]
        title = (f"{self.algorithm}: strategy {self.strategy}"
                 + (f", target {self.target_sparsity:g}" if self.target_sparsity is not None else "")
                 + (", int8" if self.quantized else "") + f" (source: {self.source})")
        extra = [f"dense by ignored_scopes: {len(self.ignored)} weights"] if self.ignored else []
        extra += [f"dense, outside the Mix-and-Match inventory: {', '.join(self.unplanned)}"] if self.unplanned else []
        extra += [f"dense, left by FlexHiNM: {name} ({reason})" for name, reason in self.left_dense.items()]
        table = format_table(["weight", "kind", "metatype", "shape", "planned", "masked"], rows, 4,
                             max_rows=max_rows, footer=footer)
        return "\n".join([title, table, *extra])

    __str__ = to_str


# --- the controller -----------------------------------------------------------------------------
class CompressionController:
    """What ``create_compressed_model`` returns beside the model (the NNCF 2.x controller's role)."""

    def __init__(self, model: nn.Module, config: CompressionConfig, example_inputs: Any) -> None:
        self.model, self.config, self.example_inputs = model, config, example_inputs
        self.plan: Plan | None = None
        self.strategy: Strategy | None = None
        self.step: PruningStep | None = None
        self.quantized = False
        self.weights: dict[str, tuple[str, ...]] = {}  # weight -> NNCF metatypes of the ops using it
        self.unplanned: tuple[str, ...] = ()
        self.ignored: tuple[str, ...] = ()
        self.seconds: dict[str, float] = {}
        self.left_dense: dict[str, str] = {}  # FlexHiNM: planned weights it could not give the pattern
        self.flexhinm_result: Any = None
        self._planned_zeros: dict[str, np.ndarray] = {}  # param -> flat bool "must be zero"

    def _timed(self, what: str, start: float) -> None:
        self.seconds[what] = time.perf_counter() - start

    def _apply_pruning(self, step: PruningStep, calibration: Iterable | None, loss_fn: Callable | None) -> None:
        from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph
        from nncf.torch.function_hook.pruning.magnitude.modules import UnstructuredPruningMask
        from nncf.torch.function_hook.pruning.prune_model import get_prunable_parameters
        from nncf.torch.function_hook.wrapper import register_post_function_hook, wrap_model

        t = time.perf_counter()
        model = wrap_model(self.model)
        graph = build_nncf_graph(model, self.example_inputs)
        self._timed("nncf_graph", t)
        t = time.perf_counter()
        all_weights = get_prunable_parameters(graph, None)
        scope = resolve_scope(step, graph)
        prunable = get_prunable_parameters(graph, scope) if scope is not None else set(all_weights)
        self.weights = weight_metatypes(graph)
        inventory = set(mm_plugin.inventory(model, self.example_inputs).names)
        self.ignored, self.unplanned = tuple(sorted(all_weights - prunable)), tuple(sorted(prunable - inventory))
        if self.unplanned:
            log.warning("NNCF finds weights the Mix-and-Match inventory does not plan (left dense): %s",
                        ", ".join(f"{n} ({'/'.join(self.weights[n])})" for n in self.unplanned))
        if not inventory & prunable:
            where = f"{step.path}.ignored_scopes" if step.ignored_scope is not None else step.path
            raise ConfigError(f"{where}: no prunable weight is left: every Conv/Linear/Embedding weight is ignored")
        signal, allocations = step.get("signal"), step.get("allocations")
        if not (SIGNALS.needs(signal).calibration or ALLOCATIONS.any_needs(allocations or (), "calibration")):
            calibration = None  # data given for int8 calibration alone does not change the plan
        dense = sorted(inventory - prunable)  # ignored by scope, or not a weight in NNCF's graph
        try:
            plan = mm_plugin.plan(
                model, self.example_inputs, signal=signal, calibration=calibration, loss_fn=loss_fn,
                rules=list(step.rules) if step.rules is not None else None, default_rules=step.get("default_rules"),
                ignored_scope=mm_plugin.IgnoredScope(names=tuple(dense)) if dense else None,
                targets=step.range_targets, allocations=allocations, range_mode=step.get("range_mode"),
                samples=step.get("samples"), seed=step.get("seed"),
            )
        except NoPrunableLayersError as e:
            raise ConfigError(f"{step.path}.ignored_scopes: {e}") from None
        names = [s.name for s in plan.strategies]
        if step.get("strategy") not in names:
            raise ConfigError(f"{step.path}.strategy: strategy {step.get('strategy')!r} is not in this model's plan "
                              f"(the ranges are too narrow to tell it apart); allowed values: {', '.join(names)}")
        strategy = plan.strategy(step.get("strategy"))
        if step.get("target_sparsity") is not None:
            try:
                strategy = plan.rescale(strategy, step.get("target_sparsity"))
            except ValidationError as e:
                hint = "" if "range_targets" in step.options else \
                    f" (range_targets were derived as {list(step.range_targets)})"
                raise ConfigError(f"{step.path}.target_sparsity: {e}{hint}; set {step.path}.range_targets "
                                  "to bracket the target") from None
        self._timed("plan", t)
        t = time.perf_counter()
        if step.algorithm == "flexhinm":
            masks = self._flexhinm_masks(model, step, strategy, calibration, loss_fn)
        else:
            masks = mm_plugin.compute_masks(model, strategy, signal=signal, calibration=calibration,
                                            loss_fn=loss_fn, plan=plan)
        for unit in plan.units:
            keep = masks[unit.name]
            hook = UnstructuredPruningMask(tuple(keep.shape)).to(device=keep.device)
            hook.binary_mask.copy_(keep)
            register_post_function_hook(model, unit.name, 0, hook)
            self._planned_zeros[unit.name] = (~keep).reshape(-1).cpu().numpy()
        self._timed("masks", t)
        self.model, self.plan, self.strategy, self.step = model, plan, strategy, step
        log.info("%s: %d weights masked, planned global sparsity %.4f", step.path, len(plan.units),
                 plan.global_sparsity(strategy))

    def _flexhinm_masks(self, model: nn.Module, step: PruningStep, strategy: Strategy,
                        calibration: Iterable | None, loss_fn: Callable | None) -> dict[str, torch.Tensor]:
        """FlexHiNM's one-shot verb on the plan's per-layer amounts; its masks become NNCF hooks.

        FlexHiNM traces and permutes the plain model (permutations folded into neighbouring weights,
        outputs checked), so NNCF's wrapper comes off for that step and goes back on. With a gradient
        signal the core's scores replace FlexHiNM's ``importance``.
        """
        from nncf.torch.function_hook.wrapper import wrap_model

        unwrap_model(model)
        scores = None
        if step.get("signal") != "magnitude":
            scores = compute_scores(model, list(strategy.sparsity), step.get("signal"), calibration, loss_fn)
        inputs = self.example_inputs if isinstance(self.example_inputs, tuple) else (self.example_inputs,)
        result = flexhinm_sparsify_(model, strategy.sparsity, step.flexhinm, example_inputs=inputs, scores=scores)
        bake_masks_(model)
        wrap_model(model)
        self.flexhinm_result, self.left_dense = result, dict(result.skipped)
        return {name: result.masks[name] if name in result.masks else
                torch.ones_like(model.get_parameter(name), dtype=torch.bool) for name in strategy.sparsity}

    def _apply_quantization(self, step: Step, calibration: Iterable | None) -> None:
        import nncf

        os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", EXTENSION_LOAD_TIMEOUT_S)
        scope = None
        if step.ignored_scope is not None:
            from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph
            from nncf.torch.function_hook.wrapper import wrap_model

            scope = resolve_scope(step, build_nncf_graph(wrap_model(self.model), self.example_inputs))
        t = time.perf_counter()
        self.model = nncf.quantize(
            self.model, nncf.Dataset(calibration, model_inputs),
            preset=nncf.QuantizationPreset.PERFORMANCE if step.get("preset") == "performance" else
            nncf.QuantizationPreset.MIXED,
            subset_size=step.get("subset_size"), fast_bias_correction=step.get("fast_bias_correction"),
            model_type=nncf.ModelType.TRANSFORMER if step.get("model_type") == "transformer" else None,
            ignored_scope=scope,
        )
        self.quantized = True
        self._timed("quantize", t)

    def statistics(self) -> CompressionStatistics:
        """Plan vs. what the model computes with, per weight: from ``nncf.pruning_statistic`` while the
        masks are NNCF hooks, from the weights themselves once baked."""
        import nncf

        if self.plan is None:
            raise MMError("this config has no pruning step; there is nothing to report or verify")
        nncf_stat = nncf.pruning_statistic(self.model) if mask_hooks(self.model) else None
        if nncf_stat is not None:
            measured = {t.tensor_name: (t.pruned_ratio, round(t.pruned_ratio * int(np.prod(t.shape))))
                        for t in nncf_stat.pruned_tensors}
        else:
            zeros = {u.name: int((self.model.get_parameter(u.name) == 0).sum()) for u in self.plan.units}
            measured = {u.name: (zeros[u.name] / u.params, zeros[u.name]) for u in self.plan.units}
        layers = tuple(LayerStatistic(
            name=u.name, kind=u.kind, metatype="/".join(dict.fromkeys(self.weights.get(u.name, ()))),
            shape=tuple(u.shape), numel=u.params, planned_ratio=float(self.strategy.sparsity[u.name]),
            ratio=float(measured.get(u.name, (0.0, 0))[0]), zeros=measured.get(u.name, (0.0, 0))[1],
        ) for u in self.plan.units)
        if nncf_stat is not None:
            pruning_ratio, global_ratio = nncf_stat.pruning_ratio, nncf_stat.global_pruning_ratio
        else:
            total = sum(s.zeros for s in layers)
            pruning_ratio = total / sum(s.numel for s in layers)
            global_ratio = total / sum(p.numel() for p in self.model.parameters())
        return CompressionStatistics(
            algorithm=self.step.algorithm, strategy=self.strategy.name, target_sparsity=self.step.get("target_sparsity"),
            planned_ratio=float(self.plan.global_sparsity(self.strategy)), pruning_ratio=float(pruning_ratio),
            global_pruning_ratio=float(global_ratio), layers=layers, unplanned=self.unplanned, ignored=self.ignored,
            quantized=self.quantized, left_dense=dict(self.left_dense),
            source="nncf.pruning_statistic" if nncf_stat is not None else "weights", nncf=nncf_stat,
        )

    def strip(self, do_copy: bool = True) -> nn.Module:
        """``nncf.strip``: masks baked into the weights (``StripFormat.IN_PLACE``); with int8, quantizers
        become native torch FakeQuantize (``StripFormat.NATIVE``) after the masks are baked."""
        import nncf

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
        ``self.model`` is replaced by the result, which is also returned."""
        self.model = self._ready_for_export(self.model)
        return self.model

    def export(self, path: str | os.PathLike, *, compress_to_fp16: bool = False, verify: bool = True,
               backend_name: str = "openvino") -> ExportReport:
        """Export a stripped copy (``self.model`` is left as it is) with the deployment backend (OpenVINO
        IR by default), then check the file's zeros against the plan (:func:`mm_plugin.deploy.check_export`)."""
        deploy = backend(backend_name)
        t = time.perf_counter()
        model = self._ready_for_export(copy.deepcopy(self.model))
        self._timed("strip", t)
        t = time.perf_counter()
        xml = deploy.export(model, self.example_inputs, path, compress_to_fp16=compress_to_fp16)
        self._timed("convert", t)
        t = time.perf_counter()
        constants = deploy.weight_constants(xml)
        self._timed("verify", t)
        return check_export(xml, constants, self._planned_zeros if self.plan is not None else {}, verify=verify,
                            quantized=self.quantized, seconds={k: self.seconds[k] for k in ("strip", "convert", "verify")})


def _check_calibration(cfg: CompressionConfig, calibration: Iterable | None) -> None:
    """Fail before any work when a step needs calibration data that was not given."""
    if calibration is not None:
        return
    for step in cfg.steps:
        if step.algorithm == "quantization":
            raise CalibrationRequiredError(
                f"{step.path}: 'quantization' needs calibration data: pass create_compressed_model(..., "
                "calibration=<batches>) (tensors, (inputs, targets) pairs or dicts with 'x')"
            )
        signal, allocations = step.get("signal"), step.get("allocations") or ()
        if SIGNALS.needs(signal).calibration:
            where, what = "signal", signal
        elif ALLOCATIONS.any_needs(allocations, "calibration"):
            where, what = "allocations", next(a for a in allocations if ALLOCATIONS.needs(a).calibration)
        else:
            continue
        raise CalibrationRequiredError(
            f"{step.path}.{where}: {what!r} needs calibration data: pass "
            "create_compressed_model(..., calibration=<(inputs, targets) batches>) or use 'magnitude'"
        )


def create_compressed_model(
    model: nn.Module,
    config: Mapping[str, Any] | str | os.PathLike,
    *,
    calibration: Iterable | None = None,
    loss_fn: Callable | None = None,
    example_inputs: Any = None,
) -> tuple[CompressionController, nn.Module]:
    """NNCF 2.x-style entry point: ``(controller, compressed_model)`` from a JSON-like config.

    ``config``: a dict, the path of a JSON file, or JSON text. ``calibration``: batches for the gradient
    signals (``(inputs, targets)`` pairs) and for int8 quantization (tensors or pairs).
    ``example_inputs`` overrides the tensors built from ``input_info``. The model is wrapped by NNCF in
    place (as NNCF 3.x does); with quantization the returned model is NNCF's quantized copy.
    """
    cfg = load_config(config)
    require_nncf()
    check_model(model)
    _check_calibration(cfg, calibration)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    ctrl = CompressionController(model, cfg, example_inputs if example_inputs is not None else cfg.example_inputs(device))
    was_training = model.training
    model.eval()
    try:
        for step in cfg.steps:
            if isinstance(step, PruningStep):
                ctrl._apply_pruning(step, calibration, loss_fn)
            else:
                ctrl._apply_quantization(step, calibration)
    finally:
        ctrl.model.train(was_training)
    return ctrl, ctrl.model
