"""Find channel dimensions that can be permuted without changing the network, and fold permutations.

A channel dimension is permutable when one producer (Linear / ConvNd with ``groups == 1``) writes
it and everything between that producer and the layers reading it is *channel-wise*: activations,
dropout, identity, BatchNorm, LayerNorm over the channel, depthwise convolutions, pooling, padding,
multiplication by a number, and ``flatten`` of a ``(N, C, 1, 1)`` tensor. Permuting the producer's
output rows (and bias), the channel-wise modules' per-channel parameters and buffers, and every
consumer's input columns then computes the same function.

Discovery traces the model with ``torch.fx`` (Linear, ConvNd, norms and PReLU are leaf modules,
so subclasses such as "same padding" convs count as what they are). A dimension is skipped, with
the reason recorded, whenever the channel reaches anything else: a residual ``add`` (ResNet and
ViT residual streams, whose permutation would have to be shared by every block), ``cat``,
``reshape`` (attention heads), the model output, a module called twice, a grouped conv. So in a
ViT only the MLP hidden dimension (fc1 -> GELU -> fc2) is permuted, in a ResNet the inner channel
of each block (conv1 -> bn1 -> relu -> conv2), in an inverted-residual block the expanded channel
(expand -> bn -> act -> depthwise -> bn -> act -> project). If the whole model cannot be traced,
its children are traced one by one (their internal pairs are still safe: a value that leaves the
child is an escape). With ``example_inputs`` the folded model is also checked numerically against
the original and a permutation that changes the output is undone.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from ..errors import UnsupportedModelError, ValidationError

log = logging.getLogger(__name__)

_CONV = nn.modules.conv._ConvNd
_BN = nn.modules.batchnorm._BatchNorm
_LEAVES = (nn.Linear, _CONV, _BN, nn.LayerNorm, nn.GroupNorm, nn.PReLU)
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)  # fmt: skip
_SPATIAL_MODULES = (  # act on each channel separately; need the channel at dim 1
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu,
    F.selu, F.mish, F.softplus, F.hardtanh, F.dropout, torch.relu, torch.sigmoid, torch.tanh,
    torch.nn.functional.relu_,
}  # fmt: skip
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "to"}
_SCALAR_OPS = {operator.mul, operator.truediv, operator.add, operator.sub, torch.mul, torch.div}


@dataclass(frozen=True)
class ChannelGroup:
    """One permutable channel dimension (module names relative to the model)."""

    producer: str
    consumers: tuple[str, ...]
    channelwise: tuple[str, ...]  # modules whose per-channel parameters/buffers follow the permutation
    size: int


@dataclass(frozen=True)
class Discovery:
    groups: tuple[ChannelGroup, ...]
    skipped: dict[str, str]  # producer (or subtree) -> why its channel dimension is not permuted


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def _is_producer(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, _CONV) and m.groups == 1 and not m.transposed)


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _in_channels(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _other_args_scalar(node: fx.Node, src: fx.Node) -> bool:
    others = [a for a in list(node.args) + list(node.kwargs.values()) if a is not src]
    return len(others) == 1 and isinstance(others[0], (int, float)) and src in node.args


def _trace(model: nn.Module, example_inputs: Sequence | None) -> fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph)
    if example_inputs is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        try:
            ShapeProp(gm).propagate(*example_inputs)
        except Exception as exc:  # noqa: BLE001 - shapes are a bonus; structural rules still apply
            log.warning("shape propagation failed (%s): channels that pass a flatten after pooling are not "
                        "followed, so their layers are not permuted", exc)
    return gm


def _follow(gm: fx.GraphModule, start: fx.Node, size: int, calls: dict[str, int], verified: bool):
    """Walk forward from a producer node; returns (consumers, channelwise) or an escape reason."""
    modules = dict(gm.named_modules())
    consumers: list[str] = []
    channelwise: list[str] = []
    # frontier of (node, where the channel lives: 1 = dim 1, -1 = last dim)
    frontier = [(start, -1 if isinstance(modules[start.target], nn.Linear) else 1)]
    seen: set[fx.Node] = set()

    def exact_or_verified(m: nn.Module, kinds: tuple) -> bool:
        return verified or type(m) in kinds  # subclasses may do more: only trusted when checked

    while frontier:
        node, cdim = frontier.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            what = user.format_node()
            if user.op == "output":
                return f"the channel is a model output ({what})"
            if user.op == "call_module":
                m = modules[user.target]
                stateful = any(True for _ in m.parameters()) or any(True for _ in m.buffers())
                if stateful and calls.get(user.target, 0) > 1:  # reused stateless activations are fine
                    return f"module {user.target!r} is called {calls[user.target]} times"
                tensor_args = [a for a in user.args if isinstance(a, fx.Node)]
                if tensor_args != [node] or user.kwargs:
                    return f"{user.target!r} takes more than the channel tensor"
                if _is_producer(m):
                    if _in_channels(m) != size:
                        return f"{user.target!r} expects {_in_channels(m)} inputs, not {size}"
                    if isinstance(m, nn.Linear) and cdim != -1 or isinstance(m, _CONV) and cdim != 1:
                        return f"{user.target!r} does not read the channel where the producer writes it"
                    consumers.append(user.target)
                    continue
                if isinstance(m, _CONV):  # depthwise conv: channel-wise with per-channel weights
                    if not (m.groups == m.in_channels == m.out_channels == size and cdim == 1):
                        return f"grouped convolution {user.target!r} mixes channels"
                    channelwise.append(user.target)
                elif isinstance(m, _BN):
                    ndim = len(_shape(node) or ())
                    if m.num_features != size or not (cdim == 1 or ndim == 2):
                        return f"BatchNorm {user.target!r} does not normalize this channel"
                    if not exact_or_verified(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                        return f"{user.target!r} is a BatchNorm subclass (pass example_inputs to verify)"
                    channelwise.append(user.target)
                elif isinstance(m, nn.LayerNorm):
                    if tuple(m.normalized_shape) != (size,) or cdim != -1:
                        return f"LayerNorm {user.target!r} does not normalize over this channel only"
                    if not exact_or_verified(m, (nn.LayerNorm,)):
                        return f"{user.target!r} is a LayerNorm subclass (pass example_inputs to verify)"
                    channelwise.append(user.target)
                elif isinstance(m, nn.GroupNorm):
                    if m.num_groups != size or cdim != 1:
                        return f"GroupNorm {user.target!r} mixes channels within groups"
                    channelwise.append(user.target)
                elif isinstance(m, nn.PReLU):
                    if m.num_parameters not in (1, size):
                        return f"PReLU {user.target!r} has {m.num_parameters} parameters"
                    if m.num_parameters == size:
                        channelwise.append(user.target)
                elif isinstance(m, _ELEMENTWISE_MODULES):
                    pass
                elif isinstance(m, _SPATIAL_MODULES):
                    if cdim != 1:
                        return f"{user.target!r} pools over the channel dimension"
                elif isinstance(m, nn.Flatten):
                    shp = _shape(node)
                    if not (m.start_dim == 1 and shp is not None and all(d == 1 for d in shp[2:])):
                        return f"flatten {user.target!r} mixes the channel with other dimensions"
                    frontier.append((user, -1))
                    continue
                else:
                    return f"the channel reaches {type(m).__name__} {user.target!r}"
                frontier.append((user, cdim))
            elif user.op in ("call_function", "call_method"):
                fn = user.target
                if fn in _ELEMENTWISE_FUNCTIONS or fn in _ELEMENTWISE_METHODS:
                    if user.args[0] is not node or any(isinstance(a, fx.Node) for a in user.args[1:]):
                        return f"{what} combines the channel with another tensor"
                    frontier.append((user, cdim))
                elif fn in _SCALAR_OPS or fn in ("mul", "div", "add", "sub"):
                    if not _other_args_scalar(user, node):
                        return f"{what} combines the channel with another tensor"
                    frontier.append((user, cdim))
                elif fn in (torch.flatten, "flatten"):
                    shp = _shape(node)
                    start_dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("start_dim", 0)
                    if not (start_dim == 1 and shp is not None and all(d == 1 for d in shp[2:])):
                        return f"{what} mixes the channel with other dimensions"
                    frontier.append((user, -1))
                else:
                    return f"the channel reaches {what}"
            else:
                return f"the channel reaches {what}"
    if not consumers:
        return "no layer reads the channel"
    return consumers, channelwise


def _groups_in(gm: fx.GraphModule, prefix: str, verified: bool) -> tuple[list[ChannelGroup], dict[str, str]]:
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    groups, skipped = [], {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not _is_producer(modules[node.target]):
            continue
        name = prefix + node.target
        if calls[node.target] > 1:
            skipped[name] = f"called {calls[node.target]} times"
            continue
        size = _out_channels(modules[node.target])
        found = _follow(gm, node, size, calls, verified)
        if isinstance(found, str):
            skipped[name] = found
            continue
        consumers, channelwise = found
        groups.append(
            ChannelGroup(
                name, tuple(prefix + c for c in consumers), tuple(prefix + c for c in channelwise), size
            )
        )
    return groups, skipped


def find_channel_groups(model: nn.Module, example_inputs: Sequence | None = None) -> Discovery:
    """Every permutable channel dimension of ``model`` (see module docstring), with skip reasons."""
    groups: list[ChannelGroup] = []
    skipped: dict[str, str] = {}

    def visit(module: nn.Module, prefix: str, inputs: Sequence | None) -> None:
        try:
            gm = _trace(module, inputs)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: try the children
            reason = f"torch.fx cannot trace it ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
            children = list(module.named_children())
            if not children or isinstance(module, _LEAVES):
                skipped[prefix.rstrip(".") or "<model>"] = reason
                return
            log.warning("%s: %s; tracing its children one by one instead, so channels that cross from one child "
                        "to the next are not permuted", prefix.rstrip(".") or "<model>", reason)
            for child_name, child in children:
                visit(child, f"{prefix}{child_name}.", None)
            return
        g, s = _groups_in(gm, prefix, verified=inputs is not None)
        groups.extend(g)
        skipped.update(s)

    visit(model, "", example_inputs)
    # tied weights (one Parameter in two modules) would be permuted twice: drop such groups
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    kept = []
    for g in groups:
        tied = [n for n in (g.producer, *g.consumers) if owners.get(id(model.get_submodule(n).weight), 0) > 1]
        if tied:
            skipped[g.producer] = f"weight of {tied[0]!r} is shared with another module"
        else:
            kept.append(g)
    return Discovery(tuple(kept), skipped)


_ADDS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub, "add", "add_", "sub", "sub_"}
_PASS_FIRST = {operator.mul, operator.imul, operator.truediv, torch.mul, torch.div, "mul", "mul_", "div", "div_"}
_PASS_ALL = {torch.cat, torch.concat, torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
             torch.unsqueeze, "flatten", "reshape", "view", "permute", "transpose", "squeeze", "unsqueeze", "expand",
             "expand_as", "chunk", operator.getitem}


def _writers(gm: fx.GraphModule, node: fx.Node, modules: dict[str, nn.Module]) -> set[str]:
    """The layers (Linear / ConvNd) whose outputs reach ``node`` through channel-preserving steps only (norms,
    activations, pooling, scaling, reshapes, concatenation and other adds): the writers of a residual stream."""
    found, stack, seen = set(), [node], set()
    while stack:
        n = stack.pop()
        if n in seen or not isinstance(n, fx.Node):
            continue
        seen.add(n)
        tensors = [a for a in n.args if isinstance(a, fx.Node)]
        if n.op == "call_module":
            m = modules[n.target]
            if isinstance(m, (nn.Linear, _CONV)) and not (isinstance(m, _CONV) and m.groups > 1):
                found.add(n.target)
            elif isinstance(m, (_BN, nn.LayerNorm, nn.GroupNorm, nn.PReLU, nn.Flatten, _CONV, *_ELEMENTWISE_MODULES,
                                *_SPATIAL_MODULES)):
                stack.extend(tensors[:1])  # a depthwise convolution passes its channels on, one by one
        elif n.op in ("call_function", "call_method"):
            fn = n.target
            if fn in _ADDS or fn in _PASS_ALL:
                stack.extend(a for a in n.args for a in (a if isinstance(a, (list, tuple)) else (a,))
                             if isinstance(a, fx.Node))
            elif fn in _PASS_FIRST or fn in _ELEMENTWISE_FUNCTIONS or fn in _ELEMENTWISE_METHODS:
                stack.extend(tensors[:1])
    return found


def residual_streams(model: nn.Module) -> list[tuple[str, ...]]:
    """The layers whose outputs are summed into one residual stream, one tuple of module names per stream
    (two or more layers each), in the model's module order: a ResNet stage's stem or downsample projection
    and each block's last convolution, a ViT's patch embedding, attention projections and MLP outputs.
    Found by tracing with ``torch.fx``; a model that does not trace is traced child by child (a stream that
    crosses children is then split at their borders); what cannot be traced at all has no streams."""
    parent = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def visit(module: nn.Module, prefix: str) -> None:
        try:
            gm = _trace(module, None)
        except Exception:  # noqa: BLE001 - any tracing failure means: try the children
            if not isinstance(module, _LEAVES):
                for child_name, child in module.named_children():
                    visit(child, f"{prefix}{child_name}.")
            return
        modules = dict(gm.named_modules())
        for node in gm.graph.nodes:
            if node.op in ("call_function", "call_method") and node.target in _ADDS:
                operands = [a for a in node.args if isinstance(a, fx.Node)]
                if len(operands) < 2:
                    continue  # adding a number is a scaling, not a residual
                writers = sorted(prefix + w for w in _writers(gm, node, modules))
                for w in writers[1:]:
                    parent[find(w)] = find(writers[0])

    visit(model, "")
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    streams: dict[str, list[str]] = {}
    for name in parent:
        streams.setdefault(find(name), []).append(name)
    out = [tuple(sorted(m, key=lambda n: order.get(n, 0))) for m in streams.values() if len(m) > 1]
    return sorted(out, key=lambda m: order.get(m[0], 0))


# ------------------------------------------------------------------------------------------------
# folding


def _check_plain(module: nn.Module, name: str) -> None:
    if parametrize.is_parametrized(module):
        raise ValidationError(
            f"{name!r} already carries a parametrization (mask); permute channels before masking, "
            "or bake the masks first with mm_plugin.masks.bake_masks_"
        )


def _permute_(t: torch.Tensor | None, perm: torch.Tensor, dim: int) -> None:
    if t is None:
        return
    with torch.no_grad():
        t.copy_(t.index_select(dim, perm.to(t.device)))


def fold_permutation_(model: nn.Module, group: ChannelGroup, perm: torch.Tensor) -> None:
    """Reorder one channel dimension everywhere it lives; ``perm[p]`` is the channel put at ``p``."""
    perm = torch.as_tensor(perm, dtype=torch.long)
    if perm.numel() != group.size or not torch.equal(perm.sort().values, torch.arange(group.size)):
        raise ValidationError(f"{group.producer}: not a permutation of {group.size} channels")
    prod = model.get_submodule(group.producer)
    _check_plain(prod, group.producer)
    for name in group.consumers + group.channelwise:
        _check_plain(model.get_submodule(name), name)
    _permute_(prod.weight, perm, 0)
    _permute_(prod.bias, perm, 0)
    for name in group.channelwise:
        m = model.get_submodule(name)
        if isinstance(m, _BN):
            for t in (m.weight, m.bias, m.running_mean, m.running_var):
                _permute_(t, perm, 0)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            _permute_(m.weight, perm, 0)
            _permute_(getattr(m, "bias", None), perm, 0)
        elif isinstance(m, _CONV):
            _permute_(m.weight, perm, 0)
            _permute_(m.bias, perm, 0)
        elif isinstance(m, nn.PReLU):
            _permute_(m.weight, perm, 0)
        else:  # pragma: no cover - discovery never records other types
            raise UnsupportedModelError(f"cannot permute {type(m).__name__} {name!r}")
    for name in group.consumers:
        _permute_(model.get_submodule(name).weight, perm, 1)


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    return []


@torch.no_grad()
def model_outputs(model: nn.Module, example_inputs: Sequence) -> list[torch.Tensor]:
    was_training = model.training
    model.eval()
    try:
        return [t.detach().clone() for t in _tensors(model(*example_inputs))]
    finally:
        model.train(was_training)


def same_outputs(a: Iterable[torch.Tensor], b: Iterable[torch.Tensor], atol: float = 1e-5) -> bool:
    """Outputs agree to ``atol`` scaled by the output magnitude (permuted sums round differently)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return False
        scale = max(1.0, float(x.abs().max())) if x.numel() else 1.0
        if not torch.allclose(x.float(), y.float(), rtol=0.0, atol=atol * scale):
            return False
    return True


def fold_verified_(
    model: nn.Module,
    group: ChannelGroup,
    perm: torch.Tensor,
    example_inputs: Sequence | None,
    reference: list[torch.Tensor] | None,
    atol: float = 1e-5,
) -> bool:
    """Fold, and with ``example_inputs`` undo the fold (returning False) if the outputs changed."""
    fold_permutation_(model, group, perm)
    if example_inputs is None or reference is None:
        return True
    if same_outputs(reference, model_outputs(model, example_inputs), atol):
        return True
    fold_permutation_(model, group, torch.argsort(perm))
    log.warning("%s: permuting this channel changed the model output; permutation undone", group.producer)
    return False
