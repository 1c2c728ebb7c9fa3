"""Planning: signals and allocations score units, rules and views give ranges, strategies sit inside
them, budgets rescale a strategy to a target. :func:`plan_units` runs it over any units."""

from .allocations import ALLOCATIONS, AllocationInputs, list_allocations, register_allocation
from .budget import bisect, rescale, unit_costs
from .check import ChannelReport, GroupRow, kept_report
from .plan import Plan, effective_weights, plan, plan_units
from .ranges import (
    DEFAULT_TARGETS,
    RANGE_MODES,
    allocation_views,
    around,
    default_allocations,
    threshold_views,
)
from .rules import DEFAULT_RULES, Rule, load_rules, resolve_rules
from .schedule import SCHEDULES, Schedule
from .signals import SIGNALS, calibration_losses, compute_scores, list_signals, register_signal, split_batch
from .strategies import NAMED_STRATEGIES, Strategy

__all__ = [
    "ALLOCATIONS", "DEFAULT_RULES", "DEFAULT_TARGETS", "NAMED_STRATEGIES", "RANGE_MODES", "SCHEDULES", "SIGNALS",
    "AllocationInputs", "around", "ChannelReport", "GroupRow", "Plan", "Rule", "Schedule", "Strategy", "allocation_views", "bisect", "calibration_losses",
    "compute_scores", "default_allocations", "effective_weights", "kept_report", "list_allocations", "list_signals",
    "load_rules", "plan", "plan_units", "register_allocation", "register_signal", "rescale", "resolve_rules",
    "split_batch", "threshold_views", "unit_costs",
]
