"""The data a run passes around: one job per (method, signal, strategy or baseline, target, seed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from ..planning import Plan, Sensitivity
from .task import Task

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
    """What every step of a run may read: the settings, the dense model and the task that trains it."""

    config: RunConfig
    dense: nn.Module
    example: Any
    calibration: list | None  # (inputs, targets) batches, when a signal or baseline needs gradients
    plans: dict[str, Plan]
    task: Task | None = None  # None: planning and pruning only (a toolkit's one-model step)
    cache: dict[str, Any] = field(default_factory=dict)  # a pattern's per-run memo (compiled models...)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per run, kept in :attr:`cache` under ``key``."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    @property
    def loss_fn(self) -> Callable | None:
        """The loss gradient signals differentiate (None: cross-entropy of (inputs, targets) batches)."""
        return None if self.task is None else self.task.loss_fn

    def sensitivity(self) -> Sensitivity | None:
        """The measured sensitivity the run's plans use (measured before planning when the run asks for it,
        see :func:`.sensitivity.prepare_sensitivity`), else None."""
        return self.cache.get("sensitivity") if self.config.sensitivity else None

    def batches(self) -> list | None:
        """The task's calibration batches, for BatchNorm re-estimation and reconstruction (``calibration``
        stays what signals and baselines read, so plans do not change)."""
        return None if self.task is None else self.task.calibration
