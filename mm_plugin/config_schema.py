"""JSON configs: read (a dict, a file or JSON text, with the comments NNCF 2.x's reader accepted), then
validated by JSON Schema with errors that read like the rest of the plugin's: one line with the JSON
path (``compression[0].strategy``), what is wrong and what is allowed there.

Schemas may carry a few extra keywords the validator ignores: ``x-noun`` (what a value is called in
the message), ``x-hints`` (value -> hint), ``x-key-hints`` (unknown key -> what to write instead),
``x-allowed`` (descriptions of pattern-matched values) and ``x-registry`` (an enum filled from a
registry's names, :func:`fill_registries`).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema

from .errors import ConfigError

#: JSON strings, then what NNCF 2.x's reader (jstyleson) also accepted: comments and trailing commas.
_COMMENTS = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.DOTALL)
_TRAILING_COMMAS = re.compile(r'"(?:\\.|[^"\\])*"|,(?=\s*[}\]])')


# --- reading ----------------------------------------------------------------------------------------
def strip_comments(text: str) -> str:
    """JSON text without ``//`` and ``/* */`` comments and trailing commas (strings untouched); a
    comment becomes blanks, so error positions stay where they were."""
    text = _COMMENTS.sub(lambda m: m[0] if m[0].startswith('"') else re.sub(r"[^\n]", " ", m[0]), text)
    return _TRAILING_COMMAS.sub(lambda m: m[0] if m[0].startswith('"') else " ", text)


def read_json(config: Any) -> dict[str, Any]:
    """A config object from a dict (copied), the path of a JSON file or JSON text, comments allowed."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    if not isinstance(config, (str, os.PathLike)):
        raise ConfigError(f"config must be a dict, a JSON file path or JSON text, got {type(config).__name__}")
    if isinstance(config, str) and strip_comments(config).lstrip().startswith("{"):
        text, where = config, "<JSON text>"
    else:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (pass a dict, a JSON file path or JSON text)")
        try:
            text, where = path.read_text(), str(path)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be read: {e}") from None
    try:
        data = json.loads(strip_comments(text))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a JSON object, got {json_type(data)}")
    return data


def check_required(config: Mapping[str, Any], hints: Mapping[str, str]) -> None:
    """A missing root key (``hints``: key -> what to write), with the key meant when one is misspelt."""
    for key, hint in hints.items():
        if key not in config:
            close = difflib.get_close_matches(key, [str(k) for k in config], n=1)
            hint = f"did you mean {close[0]!r}?" if close else hint
            raise ConfigError(f"$.{key}: is required; {hint}")


# --- schemas ----------------------------------------------------------------------------------------
def fill_registries(schema: dict[str, Any], registries: Mapping[str, list[str]]) -> dict[str, Any]:
    """``schema`` with the ``enum`` of every node marked ``x-registry`` set to that registry's names."""
    def fill(node: Any) -> None:
        if isinstance(node, dict):
            if "x-registry" in node:
                node["enum"] = registries[node["x-registry"]]
            for value in node.values():
                fill(value)
        elif isinstance(node, list):
            for value in node:
                fill(value)

    fill(schema)
    return schema


def defaults(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The ``default`` of every property of ``node`` (and of the schemas it refers to)."""
    return {k: v["default"] for k, v in merged(root, node, "properties").items() if "default" in v}


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
