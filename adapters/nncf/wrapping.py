"""NNCF plumbing, and the only module that imports NNCF below its public top level: wrapping, the hook
storage (pruning masks as NNCF's own ``UnstructuredPruningMask``), the graph, its weight metatypes, the
prunable weights and the ignored-scope matchers.

Written for NNCF 3.4 (:data:`WRITTEN_FOR`); ``integration_tests/test_nncf_internals.py`` fails on any
other version and says what to re-check (:data:`INTERNALS`). Every other module of the adapter uses
only NNCF's public API (``nncf.quantize``, ``nncf.strip``, ``nncf.pruning_statistic``, ``nncf.Dataset``,
``nncf.IgnoredScope``, ``nncf.torch.get_config``) or the functions below.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from mm_plugin.errors import MMError, UnsupportedModelError, one_line

#: The NNCF release these internals were written and tested against (major.minor).
WRITTEN_FOR = "3.4"
#: What this module reaches below NNCF's public API: re-check each on an NNCF upgrade.
INTERNALS = (
    ("nncf.torch.function_hook.wrapper: wrap_model, is_wrapped, get_hook_storage, register_post_function_hook, "
     "ATR_HOOK_STORAGE, ReplicateForDataParallel (and that wrap_model sets __dict__['forward'])"),
    "nncf.torch.function_hook.hook_storage: decode_hook_name",
    "nncf.torch.function_hook.pruning.magnitude.modules: UnstructuredPruningMask (bool buffer binary_mask)",
    "nncf.torch.function_hook.pruning.prune_model: get_prunable_parameters, OPERATORS_WITH_WEIGHTS_METATYPES",
    "nncf.torch.function_hook.nncf_graph.nncf_graph_builder: build_nncf_graph",
    "nncf.torch.model_graph_manager: get_const_node",
    ("nncf.scopes: get_matched_ignored_scope_info, get_difference_ignored_scope, "
     "get_ignored_node_names_from_ignored_scope"),
)


def require_nncf():
    try:
        import nncf
    except ImportError:
        raise MMError("the NNCF adapter needs NNCF 3.4: pip install 'mm-plugin[nncf]'") from None
    if importlib.util.find_spec("torchao") is None:
        raise MMError("nncf.strip imports torchao, which NNCF 3.4 does not declare: pip install 'mm-plugin[nncf]' "
                      "(it pins torchao) or pip install torchao")
    return nncf


def wrap(model: nn.Module) -> nn.Module:
    """``wrap_model`` in place (a model already wrapped is returned as it is)."""
    from nncf.torch.function_hook.wrapper import wrap_model

    return wrap_model(model)


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


def register_mask(model: nn.Module, weight: str, keep: torch.Tensor) -> nn.Module:
    """NNCF's stock ``UnstructuredPruningMask`` holding ``keep`` as a post-hook on the weight constant
    ``weight`` of a wrapped model."""
    from nncf.torch.function_hook.pruning.magnitude.modules import UnstructuredPruningMask
    from nncf.torch.function_hook.wrapper import register_post_function_hook

    hook = UnstructuredPruningMask(tuple(keep.shape)).to(device=keep.device)
    hook.binary_mask.copy_(keep)
    register_post_function_hook(model, weight, 0, hook)
    return hook


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


def prunable_parameters(graph: Any, scope: Any = None) -> set[str]:
    """The weights NNCF's own pruning would consider, less those an ``nncf.IgnoredScope`` leaves out."""
    from nncf.torch.function_hook.pruning.prune_model import get_prunable_parameters

    return set(get_prunable_parameters(graph, scope))


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


def match_scope(scope: Any, graph: Any) -> tuple[Any, Any]:
    """(what of an ``nncf.IgnoredScope`` matches the graph, what does not), as NNCF's own matcher says."""
    from nncf.scopes import get_difference_ignored_scope, get_matched_ignored_scope_info

    matched, _ = get_matched_ignored_scope_info(scope, [graph])
    return matched, get_difference_ignored_scope(scope, matched)


def ignored_node_names(scope: Any, graph: Any) -> set[str]:
    """The graph nodes an ``nncf.IgnoredScope`` leaves out (entries matching nothing are allowed)."""
    from nncf.scopes import get_ignored_node_names_from_ignored_scope

    return set(get_ignored_node_names_from_ignored_scope(scope, graph, strict=False))
