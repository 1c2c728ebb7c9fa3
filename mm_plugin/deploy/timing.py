"""Timing protocol shared by every backend: warm-up, repeated synchronous calls, medians; pruned and dense
models timed in alternating blocks so that drift of a busy machine hits both (:class:`BlockTimer`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from torch import nn

from ..errors import ValidationError
from ..model import count_params
from .backends import backend


@dataclass(frozen=True)
class Latency:
    """Per-call wall time of synchronous inference, in milliseconds, with the settings it ran under."""

    median_ms: float
    mean_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    warmup: int
    threads: int
    precision: str
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_calls(call: Callable[[], Any], *, warmup: int, repeats: int, **settings: Any) -> Latency:
    """``warmup`` untimed calls, then ``repeats`` timed ones; ``settings``: threads, precision, device."""
    if warmup < 0 or repeats < 1:
        raise ValidationError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return Latency(median_ms=statistics.median(times), mean_ms=statistics.fmean(times),
                   p90_ms=times[min(len(times) - 1, round(0.9 * (len(times) - 1)))], min_ms=times[0],
                   repeats=repeats, warmup=warmup, **settings)


def interleaved(time_a: Callable[[], float], time_b: Callable[[], float], rounds: int) -> tuple[float, float]:
    """Medians of ``rounds`` alternating block timings of two models."""
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        pairs = ((time_a, a), (time_b, b)) if i % 2 == 0 else ((time_b, b), (time_a, a))
        for fn, out in pairs:
            out.append(fn())
    return statistics.median(a), statistics.median(b)


class BlockTimer:
    """The protocol of a backend's ``Timer``: the dense model compiled once; ``time(pruned)`` is (dense ms,
    pruned ms), medians of ``rounds`` alternating blocks of ``runs`` calls after ``warmup`` calls of each,
    ``threads`` threads. A backend gives ``compile(model)``: a callable that runs one inference."""

    SETTINGS: ClassVar[dict[str, int]] = {"threads": 1, "warmup": 10, "rounds": 7, "runs": 20}
    precision = ""  # what the backend computes in, and on which device (recorded with each block's timing)
    device = ""

    def __init__(self, dense: nn.Module, example_inputs: Any, **settings: int) -> None:
        s = {**self.SETTINGS, **settings}
        self.inputs, self.threads, self.warmup, self.rounds, self.runs = (
            example_inputs, s["threads"], s["warmup"], s["rounds"], s["runs"])
        self.dense = self.compile(dense)

    def compile(self, model: nn.Module) -> Callable[[], Any]:
        raise NotImplementedError

    def time(self, pruned: nn.Module) -> tuple[float, float]:
        run = self.compile(pruned)
        for call in (self.dense, run):
            for _ in range(self.warmup):
                call()

        def block(call: Callable[[], Any]) -> float:
            return time_calls(call, warmup=0, repeats=self.runs, threads=self.threads, precision=self.precision,
                              device=self.device).median_ms

        return interleaved(lambda: block(self.dense), lambda: block(run), self.rounds)


@dataclass(frozen=True)
class LatencyPoint:
    """One pruned model timed against the dense one."""

    name: str
    latency_ms: float
    dense_latency_ms: float
    latency_ratio: float  # pruned / dense
    params_ratio: float


def latency_front(dense: nn.Module, example_inputs: Any, pruned: Mapping[str, nn.Module], *,
                  backend_name: str = "openvino", **settings: int) -> list[LatencyPoint]:
    """Time every pruned model (by name) against ``dense`` with one timer of the backend (``settings``:
    its ``threads``, ``warmup``, ``rounds``, ``runs``); models from any pruning toolkit work."""
    timer = backend(backend_name).Timer(dense, example_inputs, **settings)
    points = []
    for name, model in pruned.items():
        dense_ms, pruned_ms = timer.time(model)
        points.append(LatencyPoint(name, pruned_ms, dense_ms, pruned_ms / dense_ms,
                                   count_params(model) / count_params(dense)))
    return points
