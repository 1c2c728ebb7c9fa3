"""OpenVINO CPU latency: one synchronous stream, fixed threads and precision, and pruned models timed in
alternating blocks with the dense one (``Timer``, used by the runner and ``mm_plugin.deploy.latency_front``).

The CPU plugin's default ``INFERENCE_PRECISION_HINT`` is bf16 on CPUs that report bf16 support, which
is slower without AMX: every helper here sets the precision it is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from mm_plugin.deploy import BlockTimer, Latency, time_calls
from mm_plugin.errors import ValidationError
from mm_plugin.model import to_numpy

from .convert import convert, openvino_module, read

PRECISIONS = ("f32", "bf16", "f16")


def _property_name(value: Any) -> str:
    """``ov.Type`` or string -> "f32" / "bf16" / "f16" (or the raw text)."""
    text = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(text.lower(), text.lower())


def compile_for_latency(model: Any, *, threads: int = 1, precision: str = "f32", device: str = "CPU"):
    """Compile for one synchronous stream with ``threads`` threads and the given inference precision."""
    if precision not in PRECISIONS:
        raise ValidationError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValidationError(f"threads must be a positive integer, got {threads!r}")
    ov = openvino_module()
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    return ov.Core().compile_model(read(model), device, config)


def measure_latency(
    model: Any,
    inputs: Any,
    threads: int | None = 1,
    precision: str | None = "f32",
    warmup: int = 10,
    repeats: int = 50,
    *,
    device: str = "CPU",
) -> Latency:
    """Median latency of synchronous inference.

    ``model``: an ``openvino.Model``, a ``.xml`` path, or an already compiled model. A model is
    compiled with ``threads`` / ``precision`` (see :func:`compile_for_latency`); a compiled model is
    used as it is, and ``threads`` / ``precision`` (when not None) must agree with how it was compiled,
    so a figure is never reported under settings it was not measured with.
    ``inputs``: a tensor / array, a list of them, or a dict by input name.
    """
    ov = openvino_module()
    if isinstance(model, ov.CompiledModel):
        compiled = model
        actual_threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        actual_precision = _property_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if threads is not None and actual_threads not in (threads, 0):
            raise ValidationError(
                f"the compiled model runs with INFERENCE_NUM_THREADS={actual_threads}, not {threads}; "
                "pass the openvino.Model to compile it with the settings you want"
            )
        if precision is not None and actual_precision != precision:
            raise ValidationError(
                f"the compiled model runs with INFERENCE_PRECISION_HINT={actual_precision}, not {precision}; "
                "pass the openvino.Model to compile it with the settings you want"
            )
        threads, precision = actual_threads, actual_precision
    else:
        threads = 1 if threads is None else threads
        precision = "f32" if precision is None else precision
        compiled = compile_for_latency(model, threads=threads, precision=precision, device=device)
    request, data = compiled.create_infer_request(), to_numpy(inputs)
    return time_calls(lambda: request.infer(data), warmup=warmup, repeats=repeats, threads=int(threads),
                      precision=str(precision), device=device)


def infer(model: Any, inputs: Any) -> list[np.ndarray]:
    """Run an IR (path, Model or compiled model) once at f32 and return its outputs as arrays."""
    ov = openvino_module()
    compiled = model if isinstance(model, ov.CompiledModel) else compile_for_latency(model)
    result = compiled(to_numpy(inputs))
    return [np.asarray(result[o]) for o in compiled.outputs]


class Timer(BlockTimer):
    """The runner's latency backend (:class:`mm_plugin.deploy.BlockTimer`): OpenVINO on the CPU, fp32
    inference precision (an int8 IR still runs its int8 ops), one synchronous stream of ``threads``
    threads; models are PyTorch modules or IRs (paths or ``openvino.Model``)."""

    precision, device = "f32", "CPU"

    def compile(self, model: nn.Module | Any) -> Callable[[], Any]:
        ir = convert(model, self.inputs) if isinstance(model, nn.Module) else read(model)
        compiled = compile_for_latency(ir, threads=self.threads, precision=self.precision, device=self.device)
        request, data = compiled.create_infer_request(), to_numpy(self.inputs)
        return lambda: request.infer(data)
