"""The plan beside what a model computes with, per unit: planned ratio, measured ratio and zeros, for
weights (zeros read from the weights, or measured by a toolkit) or for channel groups (channels removed,
from a structured record). Every adapter reports through these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..tables import format_table
from .plan import Plan
from .strategies import Strategy


@dataclass(frozen=True)
class LayerStatistic:
    name: str  # parameter name (structured: the group's key module)
    kind: str  # the core's unit kind
    metatype: str  # the toolkit's op type(s) using the weight ("channels" for a group)
    shape: tuple[int, ...]
    numel: int  # weights (structured: channels)
    planned_ratio: float
    ratio: float  # as measured by the toolkit, from the weights once baked, or channels removed
    zeros: int  # zero weights (structured: channels removed)


@dataclass(frozen=True)
class CompressionStatistics:
    algorithm: str
    strategy: str
    target_sparsity: float | None  # the step's target (structured: fraction of multiply-adds to remove)
    planned_ratio: float  # the plan's global sparsity over the planned weights (structured: the target)
    pruning_ratio: float  # zeros / planned weights, as measured (structured: multiply-adds removed)
    global_pruning_ratio: float  # zeros (or parameters removed) / all parameters of the model
    layers: tuple[LayerStatistic, ...]
    unplanned: tuple[str, ...]  # prunable weights outside the core inventory: left dense
    ignored: tuple[str, ...]  # weights left dense by the ignored scopes
    quantized: bool
    left_dense: dict[str, str]  # flexhinm: planned weights it left dense, with the reason
    source: str  # where the measured figures come from ("weights", or the toolkit that measured them)
    structured: bool = False
    schedule_level: float | None = None  # the gradual schedule's current level, when there is one
    nncf: Any = field(default=None, repr=False, compare=False)  # the toolkit's own statistics object, if any

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "nncf"}

    def to_str(self, max_rows: int | None = None) -> str:
        # op types are shown without NNCF's "PT...Metatype" wrapping
        rows = [[s.name, s.kind, s.metatype.removeprefix("PT").removesuffix("Metatype"), "x".join(map(str, s.shape)),
                 f"{s.planned_ratio:.4f}", f"{s.ratio:.4f}"] for s in self.layers]
        total = "MULTIPLY-ADDS" if self.structured else "PLANNED WEIGHTS"
        footer = [[total, "", "", "", f"{self.planned_ratio:.4f}", f"{self.pruning_ratio:.4f}"],
                  ["ALL PARAMETERS", "", "", "", "", f"{self.global_pruning_ratio:.4f}"]]
        title = (f"{self.algorithm}{' (structured: channels removed)' if self.structured else ''}: strategy "
                 f"{self.strategy}" + (f", target {self.target_sparsity:g}" if self.target_sparsity is not None else "")
                 + (f", scheduled level {self.schedule_level:g}" if self.schedule_level is not None else "")
                 + (", int8" if self.quantized else "") + f" (source: {self.source})")
        extra = [f"dense by ignored_scopes: {len(self.ignored)} weights"] if self.ignored else []
        extra += [f"dense, outside the Mix-and-Match inventory: {', '.join(self.unplanned)}"] if self.unplanned else []
        extra += [f"dense, left by FlexHiNM: {name} ({reason})" for name, reason in self.left_dense.items()]
        header = ["group" if self.structured else "weight", "kind", "metatype", "shape", "planned",
                  "removed" if self.structured else "masked"]
        table = format_table(header, rows, 4, max_rows=max_rows, footer=footer)
        return "\n".join([title, table, *extra])

    __str__ = to_str


def weight_statistics(model: nn.Module, plan: Plan, strategy: Strategy, *,
                      measured: Mapping[str, float] | None = None, ops: Mapping[str, Sequence[str]] | None = None,
                      source: str = "weights", **fields: Any) -> CompressionStatistics:
    """Per planned weight: the strategy's ratio beside the measured one, ``measured`` by a toolkit
    (``{weight: ratio}``) or, without it, the zeros of the weights themselves; ``ops``: the op types
    using each weight. ``fields``: the other :class:`CompressionStatistics` fields (``algorithm``,
    ``target_sparsity``, ``unplanned``, ``ignored``, ``quantized``, ``left_dense`` ...); the global
    ratios are computed here unless given."""
    layers = []
    for u in plan.units:
        if measured is None:
            zeros = int((model.get_parameter(u.name) == 0).sum())
            ratio = zeros / u.params
        else:
            ratio = float(measured.get(u.name, 0.0))
            zeros = round(ratio * u.params)
        layers.append(LayerStatistic(
            name=u.name, kind=u.kind, metatype="/".join(dict.fromkeys((ops or {}).get(u.name, ()))),
            shape=tuple(u.shape), numel=u.params, planned_ratio=float(strategy.sparsity[u.name]), ratio=ratio,
            zeros=zeros))
    total = sum(s.zeros for s in layers)
    fields.setdefault("pruning_ratio", total / sum(s.numel for s in layers))
    fields.setdefault("global_pruning_ratio", total / sum(p.numel() for p in model.parameters()))
    return CompressionStatistics(strategy=strategy.name, planned_ratio=float(plan.global_sparsity(strategy)),
                                 layers=tuple(layers), source=source, **fields)


def channel_statistics(plan: Plan, strategy: Strategy, record: Mapping[str, Any], *, target: float,
                       source: str, **fields: Any) -> CompressionStatistics:
    """Per channel group: the strategy's ratio beside the channels a structured ``record`` says were
    removed (``layer_sparsity``, ``macs_ratio``, ``sparsity``); the global ratios are multiply-adds and
    parameters removed, ``target`` the fraction of multiply-adds asked for."""
    layers = []
    for u in plan.units:
        channels, removed = u.items * u.copies, float(record["layer_sparsity"][u.name])
        layers.append(LayerStatistic(name=u.name, kind=u.kind, metatype="channels", shape=(channels,),
                                     numel=channels, planned_ratio=float(strategy.sparsity[u.name]),
                                     ratio=removed, zeros=round(removed * channels)))
    return CompressionStatistics(
        strategy=strategy.name, target_sparsity=target, planned_ratio=target,
        pruning_ratio=1.0 - float(record["macs_ratio"]), global_pruning_ratio=float(record["sparsity"]),
        layers=tuple(layers), unplanned=(), left_dense={}, source=source, structured=True, **fields)
