"""Units: what one sparsity value applies to.

A unit is one weight tensor (unstructured, N:M and hybrid masks) or one group of coupled channels
(structured pruning, from a toolkit's dependency graph). The planning engine reads only the fields
below, so rules, ranges, strategies and budgets are computed once for both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: What a unit's kind may be (from module types and the structure around a module).
KINDS = (
    "conv",
    "depthwise_conv",
    "grouped_conv",
    "linear",
    "attention",
    "mlp",
    "embedding",
    "patch_embedding",
    "head",
)

#: ``Plan.unit_kind``: per-weight sparsity, or a fraction of each channel group removed.
UNIT_KINDS = ("weight", "channel_group")


@dataclass(frozen=True)
class Unit:
    """One unit of a plan.

    ``name`` keys the unit in strategies (a parameter name such as ``layer1.0.conv1.weight``, or a
    group's key module). ``items`` is what a sparsity value counts: a weight's entries, or a group's
    channels per head (``copies`` heads keep the same count). ``params`` / ``macs`` are the weights and
    multiply-adds per inference the unit's sparsity removes a share of, which is what global budgets
    weigh. ``members`` and ``probe`` (module, "out" | "in") say which modules a group spans and where
    its channel count is read.
    """

    name: str
    module: str
    kind: str
    shape: tuple[int, ...]
    params: int
    order: int  # position in execution order among the plan's units
    depth: float  # order / (n - 1): 0 = first, 1 = last
    stage: str = ""
    block: str = ""
    macs: int = 0
    items: int = 0  # 0: the same as params (a weight's entries)
    copies: int = 1
    members: tuple[str, ...] = ()
    probe: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.items:
            object.__setattr__(self, "items", self.params)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("shape", "members", "probe"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Unit:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for key in ("shape", "members", "probe"):
            values[key] = tuple(values.get(key, ()))
        return cls(**values)


@dataclass(frozen=True)
class SkippedParam:
    name: str
    shape: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class Inventory:
    units: list[Unit]
    skipped: list[SkippedParam] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]

    @property
    def total_params(self) -> int:
        return sum(u.params for u in self.units)

    def __getitem__(self, name: str) -> Unit:
        for unit in self.units:
            if unit.name == name:
                return unit
        raise KeyError(name)
