"""Choosing units to leave out by name, regex pattern or operation type, as NNCF's ``IgnoredScope`` does.

The semantics are NNCF's (``nncf.scopes.get_matched_ignored_scope_info``), with a unit's module and
parameter names standing for NNCF's graph node names (NNCF names a weight constant after its
parameter): ``names`` match exactly, ``patterns`` with ``re.match`` (anchored at the start, not the
end), ``types`` equal the operation type NNCF gives a torch op (``conv2d``, ``linear``, ``embedding``).
With ``validate`` every name, pattern and type must match something, or the error lists what did not.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import ValidationError
from .units import Unit


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions of one character."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def closest_names(wanted: str, names: Sequence[str], n: int = 5) -> list[str]:
    """The ``n`` names closest to ``wanted`` by edit distance (ties by name): suggestions for a miss."""
    return sorted(names, key=lambda name: (edit_distance(wanted, name), name))[:n]


def op_type(module: nn.Module) -> str:
    """The operation type NNCF's torch graph gives the op that uses this module's weight."""
    if isinstance(module, nn.modules.conv._ConvNd):
        n = len(module.kernel_size)
        return f"conv_transpose{n}d" if module.transposed else f"conv{n}d"
    return type(module).__name__.lower()  # Linear -> linear, Embedding -> embedding


@dataclass(frozen=True)
class IgnoredScope:
    """Units to leave out of a plan: ``names``, ``patterns`` (regular expressions), ``types`` (op types)."""

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    validate: bool = True
    _compiled: tuple[re.Pattern, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for attr in ("names", "patterns", "types"):
            value = getattr(self, attr)
            object.__setattr__(self, attr, (value,) if isinstance(value, str) else tuple(value))
        compiled = []
        for p in self.patterns:
            try:
                compiled.append(re.compile(p))
            except re.error as e:
                raise ValidationError(f"ignored scope pattern {p!r} is not a valid regular expression: {e}") from None
        object.__setattr__(self, "_compiled", tuple(compiled))

    @classmethod
    def from_any(cls, value: Any) -> IgnoredScope | None:
        """Accept an IgnoredScope, a dict with names/patterns/types/validate, a list of names, or None."""
        if value is None or isinstance(value, IgnoredScope):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"names", "patterns", "types", "validate"}
            if unknown:
                raise ValidationError(
                    f"ignored scope has unknown keys {sorted(unknown)}; allowed: names, patterns, types, validate"
                )
            return cls(**value)
        if isinstance(value, (list, tuple)):
            return cls(names=tuple(value))
        raise ValidationError(f"ignored scope must be a dict, a list of names or IgnoredScope, got {value!r}")

    def _hits(self, unit: Unit, op: str) -> tuple[set[str], set[str], set[str]]:
        keys = (unit.module, unit.name)
        return ({n for n in self.names if n in keys},
                {p.pattern for p in self._compiled if any(p.match(k) for k in keys)},
                {t for t in self.types if t == op})

    def select(self, units: Sequence[Unit], ops: Sequence[str]) -> list[Unit]:
        """The units this scope leaves in; with ``validate``, an entry that matches nothing is an error."""
        hits = [self._hits(u, op) for u, op in zip(units, ops)]
        if self.validate:
            missing = {what: [x for x in entries if not any(x in h[i] for h in hits)]
                       for i, (what, entries) in enumerate(
                           (("names", self.names), ("patterns", self.patterns), ("types", self.types)))}
            missing = {k: v for k, v in missing.items() if v}
            if missing:
                keys = [k for u in units for k in (u.module, u.name)]
                close = difflib.get_close_matches(next(iter(missing.values()))[0], keys + list(ops), n=5)
                raise ValidationError(
                    "ignored scope entries match no prunable unit: "
                    + "; ".join(f"{k} {v}" for k, v in missing.items())
                    + f" (closest: {', '.join(dict.fromkeys(close)) or 'none'}; types are op types such as "
                    f"{', '.join(sorted(set(ops)))}); check against `mm-prune plan` output or pass validate=False"
                )
        return [u for u, h in zip(units, hits) if not any(h)]
