"""``ignored_scopes`` / ``target_scopes``: NNCF 2.x scope strings and NNCF 3.x ``IgnoredScope`` fields,
matched against the NNCF 3.x graph of the model.

NNCF 2.x named an operation ``ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]/conv2d_0``;
NNCF 3.x names it ``layer1/0/conv1/conv2d/0``. Every graph node gets its 2.x name here (module types
from the model, ``NNCF`` prefixes where 2.x wrapped the module, 2.x's operator names), so a 2.x string
translates to exactly one node, and a 2.x ``{re}`` pattern is searched (``re.search``, as 2.x did) in
both names. A string that matches nothing is an error listing the nodes whose module path is closest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from mm_plugin.errors import ConfigError
from mm_plugin.model import closest_names
from mm_plugin.tables import format_table

from .wrapping import ignored_node_names, match_scope

#: Torch modules NNCF 2.x replaced by its own ``NNCF<Type>`` (``nncf.torch.layers.NNCF_MODULES_DICT``).
NNCF2_WRAPPED = frozenset({
    "Conv1d", "Conv2d", "Conv3d", "Linear", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "LayerNorm",
    "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Embedding", "EmbeddingBag",
})
#: NNCF 2.x traced Python operators; NNCF 3.x names the torch function they call.
NNCF2_OPERATORS = {"__add__": "add", "__radd__": "add", "__iadd__": "add_", "__sub__": "sub", "__rsub__": "rsub",
                   "__isub__": "sub_", "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul_",
                   "__truediv__": "div", "__rtruediv__": "div", "__itruediv__": "div_", "__matmul__": "matmul"}
_NNCF2_PART = re.compile(r"(?P<type>[\w.]+)\[(?P<name>[^\]]*)\]")
_NNCF2_OP = re.compile(r"(?P<op>.+)_(?P<index>\d+)")
#: Graph nodes that are no operation: inputs, outputs and weight constants.
_NOT_OPS = ("nncf_model_input", "nncf_model_output", "nncf_model_const")


@dataclass(frozen=True)
class Scopes:
    """A step's scopes as written: NNCF 2.x strings (``legacy``: the string/list form of
    ``ignored_scopes``; ``targets``: ``target_scopes``), each with its JSON path, and NNCF 3.x
    ``IgnoredScope`` fields."""

    path: str
    legacy: tuple[tuple[str, str], ...] = ()  # (entry, its JSON path)
    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    targets: tuple[tuple[str, str], ...] | None = None
    validate: bool = True


def _regex(entry: str) -> str | None:
    """The regular expression of a 2.x ``{re}`` entry (2.x drops the marker wherever it is), else None."""
    return entry.replace("{re}", "") if "{re}" in entry else None


def _check_regexes(entries: Iterable[tuple[str, str]]) -> None:
    for entry, path in entries:
        try:
            re.compile(entry)
        except re.error as e:
            raise ConfigError(f"{path}: {entry!r} is not a valid regular expression ({e})") from None


def _legacy(value: str | Sequence[str], path: str) -> tuple[tuple[str, str], ...]:
    """NNCF 2.x's string-or-list form as (entry, JSON path) pairs, its ``{re}`` patterns checked."""
    entries = ((value, path),) if isinstance(value, str) else tuple((e, f"{path}[{i}]") for i, e in enumerate(value))
    _check_regexes((r, p) for e, p in entries if (r := _regex(e)) is not None)
    return entries


def parse_scopes(options: Mapping[str, Any], path: str) -> Scopes | None:
    """The step's ``ignored_scopes``, ``target_scopes`` and ``validate_scopes``; regexes checked here."""
    ignored, targets = options.get("ignored_scopes"), options.get("target_scopes")
    if ignored is None and targets is None:
        return None
    where = f"{path}.ignored_scopes"
    fields: dict[str, Any] = {"validate": options.get("validate_scopes", True)}
    if isinstance(ignored, Mapping):
        fields |= {k: (v if k == "validate" else tuple(v)) for k, v in ignored.items()}
        _check_regexes((p, f"{where}.patterns[{i}]") for i, p in enumerate(fields.get("patterns", ())))
    elif ignored is not None:
        fields["legacy"] = _legacy(ignored, where)
    if targets is not None:
        fields["targets"] = _legacy(targets, f"{path}.target_scopes")
    return Scopes(path=where, **fields)


# --- NNCF 2.x names of NNCF 3.x nodes ------------------------------------------------------------
def _split(node_name: str) -> tuple[str, str, str]:
    """``layer1/0/conv1/conv2d/0`` -> (``layer1.0.conv1``, ``conv2d``, ``0``)."""
    *scope, op, index = node_name.split("/")
    return ".".join(p for p in scope if p), op, index


def legacy_name(model: nn.Module, node_name: str) -> str:
    """The NNCF 2.x name of an NNCF 3.x operation node of ``model``."""
    module_path, op, index = _split(node_name)
    parts, prefix = [type(model).__name__], []
    for name in module_path.split(".") if module_path else ():
        prefix.append(name)
        try:
            cls = type(model.get_submodule(".".join(prefix))).__name__
        except AttributeError:  # an operation scoped by something that is no submodule
            cls = "Module"
        parts.append(f"{'NNCF' if cls in NNCF2_WRAPPED else ''}{cls}[{name}]")
    op2 = next((k for k, v in NNCF2_OPERATORS.items() if v == op), op)
    return "/".join([*parts, f"{op2}_{index}"])


def translate(name: str) -> str | None:
    """An NNCF 2.x operation name as NNCF 3.x spells it, or None when ``name`` is not in 2.x form."""
    parts = name.split("/")
    modules = [_NNCF2_PART.fullmatch(p) for p in parts[1:-1]]
    op = _NNCF2_OP.fullmatch(parts[-1])
    if len(parts) < 2 or "[" in parts[0] or op is None or not all(modules):
        return None
    return "/".join([*(m["name"] for m in modules), NNCF2_OPERATORS.get(op["op"], op["op"]), op["index"]]) \
        if modules else f"/{NNCF2_OPERATORS.get(op['op'], op['op'])}/{op['index']}"


def _module_path(text: str) -> str:
    """The module path a scope string refers to, in any of the forms users write."""
    regex = _regex(text)
    if regex is not None:  # the literal text of a pattern
        text = re.sub(r"\\(.)", r"\1", re.sub(r"\.[*+?]|[\^$()?*+|]", "", regex))
    if _NNCF2_PART.search(text):
        return ".".join(m["name"] for m in _NNCF2_PART.finditer(text))
    if "/" in text:
        parts = text.strip("/").split("/")
        return ".".join(parts[:-2] if len(parts) >= 2 and parts[-1].isdigit() else parts)
    return re.sub(r"\.(weight|bias)$", "", text)


def closest(text: str, op_nodes: Sequence[str], n: int = 5) -> list[str]:
    """Operation nodes whose module path is closest to the one ``text`` names (edit distance)."""
    by_module: dict[str, str] = {}
    for node in op_nodes:
        by_module.setdefault(_split(node)[0], node)
    return [by_module[m] for m in closest_names(_module_path(text), list(by_module), n)]


# --- matching --------------------------------------------------------------------------------------
def op_nodes(graph: Any) -> list[str]:
    return [n.node_name for n in graph.get_all_nodes() if n.node_type not in _NOT_OPS]


def _no_match(path: str, entry: str, ops: Sequence[str], what: str = "matches no node of the NNCF graph") -> ConfigError:
    return ConfigError(f"{path}: {entry!r} {what}; closest by module path: {', '.join(closest(entry, ops))} "
                       "(mm-prune nncf --list-scopes MODEL lists every node)")


def _match_legacy(entries: Sequence[tuple[str, str]], graph: Any, model: nn.Module, validate: bool) -> set[str]:
    """Node names matched by NNCF 2.x strings: a node name (3.x, or 2.x translated), or a ``{re}``
    pattern searched in both names."""
    nodes = {n.node_name for n in graph.get_all_nodes()}
    ops = op_nodes(graph)
    legacy = {n: legacy_name(model, n) for n in ops} if any(_regex(e) is not None for e, _ in entries) else {}
    matched: set[str] = set()
    for entry, path in entries:
        regex, translated = _regex(entry), translate(entry)
        if regex is not None:
            found = {n for n in nodes if re.search(regex, n)} | {n for n, old in legacy.items() if re.search(regex, old)}
        else:
            found = {entry} if entry in nodes else {translated} if translated in nodes else set()
        if not found and validate:
            what = "matches no node of the NNCF graph" if translated is None or regex is not None else \
                f"is NNCF 2.x's name of {translated!r}, which is no node of the NNCF graph"
            raise _no_match(path, entry, ops, what)
        matched |= found
    return matched


def resolve(scopes: Scopes | None, graph: Any, model: nn.Module):
    """The NNCF ``IgnoredScope`` the step's scopes select on ``graph`` (None when it is empty)."""
    if scopes is None:
        return None
    import nncf

    path, ops = scopes.path, op_nodes(graph)
    names = _match_legacy(scopes.legacy, graph, model, scopes.validate)
    if scopes.targets is not None:  # an allowlist: every other operation is left out
        names |= set(ops) - _match_legacy(scopes.targets, graph, model, scopes.validate)
    scope = nncf.IgnoredScope(names=list(scopes.names), patterns=list(scopes.patterns), types=list(scopes.types),
                              validate=scopes.validate)
    matched, missing = match_scope(scope, graph)
    if scope.validate and missing.names:
        raise _no_match(f"{path}.names[{scopes.names.index(missing.names[0])}]", missing.names[0], ops)
    if scope.validate and missing.patterns:
        raise ConfigError(f"{path}.patterns: {missing.patterns} match no node name of the NNCF graph (re.match "
                          f"from the start); node names look like: {', '.join(ops[:5])}")
    if scope.validate and missing.types:
        types = sorted({n.node_type for n in graph.get_all_nodes()} - set(_NOT_OPS))
        raise ConfigError(f"{path}.types: {missing.types} match no operation type of the NNCF graph; "
                          f"allowed values: {', '.join(types)}")
    names |= set(matched.names)
    if not (names or matched.patterns or matched.types):
        return None
    return nncf.IgnoredScope(names=sorted(names), patterns=list(matched.patterns), types=list(matched.types),
                             validate=False)


def ignored_modules(scope: Any, graph: Any) -> set[str]:
    """The modules whose operations (or weights) an NNCF ``IgnoredScope`` leaves out."""
    names = ignored_node_names(scope, graph)
    return {_split(n)[0] if "/" in n else re.sub(r"\.(weight|bias)$", "", n) for n in names}


def scope_table(model: nn.Module, graph: Any, weights: Mapping[str, Sequence[str]]) -> str:
    """Every operation node a config can name: NNCF 3.x name, op type, module, NNCF 2.x name, weight."""
    by_op: dict[str, str] = {}
    for node in graph.get_all_nodes():
        for edge in graph.get_output_edges(node) if node.node_type == "nncf_model_const" else ():
            if node.node_name in weights:
                by_op.setdefault(edge.to_node.node_name, node.node_name)
    rows = [[n.node_name, n.node_type, type(model.get_submodule(_split(n.node_name)[0])).__name__,
             legacy_name(model, n.node_name), by_op.get(n.node_name, "")]
            for n in graph.get_all_nodes() if n.node_type not in _NOT_OPS]
    return format_table(["node (ignored_scopes names)", "type", "module", "NNCF 2.x name", "weight"], rows, 5)
