"""NNCF 2.x's accuracy-aware training (``"accuracy_aware_training"`` in the config) over the script's own
callbacks (``train_epoch_fn(ctrl, model, epoch=, optimizer=, lr_scheduler=)``, ``validate_fn(model,
epoch=)``, ``configure_optimizers_fn()``), with NNCF 2.x's entry point and call conventions.

``early_exit``: fine-tune under the config's schedule until the accuracy budget is met at the full target
(or ``maximal_total_epochs``), then keep the best fully compressed state.

``adaptive_compression_level``: after ``initial_training_phase_epochs`` under the schedule, the level
moves up while the budget holds and down when it does not, by a step that shrinks whenever the direction
turns (NNCF 2.x's stepping), until the step is below ``minimal_compression_rate_step``. Each level is
tried the Mix-and-Match way: every strategy of the controller's plan, brought to that level, is scored
one-shot with ``validate_fn`` (validation passes, no training), ranked by the search's own
:func:`~mm_plugin.portfolio.search.promote`, and the best is fine-tuned for ``patience_epochs`` with
``train_epoch_fn``. The loop ends on the sparsest level that met the budget; ``loop.trials`` (and
``accuracy_aware.json`` in ``log_dir``) say what was tried.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_plugin.errors import ConfigError
from mm_plugin.portfolio.search import promote

from . import masking, state
from .compat import CompressionStage
from .controller import CompressionController
from .legacy import AccuracyAware, accuracy_aware
from .statistics import prepare_for_tensorboard

log = logging.getLogger(__name__)


@dataclass
class TrainingLoopStatistics:
    """NNCF 2.x's summary of an accuracy-aware run (``loop.statistics.to_str()``)."""

    uncompressed_accuracy: float
    compression_rate: float
    compressed_accuracy: float
    absolute_accuracy_degradation: float
    relative_accuracy_degradation: float
    accuracy_budget: float

    def to_str(self) -> str:
        return (f"Uncompressed model accuracy: {self.uncompressed_accuracy:.4f}\n"
                f"Compressed model accuracy: {self.compressed_accuracy:.4f}\n"
                f"Model compression rate: {self.compression_rate:.4f}\n"
                f"Absolute accuracy drop: {self.absolute_accuracy_degradation:.4f}\n"
                f"Relative accuracy drop: {self.relative_accuracy_degradation:.2f}%\n"
                f"Accuracy budget: {self.accuracy_budget:.4f}")


@dataclass
class Trial:
    """One level the adaptive loop tried: the plan's strategies scored one-shot (best first), the one
    fine-tuned, its validation after every epoch, and whether the best of them met the budget."""

    level: float
    candidates: list[tuple[str, float]]
    strategy: str
    scores: list[float] = field(default_factory=list)
    meets_budget: bool = False

    @property
    def best(self) -> float:
        return max(self.scores, default=float("-inf"))


class _Saved:
    """A model's weights and compression state, kept in memory."""

    def __init__(self, model: nn.Module, ctrl: CompressionController, metric: float) -> None:
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.compression_state, self.metric = ctrl.get_compression_state(), metric

    def restore(self, model: nn.Module, ctrl: CompressionController) -> None:
        model.load_state_dict(self.weights)
        state.reload(ctrl, self.compression_state)


class EarlyExitCompressionTrainingLoop:
    """Fine-tune under the config's schedule until the budget is met at the full target."""

    def __init__(self, nncf_config: Mapping[str, Any], compression_ctrl: CompressionController,
                 uncompressed_model_accuracy: float, lr_updates_needed: bool = True, verbose: bool = True,
                 dump_checkpoints: bool = True, minimal_compression_rate: float = 0.0,
                 maximal_compression_rate: float = 0.95) -> None:
        params = accuracy_aware(nncf_config)
        if params is None:
            raise ConfigError('accuracy_aware_training: is required; add e.g. "accuracy_aware_training": {"mode": '
                              '"early_exit", "params": {"maximal_relative_accuracy_degradation": 1.0}}')
        self.params: AccuracyAware = params
        self.ctrl, self.uncompressed = compression_ctrl, float(uncompressed_model_accuracy)
        self.minimal_tolerable = params.minimal_tolerable(self.uncompressed)
        self.lr_updates_needed, self.verbose, self.dump_checkpoints = lr_updates_needed, verbose, dump_checkpoints
        self.minimal_rate, self.maximal_rate = minimal_compression_rate, maximal_compression_rate
        self.optimizer: Any = None
        self.lr_scheduler: Any = None
        self.lr_factor = 1.0
        self.cumulative_epoch_count = 0
        self.training_epoch_count = 0
        self.current_val_metric_value = 0.0
        self.best_val_metric_value = float("-inf")
        self.current_loss: Any = None
        self.history: list[dict[str, Any]] = []  # every validation: phase, epoch, level, strategy, metric
        self.trials: list[Trial] = []
        self.best: dict[float, _Saved] = {}  # the fully compressed state to end on: {level: state}
        self._fns: dict[str, Any] = {}

    # --- the runner's pieces ---------------------------------------------------------------------
    def _setup(self, train_epoch_fn: Callable, validate_fn: Callable, **fns: Any) -> None:
        self._fns = {"train": train_epoch_fn, "validate": validate_fn, **fns}
        if fns.get("log_dir") is not None:
            Path(fns["log_dir"]).mkdir(parents=True, exist_ok=True)

    def _configure(self) -> None:
        make = self._fns.get("configure_optimizers_fn")
        self.optimizer, self.lr_scheduler = make() if make is not None else (None, None)
        for optimizer in self.optimizer if isinstance(self.optimizer, (list, tuple)) else [self.optimizer]:
            for group in getattr(optimizer, "param_groups", ()):
                group["lr"] *= self.lr_factor
        self.training_epoch_count, self.best_val_metric_value = 0, float("-inf")

    def _train_epoch(self, model: nn.Module) -> None:
        self.ctrl.scheduler.epoch_step()
        self.current_loss = self._fns["train"](self.ctrl, model, epoch=self.cumulative_epoch_count,
                                               optimizer=self.optimizer, lr_scheduler=self.lr_scheduler)
        self.training_epoch_count += 1
        self.cumulative_epoch_count += 1

    def _score(self, model: nn.Module) -> float:
        with torch.no_grad():
            return float(self._fns["validate"](model, epoch=self.cumulative_epoch_count))

    def _validate(self, model: nn.Module, phase: str) -> float:
        metric = self.current_val_metric_value = self._score(model)
        self.best_val_metric_value = max(self.best_val_metric_value, metric)
        self.history.append({"phase": phase, "epoch": self.cumulative_epoch_count, "level": self.ctrl.compression_rate,
                             "strategy": self.ctrl.strategy.name if self.ctrl.strategy else None, "metric": metric})
        self._scalar("val/accuracy_aware/metric_value", metric)
        if self.ctrl.plan is not None:
            for key, value in prepare_for_tensorboard(self.ctrl.statistics(quickly_collected_only=True)).items():
                self._scalar(f"compression/statistics/{key}", value)
        fully = self.ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED
        rate = round(self.ctrl.compression_rate, 6)
        if fully and (rate not in self.best or metric > self.best[rate].metric):
            self.best[rate] = _Saved(model, self.ctrl, metric)
            meeting = [r for r, kept in self.best.items() if self._meets(kept.metric)]
            keep = max(meeting) if meeting else max(self.best, key=lambda r: self.best[r].metric)
            self.best = {keep: self.best[keep]}  # one copy of the weights: the state _restore would pick
        if self.dump_checkpoints and self._fns.get("dump_checkpoint_fn") is not None:
            self._fns["dump_checkpoint_fn"](model, self.ctrl, self, self._fns.get("log_dir"))
        return metric

    def _scalar(self, key: str, value: float) -> None:
        writer = self._fns.get("tensorboard_writer")
        if writer is not None and self.verbose:
            writer.add_scalar(key, value, self.cumulative_epoch_count)

    def _update_lr(self) -> None:
        update = self._fns.get("update_learning_rate_fn")
        if update is not None:
            update(self.lr_scheduler, self.training_epoch_count, self.current_val_metric_value, self.current_loss)
        elif self.lr_scheduler is not None and self.lr_updates_needed:
            plateau = isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
            self.lr_scheduler.step(self.best_val_metric_value) if plateau else self.lr_scheduler.step()

    def _meets(self, metric: float) -> bool:
        return metric - self.minimal_tolerable >= 0

    def _satisfied(self) -> bool:
        return self._meets(self.current_val_metric_value) and \
            self.ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED

    def _stop(self) -> bool:
        stop = self._fns.get("early_stopping_fn")
        return stop is not None and self.ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED and \
            bool(stop(self.current_val_metric_value))

    def _early_exit(self, model: nn.Module, epochs: int, phase: str) -> None:
        self._configure()
        self._validate(model, phase)
        for _ in range(epochs):
            if self._satisfied() or self._stop():
                break
            self._train_epoch(model)
            self._validate(model, phase)
            self._update_lr()

    def _restore(self, model: nn.Module) -> None:
        """The best fully compressed state: at the highest level that met the budget, else the most
        accurate one."""
        if not self.best:
            log.warning("accuracy-aware training: the model never reached its full target; it is left as it is")
            return
        chosen = next(iter(self.best))
        load = self._fns.get("load_checkpoint_fn")
        self.best[chosen].restore(model, self.ctrl)
        if load is not None and self._fns.get("log_dir") is not None:
            path = Path(self._fns["log_dir"]) / f"acc_aware_checkpoint_best_{chosen:.3f}.pth"
            torch.save({"state_dict": model.state_dict(), "compression_state": self.ctrl.get_compression_state()}, path)
            load(model, str(path))
        self.current_val_metric_value = self.best[chosen].metric

    # --- the loop ------------------------------------------------------------------------------------
    def run(self, model: nn.Module, train_epoch_fn: Callable, validate_fn: Callable,
            configure_optimizers_fn: Callable | None = None, dump_checkpoint_fn: Callable | None = None,
            load_checkpoint_fn: Callable | None = None, early_stopping_fn: Callable | None = None,
            tensorboard_writer: Any = None, log_dir: str | Path | None = None,
            update_learning_rate_fn: Callable | None = None) -> nn.Module:
        self._setup(train_epoch_fn, validate_fn, configure_optimizers_fn=configure_optimizers_fn,
                    dump_checkpoint_fn=dump_checkpoint_fn, load_checkpoint_fn=load_checkpoint_fn,
                    early_stopping_fn=early_stopping_fn, tensorboard_writer=tensorboard_writer, log_dir=log_dir,
                    update_learning_rate_fn=update_learning_rate_fn)
        self._train(model)
        self._finish()
        return model

    def _train(self, model: nn.Module) -> None:
        """Early exit: train at the schedule's levels until the budget is met, then keep the best state."""
        self._early_exit(model, self.params.params["maximal_total_epochs"], "early_exit")
        self._restore(model)

    def _finish(self) -> None:
        log.info("accuracy-aware training (%s), %d epochs:\n%s", self.params.mode, self.cumulative_epoch_count,
                 self.statistics.to_str())
        if self._fns.get("log_dir") is not None:
            path = Path(self._fns["log_dir"]) / "accuracy_aware.json"
            path.write_text(json.dumps(self.report(), indent=1))

    def report(self) -> dict[str, Any]:
        """What the loop did: its settings, every validation, every level tried and the result."""
        return {"mode": self.params.mode, "uncompressed_accuracy": self.uncompressed,
                "minimal_tolerable_accuracy": self.minimal_tolerable, "epochs": self.cumulative_epoch_count,
                "history": self.history, "trials": [asdict(t) | {"best": t.best} for t in self.trials],
                "result": asdict(self.statistics)}

    @property
    def statistics(self) -> TrainingLoopStatistics:
        metric, rate = self.current_val_metric_value, self.ctrl.compression_rate
        relative = 100 * (1 - metric / self.uncompressed) if self.uncompressed else 0.0
        return TrainingLoopStatistics(self.uncompressed, rate, metric, self.uncompressed - metric, relative,
                                      metric - self.minimal_tolerable)


class AdaptiveCompressionTrainingLoop(EarlyExitCompressionTrainingLoop):
    """The sparsest level that meets the budget, each level's strategy chosen the Mix-and-Match way."""

    def _train(self, model: nn.Module) -> None:
        """An initial phase at the schedule's levels, then level steps up (budget met) or down (missed),
        halving the step at each turn, from the sparsest state that met the budget."""
        p = self.params.params
        self._early_exit(model, min(p["initial_training_phase_epochs"], p["maximal_total_epochs"]), "initial")
        self._restore(model)
        self.ctrl.disable_scheduler()
        self._configure()
        rate, step, direction = self.ctrl.compression_rate, p["initial_compression_rate_step"], None
        ceiling = math.floor(min(self.maximal_rate, self.ctrl.maximal_compression_rate) * 1e6) / 1e6
        met = self._meets(self._validate(model, "search"))
        while step >= p["minimal_compression_rate_step"] and self.cumulative_epoch_count < p["maximal_total_epochs"]:
            turn = 1 if met else -1
            if direction is not None and turn != direction:
                step *= p["compression_rate_step_reduction_factor"]
                self.lr_factor *= p["lr_reduction_factor"]
            direction = turn
            target = round(min(max(rate + turn * step, self.minimal_rate), ceiling), 6)
            if target == rate:
                log.info("accuracy-aware training: the level cannot move past %.4f", rate)
                break
            if self.best:
                self._restore(model)  # from the sparsest state that met the budget (else the most accurate)
            met, rate = self._try(model, target), target
        self._restore(model)
        self._validate(model, "final")

    def _try(self, model: nn.Module, level: float) -> bool:
        """One level: the plan's strategies scored one-shot, the best fine-tuned ``patience_epochs``."""
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        scored, seen = [], set()
        for strategy in self.ctrl.plan.strategies:
            vector = tuple(round(v, 6) for v in self.ctrl.plan.at_target(strategy, level).sparsity.values())
            if vector in seen:  # conservative, balanced, aggressive, interp-*: one vector once rescaled
                continue
            seen.add(vector)
            masking.apply(self.ctrl, level, base=strategy, what="accuracy_aware_training")
            scored.append((strategy, self._score(model), 0.0))
            model.load_state_dict(snapshot)  # weights and hook masks as they were; the best is applied below
        ranked = promote(scored, len(scored))
        scores = {s.name: score for s, score, _ in scored}
        trial = Trial(level, [(s.name, scores[s.name]) for s in ranked], ranked[0].name)
        self.trials.append(trial)
        masking.apply(self.ctrl, level, base=ranked[0], what="accuracy_aware_training")
        self.ctrl.base, self.ctrl.target_level = ranked[0], level
        log.info("accuracy-aware training: level %.4f, one-shot %s; fine-tuning %s", level,
                 ", ".join(f"{n} {v:.4g}" for n, v in trial.candidates), trial.strategy)
        self._configure()
        for _ in range(self.params.params["patience_epochs"]):
            if self.cumulative_epoch_count >= self.params.params["maximal_total_epochs"]:
                break
            self._train_epoch(model)
            trial.scores.append(self._validate(model, "search"))
            if self._stop():
                break
            self._update_lr()
        trial.meets_budget = self._meets(trial.best)
        return trial.meets_budget


def create_accuracy_aware_training_loop(nncf_config: Mapping[str, Any], compression_ctrl: CompressionController,
                                        uncompressed_model_accuracy: float,
                                        **additional_runner_args: Any) -> EarlyExitCompressionTrainingLoop:
    """NNCF 2.x's entry point: the loop the config's ``accuracy_aware_training.mode`` names. The adaptive
    mode needs unstructured ``mix_and_match`` masks; other steps run early_exit (a note says so)."""
    params = accuracy_aware(nncf_config)
    adaptive = params is not None and params.mode == "adaptive_compression_level"
    movable = compression_ctrl.plan is not None and compression_ctrl.step.algorithm == "mix_and_match" and \
        compression_ctrl.channels is None
    loop = AdaptiveCompressionTrainingLoop if adaptive and movable else EarlyExitCompressionTrainingLoop
    return loop(nncf_config, compression_ctrl, uncompressed_model_accuracy, **additional_runner_args)
