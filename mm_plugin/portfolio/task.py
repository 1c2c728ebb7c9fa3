"""What a run prunes, and how it trains and scores: the user's model and loop, or the built-in classifier's.

A :class:`Task` is the engine's whole view of a user's project: a dense model, example inputs, a
``finetune(model, epochs)`` that trains the masked model in place, an ``evaluate(model, split)`` that
returns a score where higher is better (``split`` is ``"val"`` for every selection, ``"test"`` only for the
final report), and a few calibration batches. Any task fits: classification, segmentation, regression,
a custom metric, mixed precision. :func:`classification_task` builds one from data loaders with the
project's own loop (AdamW, cosine, best epoch on validation), which is what ``mm-prune run`` uses.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ValidationError
from ..metrics import macro_f1
from ..training import TRAINING_RECIPE, DataSplits, finetune, predict
from .fingerprint import split_fingerprint

log = logging.getLogger(__name__)

SPLITS = ("val", "test")


@dataclass
class Task:
    """A model and the user's loop: everything a search or a portfolio needs beyond its settings.

    ``finetune(model, epochs)``: trains ``model`` in place for ``epochs`` (a float: a fraction of an epoch
    is allowed); the masks stay exact whatever it does (they are parametrizations; the engine checks they
    are still there afterwards). It may also accept ``seed=``, ``hooks=`` (training hooks to call every
    step, see :class:`mm_plugin.training.TrainingHook`; without ``hooks=`` the engine drives them from a
    forward pre-hook, one step per training-mode forward pass) and ``keep=``: ``"trained"`` for a search's
    candidates, already chosen on validation before training, so a loop that keeps its best validation epoch
    keeps the untrained one (epoch 0) only where it is better beyond chance (:func:`mm_plugin.metrics.beats`);
    ``"best"`` otherwise.
    ``evaluate(model, split)``: a float (higher is better), or a mapping with ``"score"`` and optionally
    ``"loss"`` (lower is better; breaks ties) and any other metric to record.
    ``calibration``: a few batches (inputs, or ``(inputs, targets)``): BatchNorm re-estimation after
    pruning, gradient signals (with ``loss_fn``, default cross-entropy) and reconstruction.
    ``steps_per_epoch``: optimizer steps in one epoch of ``finetune`` (FlexHiNM's learned 2:4 gates
    schedule by steps). ``identity``: names the data and training behind the callbacks; resuming a run
    folder needs it, since the plugin cannot fingerprint functions (the built-in task fingerprints its data).
    """

    model: nn.Module
    example_inputs: Any
    finetune: Callable[..., Any]
    evaluate: Callable[[nn.Module, str], float | Mapping[str, float]]
    calibration: Sequence | None = None
    loss_fn: Callable | None = None
    steps_per_epoch: int | None = None
    identity: str | Mapping[str, str] | None = None
    name: str = "model"
    metric: str = "score"
    data: DataSplits | None = field(default=None, repr=False)  # the built-in task's loaders

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise ValidationError(f"the model must be a torch.nn.Module, got {type(self.model).__name__}")
        for what in ("finetune", "evaluate"):
            if not callable(getattr(self, what)):
                raise ValidationError(f"{what} must be a function, got {type(getattr(self, what)).__name__}")
        if self.calibration is not None:
            self.calibration = list(self.calibration)
            if not self.calibration:
                raise ValidationError("calibration holds no batch; pass a few batches, or None")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValidationError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")

    def scores(self, model: nn.Module, split: str) -> dict[str, Any]:
        """``evaluate(model, split)`` as ``{"score": ..., ["loss": ...], ...}`` (numbers as floats; text, such as
        a per-sample record for paired tests, as it is), the model's train/eval mode as it was found."""
        if split not in SPLITS:
            raise ValidationError(f"split must be one of {SPLITS}, got {split!r}")
        was_training = model.training
        try:
            out = self.evaluate(model, split)
        finally:
            model.train(was_training)
        if isinstance(out, Mapping):
            if "score" not in out:
                raise ConfigError(f"evaluate(model, {split!r}) returned {sorted(out)}: a mapping needs a 'score' "
                                  "(higher is better)")
            return {k: v if isinstance(v, str) else float(v) for k, v in out.items()}
        try:
            return {"score": float(out)}
        except (TypeError, ValueError):
            raise ConfigError(f"evaluate(model, {split!r}) returned {type(out).__name__}; return a float (higher is "
                              "better) or a mapping with a 'score'") from None

    def probe(self, model: nn.Module, batches: int) -> float:
        """A cheap validation loss (lower is better) for measured sensitivity: ``evaluate.probe(model, batches)``
        when ``evaluate`` offers one (the built-in task: mean cross-entropy on the first ``batches`` validation
        batches), otherwise ``evaluate(model, "val")``'s ``loss``, or minus its score. Validation only, like
        every selection."""
        was_training = model.training
        try:
            if callable(getattr(self.evaluate, "probe", None)):
                return float(self.evaluate.probe(model, batches))
        finally:
            model.train(was_training)
        out = self.scores(model, "val")
        return float(out["loss"]) if "loss" in out else -float(out["score"])

    def takes(self, keyword: str) -> bool:
        """Whether ``finetune`` accepts ``keyword`` (``seed``, ``hooks``)."""
        try:
            params = inspect.signature(self.finetune).parameters
        except (TypeError, ValueError):
            return False
        return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def fingerprint(self) -> dict[str, str] | None:
        """What identifies the data and training behind the results: the built-in task's splits and
        recipe, the user's ``identity``, or None (nothing can tell two runs of these callbacks apart)."""
        if self.identity is None:
            return None
        if isinstance(self.identity, Mapping):
            return dict(self.identity)
        return {"identity": hashlib.sha256(str(self.identity).encode()).hexdigest()}


class ClassificationFinetune:
    """The project's loop as a task's ``finetune``: AdamW, per-step cosine, cross-entropy, the best epoch on
    validation kept (a plain object, so Ray can send it)."""

    def __init__(self, data: DataSplits, lr: float, patience: int | None) -> None:
        self.data, self.lr, self.patience = data, lr, patience

    def __call__(self, model: nn.Module, epochs: float, *, seed: int = 0, hooks: Sequence = (), keep: str = "best"
                 ) -> Any:
        return finetune(model, self.data.train, self.data.val, epochs=epochs, lr=self.lr,
                        patience=None if hooks else self.patience, seed=seed, progress=False, hooks=hooks, keep=keep)


class ClassificationEvaluate:
    """Top-1 accuracy (``score``), mean cross-entropy (``loss``) and macro-F1 on a split of the loaders, and
    which samples it gets right (``correct``, a string of 0/1 in the split's order), for paired tests between
    methods: on test for the reports, on validation for the search's ``paired`` pick."""

    def __init__(self, data: DataSplits) -> None:
        self.data = data
        self._probe: tuple[int, list] = (0, [])

    def probe(self, model: nn.Module, batches: int) -> float:
        """Mean cross-entropy on the first ``batches`` validation batches (read once, then reused, so every
        probe sees the same samples)."""
        if batches < 1:
            raise ValidationError(f"a probe needs batches >= 1, got {batches}")
        if self._probe[0] != batches:
            self._probe = (batches, list(itertools.islice(iter(self.data.val), batches)))
        return predict(model, self._probe[1])[2]

    def __call__(self, model: nn.Module, split: str) -> dict[str, float | str]:
        pred, true, loss = predict(model, getattr(self.data, split))
        right = pred == true
        out: dict[str, float | str] = {"score": int(right.sum()) / len(right), "loss": loss,
                                       "macro_f1": macro_f1(pred, true, self.data.num_classes)}
        out["correct"] = "".join("1" if r else "0" for r in right.tolist())
        return out


def classification_task(model: nn.Module, data: DataSplits, *, lr: float = 5e-4, patience: int | None = 3,
                        calibration_batches: int = 4, example_inputs: Any = None, name: str | None = None
                        ) -> Task:
    """A :class:`Task` for a classifier on ``data`` with the project's own loop; its identity is a
    fingerprint of every sample of every split and of the loop's settings, so a resumed run on other data
    or settings is refused."""
    if example_inputs is None:
        example_inputs = _first_inputs(data)
    recipe = {**TRAINING_RECIPE, "lr": lr, "patience": patience, "batch_size": data.train.batch_size,
              "batches_per_epoch": len(data.train), "drop_last": data.train.drop_last,
              "train_set": type(data.train.dataset).__qualname__, "calibration_batches": calibration_batches}
    identity = {"data": hashlib.sha256(repr((data.name, data.num_classes, tuple(data.input_shape))).encode()).hexdigest(),
                "train": split_fingerprint(data.train, data.calibration_source),
                "val": split_fingerprint(data.val), "test": split_fingerprint(data.test),
                "training": hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()}
    return Task(model, example_inputs, ClassificationFinetune(data, lr, patience), ClassificationEvaluate(data),
                calibration=data.calibration(calibration_batches), steps_per_epoch=len(data.train),
                identity=identity, name=name or data.name, metric="accuracy", data=data)


def _first_inputs(data: DataSplits) -> torch.Tensor:
    x, _ = next(iter(data.val))
    return x[:1]
