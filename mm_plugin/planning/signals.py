"""Sensitivity signals: per-weight importance scores (higher = more important).

A signal is a callable ``(model, names, calibration, loss_fn) -> {param_name: score tensor}`` with
the weight's shape, registered by name. Masks keep each layer's highest scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import CalibrationRequiredError, ValidationError
from ..registry import Needs, Registry

Scores = dict[str, torch.Tensor]
Signal = Callable[..., Scores]
SIGNALS: Registry[Signal] = Registry("signal")
register_signal = SIGNALS.register


def list_signals(pattern: str = "*") -> list[str]:
    return SIGNALS.names(pattern)


def get_signal(name: str) -> Signal:
    return SIGNALS.get(name)


def _weights(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The weights as the model computes with them (a masked weight is ``original * mask``)."""
    out = {}
    for name in names:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        out[name] = getattr(module, attr)
    return out


def batch_inputs(batch: Any) -> Any:
    """What the model takes from a batch: a tensor as it is, the first of a pair, or a dict's 'x' / 'input'."""
    if isinstance(batch, Mapping):
        return batch["x"] if "x" in batch else batch["input"]
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, dict):
        return batch_inputs(batch), batch.get("y", batch.get("label"))
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValidationError(
        "calibration batches must be (inputs, targets) pairs or dicts with 'x' and 'y'; "
        f"got {type(batch).__name__}"
    )


def calibration_losses(model: nn.Module, calibration: Iterable | None, loss_fn: Callable | None = None,
                       who: str = "this signal") -> Iterator[torch.Tensor]:
    """The loss of each calibration batch, in eval mode (BN statistics stay put) with gradients on;
    the mode is restored afterwards. What to do with each loss (``autograd.grad``, ``backward``) is the
    caller's choice."""
    if calibration is None:
        raise CalibrationRequiredError(
            f"{who} needs gradients: pass calibration=<iterable of (inputs, targets) batches>, "
            "e.g. a few batches of your training loader (5-10 % of it is plenty)"
        )
    loss_fn = loss_fn or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    batches = 0
    try:
        with torch.enable_grad():
            for batch in calibration:
                x, y = split_batch(batch)
                yield loss_fn(model(x), y)
                batches += 1
    finally:
        model.train(was_training)
    if batches == 0:
        raise CalibrationRequiredError("the calibration data yielded no batches; pass at least one batch")


def accumulate_gradients(model: nn.Module, calibration: Iterable | None, loss_fn: Callable | None = None,
                         who: str = "Taylor importance") -> None:
    """Sum dL/dw over the calibration batches into ``.grad`` (what a toolkit's Taylor importance reads)."""
    model.zero_grad(set_to_none=True)
    for loss in calibration_losses(model, calibration, loss_fn, who=who):
        loss.backward()


def mean_abs_gradients(
    model: nn.Module,
    names: Sequence[str],
    calibration: Iterable | None,
    loss_fn: Callable | None = None,
) -> Scores:
    """Mean |dL/dw| over the calibration batches (weights themselves are not changed)."""
    sums = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in _weights(model, names).items()}
    batches = 0
    with parametrize.cached():  # forward and autograd.grad then share one masked weight
        for loss in calibration_losses(model, calibration, loss_fn):
            retained = _weights(model, names)
            grads = torch.autograd.grad(loss, list(retained.values()), allow_unused=True)
            for n, g in zip(retained, grads):
                if g is not None:
                    sums[n] += g.detach().abs().float()
            batches += 1
    return {n: s / batches for n, s in sums.items()}


@register_signal("magnitude", Needs(structured=True))
def magnitude(model: nn.Module, names: Sequence[str], calibration: Iterable | None = None, loss_fn=None) -> Scores:
    """|w|: cheap, data-free; the strongest simple baseline."""
    return {n: w.detach().abs().float() for n, w in _weights(model, names).items()}


@register_signal("gradient", Needs(calibration=True))
def gradient(model: nn.Module, names: Sequence[str], calibration: Iterable | None = None, loss_fn=None) -> Scores:
    """Mean |dL/dw| over calibration batches: how much the loss reacts to each weight."""
    return mean_abs_gradients(model, names, calibration, loss_fn)


@register_signal("product", Needs(calibration=True, structured=True))
def product(model: nn.Module, names: Sequence[str], calibration: Iterable | None = None, loss_fn=None) -> Scores:
    """|w| |dL/dw| (SNIP-like first-order saliency): magnitude weighted by loss sensitivity."""
    grads = mean_abs_gradients(model, names, calibration, loss_fn)
    return {n: w.detach().abs().float() * grads[n] for n, w in _weights(model, names).items()}


def compute_scores(
    model: nn.Module,
    names: Sequence[str],
    signal: str | Signal = "magnitude",
    calibration: Iterable | None = None,
    loss_fn: Callable | None = None,
) -> Scores:
    fn = get_signal(signal) if isinstance(signal, str) else signal
    return fn(model, names, calibration, loss_fn)
