"""What ``ctrl.statistics()`` reports: the plan beside what the model computes with, per weight (or per
channel group when filter-pruning options made the step structured)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mm_plugin.tables import format_table


@dataclass(frozen=True)
class LayerStatistic:
    name: str  # parameter name == NNCF weight constant name (structured: the group's key module)
    kind: str  # the core's unit kind
    metatype: str  # NNCF metatype of the op(s) using the weight ("channels" for a group)
    shape: tuple[int, ...]
    numel: int  # weights (structured: channels)
    planned_ratio: float
    ratio: float  # from nncf.pruning_statistic (masks), the weights once baked, or channels kept
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
    unplanned: tuple[str, ...]  # NNCF prunable weights outside the core inventory: left dense
    ignored: tuple[str, ...]  # weights left dense by ignored_scopes
    quantized: bool
    left_dense: dict[str, str]  # flexhinm: planned weights it left dense, with the reason
    source: str  # "nncf.pruning_statistic", "weights" or "torch_pruning"
    structured: bool = False
    schedule_level: float | None = None  # the gradual schedule's current level, when there is one
    nncf: Any = field(default=None, repr=False, compare=False)  # NNCF's ModelPruningStatistic while masks are hooks

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "nncf"}

    def to_str(self, max_rows: int | None = None) -> str:
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
