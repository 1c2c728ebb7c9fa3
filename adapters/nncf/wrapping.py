"""NNCF plumbing: wrapping, its hook storage (pruning masks as NNCF's own ``UnstructuredPruningMask``),
weight metatypes, and ignored scopes matched by NNCF's own matcher over its graph."""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mm_plugin.errors import ConfigError, MMError, UnsupportedModelError

from .config import Step


def require_nncf():
    try:
        import nncf
    except ImportError:
        raise MMError("the NNCF adapter needs NNCF 3.4: pip install 'mm-plugin[nncf]'") from None
    if importlib.util.find_spec("torchao") is None:
        raise MMError("nncf.strip imports torchao, which NNCF 3.4 does not declare: pip install 'mm-plugin[nncf]' "
                      "(it pins torchao) or pip install torchao")
    return nncf


def hook_storage(model: nn.Module):
    from nncf.torch.function_hook.wrapper import get_hook_storage, is_wrapped

    return get_hook_storage(model) if is_wrapped(model) else None


def nncf_hooks(model: nn.Module) -> list[tuple[str, str, nn.Module, bool]]:
    """(hook name, weight name, hook, is a pruning mask) for every NNCF hook of a wrapped model."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.pruning.magnitude.modules import UnstructuredPruningMask

    storage = hook_storage(model)
    return [] if storage is None else [(n, decode_hook_name(n)[1], h, isinstance(h, UnstructuredPruningMask))
                                       for n, h in storage.named_hooks()]


def mask_hooks(model: nn.Module) -> dict[str, nn.Module]:
    """``{weight name: UnstructuredPruningMask}`` of a wrapped model."""
    return {weight: hook for _, weight, hook, is_mask in nncf_hooks(model) if is_mask}


@torch.no_grad()
def bake_mask_hooks(model: nn.Module) -> None:
    """Fold only the pruning masks into their weights and drop those hooks (quantizers stay)."""
    for name, weight, hook, is_mask in nncf_hooks(model):
        if is_mask:
            param = model.get_parameter(weight)
            param.data = param.data * hook.binary_mask.to(param.dtype)
            hook_storage(model).delete_hook(name)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Undo ``nncf.torch.function_hook.wrap_model`` on a model whose hook storage is empty: a plain module."""
    from nncf.torch.function_hook.wrapper import ATR_HOOK_STORAGE, ReplicateForDataParallel, is_wrapped

    if not is_wrapped(model):
        return model
    if nncf_hooks(model):
        raise UnsupportedModelError(f"cannot unwrap {type(model).__name__}: it still carries NNCF hooks "
                                    f"{[n for n, *_ in nncf_hooks(model)][:3]}...; strip it first")
    del model.__dict__["forward"]
    if isinstance(model.__dict__.get("_replicate_for_data_parallel"), ReplicateForDataParallel):
        del model.__dict__["_replicate_for_data_parallel"]
    delattr(model, ATR_HOOK_STORAGE)
    return model


def check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        raise UnsupportedModelError(
            f"NNCF cannot wrap a bare {type(model).__name__} root (it would run NNCF's hook storage as a layer); "
            "put it inside a module with its own forward(), e.g. class Net(nn.Module): forward = lambda s, x: s.body(x)"
        )
    if mask_hooks(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} already carries NNCF pruning masks; start from the uncompressed model"
        )


def resolve_scope(step: Step, graph: Any):
    """The step's ignored scope matched by NNCF's own matcher over the NNCF graph (None when empty)."""
    core, path = step.ignored_scope, step.scope_path
    if core is None:
        return None
    import nncf
    from nncf.scopes import get_difference_ignored_scope, get_matched_ignored_scope_info

    scope = nncf.IgnoredScope(names=list(core.names), patterns=list(core.patterns), types=list(core.types),
                              validate=core.validate)
    matched, _ = get_matched_ignored_scope_info(scope, [graph])
    missing = get_difference_ignored_scope(scope, matched)
    if scope.validate and (missing.names or missing.patterns or missing.types):
        listed = isinstance(step.options["ignored_scopes"], list)
        nodes = sorted(n.node_name for n in graph.get_all_nodes())
        if missing.names:
            name = missing.names[0]
            close = difflib.get_close_matches(name, nodes, n=5, cutoff=0.4)
            contains = [n for n in nodes if name.replace(".", "/") in n][:5]
            suggestions = list(dict.fromkeys(contains + close))[:5] or nodes[:5]
            raise ConfigError(
                f"{path if listed else path + '.names'}: {missing.names} match no node of the NNCF graph (names "
                "are NNCF node names, e.g. 'layer1/0/conv1/conv2d/0'; '{re}' or 'patterns' for regular "
                f"expressions); allowed values (closest node names): {', '.join(suggestions)}")
        if missing.patterns:
            raise ConfigError(f"{path if listed else path + '.patterns'}: {missing.patterns} match no node name of "
                              f"the NNCF graph (re.match from the start); node names look like: {', '.join(nodes[:5])}")
        types = sorted({n.node_type for n in graph.get_all_nodes()})
        raise ConfigError(f"{path}.types: {missing.types} match no operation type of the NNCF graph; "
                          f"allowed values: {', '.join(types)}")
    return matched if (matched.names or matched.patterns or matched.types) else None


def weight_metatypes(graph: Any) -> dict[str, tuple[str, ...]]:
    """Every weight constant NNCF's pruning would consider, with the metatypes of the ops using it."""
    from nncf.torch.function_hook.pruning.prune_model import OPERATORS_WITH_WEIGHTS_METATYPES
    from nncf.torch.model_graph_manager import get_const_node

    found: dict[str, list[str]] = {}
    for node in graph.get_nodes_by_metatypes(OPERATORS_WITH_WEIGHTS_METATYPES):
        ports = getattr(node.layer_attributes, "constant_port_ids", set()) & set(node.metatype.weight_port_ids)
        for port in sorted(ports):
            const = get_const_node(node, port, graph)
            if const is not None:
                found.setdefault(const.node_name, []).append(node.metatype.__name__)
    return {c: tuple(m) for c, m in found.items()}


def model_inputs(batch: Any) -> Any:
    """Calibration batch -> what the model takes: a tensor, the first of a pair, or a dict's 'x'/'input'."""
    if isinstance(batch, Mapping):
        return batch["x"] if "x" in batch else batch["input"]
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


