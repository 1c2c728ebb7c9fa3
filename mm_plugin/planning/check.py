"""Did structured pruning do what the plan asked? Items (channels) each unit kept, against the strategy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UnsupportedModelError
from ..tables import format_table
from .plan import Plan
from .strategies import Strategy


@dataclass(frozen=True)
class GroupRow:
    group: str
    kind: str
    channels: int  # before pruning (all heads)
    expected: int  # after pruning, from the strategy (and round_to)
    actual: int  # after pruning, measured on the model
    ratio: float  # the strategy's ratio for the group

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass(frozen=True)
class ChannelReport:
    strategy: str
    rows: list[GroupRow]
    params_before: int
    params_after: int

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def channel_ratio(self) -> float:
        """Fraction of all group channels removed."""
        before = sum(r.channels for r in self.rows)
        return 1.0 - sum(r.actual for r in self.rows) / before if before else 0.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def mismatches(self) -> list[GroupRow]:
        return [r for r in self.rows if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "params_before": self.params_before, "params_after": self.params_after,
                "channel_ratio": self.channel_ratio, "rows": [asdict(r) for r in self.rows]}

    def table(self) -> str:
        title = (f"strategy {self.strategy}: params {self.params_before:,} -> {self.params_after:,} "
                 f"({self.params_ratio:.3f}x), channels removed {self.channel_ratio:.3f}")
        rows = [[r.group, r.kind, f"{r.ratio:.3f}", r.channels, r.expected, r.actual, "" if r.ok else "MISMATCH"]
                for r in self.rows]
        return title + "\n" + format_table(["group", "kind", "ratio", "before", "expected", "actual", ""], rows, 2)

    def check(self, plan: Plan, hint: str) -> None:
        """Raise, naming each group and its layers, when pruning left channels the plan took away."""
        bad = self.mismatches()
        if not bad:
            return
        units = {u.name: u for u in plan.units}
        details = "; ".join(
            f"group '{r.group}' ({r.kind}; layers {', '.join(units[r.group].members[:4])}"
            f"{', ...' if len(units[r.group].members) > 4 else ''}): expected {r.expected} channels, got {r.actual}"
            for r in bad[:5]
        )
        raise UnsupportedModelError(f"{len(bad)} group(s) were not pruned as planned, so layers would be silently "
                                    f"left unpruned: {details}. {hint}")


def kept_report(plan: Plan, strategy: Strategy | str, actual: Mapping[str, int], round_to: int | None,
                params_before: int, params_after: int) -> ChannelReport:
    """Each unit's items (all heads) after pruning, ``actual``, against what ``strategy`` asked for."""
    s = plan.strategy(strategy)
    kept = plan.kept(s, round_to)
    rows = [GroupRow(u.name, u.kind, u.items * u.copies, kept[u.name] * u.copies, actual[u.name],
                     float(s.sparsity[u.name])) for u in plan.units]
    return ChannelReport(s.name, rows, params_before, params_after)
