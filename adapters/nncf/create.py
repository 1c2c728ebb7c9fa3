"""``create_compressed_model``: a config (and, when resuming, a saved compression state) applied to a model
on NNCF 3.4's machinery, in NNCF 2.x's argument order."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from mm_plugin.errors import CalibrationRequiredError, ConfigError, UnsupportedModelError, one_line
from mm_plugin.model import forward_eval
from mm_plugin.planning import calibration_need

from . import state
from .compat import NNCFConfig, attach_interface, init_data
from .config import CompressionConfig, PruningStep, load_config
from .controller import CompressionController
from .pruning import apply_pruning
from .quantization import apply_quantization
from .wrapping import check_model, require_nncf

#: How ``create_compressed_model`` callers pass calibration data (the CLI names its own flag).
PYTHON_CALIBRATION = ("create_compressed_model(..., calibration=<batches>) (tensors, (inputs, targets) pairs or "
                      "dicts with 'x'), or register_default_init_args(config, train_loader)")


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
    compression_state: Mapping[str, Any] | None = None,
    dummy_forward_fn: Callable | None = None,
    wrap_inputs_fn: Callable | None = None,
    wrap_outputs_fn: Callable | None = None,
    dump_graphs: bool = True,
    *,
    calibration: Iterable | None = None,
    loss_fn: Callable | None = None,
    example_inputs: Any = None,
    final_level: bool = False,
) -> tuple[CompressionController, nn.Module]:
    """NNCF 2.x's entry point, in its argument order: ``(controller, compressed_model)`` from a JSON-like
    config.

    ``config``: an :class:`~.compat.NNCFConfig`, a dict, the path of a JSON file, or JSON text.
    ``compression_state``: what ``ctrl.get_compression_state()`` saved: the plan, strategy, level, masks
    and scheduler position are restored instead of planned (load the checkpoint's weights afterwards with
    ``load_state``). ``dummy_forward_fn``, ``wrap_inputs_fn`` and ``wrap_outputs_fn`` are NNCF 2.x's
    tracing hooks: give ``example_inputs`` instead; ``dump_graphs`` has no effect.
    ``calibration``: batches for the gradient signals (``(inputs, targets)`` pairs) and for int8
    quantization; without it, the first batches of the loader ``register_default_init_args`` attached
    (its criterion is then the gradient signals' loss). ``example_inputs`` overrides the tensors built
    from ``input_info``. The model is wrapped by NNCF in place; with quantization the returned model is
    NNCF's quantized copy. With an NNCF 2.x schedule the masks start at its first level: drive
    ``ctrl.scheduler`` from the training loop; ``final_level`` starts them at the level the schedule ends
    at instead (for runs without training).
    """
    for name, value in (("dummy_forward_fn", dummy_forward_fn), ("wrap_inputs_fn", wrap_inputs_fn),
                        ("wrap_outputs_fn", wrap_outputs_fn)):
        if value is not None:
            raise ConfigError(f"create_compressed_model: {name} is NNCF 2.x's tracing hook; pass "
                              "example_inputs=<the tensors forward() takes> instead")
    if isinstance(config, CompressionConfig):
        cfg = config
    else:
        cfg = load_config(dict(config) if isinstance(config, NNCFConfig) else config)
    require_nncf()
    check_model(model)
    if calibration is None:
        calibration, given_loss = init_data(config, cfg)
        loss_fn = loss_fn or given_loss
    check_calibration(cfg, calibration)
    restored = state.restored(compression_state, cfg)
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
                apply_pruning(ctrl, step, calibration, loss_fn, final_level and restored is None, restored)
            elif step.algorithm == "quantization":
                apply_quantization(ctrl, step, calibration)
    finally:
        ctrl.model.train(was_training)
    attach_interface(ctrl.model, cfg.raw)
    return ctrl, ctrl.model
