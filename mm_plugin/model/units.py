"""Units: what one sparsity value applies to.

A unit is one weight tensor (unstructured, N:M and hybrid masks) or one group of coupled channels
(structured pruning, from a toolkit's dependency graph). The planning engine reads only the fields
below, so rules, ranges, strategies and budgets are computed once for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


#: The kinds that name a channel group when one of its producers has them, most telling first.
_GROUP_KINDS = ("patch_embedding", "embedding", "head")


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned together, as a toolkit's dependency graph finds them."""

    key: str  # the module the group's ratio is keyed by
    channels: int  # all heads together
    heads: int  # equal parts the channels split into (attention heads), each keeping the same count
    members: tuple[str, ...]  # every module the channels index
    producers: tuple[str, ...]  # members met first through their output channels
    attention: bool
    params: int  # weights the channels index
    macs: int  # multiply-adds per inference of those weights
    probe: tuple[str, str]  # (module, "out" | "in"): where the group's channel count is read


def group_units(groups: Sequence[ChannelGroup], layers: Mapping[str, Unit]) -> list[Unit]:
    """Channel groups as units, in the order their first producer runs, each with the kind of its most
    telling layer; ``layers``: the model's weight units by module (see :func:`inventory`)."""
    def layers_of(member: str) -> list[Unit]:
        return [u for m, u in layers.items() if m == member or m.startswith(member + ".")]

    ranked = []
    for g in groups:
        producers = [u for m in g.producers for u in layers_of(m)] or layers_of(g.key)
        kinds = {u.kind for u in producers}
        key_kind = layers[g.key].kind if g.key in layers else "linear"
        kind = next((k for k in _GROUP_KINDS if k in kinds), "attention" if g.attention else key_kind)
        ranked.append((min((u.order for u in producers), default=len(layers)), g.key, kind, g))
    ranked.sort(key=lambda r: r[:2])
    n = len(ranked)
    return [
        Unit(name=g.key, module=g.key, kind=kind, shape=(g.channels,), params=max(int(g.params), 1), order=i,
             depth=i / (n - 1) if n > 1 else 0.0, stage=layers[g.key].stage if g.key in layers else "",
             block=layers[g.key].block if g.key in layers else "", macs=int(g.macs), items=g.channels // g.heads,
             copies=g.heads, members=g.members, probe=g.probe)
        for i, (_, _, kind, g) in enumerate(ranked)
    ]
