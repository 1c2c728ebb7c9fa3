"""PyTorch -> OpenVINO IR, and the zeros of every weight Constant of an IR (matched back to the
parameters by the core, :func:`mm_plugin.deploy.match_params`).

Facts these helpers are built around (OpenVINO 2026.4):

* ``openvino.convert_model`` folds BatchNorm into the preceding convolution, so a conv weight in the
  IR is ``W * gamma / sqrt(var + eps)`` per output channel under an anonymous name: zeros stay zeros
  (a BatchNorm with ``gamma == 0`` zeroes whole output channels on top). Weights that are not folded
  keep their PyTorch name as a tensor name (``self.fc.weight``).
* ``openvino.save_model`` compresses float weights to FP16 by default (tiny weights may underflow to
  zero) and turns weight FakeQuantize ops (NNCF int8) into ``i8`` Constants followed by Convert,
  optional Subtract (zero point) and Multiply (scale); the helpers look through that chain.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mm_plugin.deploy import WeightConstant
from mm_plugin.errors import MMError, ValidationError

#: Ops whose weight input (port -> ops) is a constant in an exported network.
WEIGHT_PORTS: dict[str, tuple[int, ...]] = {
    "Convolution": (1,),
    "GroupConvolution": (1,),
    "ConvolutionBackpropData": (1,),
    "GroupConvolutionBackpropData": (1,),
    "DeformableConvolution": (2,),
    "MatMul": (0, 1),
    "Gather": (0,),  # embedding tables
}
#: Ops a weight passes through on its way from its Constant to the consumer.
_PASS_THROUGH = {"Convert", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "FakeQuantize", "Multiply", "Subtract"}


def openvino_module():
    try:
        import openvino
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise MMError("OpenVINO is not installed: pip install 'mm-plugin[openvino]'") from None
    return openvino


# --- conversion -----------------------------------------------------------------------------------
def _as_tuple(example_input: Any) -> Any:
    return tuple(example_input) if isinstance(example_input, list) else example_input


def convert(model: nn.Module, example_input: Any, **kwargs: Any):
    """``openvino.convert_model`` on ``model`` in eval mode, without gradients; the mode is restored."""
    ov = openvino_module()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # OpenVINO's PyTorch frontend traces with torch.jit, which torch 2.x flags as deprecated
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning)
            return ov.convert_model(model, example_input=_as_tuple(example_input), **kwargs)
    finally:
        model.train(was_training)


def save(ov_model: Any, path: str | os.PathLike, *, compress_to_fp16: bool = False) -> Path:
    """Save an IR (``.xml`` + ``.bin``); returns the ``.xml`` path.

    ``compress_to_fp16`` defaults to False here (OpenVINO's default is True) so that zero counts are
    exact: FP16 would also zero weights below 6e-8 in magnitude.
    """
    ov = openvino_module()
    path = Path(path)
    if path.suffix != ".xml":
        path = path.with_suffix(".xml")
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(path), compress_to_fp16=compress_to_fp16)
    return path


def export(
    model: nn.Module, example_input: Any, path: str | os.PathLike, *, compress_to_fp16: bool = False
) -> Path:
    """Convert and save in one call; returns the ``.xml`` path."""
    return save(convert(model, example_input), path, compress_to_fp16=compress_to_fp16)


def read(model: Any):
    """An ``openvino.Model`` from a path (``.xml``) or the model itself."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise ValidationError(f"IR file {path} does not exist")
        return openvino_module().Core().read_model(str(path))
    return model


# --- zeros per weight Constant --------------------------------------------------------------------
def _source_constant(output: Any, depth: int = 0) -> tuple[Any, list[Any]] | None:
    """Follow a weight input up to its Constant; returns (constant node, zero points met on the way)."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return node, []
    if kind not in _PASS_THROUGH or depth > 8:
        return None
    if kind in ("Multiply", "Subtract"):
        inputs = [node.input_value(i) for i in range(node.get_input_size())]
    else:
        inputs = [node.input_value(0)]
    sources = [_source_constant(v, depth + 1) for v in inputs]
    if any(r is None for r in sources):
        return None  # an activation flows in: not a weight (e.g. SmoothQuant's activation scale)
    found = list(enumerate(sources))
    # Multiply / Subtract: the weight is the biggest constant; the other side is a scale or zero point.
    best, (const, zps) = max(found, key=lambda f: int(np.prod(f[1][0].get_output_shape(0))))
    if kind == "Subtract":
        zps = zps + [r[0] for i, r in found if i != best]
    return const, zps


def weight_constants(model: Any, *, min_numel: int = 1) -> list[WeightConstant]:
    """Every Constant feeding a weight port (Convolution, MatMul, Gather, ...), once, in graph order.

    ``model``: an ``openvino.Model`` or the path of a saved ``.xml``. Activation x activation
    MatMuls (attention) have no constant side and are skipped.
    """
    ov_model = read(model)
    found: dict[str, tuple[Any, list[Any], list[str]]] = {}
    order: list[str] = []
    for op in ov_model.get_ordered_ops():
        ports = WEIGHT_PORTS.get(op.get_type_name())
        if not ports:
            continue
        for port in ports:
            if port >= op.get_input_size():
                continue
            src = _source_constant(op.input_value(port))
            if src is None:
                continue
            const, zps = src
            if len(const.get_output_shape(0)) < 2:
                continue  # a scalar or 1-D operand is not a weight matrix
            key = const.get_friendly_name()
            if key not in found:
                found[key] = (const, zps, [])
                order.append(key)
            found[key][2].append(f"{op.get_type_name()}:{op.get_friendly_name()}")
    out = []
    for key in order:
        const, zps, consumers = found[key]
        constant = WeightConstant.of(
            key, const.get_data(), const.get_output_shape(0), zero_points=[zp.get_data() for zp in zps],
            tensor_names=sorted(const.get_output_tensor(0).get_names()), consumers=consumers,
            dtype=str(const.get_output_element_type(0).get_type_name()))
        if constant.numel >= min_numel:
            out.append(constant)
    return out
