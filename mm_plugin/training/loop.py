"""The project's one training loop: dense demo training and post-pruning fine-tuning both use ``finetune``.

Masks live in parametrizations (see :mod:`mm_plugin.masks`), so pruned weights stay zero here
without special handling, and ``state_dict`` snapshots include masks and originals.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ValidationError
from ..metrics import beats

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so shuffling, augmentation and init repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices of targets that are indices, or class probabilities (a teacher's, for distillation)."""
    return y.argmax(dim=1) if y.dim() > 1 else y


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Predicted and true classes of every sample, in order, and the mean cross-entropy, in eval mode (the
    previous train/eval mode is restored). Probability targets (distillation) are their top-1."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    preds, truth, loss = [], [], 0.0
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            preds.append(logits.argmax(dim=1).cpu())
            truth.append(labels(y).cpu())
            loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
    finally:
        model.train(was_training)
    if not preds:
        raise ValidationError("evaluate: the loader yielded no samples")
    pred, true = torch.cat(preds), torch.cat(truth)
    return pred, true, loss / len(true)


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Iterable, loss_fn: Callable | None = None) -> float:
    """Mean of ``loss_fn(outputs, targets)`` (default cross-entropy) over ``(inputs, targets)`` batches, in eval
    mode (the previous mode is restored)."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    device = _device_of(model)
    try:
        losses = [float(loss_fn(model(x.to(device)), torch.as_tensor(y).to(device))) for x, y in batches]
    finally:
        model.train(was_training)
    if not losses:
        raise ValidationError("mean_loss: no batches")
    return sum(losses) / len(losses)


def _graded(model: nn.Module, loader: Iterable) -> tuple[float, torch.Tensor, float]:
    """Top-1 accuracy, which samples the model gets right (in order) and the mean cross-entropy."""
    pred, true, loss = predict(model, loader)
    right = pred == true
    return int(right.sum()) / len(right), right, loss


def score(model: nn.Module, loader: Iterable) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy in eval mode (see :func:`predict`)."""
    accuracy, _, loss = _graded(model, loader)
    return accuracy, loss


def evaluate(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy (agreement with the teacher for probability targets); see :func:`score`."""
    return score(model, loader)[0]


def reestimate_bn_(model: nn.Module, batches: Iterable) -> None:
    """Recompute BatchNorm running statistics on ``batches`` (pruning shifts every activation's mean
    and variance; stale statistics make a pruned model look broken before any fine-tuning)."""
    torch.optim.swa_utils.update_bn(batches, model, device=_device_of(model))


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`; ``history[0]`` is the model before training (epoch 0)."""

    best_val_accuracy: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


class TrainingHook(Protocol):
    """Something that steers training from inside the loop (a pruning schedule, a regularizer)."""

    def on_step(self, model: nn.Module, step: int) -> None: ...

    def penalty(self) -> torch.Tensor: ...


def optimizer_groups(model: nn.Module, hooks: Sequence[TrainingHook]) -> list[dict]:
    """Optimizer groups for ``model`` trained with ``hooks``: first every trainable parameter no hook
    claims (the optimizer's defaults), then the groups hooks ask for with ``param_groups(model)`` (e.g.
    learnable gates with their own learning rate). A parameter is never in two groups."""
    extra = [g for hook in hooks if hasattr(hook, "param_groups") for g in hook.param_groups(model)]
    taken = {id(p) for g in extra for p in g["params"]}
    return [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in taken]}, *extra]


#: What :func:`finetune` does that no argument sets: part of every run's fingerprint, so results of another
#: recipe never merge with these.
TRAINING_RECIPE = {"optimizer": "AdamW", "lr_schedule": "cosine to 0, per step", "loss": "cross_entropy",
                   "selection": "best validation accuracy, epoch 0 included"}


#: What :func:`finetune` may keep: the best validation epoch, the best trained one (the untrained state only where
#: it is better beyond McNemar's test), the last.
KEEP = ("best", "trained", "last")


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def finetune(
    model: nn.Module,
    train: Iterable,
    val: Iterable,
    *,
    epochs: float,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    patience: int | None = 3,
    seed: int = 0,
    progress: bool = True,
    desc: str = "",
    hooks: Sequence[TrainingHook] = (),
    keep: str = "best",
) -> FinetuneResult:
    """Train with AdamW and a per-step cosine schedule; keep the state with the best validation accuracy.

    Early stopping watches the validation split only (the test split stays unseen): training stops
    after ``patience`` epochs without a strict improvement (``None`` = run all epochs). The untrained
    model counts as epoch 0, so fine-tuning never returns a model worse on val than its input.
    The best state is loaded back into ``model`` before returning. ``keep="trained"`` keeps the best trained
    epoch unless the untrained model gets more validation samples right beyond McNemar's test
    (:func:`mm_plugin.metrics.beats`): for a model already chosen on this validation split before training,
    whose epoch-0 score is the maximum of a selection and so reads high, yet may still be better than
    training leaves it (a recipe that hurts). ``keep="last"`` keeps the final state; a hook whose
    ``checkpoints_final`` is False (gradual pruning with a sparsity ramp, whose early states are denser than
    asked) makes it ``"last"``.

    ``hooks`` (e.g. :class:`mm_plugin.flexhinm.GradualFlexHiNM`) get ``on_step(model, step)`` before
    every forward pass and add ``penalty()`` to the loss. A hook may also have ``param_groups(model)``
    (optimizer groups with their own settings; those parameters leave the default group) and
    ``on_epoch(model, epoch) -> dict`` (merged into that epoch's history row).
    """
    if keep not in KEEP:
        raise ValidationError(f"finetune: keep must be one of {', '.join(map(repr, KEEP))}, got {keep!r}")
    if not all(getattr(hook, "checkpoints_final", True) for hook in hooks):
        keep = "last"
    if epochs < 0:
        raise ValidationError(f"finetune: epochs must be >= 0, got {epochs}")
    steps = max(1, round(epochs * len(train)))  # a fraction of an epoch ends early in the last one
    if patience is not None and patience < 1:
        raise ValidationError(f"finetune: patience must be >= 1 or None, got {patience}")
    seed_everything(seed)
    device = _device_of(model)
    optimizer = torch.optim.AdamW(optimizer_groups(model, hooks), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    loss_fn = nn.CrossEntropyLoss()

    untrained_acc, untrained_right, _ = _graded(model, val)
    untrained_state = _snapshot(model)
    best_acc, best_epoch, best_state, best_right = untrained_acc, 0, untrained_state, untrained_right
    history = [{"epoch": 0, "val_accuracy": untrained_acc}]
    if keep == "trained":
        best_acc = -math.inf  # the best trained epoch, whatever it scores, then meets epoch 0 on evidence
    label = desc or "finetune"
    epoch_bar = tqdm(range(1, math.ceil(epochs) + 1), desc=label, disable=not progress, unit="epoch")
    step = 0
    for epoch in epoch_bar:
        model.train()
        loss_sum = correct = seen = 0
        batches = tqdm(train, desc=f"{label} epoch {epoch}", disable=not progress, leave=False, unit="batch")
        for x, y in batches:
            if step == steps:
                break
            x, y = x.to(device), y.to(device)
            for hook in hooks:
                hook.on_step(model, step)
            logits = model(x)
            loss = loss_fn(logits, y)
            for hook in hooks:
                loss = loss + hook.penalty()
            if not torch.isfinite(loss):
                model.load_state_dict(best_state)  # leave the caller a usable model
                raise ValidationError(
                    f"{label}: loss became {loss.item()} at epoch {epoch}; lower the learning rate (lr={lr})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(dim=1) == labels(y)).sum())
            seen += len(y)
        val_acc, right, _ = _graded(model, val)
        train_loss = loss_sum / max(seen, 1)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": correct / max(seen, 1),
                "val_accuracy": val_acc,
                "lr": scheduler.get_last_lr()[0],
            }
        )
        for hook in hooks:
            if hasattr(hook, "on_epoch"):
                history[-1].update(hook.on_epoch(model, epoch) or {})
        logger.info("%s epoch %d/%g: train loss %.4f, val %.4f", label, epoch, epochs, train_loss, val_acc)
        epoch_bar.set_postfix(val=f"{val_acc:.4f}", best=f"{max(best_acc, val_acc):.4f}")
        if keep == "last":
            best_acc, best_epoch = val_acc, epoch
        elif val_acc > best_acc:
            best_acc, best_epoch, best_state, best_right = val_acc, epoch, _snapshot(model), right
        elif patience is not None and epoch - best_epoch >= patience:
            logger.info(
                "%s: early stop at epoch %d, best val %.4f at epoch %d", label, epoch, best_acc, best_epoch
            )
            break
    if keep == "trained" and best_epoch > 0 and beats(untrained_right.tolist(), best_right.tolist()):
        logger.info("%s: the untrained state (val %.4f) beats the best trained epoch %d (val %.4f) beyond McNemar's "
                    "test; it is kept", label, untrained_acc, best_epoch, best_acc)
        best_epoch, best_state = 0, untrained_state
    if keep != "last":
        model.load_state_dict(best_state)
    if best_epoch == 0:  # no trained epoch ran (or kept): the untrained model's score
        best_acc = untrained_acc
    return FinetuneResult(best_acc, best_epoch, len(history) - 1, history)
