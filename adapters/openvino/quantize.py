"""Post-training int8 quantization of an IR with NNCF (the OpenVINO flow users deploy), and predictions of
an IR on a loader (accuracy of what actually ships, fp32 or int8)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from mm_plugin.errors import MMError
from mm_plugin.model import to_numpy

from .convert import read
from .latency import compile_for_latency


def quantize_int8(model: Any, calibration: Sequence[Any], *, subset_size: int = 300):
    """``nncf.quantize`` on an IR (path or ``openvino.Model``) with ``calibration`` inputs (tensors or
    arrays, one batch each): int8 weights and activations, NNCF's default (mixed) preset. ``subset_size``
    counts batches, at most as many as given (NNCF warns about every shortfall otherwise)."""
    try:
        import nncf
    except ImportError:
        raise MMError("int8 quantization needs NNCF: pip install 'mm-plugin[nncf]'") from None
    items = [to_numpy(x) for x in calibration]
    return nncf.quantize(read(model), nncf.Dataset(items), subset_size=min(subset_size, len(items)))


def predict(model: Any, batches: Iterable[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true classes of every sample of ``(inputs, labels)`` batches, one sample at a time (the
    IR's input shape is the example's), at f32 with one thread."""
    compiled = compile_for_latency(read(model))
    request = compiled.create_infer_request()
    preds, truth = [], []
    for x, y in batches:
        for i in range(len(y)):
            out = request.infer(to_numpy(x[i : i + 1]))
            preds.append(int(np.asarray(out[compiled.outputs[0]]).argmax()))
        truth.extend(torch.as_tensor(y).tolist())
    return np.array(preds), np.array(truth)
