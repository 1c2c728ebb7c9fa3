"""NNCF plumbing: wrapping, its hook storage (pruning masks as NNCF's own ``UnstructuredPruningMask``),
the graph and its weight metatypes."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from mm_plugin.errors import MMError, UnsupportedModelError, one_line


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


def build_graph(model: nn.Module, example_inputs: Any) -> Any:
    """NNCF's graph of a wrapped model; a tracing failure is one line naming the model."""
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph

    try:
        return build_nncf_graph(model, example_inputs)
    except Exception as e:  # the forward itself ran (create_compressed_model checked it)
        raise UnsupportedModelError(f"NNCF cannot trace {type(model).__name__}: {one_line(e)}") from e


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

