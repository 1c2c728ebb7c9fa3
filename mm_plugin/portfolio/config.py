"""The settings that decide a run's numbers: a run folder belongs to exactly one :class:`RunConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ValidationError, check_fraction
from .patterns import get_pattern


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's numbers; a run folder belongs to exactly one of these."""

    model: str
    data: str = "mnist"
    signals: tuple[str, ...] = ("magnitude",)
    strategies: tuple[str, ...] | None = None  # None: every planned strategy
    baselines: tuple[str, ...] | None = None  # None: the pattern's (GMP, LAMP, ERK; TP uniform and global)
    targets: tuple[float, ...] | None = None  # None: the pattern's; empty: strategies at their own sparsity
    epochs: int = 2
    lr: float = 5e-4
    patience: int | None = 3
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 128
    calibration_batches: int = 4
    range_targets: tuple[float, ...] | None = None  # None: the pattern's
    rules: Any = None  # list of rule dicts or a path
    dense_epochs: int | None = None  # built-ins: their recipe; other models: 0 = use the weights as given
    sparsity: str = "unstructured"  # a pattern name: "flexhinm", or "structured" (Torch-Pruning channels)

    def __post_init__(self) -> None:
        pattern = get_pattern(self.sparsity)
        for name in ("baselines", "targets", "range_targets"):  # fill defaults, so config.json says them
            if getattr(self, name) is None:
                object.__setattr__(self, name, tuple(getattr(pattern, f"default_{name}")))
        pattern().check(self)
        for t in self.targets:
            check_fraction(t, "target sparsity")
        if self.epochs < 0:
            raise ValidationError(f"epochs must be >= 0, got {self.epochs}")
        if not self.seeds:
            raise ValidationError("give at least one seed")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
