"""FlexHiNM's small frozen config and its importance registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

import torch

from ..errors import ConfigError
from ..registry import Registry
from .gyro import PERMUTATIONS  # gyro registers the searches beside "none"
from .layout import M

Importance = Callable[[torch.Tensor], torch.Tensor]
IMPORTANCES: Registry[Importance] = Registry("FlexHiNM importance")


@IMPORTANCES.register("magnitude")
def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """``|w|``: what NVIDIA ASP keeps, and what the permutation benchmark measures."""
    return weight.detach().abs()


@IMPORTANCES.register("squared")
def squared(weight: torch.Tensor) -> torch.Tensor:
    """``w^2``: OBD/OBS saliency with an identity Hessian (a second-order score that needs no data)."""
    return weight.detach().pow(2)


@dataclass(frozen=True)
class FlexHiNMConfig:
    """How FlexHiNM prunes; per-layer *amounts* come separately (a Mix-and-Match strategy).

    ``permutation``: ``"gyro"``, ``"greedy"`` or ``"none"`` (any name in ``PERMUTATIONS``).
    ``importance``: a name in ``IMPORTANCES``, used when no score tensors are given.
    ``tile_rows``: output channels per row tile (multiple of 4); ``None`` = the whole layer, which
    lets a layer split into one 2:4 GEMM plus one dense GEMM without a custom kernel.
    ``effort``: multiplies the permutation search budget. ``verify_atol``: tolerance of the check
    that folded permutations leave the model's outputs unchanged (needs ``example_inputs``).
    """

    permutation: str = "gyro"
    importance: str = "magnitude"
    tile_rows: int | None = 64
    seed: int = 0
    effort: int = 1
    verify_atol: float = 1e-5

    def __post_init__(self) -> None:
        if self.permutation not in PERMUTATIONS:
            PERMUTATIONS.get(self.permutation, where="FlexHiNMConfig.permutation")
        if self.importance not in IMPORTANCES:
            IMPORTANCES.get(self.importance, where="FlexHiNMConfig.importance")
        if self.tile_rows is not None and (int(self.tile_rows) <= 0 or int(self.tile_rows) % M):
            raise ConfigError(
                f"FlexHiNMConfig.tile_rows must be None or a positive multiple of {M}, got {self.tile_rows}"
            )
        if int(self.effort) < 1:
            raise ConfigError(f"FlexHiNMConfig.effort must be >= 1, got {self.effort}")
        if not self.verify_atol > 0:
            raise ConfigError(f"FlexHiNMConfig.verify_atol must be > 0, got {self.verify_atol}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> FlexHiNMConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"FlexHiNMConfig: unknown field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**dict(data))
