"""The portfolio: every strategy and baseline pruned, fine-tuned on the same budget, measured, and
gathered into a Pareto front, a report and a selection; the strategy search; the verbs over a user's
model and loop (:func:`search`, :func:`portfolio`) and the engine they share (:func:`run`)."""

from .config import RunConfig
from .executors import EXECUTORS
from .folder import load_records
from .jobs import BaselineJob, Job, RunContext
from .pareto import Aggregate, aggregate, front_of, latency_front_of
from .patterns import PATTERNS, FlexHiNMPattern, Pattern, get_pattern, pattern_names
from .resolve import TaskSpec, resolve_task
from .runner import RunResult, run
from .select import export_selected, select
from .sensitivity import measure_sensitivity, plot_sensitivity, sensitivity_report
from .task import Task, classification_task
from .verbs import portfolio, search

__all__ = [
    "EXECUTORS", "PATTERNS", "Aggregate", "BaselineJob", "FlexHiNMPattern", "Job", "Pattern", "RunConfig",
    "RunContext", "RunResult", "Task", "TaskSpec", "aggregate", "classification_task", "export_selected",
    "front_of", "get_pattern", "latency_front_of", "load_records", "measure_sensitivity", "pattern_names", "plot_sensitivity",
    "portfolio", "resolve_task", "run", "search", "select", "sensitivity_report",
]
