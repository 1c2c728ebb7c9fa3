"""Deployment: backends found by name (OpenVINO ships with the adapters), the check that an exported
file kept the plan's zeros, the timing protocol for latency, and the edge comparison of shipped files."""

from .backends import BACKENDS, Backend, Timer, backend
from .edge import EdgeRow, edge_rows
from .timing import BlockTimer, Latency, LatencyPoint, interleaved, latency_front, time_calls
from .verify import ExportReport, ParamMatch, WeightConstant, check_export, export_checked, match_params

__all__ = [
    "BACKENDS", "Backend", "BlockTimer", "EdgeRow", "ExportReport", "Latency", "LatencyPoint", "ParamMatch", "Timer",
    "WeightConstant", "backend", "check_export", "edge_rows", "export_checked", "interleaved", "latency_front", "match_params",
    "time_calls",
]
