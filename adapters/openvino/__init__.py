"""OpenVINO: PyTorch -> IR with the zeros of every weight checked, and CPU latency (the runner's
``openvino`` latency backend). Nothing here knows about Mix-and-Match: plain modules, IRs and tensors."""

from .convert import ParamMatch, WeightConstant, convert, export, match_params, read, save, weight_constants
from .latency import (
    PRECISIONS,
    Latency,
    LatencyPoint,
    Timer,
    compile_for_latency,
    infer,
    latency_front,
    measure_latency,
)

__all__ = [
    "PRECISIONS", "Latency", "LatencyPoint", "ParamMatch", "Timer", "WeightConstant", "compile_for_latency",
    "convert", "export", "infer", "latency_front", "match_params", "measure_latency", "read", "save",
    "weight_constants",
]
