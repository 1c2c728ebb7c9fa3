"""The model side of planning: units (weights or channel groups), the weight inventory, ignored scopes,
example inputs."""

from .attention import attention_modules, update_attention_
from .inputs import InputInfo, make_inputs, to_numpy
from .inventory import (
    PRUNABLE_TYPES,
    Trace,
    check_forward,
    count_params,
    count_prunable,
    forward_eval,
    inventory,
    names_of,
    param_owner,
    prunable_weights,
    resolve_names,
    submodule,
    trace,
)
from .scope import IgnoredScope, closest_names, edit_distance, op_type
from .units import KINDS, UNIT_KINDS, ChannelGroup, Inventory, SkippedParam, Unit, group_units

__all__ = [
    "KINDS", "PRUNABLE_TYPES", "UNIT_KINDS", "ChannelGroup", "IgnoredScope", "InputInfo", "Inventory", "SkippedParam",
    "Trace", "Unit", "attention_modules", "check_forward", "closest_names", "count_params", "count_prunable", "edit_distance",
    "forward_eval", "group_units", "inventory", "make_inputs",
    "names_of", "op_type", "param_owner", "prunable_weights", "resolve_names", "submodule", "to_numpy", "trace",
    "update_attention_",
]
