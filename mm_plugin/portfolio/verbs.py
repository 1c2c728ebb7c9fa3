"""The search and the portfolio as library verbs over the user's objects: a model, example inputs, their
own ``finetune`` and ``evaluate``. Both write the same run folder, report and plot as ``mm-prune run``
through the same engine (:func:`.runner.run`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ValidationError
from .config import RunConfig
from .runner import RunResult, run
from .task import Task

#: Keywords of :func:`search` / :func:`portfolio` that steer the run, not its numbers.
RUN_OPTIONS = ("progress", "keep_checkpoints", "command", "force_new", "on_record", "executor", "address",
               "cpus_per_trial")


def _engine(model: nn.Module, example_inputs: Any, finetune: Callable, evaluate: Callable, out: str | Path,
            task_options: Mapping[str, Any], settings: Mapping[str, Any]) -> RunResult:
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(settings) - known - set(RUN_OPTIONS))
    if unknown:
        raise ValidationError(f"unknown keyword(s) {unknown}; settings: {sorted(known)}; run options: "
                              f"{list(RUN_OPTIONS)}")
    config = RunConfig(**{k: v for k, v in settings.items() if k in known})
    task = Task(model, example_inputs, finetune, evaluate, **task_options)
    return run(task, config, out, **{k: v for k, v in settings.items() if k in RUN_OPTIONS})


def search(model: nn.Module, example_inputs: Any, *, finetune: Callable, evaluate: Callable,
           targets: Sequence[float], out: str | Path, budget: float = 4.0, calibration: Iterable | None = None,
           loss_fn: Callable | None = None, steps_per_epoch: int | None = None, run_id: str | None = None,
           name: str | None = None, metric: str = "score", **settings: Any) -> RunResult:
    """Find, per target sparsity, the allocation that scores best on validation after fine-tuning, within
    ``budget`` full fine-tunes per target and seed (one-shot scores for many strategies, short fine-tunes
    for the best, full ones for the rest); the baselines (GMP, LAMP, ERK by default; ``baselines=()`` skips
    them) get one full fine-tune each. ``result.picks[target]`` holds the pick per seed.

    ``finetune(model, epochs)`` trains the masked model in place (a fraction of an epoch is allowed; it may
    also take ``seed=`` and ``hooks=``); ``evaluate(model, split)`` returns a score where higher is better
    (``split`` is ``"val"`` for every selection, ``"test"`` only once every selection is made) or a mapping
    with ``"score"`` and more metrics. ``calibration``: a few batches for BatchNorm re-estimation, gradient
    signals (``loss_fn``) and ``reconstruct=True``. ``run_id`` names the data and training behind the
    callbacks: without it a run folder with results cannot be resumed (functions cannot be fingerprinted).
    Other keywords are :class:`RunConfig` settings (``signals``, ``seeds``, ``epochs``, ``sparsity``,
    ``baselines``, ``candidates``, ``reconstruct``, ...) or run options (``executor="ray"``, ...).
    """
    return _engine(model, example_inputs, finetune, evaluate, out,
                   {"calibration": calibration, "loss_fn": loss_fn, "steps_per_epoch": steps_per_epoch,
                    "identity": run_id, "name": name or type(model).__name__, "metric": metric},
                   {**settings, "targets": tuple(targets), "budget": budget})


def portfolio(model: nn.Module, example_inputs: Any, *, finetune: Callable, evaluate: Callable, out: str | Path,
              targets: Sequence[float] | None = None, calibration: Iterable | None = None,
              loss_fn: Callable | None = None, steps_per_epoch: int | None = None, run_id: str | None = None,
              name: str | None = None, metric: str = "score", **settings: Any) -> RunResult:
    """Every named strategy (and baseline) pruned, fine-tuned with ``finetune`` and scored with ``evaluate``
    at each target (None: each strategy at its own sparsity): the accuracy-vs-sparsity Pareto front. The
    arguments are :func:`search`'s."""
    return _engine(model, example_inputs, finetune, evaluate, out,
                   {"calibration": calibration, "loss_fn": loss_fn, "steps_per_epoch": steps_per_epoch,
                    "identity": run_id, "name": name or type(model).__name__, "metric": metric},
                   {**settings, "targets": None if targets is None else tuple(targets)})
