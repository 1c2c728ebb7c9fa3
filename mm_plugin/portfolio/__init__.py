"""The portfolio: every strategy and baseline pruned, fine-tuned on the same budget, measured, and
gathered into a Pareto front, a report and a selection."""

from .config import RunConfig
from .executors import EXECUTORS
from .folder import load_records
from .jobs import BaselineJob, Job, RunContext
from .pareto import Aggregate, aggregate, front_of, latency_front_of
from .patterns import PATTERNS, FlexHiNMPattern, Pattern, get_pattern, pattern_names
from .runner import RunResult, run
from .select import export_selected, select

__all__ = [
    "EXECUTORS", "PATTERNS", "Aggregate", "BaselineJob", "FlexHiNMPattern", "Job", "Pattern", "RunConfig",
    "RunContext", "RunResult", "aggregate", "export_selected", "front_of", "get_pattern",
    "latency_front_of", "load_records", "pattern_names", "run", "select",
]
