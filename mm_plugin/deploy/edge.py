"""What an edge engineer decides on: each candidate model as the file that ships, in fp32 and in int8
(post-training quantization of the IR on calibration images), with the test accuracy and macro-F1 of that
file itself, its CPU latency and its size on disk (and gzipped, where unstructured zeros do pay off)."""

from __future__ import annotations

import copy
import gzip
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..masks import bake_masks_
from ..metrics import macro_f1
from .backends import backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EdgeRow:
    """One deployable file: which model, its precision, and what it measures."""

    name: str
    precision: str  # "fp32" or "int8"
    accuracy: float
    macro_f1: float
    latency_ms: float  # median of synchronous CPU inference, one thread, batch 1
    latency_ratio: float  # over the dense fp32 file's, timed in alternating blocks with it
    size_mb: float  # the weights file on disk
    gzip_mb: float  # the same file gzipped: what unstructured zeros save in storage and transfer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sizes(xml: Path) -> tuple[float, float]:
    data = xml.with_suffix(".bin").read_bytes()
    return len(data) / 1e6, len(gzip.compress(data, compresslevel=6)) / 1e6


def edge_rows(models: Mapping[str, nn.Module], example_inputs: Any, calibration: Sequence[Any],
              test_batches: Iterable[tuple[Any, Any]], num_classes: int, out: str | Path, *,
              int8: bool = True, backend_name: str = "openvino") -> list[EdgeRow]:
    """Every model exported (masks baked into a copy) to ``out/<name>-fp32.xml`` and, with ``int8``,
    quantized to ``out/<name>-int8.xml`` with ``calibration`` inputs; each file scored on ``test_batches``
    and timed against the first model's fp32 file in alternating blocks (the backend's ``Timer``: drift of a
    busy machine hits both). The test split is read here only: call it once every selection is made."""
    deploy = backend(backend_name)
    out = Path(out)
    batches = list(test_batches)
    rows, timer = [], None
    for name, model in models.items():
        plain = bake_masks_(copy.deepcopy(model)).eval()
        files = {"fp32": deploy.export(plain, example_inputs, out / f"{name}-fp32.xml")}
        if int8:
            quantized = deploy.quantize_int8(files["fp32"], calibration)
            files["int8"] = deploy.save(quantized, out / f"{name}-int8.xml")
        timer = timer or deploy.Timer(files["fp32"], example_inputs)
        for precision, xml in files.items():
            pred, true = deploy.predict(xml, batches)
            reference_ms, latency = timer.time(xml)
            accuracy = float((pred == true).mean())
            rows.append(EdgeRow(name, precision, accuracy, macro_f1(pred, true, num_classes), latency,
                                latency / reference_ms, *_sizes(xml)))
            log.info("%s %s: accuracy %.4f, %.2f ms (%.2fx), %.2f MB", name, precision, accuracy, latency,
                     latency / reference_ms, rows[-1].size_mb)
    return rows
