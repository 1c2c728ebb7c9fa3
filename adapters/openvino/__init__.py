"""OpenVINO, the ``openvino`` deployment backend (:mod:`mm_plugin.deploy`): PyTorch -> IR with every
weight Constant's zeros read back, CPU latency, int8 quantization with NNCF and predictions of an IR. Plain
modules, IRs and tensors in and out."""

from .convert import convert, export, read, save, weight_constants
from .latency import PRECISIONS, Timer, compile_for_latency, infer, measure_latency
from .quantize import predict, quantize_int8

__all__ = [
    "PRECISIONS", "Timer", "compile_for_latency", "convert", "export", "infer", "measure_latency", "predict",
    "quantize_int8", "read", "save", "weight_constants",
]
