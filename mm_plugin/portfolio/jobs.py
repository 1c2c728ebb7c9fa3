"""The data a run passes around: one job per (method, signal, strategy or baseline, target, seed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..planning import Plan
from ..training import DataSplits

if TYPE_CHECKING:
    from .config import RunConfig


@dataclass(frozen=True)
class Job:
    method: str  # "mix_and_match" or "baseline"
    signal: str
    name: str  # strategy or allocation
    target: float | None
    seed: int
    sparsity: dict[str, float] = field(compare=False, hash=False)
    rung: int | None = None  # a search candidate's rung: 0 one-shot, 1 short fine-tune, 2 full

    @property
    def config_key(self) -> str:
        t = "natural" if self.target is None else f"{self.target:.4f}"
        return f"{self.method}/{self.signal}/{self.name}/{t}" + ("" if self.rung is None else f"/rung{self.rung}")

    @property
    def key(self) -> str:
        return f"{self.config_key}/seed{self.seed}"


@dataclass(frozen=True)
class BaselineJob:
    name: str
    signal: str
    sparsity: dict[str, float]  # per planned unit; empty when the baseline sets it itself


@dataclass
class RunContext:
    """What every step of a run may read: the settings, the dense model and its data."""

    config: RunConfig
    dense: nn.Module
    example: torch.Tensor
    calibration: list | None  # (inputs, targets) batches, when a signal or baseline needs gradients
    plans: dict[str, Plan]
    data: DataSplits | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # a pattern's per-run memo (compiled models...)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per run, kept in :attr:`cache` under ``key``."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def batches(self) -> list:
        """``config.calibration_batches`` fixed training batches, for BatchNorm re-estimation and
        reconstruction (``calibration`` stays what signals and baselines read, so plans do not change)."""
        return self.memo("batches", lambda: self.data.calibration(self.config.calibration_batches))
