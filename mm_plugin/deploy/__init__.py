"""Deployment: backends found by name (OpenVINO ships with the adapters), the check that an exported
file kept the plan's zeros, and the timing protocol for latency."""

from .backends import BACKENDS, Backend, Timer, backend
from .timing import Latency, LatencyPoint, interleaved, latency_front, time_calls
from .verify import ParamMatch, WeightConstant, match_params

__all__ = [
    "BACKENDS", "Backend", "Latency", "LatencyPoint", "ParamMatch", "Timer", "WeightConstant", "backend",
    "interleaved", "latency_front", "match_params", "time_calls",
]
