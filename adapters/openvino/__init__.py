"""OpenVINO, the ``openvino`` deployment backend (:mod:`mm_plugin.deploy`): PyTorch -> IR with every
weight Constant's zeros read back, and CPU latency. Plain modules, IRs and tensors in and out."""

from .convert import convert, export, read, save, weight_constants
from .latency import PRECISIONS, Timer, compile_for_latency, infer, measure_latency

__all__ = [
    "PRECISIONS", "Timer", "compile_for_latency", "convert", "export", "infer", "measure_latency", "read", "save",
    "weight_constants",
]
