"""Layer inventory: every prunable weight of any ``nn.Module``, with its kind, size and position.

No per-architecture tables: kinds come from module types, the structure around a module (its
ancestors' class names, ``num_heads`` attributes) and the execution order seen in one forward pass.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import NoPrunableLayersError

KINDS = (
    "conv",
    "depthwise_conv",
    "grouped_conv",
    "linear",
    "attention",
    "mlp",
    "embedding",
    "patch_embedding",
    "head",
)

PRUNABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_ATTENTION_NAME = re.compile(r"attention|attn", re.IGNORECASE)
_MLP_NAME = re.compile(r"mlp|feedforward|ffn", re.IGNORECASE)


@dataclass(frozen=True)
class LayerInfo:
    """One prunable weight tensor. ``name`` is the parameter name (``module.weight``)."""

    name: str
    module: str
    kind: str
    shape: tuple[int, ...]
    params: int
    order: int  # position in execution order among prunable layers
    depth: float  # order / (n - 1), 0 = first layer, 1 = last
    stage: str
    block: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class SkippedParam:
    name: str
    shape: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class Inventory:
    layers: list[LayerInfo]
    skipped: list[SkippedParam] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    def __getitem__(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def _weight_of(module: nn.Module) -> torch.Tensor | None:
    """The module's own weight (through a mask parametrization if there is one)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original
    return module._parameters.get("weight")


def _execution_order(model: nn.Module, example_inputs: Any) -> tuple[list[str], torch.Tensor | None]:
    """Module names in the order their forward ran, and the model's output."""
    order: list[str] = []
    seen: set[str] = set()
    handles = []
    for name, module in model.named_modules():
        def hook(_m, _i, _o, name=name):
            if name not in seen:
                seen.add(name)
                order.append(name)

        handles.append(module.register_forward_hook(hook))
    try:
        output = forward_eval(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return order, output


def forward_eval(model: nn.Module, example_inputs: Any) -> torch.Tensor | None:
    """One eval-mode, no-grad forward pass; the (first) output tensor. The train/eval flag is restored."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
            output = model(*inputs)
    finally:
        model.train(was_training)
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output if isinstance(output, torch.Tensor) else None


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


def inventory(model: nn.Module, example_inputs: Any = None) -> Inventory:
    """List the prunable weights of ``model`` (Conv, Linear, Embedding) and why the rest is not.

    ``example_inputs`` (a tensor or tuple) gives the execution order and the classifier head; without
    it, registration order stands in and the last Linear is taken as the head.
    """
    modules = dict(model.named_modules())
    candidates: dict[str, nn.Module] = {}
    skipped: list[SkippedParam] = []
    for mname, module in modules.items():
        weight = _weight_of(module)
        if isinstance(module, PRUNABLE_TYPES) and weight is not None:
            candidates[mname] = module
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if mname in candidates and pname == "weight":
                continue
            if isinstance(module, _NORMS):
                reason = "normalization layer: kept dense"
            elif pname == "bias" or p.dim() < 2:
                reason = "bias or 1-D parameter"
            elif pname == "original" and ".parametrizations." in full:
                continue
            else:
                reason = "not a Conv/Linear/Embedding weight (e.g. position table, token)"
            skipped.append(SkippedParam(full, tuple(p.shape), reason))
    if not candidates:
        raise NoPrunableLayersError(
            f"{type(model).__name__} has no Conv, Linear or Embedding weight to prune; "
            "check that you passed the model itself and not a wrapper or a frozen export"
        )

    output = None
    if example_inputs is not None:
        executed, output = _execution_order(model, example_inputs)
        ordered = [n for n in executed if n in candidates]
        ordered += [n for n in candidates if n not in set(ordered)]  # never-run layers go last
    else:
        ordered = list(candidates)

    linears = [n for n in ordered if isinstance(candidates[n], nn.Linear)]
    head = None
    if linears:
        last = candidates[linears[-1]]
        if output is None or (output.dim() >= 1 and output.shape[-1] == last.out_features):
            head = linears[-1]

    n = len(ordered)
    layers = []
    for i, mname in enumerate(ordered):
        module = candidates[mname]
        shape = tuple(_weight_of(module).shape)
        stage, block = _stage_and_block(mname)
        layers.append(
            LayerInfo(
                name=f"{mname}.weight" if mname else "weight",
                module=mname,
                kind=_classify(mname, module, modules, i == 0, mname == head),
                shape=shape,
                params=int(torch.Size(shape).numel()),
                order=i,
                depth=i / (n - 1) if n > 1 else 0.0,
                stage=stage,
                block=block,
            )
        )
    return Inventory(layers, skipped)

