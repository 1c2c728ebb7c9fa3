"""Choosing layers by name, regex pattern or type, with NNCF's ``IgnoredScope`` semantics."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ValidationError

if TYPE_CHECKING:
    from .inventory import LayerInfo


@dataclass(frozen=True)
class IgnoredScope:
    """Layers to leave dense.

    ``names`` match a layer's module or parameter name exactly, ``patterns`` are regular expressions
    matched with ``re.fullmatch`` against the module name (as NNCF does), ``types`` match the layer kind
    (``"head"``, ``"attention"``...) or the module's class name (``"Conv2d"``, ``"Linear"``).
    ``validate=True`` makes a name or pattern that matches nothing an error, like NNCF's strict mode.
    """

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    validate: bool = True
    _compiled: tuple[re.Pattern, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for attr in ("names", "patterns", "types"):
            value = getattr(self, attr)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, attr, tuple(value))
        compiled = []
        for p in self.patterns:
            try:
                compiled.append(re.compile(p))
            except re.error as e:
                raise ValidationError(f"ignored scope pattern {p!r} is not a valid regular expression: {e}") from None
        object.__setattr__(self, "_compiled", tuple(compiled))

    @classmethod
    def from_any(cls, value: Any) -> IgnoredScope | None:
        """Accept an IgnoredScope, a dict with names/patterns/types, a list of names, or None."""
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

    def matches(self, layer: LayerInfo, class_name: str = "") -> bool:
        return (
            layer.module in self.names
            or layer.name in self.names
            or any(p.fullmatch(layer.module) for p in self._compiled)
            or layer.kind in self.types
            or (class_name != "" and class_name in self.types)
        )

    def check_used(self, layers: list[LayerInfo]) -> None:
        """With ``validate``, fail on names or patterns that match no layer (typos are silent otherwise)."""
        if not self.validate:
            return
        known = {layer.module for layer in layers} | {layer.name for layer in layers}
        missing = [n for n in self.names if n not in known]
        missing += [p.pattern for p in self._compiled if not any(p.fullmatch(layer.module) for layer in layers)]
        if missing:
            raise ValidationError(
                f"ignored scope entries {missing} match no prunable layer; "
                "check the names against `mm-prune plan` output or pass validate=False"
            )
