"""Least-squares reconstruction of the weights a mask keeps, from calibration inputs.

Why: a mask removes weights whose inputs are correlated with the inputs of the weights it keeps, so
the kept weights can take over part of their work. For one output row ``w`` of a layer with inputs
``X`` (rows: samples, or unfolded patches of a convolution), keep set ``K`` and pruned set ``P``, the
kept weights that best reproduce the dense output ``X w`` are (Optimal Brain Surgeon with a fixed
support, Hassibi & Stork 1993; SparseGPT's update, Frantar & Alistarh 2023)::

    w_K' = w_K + (H_KK + lambda I)^-1 H_KP w_P,        H = X^T X,  lambda = damp * mean(diag H)

The mask is not changed (pruned weights stay zero, so every pattern, exact 2:4 included, survives);
only the kept weights move. Inputs are those of the dense model (one calibration pass, not
SparseGPT's layer-by-layer pass through the pruned model), which keeps the two steps separable:
:func:`capture_inputs` before pruning, :func:`reconstruct_` after any mask is attached.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ValidationError
from .mask import masked_original, masked_weights, param_module

log = logging.getLogger(__name__)
DAMP = 0.01  # lambda's share of mean(diag H)


@dataclass
class LayerInputs:
    """What one weight's reconstruction needs from the dense model: ``X^T X`` and the dense rows."""

    gram: torch.Tensor  # (inputs, inputs) float64
    weight: torch.Tensor  # (rows, inputs) float64: the dense weight as a matrix

    def damped_gram(self, damp: float = DAMP) -> torch.Tensor:
        """``H + lambda I``, ``lambda = damp * mean(diag H)``: invertible even where inputs are collinear."""
        g = self.gram
        return g + damp * g.diagonal().mean().clamp_min(1e-12) * torch.eye(g.shape[0], dtype=g.dtype, device=g.device)


def _matrix_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of a layer :func:`unsupported` accepts, as ``(samples, weight columns)``."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # columns in the weight's (C, kh, kw) order


def unsupported(module: nn.Module) -> str | None:
    """Why ``module``'s weight cannot be reconstructed here, or None."""
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return "grouped convolution"
        if module.padding_mode != "zeros" or isinstance(module.padding, str):  # unfold needs numbers
            return "padding other than explicit zeros"
        return None
    return f"{type(module).__name__} is neither Linear nor Conv2d"


@torch.no_grad()
def capture_inputs(model: nn.Module, names: Iterable[str], batches: Iterable) -> dict[str, LayerInputs]:
    """``X^T X`` of every named weight's layer over ``batches`` (inputs, or ``(inputs, target)`` pairs),
    and its current weight. Run it on the dense model, before the masks go on."""
    found: dict[str, LayerInputs] = {}
    handles = []
    for name in names:
        module, attr = param_module(model, name)
        why = unsupported(module) if attr == "weight" else "not a layer's weight"
        if why:
            log.warning("reconstruction skips %s (its kept weights stay as they are): %s", name, why)
            continue
        w = module.weight.detach().reshape(module.weight.shape[0], -1).double()
        found[name] = LayerInputs(torch.zeros(w.shape[1], w.shape[1], dtype=torch.float64, device=w.device),
                                  w.clone())

        def hook(mod: nn.Module, args: tuple, out: torch.Tensor, entry: LayerInputs = found[name]) -> None:
            x = _matrix_inputs(mod, args[0].detach()).double()
            entry.gram.add_(x.T @ x)

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        seen = 0
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(next(model.parameters()).device))
            seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not seen:
        raise ValidationError("reconstruction needs at least one calibration batch; got none")
    return found


def _output_error(delta: torch.Tensor, gram: torch.Tensor) -> float:
    """``||X delta^T||^2``: the squared output change a weight change ``delta`` (rows, inputs) causes."""
    return float(torch.einsum("ri,ij,rj->", delta, gram, delta))


@torch.no_grad()
def reconstruct_(model: nn.Module, captured: Mapping[str, LayerInputs], damp: float = DAMP
                 ) -> dict[str, dict]:
    """Re-solve the kept weights of every captured, masked layer (formula in the module doc). In place.

    The keep-mask is the mask module's ``hard_mask()`` (a fixed mask, or a learnable gate's current
    choice). Returns per layer the relative output error of the mask before and after:
    ``||X (W_masked - W)||^2 / ||X W||^2``.
    """
    if damp <= 0:
        raise ValidationError(f"reconstruction damping must be > 0 (a share of mean(diag X^T X)), got {damp}")
    masks = masked_weights(model)
    report: dict[str, dict] = {}
    for name, entry in captured.items():
        mask_mod = masks.get(name)
        if mask_mod is None:
            continue
        original = masked_original(model, name)
        keep = mask_mod.hard_mask().reshape(entry.weight.shape).to(torch.bool)
        w = entry.weight
        h = entry.damped_gram(damp)
        new = w.clone()
        for r in range(w.shape[0]):
            k, p = keep[r], ~keep[r]
            if p.any() and k.any():
                new[r, k] = w[r, k] + torch.linalg.solve(h[k][:, k], h[k][:, p] @ w[r, p])
        dense_out = _output_error(w, entry.gram)
        before = _output_error(w * keep - w, entry.gram)
        after = _output_error(new * keep - w, entry.gram)
        kept = torch.where(keep, new.to(original.dtype), original.reshape(w.shape))
        original.copy_(kept.reshape(original.shape))
        report[name] = {"before": before / dense_out if dense_out else 0.0,
                        "after": after / dense_out if dense_out else 0.0}
    return report


@contextmanager
def reconstructing(model: nn.Module, names: Iterable[str], batches: Iterable | None) -> Iterator[None]:
    """Capture ``names``' inputs on entry (the model still dense), re-solve their kept weights on exit
    (the masks attached inside); with ``batches`` None, nothing happens."""
    captured = capture_inputs(model, names, batches) if batches is not None else None
    yield
    if captured is not None:
        reconstruct_(model, captured)
