"""Layer inventory: every prunable weight of any ``nn.Module``, with its kind, size and position.

No per-architecture tables: kinds come from module types, the structure around a module (its
ancestors' class names, ``num_heads`` attributes) and the execution order seen in one forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import NoPrunableLayersError, UnsupportedModelError, ValidationError
from .units import Inventory, SkippedParam, Unit

PRUNABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_ATTENTION_NAME = re.compile(r"attention|attn", re.IGNORECASE)
_MLP_NAME = re.compile(r"mlp|feedforward|ffn", re.IGNORECASE)


#: Weights a module uses as matrices besides (or instead of) ``weight``: packed attention projections.
PACKED_WEIGHTS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.MultiheadAttention: ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
}


def _weight_of(module: nn.Module, attr: str = "weight") -> torch.Tensor | None:
    """One of the module's own weights (as its parametrizations compute it, masks included)."""
    if parametrize.is_parametrized(module, attr):
        return getattr(module, attr)
    return module._parameters.get(attr)


def prunable_weights(module: nn.Module) -> list[str]:
    """The module's weights a plan may prune: Conv / Linear / Embedding ``weight``, packed projections."""
    attrs = ["weight"] if isinstance(module, PRUNABLE_TYPES) else list(PACKED_WEIGHTS.get(type(module), ()))
    return [a for a in attrs if _weight_of(module, a) is not None]


@dataclass
class Trace:
    """What one forward pass shows: module names in the order their forward finished, output positions
    per sample of each Conv / Linear (pixels, tokens: a weight's multiply-adds are its size times these)
    and the (first) output tensor."""

    order: list[str]
    positions: dict[str, int]
    output: torch.Tensor | None
    output_of: str | None = None  # the innermost module whose output the model returned, if one did


def trace(model: nn.Module, example_inputs: Any) -> Trace:
    """One eval-mode, no-grad forward pass, watched. The train/eval flag is restored; a failure raises
    :class:`UnsupportedModelError` naming the innermost module that raised."""
    order: list[str] = []
    finished: set[str] = set()
    positions: dict[str, int] = {}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id -> innermost module that returned it (kept alive)
    stack: list[str] = []

    def pre(name: str) -> Callable:
        return lambda *_: stack.append(name)

    def post(name: str, module: nn.Module) -> Callable:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if stack and stack[-1] == name:
                stack.pop()
            if name not in finished:
                finished.add(name)
                order.append(name)
            if isinstance(out, torch.Tensor):
                produced.setdefault(id(out), (name, out))
            if isinstance(module, nn.MultiheadAttention) and isinstance(out, tuple):
                out = out[0].transpose(0, 1) if not module.batch_first and out[0].dim() == 3 else out[0]
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)) \
                    and isinstance(out, torch.Tensor) and out.dim() >= 2:
                channels = out.shape[1] if isinstance(module, nn.modules.conv._ConvNd) else out.shape[-1]
                positions[name] = positions.get(name, 0) + out.numel() // (out.shape[0] * max(channels, 1))

        return hook

    handles = []
    for name, module in model.named_modules():
        handles += [module.register_forward_pre_hook(pre(name)), module.register_forward_hook(post(name, module))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            output = model(*(example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)))
    except Exception as e:
        where = next((n for n in reversed(stack) if n), "")
        cls = type(model.get_submodule(where)).__name__
        raise UnsupportedModelError(
            f"the model fails in module '{where or '<root>'}' ({cls}): {type(e).__name__}: {e}",
            module=where, cls=cls,
        ) from e
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if isinstance(output, (tuple, list)):
        output = output[0]
    output = output if isinstance(output, torch.Tensor) else None
    source = produced.get(id(output)) if output is not None else None
    return Trace(order, positions, output, source[0] if source is not None and source[1] is output else None)


def forward_eval(model: nn.Module, example_inputs: Any) -> torch.Tensor | None:
    """The (first) output tensor of one eval-mode, no-grad forward pass (see :func:`trace`)."""
    return trace(model, example_inputs).output


def check_forward(model: nn.Module, example_inputs: Any, expected_shape: torch.Size | None, *, after: str,
                  fix: str, keep: str) -> None:
    """Run ``model`` once after a structural change (``after``, e.g. "pruning"): a failure names the innermost
    module that raised and ``fix`` (``{cls}`` stands for its class); a changed output shape is an error
    too, since the classifier's outputs must stay (``keep`` says how to protect the head)."""
    try:
        out = trace(model, example_inputs).output
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"after {after}, {e}. {fix.format(cls=e.cls or 'YourLayer')}", module=e.module,
                                    cls=e.cls) from e.__cause__
    if expected_shape is not None and out is not None and out.shape != expected_shape:
        raise UnsupportedModelError(f"{after} changed the model output from {tuple(expected_shape)} to "
                                    f"{tuple(out.shape)}; the classifier's outputs must stay ({keep})")


def submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)``, or a ValidationError saying the plan is of another architecture."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValidationError(f"the plan names module '{name}', which {type(model).__name__} does not have; "
                              "plan and prune the same architecture") from None


def names_of(model: nn.Module, items: Iterable[Any] | None) -> list[str]:
    """Modules / parameters of ``model`` (or their names) as names, so that they resolve on a copy too."""
    modules = {m: n for n, m in model.named_modules()}
    params = {p: n for n, p in model.named_parameters()}
    out = []
    for item in items or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, nn.Parameter) and item in params:
            out.append(params[item])
        elif isinstance(item, nn.Module) and item in modules:
            out.append(modules[item])
        else:
            raise ValidationError(f"{type(item).__name__} is not part of {type(model).__name__}; pass modules or "
                                  "parameters of this model, or their names")
    return out


def param_owner(model: nn.Module, param: torch.Tensor) -> tuple[str, str, str]:
    """(module name, parameter name, module class) of a parameter of ``model``; "?" for each when none holds it."""
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if p is param:
                return mname, pname, type(m).__name__
    return "?", "?", "?"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_prunable(model: nn.Module) -> int:
    """Entries of every prunable weight (what a sparsity counts), as the model computes with them."""
    return sum(getattr(m, a).numel() for m in model.modules() for a in prunable_weights(m))


def resolve_names(model: nn.Module, names: Iterable[str]) -> list[nn.Module | nn.Parameter]:
    params = dict(model.named_parameters())
    return [params[n] if n in params else submodule(model, n) for n in names]


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _stage_and_block(module_name: str) -> tuple[str, str]:
    """Stage = the container level of a model; block = the innermost numbered container.

    ``layers.2.blocks.1.mlp.fc1`` -> (``layers.2``, ``layers.2.blocks.1``);
    ``layer3.1.conv2`` -> (``layer3``, ``layer3.1``); ``head.fc`` -> (``head``, ``head``).
    """
    parts = module_name.split(".")
    numeric = [i for i, p in enumerate(parts) if p.isdigit()]
    if not numeric:
        return parts[0], parts[0]
    block = ".".join(parts[: numeric[-1] + 1])
    if len(numeric) >= 2:
        stage = ".".join(parts[: numeric[0] + 1])
    else:
        stage = ".".join(parts[: numeric[0]]) or parts[0]
    return stage, block


def _classify(
    name: str,
    module: nn.Module,
    modules: dict[str, nn.Module],
    is_first: bool,
    is_head: bool,
) -> str:
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.modules.conv._ConvNd):
        if is_first and module.kernel_size == module.stride and max(module.kernel_size) > 1:
            return "patch_embedding"
        if module.groups > 1:
            return "depthwise_conv" if module.groups == module.in_channels else "grouped_conv"
        return "conv"
    if is_head:
        return "head"
    for anc in _ancestors(name):
        parent = modules[anc]
        cls = type(parent).__name__
        if hasattr(parent, "num_heads") or _ATTENTION_NAME.search(cls):
            return "attention"
        if _MLP_NAME.search(cls):
            return "mlp"
    return "linear"


def _ran_at(name: str, order: dict[str, int]) -> float:
    """Where a module ran; one that never ran as a module (``out_proj`` inside ``nn.MultiheadAttention``)
    runs just after its nearest ancestor that did, and a module nothing ran goes last."""
    for depth, anc in enumerate([name, *_ancestors(name), ""]):
        if anc in order:
            return order[anc] + depth / 100
    return float(len(order) + 1)


def inventory(model: nn.Module, example_inputs: Any = None) -> Inventory:
    """List the prunable weights of ``model`` (Conv, Linear, Embedding, packed attention projections)
    and why the rest is not.

    ``example_inputs`` (a tensor or tuple) gives the execution order and the classifier head: the Linear
    whose output the model returns (when a function computed the output, the last Linear run with as
    many outputs as the model; when another module did, there is no head). Without it, registration
    order stands in and the last Linear is taken as the head.
    """
    modules = dict(model.named_modules())
    candidates: dict[str, tuple[str, nn.Module, str]] = {}  # unit name -> (module name, module, attribute)
    skipped: list[SkippedParam] = []
    for mname, module in modules.items():
        attrs = prunable_weights(module)
        for attr in attrs:
            candidates[f"{mname}.{attr}" if mname else attr] = (mname, module, attr)
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if pname in attrs or (pname == "original" and ".parametrizations." in full):
                continue
            if isinstance(module, _NORMS):
                reason = "normalization layer: kept dense"
            elif "bias" in pname or p.dim() < 2:
                reason = "bias or 1-D parameter"
            else:
                reason = "not a Conv/Linear/Embedding weight (e.g. position table, token)"
            skipped.append(SkippedParam(full, tuple(p.shape), reason))
    if not candidates:
        raise NoPrunableLayersError(
            f"{type(model).__name__} has no Conv, Linear or Embedding weight to prune; "
            "check that you passed the model itself and not a wrapper or a frozen export"
        )

    seen = trace(model, example_inputs) if example_inputs is not None else Trace([], {}, None)
    ran = {n: i for i, n in enumerate(seen.order)}
    ordered = sorted(candidates, key=lambda n: _ran_at(candidates[n][0], ran)) if ran else list(candidates)
    head = seen.output_of if isinstance(modules.get(seen.output_of or ""), nn.Linear) and seen.output_of else None
    if seen.output_of is None:  # the output came from a function (softmax...): the last Linear that fits
        linears = [candidates[n][0] for n in ordered if isinstance(candidates[n][1], nn.Linear)
                   and (not ran or candidates[n][0] in ran)]
        out = seen.output
        if linears and (out is None or (out.dim() >= 1 and out.shape[-1] == modules[linears[-1]].out_features)):
            head = linears[-1]

    def positions(mname: str) -> int:
        owner = next((a for a in [mname, *_ancestors(mname)] if a in seen.positions), None)
        return seen.positions[owner] if owner is not None else 0

    n = len(ordered)
    units = []
    for i, name in enumerate(ordered):
        mname, module, attr = candidates[name]
        shape = tuple(_weight_of(module, attr).shape)
        params = int(torch.Size(shape).numel())
        stage, block = _stage_and_block(mname)
        units.append(Unit(
            name=name, module=mname,
            kind="attention" if attr != "weight" else _classify(mname, module, modules, i == 0, mname == head),
            shape=shape, params=params, order=i, depth=i / (n - 1) if n > 1 else 0.0, stage=stage, block=block,
            macs=0 if isinstance(module, nn.Embedding) else params * positions(mname),
        ))
    return Inventory(units, skipped)
