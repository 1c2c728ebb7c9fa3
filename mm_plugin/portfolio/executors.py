"""Where a run's jobs execute: one after another in this process (the default), or as tasks on a Ray
cluster. Either way the driver (the ``mm-prune run`` process) is the only writer of the run folder: a
task returns its record and checkpoint payload, the driver checks, times and appends them, so records
stay atomic and unique whatever fails on the way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import torch
from tqdm import tqdm

from ..errors import ConfigError
from ..registry import Registry

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs ``fn(shared, item)`` for every item; ``shared`` (model, data, plans) is sent once."""

    def map(self, fn: Callable[[Any, T], R], shared: Any, items: Sequence[T], desc: str = "") -> Iterator[tuple[T, R]]:
        """(item, result) pairs as they finish."""
        ...

    def close(self) -> None: ...


def _threaded(fn: Callable[[Any, T], R], threads: int, shared: Any, item: T) -> R:
    """``fn`` on ``threads`` intra-op threads: the same per task wherever it runs, so results agree."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(shared, item)
    finally:
        torch.set_num_threads(before)


class Sequential:
    """Every job in this process, in order."""

    def __init__(self, cpus_per_trial: int | None = None, progress: bool = True) -> None:
        self.threads = cpus_per_trial or torch.get_num_threads()
        self.progress = progress

    def map(self, fn, shared, items, desc=""):
        for item in tqdm(items, desc=desc, disable=not self.progress or len(items) < 2, unit="job", leave=False):
            yield item, _threaded(fn, self.threads, shared, item)

    def close(self) -> None:
        pass


class Ray:
    """Each job a Ray task with ``cpus_per_trial`` CPUs; a task lost with its worker is retried by Ray.

    Without ``address`` a local Ray starts with this machine's cores; with it the run joins that
    cluster (``ray start --head`` on one machine, ``ray start --address=HEAD:6379`` on the others).
    """

    MAX_RETRIES = 3

    def __init__(self, address: str | None = None, cpus_per_trial: int | None = None, progress: bool = True) -> None:
        cpus_per_trial = cpus_per_trial or 1
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'mm-plugin[ray]'") from None
        self.ray, self.cpus, self.progress = ray, cpus_per_trial, progress
        self.owns = not ray.is_initialized()
        if self.owns:
            ray.init(address=address, num_cpus=None if address else os.cpu_count(), include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True)
        self.remote = ray.remote(num_cpus=cpus_per_trial, max_retries=self.MAX_RETRIES)(_threaded)
        self._shared: tuple[int, Any] | None = None

    def map(self, fn, shared, items, desc=""):
        ray = self.ray
        if self._shared is None or self._shared[0] != id(shared):  # the model, data and plans go in once
            self._shared = (id(shared), ray.put(shared))
        pending = {self.remote.remote(fn, self.cpus, self._shared[1], item): item for item in items}
        bar = tqdm(total=len(items), desc=desc, disable=not self.progress, unit="job", leave=False)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(done[0])
            bar.update()
            bar.set_postfix(running=min(len(pending), int(ray.available_resources().get("CPU", 0) + 1)),
                            queued=len(pending))
            yield item, ray.get(done[0])
        bar.close()

    def close(self) -> None:
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()


EXECUTORS: Registry[type] = Registry("executor")
EXECUTORS.register("sequential")(Sequential)
EXECUTORS.register("ray")(Ray)
