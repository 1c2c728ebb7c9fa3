"""The model side of planning: units (weights or channel groups), the weight inventory, ignored scopes."""

from .attention import attention_modules, update_attention_
from .inventory import (
    PRUNABLE_TYPES,
    Trace,
    forward_eval,
    inventory,
    names_of,
    prunable_weights,
    resolve_names,
    submodule,
    trace,
)
from .scope import IgnoredScope, op_type
from .units import KINDS, UNIT_KINDS, Inventory, SkippedParam, Unit

__all__ = [
    "KINDS", "PRUNABLE_TYPES", "UNIT_KINDS", "IgnoredScope", "Inventory", "SkippedParam", "Trace", "Unit",
    "attention_modules", "forward_eval", "inventory", "names_of", "resolve_names", "submodule", "op_type", "prunable_weights", "trace", "update_attention_",
]
