"""Planning: signals and allocations score units, rules and allocations give ranges, strategies sit inside
them, budgets rescale a strategy to a target. :func:`plan_units` runs it over any units."""

from .allocations import ALLOCATIONS, AllocationInputs, list_allocations, register_allocation
from .budget import bisect, planned_target_for, rescale, unit_costs
from .check import ChannelReport, GroupRow, kept_report
from .plan import Plan, calibration_need, effective_weights, plan, plan_units
from .ranges import (
    DEFAULT_TARGETS,
    RANGE_MODES,
    around,
    bind_allocations,
    default_allocations,
    threshold_allocations,
)
from .rules import DEFAULT_RULES, Rule, load_rules, measured_bounds, resolve_rules
from .schedule import SCHEDULES, Scheduler, SparsitySchedule
from .sensitivity import DEFAULT_BATCHES, DEFAULT_GRID, Sensitivity, check_grid, min_rise_allocation
from .signals import (
    SIGNALS,
    accumulate_gradients,
    batch_inputs,
    calibration_losses,
    compute_scores,
    list_signals,
    register_signal,
    split_batch,
)
from .statistics import CompressionStatistics, LayerStatistic, channel_statistics, weight_statistics
from .strategies import NAMED_STRATEGIES, Strategy

__all__ = [
    "ALLOCATIONS",
    "DEFAULT_BATCHES",
    "DEFAULT_GRID",
    "DEFAULT_RULES",
    "DEFAULT_TARGETS",
    "NAMED_STRATEGIES",
    "RANGE_MODES",
    "SCHEDULES",
    "SIGNALS",
    "AllocationInputs",
    "ChannelReport",
    "CompressionStatistics",
    "GroupRow",
    "LayerStatistic",
    "Plan",
    "Rule",
    "Scheduler",
    "Sensitivity",
    "SparsitySchedule",
    "Strategy",
    "accumulate_gradients",
    "around",
    "batch_inputs",
    "bind_allocations",
    "bisect",
    "calibration_losses",
    "calibration_need",
    "channel_statistics",
    "check_grid",
    "compute_scores",
    "default_allocations",
    "effective_weights",
    "kept_report",
    "list_allocations",
    "list_signals",
    "load_rules",
    "measured_bounds",
    "min_rise_allocation",
    "plan",
    "plan_units",
    "planned_target_for",
    "register_allocation",
    "register_signal",
    "rescale",
    "resolve_rules",
    "split_batch",
    "threshold_allocations",
    "unit_costs",
    "weight_statistics",
]
