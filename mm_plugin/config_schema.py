"""JSON Schema validation whose errors read like the rest of the plugin's: one line with the JSON path
(``compression[0].strategy``), what is wrong and what is allowed there.

Schemas may carry a few extra keywords the validator ignores: ``x-noun`` (what a value is called in
the message), ``x-hints`` (value -> hint), ``x-key-hints`` (unknown key -> what to write instead) and
``x-allowed`` (descriptions of pattern-matched values).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

import jsonschema

from .errors import ConfigError


# --- jsonschema errors as one line with the JSON path --------------------------------------------
def json_type(value: Any) -> str:
    return {type(None): "null", bool: "boolean", str: "string", list: "array", dict: "object"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _where(path: Any, key: str | None = None) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    if key is not None:
        return f"{text or '$'}.{key}"
    return text or "$"


def _subschemas(root: dict[str, Any], node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``node`` and every schema it pulls in by ``$ref`` (local refs into ``root`` only)."""
    yield node
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        yield from _subschemas(root, target)


def merged(root: dict[str, Any], node: dict[str, Any], key: str) -> dict[str, Any]:
    """The ``key`` objects (``properties``, ...) of ``node`` and of the schemas it refers to, merged."""
    out: dict[str, Any] = {}
    for sub in _subschemas(root, node):
        out = {**sub.get(key, {}), **out}
    return out


def _allowed(node: dict[str, Any]) -> list[str]:
    """Enum values (also inside ``anyOf``) and the ``x-allowed`` descriptions of patterns."""
    subs = [node, *node.get("anyOf", [])]
    return [str(v) for sub in subs for v in sub.get("enum", [])] + [str(v) for sub in subs for v in sub.get("x-allowed", [])]


def _expected(node: dict[str, Any]) -> str:
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    names = {"integer": "a positive integer" if node.get("minimum") == 1 else "an integer", "number": "a number",
             "string": "a string", "boolean": "true or false", "array": "an array", "object": "an object",
             "null": "null"}
    return " or ".join(names[t] for t in types)


def _range(node: dict[str, Any]) -> str:
    if node.get("type") == "integer":
        return f"integers >= {node['minimum']}"
    lo, hi = node.get("minimum", node.get("exclusiveMinimum")), node.get("maximum", node.get("exclusiveMaximum"))
    return (f"numbers in {'(' if 'exclusiveMinimum' in node else '['}{lo:g}, "
            f"{'inf' if hi is None else f'{hi:g}'}{')' if hi is None or 'exclusiveMaximum' in node else ']'}")


def _message(root: dict[str, Any], error: jsonschema.ValidationError) -> str:
    node, value, kind, path = error.schema, error.instance, error.validator, error.absolute_path
    if kind == "required":
        missing = next(k for k in error.validator_value if k not in value)
        allowed = _allowed(merged(root, node, "properties").get(missing, {}))
        return f"{_where(path, missing)}: is required" + (f"; allowed values: {', '.join(allowed)}" if allowed else "")
    if kind in ("additionalProperties", "unevaluatedProperties"):
        props = merged(root, node, "properties")
        key = next(k for k in value if k not in props)
        hint = merged(root, node, "x-key-hints").get(key)
        close = difflib.get_close_matches(str(key), props, n=1)
        hint = f" ({hint})" if hint else f" (did you mean {close[0]!r}?)" if close else ""
        return f"{_where(path, key)}: unknown key{hint}; allowed keys: {', '.join(sorted(props))}"
    where = _where(path)
    if kind == "type":
        allowed = _allowed(node)
        return f"{where}: expected {_expected(node)}, got {json_type(value)}" + (
            f"; allowed values: {', '.join(allowed)}" if allowed else "")
    if kind in ("enum", "anyOf"):
        hint = node.get("x-hints", {}).get(value) if isinstance(value, str) else None
        return (f"{where}: unknown {node.get('x-noun', 'value')} {value!r}{f' ({hint})' if hint else ''}; "
                f"allowed values: {', '.join(_allowed(node))}")
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"{where}: {value:g} is out of range; allowed values: {_range(node)}"
    if kind == "minItems":
        return f"{where}: needs at least {error.validator_value} entry"
    if kind == "format":
        return f"{where}: {value!r} is not a valid regular expression"
    return f"{where}: {error.message}"


def validate(instance: Any, schema: dict[str, Any]) -> None:
    """Check ``instance`` against ``schema`` (draft 2020-12); the shallowest error becomes a ConfigError."""
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance), key=lambda e: (-len(e.absolute_path),))
    if error is not None:
        raise ConfigError(_message(schema, error))
