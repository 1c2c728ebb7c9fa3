"""Deployment backends, found by name: a backend turns a model into a deployable file whose zeros are
checked against the plan, and times pruned models against the dense one.

Backends register through the ``mm_plugin.backends`` entry-point group (OpenVINO for CPUs ships with
the adapters), so neither the core nor another adapter imports them: both ask this registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..registry import Registry


class Timer(Protocol):
    """Built once per run from the dense model; ``time(pruned)`` gives (dense ms, pruned ms). Models are
    PyTorch modules or the backend's own files (an OpenVINO IR)."""

    def time(self, pruned: nn.Module | Any) -> tuple[float, float]: ...


class Backend(Protocol):
    """What a backend module offers (see ``mm_plugin.adapters.openvino``)."""

    def Timer(self, dense: nn.Module | Any, example_inputs: Any, **settings: int) -> Timer: ...

    def export(self, model: nn.Module, example_inputs: Any, path: Path, *, compress_to_fp16: bool = False) -> Path: ...

    def weight_constants(self, path: Path) -> Sequence[Any]: ...

    def match_params(self, constants: Sequence[Any], expected_zero_masks: Mapping[str, torch.Tensor]) -> list[Any]: ...

    def quantize_int8(self, model: Any, calibration: Sequence[Any]) -> Any: ...

    def save(self, model: Any, path: Path) -> Path: ...

    def predict(self, model: Any, batches: Any) -> tuple[Any, Any]: ...


BACKENDS: Registry[Any] = Registry("deployment backend", entry_point_group="mm_plugin.backends")


def backend(name: str = "openvino") -> Backend:
    return BACKENDS.get(name)
