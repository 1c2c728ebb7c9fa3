"""The model side of planning: units (weights or channel groups), the weight inventory, ignored scopes."""

from .inventory import PRUNABLE_TYPES, Trace, forward_eval, inventory, trace
from .scope import IgnoredScope, op_type
from .units import KINDS, UNIT_KINDS, Inventory, SkippedParam, Unit

__all__ = [
    "KINDS", "PRUNABLE_TYPES", "UNIT_KINDS", "IgnoredScope", "Inventory", "SkippedParam", "Trace", "Unit",
    "forward_eval", "inventory", "op_type", "trace",
]
