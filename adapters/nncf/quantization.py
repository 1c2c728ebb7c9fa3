"""A config's quantization step: ``nncf.quantize`` on the masked model (the masks stay NNCF hooks)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mm_plugin.errors import UnsupportedModelError, one_line
from mm_plugin.planning import batch_inputs

from .config import Step
from .scopes import resolve
from .wrapping import build_graph, wrap

if TYPE_CHECKING:
    from .controller import CompressionController

#: NNCF's C++ quantization kernels compile on first use (about 2.5 min on 2 cores); the stock 60 s
#: timeout then fails. Used only when NNCF_EXTENSION_LOAD_TIMEOUT is not set.
EXTENSION_LOAD_TIMEOUT_S = "900"


def apply_quantization(ctrl: CompressionController, step: Step, calibration: Iterable | None) -> None:
    import nncf

    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", EXTENSION_LOAD_TIMEOUT_S)
    scope = None
    if step.scopes is not None:
        model = wrap(ctrl.model)
        scope = resolve(step.scopes, build_graph(model, ctrl.example_inputs), model)
    device = ctrl.config.raw.get("target_device", "ANY")
    t = time.perf_counter()
    try:
        ctrl.model = nncf.quantize(
            ctrl.model, nncf.Dataset(calibration, batch_inputs),
            preset=nncf.QuantizationPreset.PERFORMANCE if step.get("preset") == "performance" else
            nncf.QuantizationPreset.MIXED,
            target_device=nncf.TargetDevice[device if device != "TRIAL" else "ANY"],
            subset_size=step.get("subset_size"), fast_bias_correction=step.get("fast_bias_correction"),
            model_type=nncf.ModelType.TRANSFORMER if step.get("model_type") == "transformer" else None,
            ignored_scope=scope,
        )
    except Exception as e:
        raise UnsupportedModelError(f"{step.path}: nncf.quantize failed: {one_line(e)}") from e
    ctrl.quantized = True
    ctrl.timed("quantize", t)
