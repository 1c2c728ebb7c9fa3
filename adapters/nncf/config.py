"""NNCF-style configs: validated against ``schema.json`` (JSON Schema, as NNCF 2.x did), then turned
into the steps of a compression. Every error names its JSON path and what is allowed there."""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import torch

from mm_plugin.errors import ConfigError, MMError, RuleError
from mm_plugin.flexhinm import IMPORTANCES, PERMUTATIONS, FlexHiNMConfig
from mm_plugin.model import IgnoredScope
from mm_plugin.planning import (
    DEFAULT_TARGETS,
    NAMED_STRATEGIES,
    Rule,
    list_allocations,
    list_signals,
    load_rules,
)

SCHEMA_PATH = Path(__file__).with_name("schema.json")
PRUNING_ALGORITHMS = ("mix_and_match", "flexhinm")
#: How far on either side of ``target_sparsity`` the range targets go when none are given.
RANGE_SPREAD = 0.1
_SAMPLE = re.compile(r"sample-(\d\d+)")


@cache
def schema() -> dict[str, Any]:
    """``schema.json`` with every ``x-registry`` enum filled from the plugin's registries."""
    registries = {"signals": list_signals(), "allocations": list_allocations(), "strategies": list(NAMED_STRATEGIES),
                  "permutations": PERMUTATIONS.names(), "flexhinm_importances": IMPORTANCES.names()}
    data = json.loads(SCHEMA_PATH.read_text())

    def fill(node: Any) -> None:
        if isinstance(node, dict):
            if "x-registry" in node:
                node["enum"] = registries[node["x-registry"]]
            for value in node.values():
                fill(value)
        elif isinstance(node, list):
            for value in node:
                fill(value)

    fill(data)
    return data


# --- jsonschema errors as one line with the JSON path --------------------------------------------
def _jtype(value: Any) -> str:
    return {type(None): "null", bool: "boolean", str: "string", list: "array", dict: "object"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _where(path: Any, key: str | None = None) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    if key is not None:
        return f"{text or '$'}.{key}"
    return text or "$"


def _subschemas(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``node`` and every schema it pulls in by ``$ref`` (local refs only)."""
    yield node
    if "$ref" in node:
        target: Any = schema()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        yield from _subschemas(target)


def _merged(node: dict[str, Any], key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sub in _subschemas(node):
        out = {**sub.get(key, {}), **out}
    return out


def _allowed(node: dict[str, Any]) -> list[str]:
    values = [v for sub in [node, *node.get("anyOf", [])] for v in sub.get("enum", [])]
    if any("pattern" in sub for sub in node.get("anyOf", [])):
        values += ["interp-<a> (a = 0.05 ... 0.95)", "sample-<NN> (with samples)"]
    return [str(v) for v in values]


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


def _message(error: jsonschema.ValidationError) -> str:
    node, value, kind, path = error.schema, error.instance, error.validator, error.absolute_path
    if kind == "required":
        missing = next(k for k in error.validator_value if k not in value)
        allowed = _allowed(_merged(node, "properties").get(missing, {}))
        return f"{_where(path, missing)}: is required" + (f"; allowed values: {', '.join(allowed)}" if allowed else "")
    if kind in ("additionalProperties", "unevaluatedProperties"):
        props = _merged(node, "properties")
        key = next(k for k in value if k not in props)
        hint = _merged(node, "x-key-hints").get(key)
        close = difflib.get_close_matches(str(key), props, n=1)
        hint = f" ({hint})" if hint else f" (did you mean {close[0]!r}?)" if close else ""
        return f"{_where(path, key)}: unknown key{hint}; allowed keys: {', '.join(sorted(props))}"
    where = _where(path)
    if kind == "type":
        allowed = _allowed(node)
        return f"{where}: expected {_expected(node)}, got {_jtype(value)}" + (
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


def validate(raw: Mapping[str, Any]) -> None:
    """Check ``raw`` against the schema; the first error (shallowest first) becomes a ConfigError."""
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    error = jsonschema.exceptions.best_match(validator.iter_errors(raw), key=lambda e: (-len(e.absolute_path),))
    if error is not None:
        raise ConfigError(_message(error))


# --- the validated config --------------------------------------------------------------------------
@dataclass(frozen=True)
class InputInfo:
    """One model input, as in NNCF 2.x ``input_info``."""

    sample_size: tuple[int, ...]
    type: str = "float"
    filler: str = "ones"

    def make(self, device: torch.device | str = "cpu") -> torch.Tensor:
        dtype = torch.float32 if self.type == "float" else torch.long
        if self.filler != "random":
            return (torch.ones if self.filler == "ones" else torch.zeros)(self.sample_size, dtype=dtype, device=device)
        gen = torch.Generator().manual_seed(0)
        if dtype == torch.long:
            return torch.randint(0, 2, self.sample_size, generator=gen).to(device)
        return torch.randn(self.sample_size, generator=gen).to(device)


def _scope(value: Any, where: str) -> IgnoredScope | None:
    """``ignored_scopes`` as an IgnoredScope over NNCF node names (the 2.x list form: '{re}' patterns)."""
    if value is None or isinstance(value, dict):
        return None if value is None else IgnoredScope(**value)
    for i, entry in enumerate(value):
        if entry.startswith("{re}"):
            try:
                re.compile(entry[4:])
            except re.error as e:
                raise ConfigError(f"{where}[{i}]: {entry[4:]!r} is not a valid regular expression ({e})") from None
    return IgnoredScope(names=tuple(e for e in value if not e.startswith("{re}")),
                        patterns=tuple(e[4:] for e in value if e.startswith("{re}")))


@dataclass(frozen=True)
class Step:
    """One compression step: its JSON path, algorithm, the options the schema accepted and its scope."""

    path: str
    algorithm: str
    options: dict[str, Any]
    ignored_scope: IgnoredScope | None = None

    def get(self, key: str) -> Any:
        return self.options.get(key, _merged(schema()["$defs"][self.algorithm], "properties").get(key, {}).get("default"))

    @property
    def scope_path(self) -> str:
        return f"{self.path}.ignored_scopes"


@dataclass(frozen=True)
class PruningStep(Step):
    rules: tuple[Rule, ...] | None = None
    range_targets: tuple[float, ...] = DEFAULT_TARGETS
    flexhinm: FlexHiNMConfig | None = None


@dataclass(frozen=True)
class CompressionConfig:
    """A validated config: the inputs and the compression steps in order."""

    input_info: tuple[InputInfo, ...]
    steps: tuple[Step, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    def example_inputs(self, device: torch.device | str = "cpu") -> torch.Tensor | tuple[torch.Tensor, ...]:
        tensors = tuple(info.make(device) for info in self.input_info)
        return tensors[0] if len(tensors) == 1 else tensors


def _rules(value: Any, path: str) -> tuple[Rule, ...]:
    if isinstance(value, Mapping):  # {"rule-name": {fields}}: NNCF-style keyed overrides
        entries = []
        for name, fields_ in value.items():
            if not isinstance(fields_, Mapping):
                raise ConfigError(f"{path}.{name}: expected an object of rule fields, got {_jtype(fields_)}")
            entries.append(({**fields_, "name": name}, f"{path}.{name}"))
    else:
        entries = [(r, f"{path}[{i}]") for i, r in enumerate(value)]
    rules = []
    for entry, where in entries:
        try:
            rules.append(load_rules([entry])[0])
        except (RuleError, TypeError) as e:
            message = re.sub(r"^rules\[0\]:\s*", "", str(e))
            raise ConfigError(f"{where}: {message}") from None
    return tuple(rules)


def _pruning_step(options: dict[str, Any], path: str, algorithm: str) -> PruningStep:
    strategy, samples = options.get("strategy", "balanced"), options.get("samples", 0)
    sample = _SAMPLE.fullmatch(strategy)
    if sample and int(sample.group(1)) >= samples:
        raise ConfigError(f"{path}.strategy: unknown strategy {strategy!r}; set {path}.samples above "
                          f"{int(sample.group(1))} to plan sampled strategies")
    target = options.get("target_sparsity")
    if "range_targets" in options:
        range_targets = tuple(options["range_targets"])
    elif target is not None:
        range_targets = tuple(sorted({round(min(max(target + d, 0.0), 0.99), 6)
                                      for d in (-RANGE_SPREAD, 0.0, RANGE_SPREAD)}))
    else:
        range_targets = DEFAULT_TARGETS
    flexhinm = None
    if algorithm == "flexhinm":
        try:
            flexhinm = FlexHiNMConfig(**options.get("flexhinm", {}))
        except (MMError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}.flexhinm: {str(e).replace('FlexHiNMConfig.', '')}") from None
    rules = _rules(options["rules"], f"{path}.rules") if "rules" in options else None
    return PruningStep(path, algorithm, options, _scope(options.get("ignored_scopes"), f"{path}.ignored_scopes"),
                       rules, range_targets, flexhinm)


def _read(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    if not isinstance(config, (str, os.PathLike)):
        raise ConfigError(f"config must be a dict, a JSON file path or JSON text, got {type(config).__name__}")
    if isinstance(config, str) and config.lstrip().startswith("{"):
        text, where = config, "<JSON text>"
    else:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (pass a dict, a JSON file path or JSON text)")
        text, where = path.read_text(), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a JSON object, got {_jtype(data)}")
    return data


def load_config(config: Mapping[str, Any] | str | os.PathLike) -> CompressionConfig:
    """Parse and validate a config (dict, path of a JSON file, or JSON text) without touching a model."""
    raw = _read(config)
    validate(raw)
    info = raw["input_info"] if isinstance(raw["input_info"], list) else [raw["input_info"]]
    comp = raw["compression"]
    entries = [(c, f"compression[{i}]") for i, c in enumerate(comp)] if isinstance(comp, list) else \
        [(comp, "compression")]
    steps: list[Step] = []
    for entry, path in entries:
        algo, seen = entry["algorithm"], [s.algorithm for s in steps]
        if algo in seen:
            raise ConfigError(f"{path}.algorithm: {algo!r} appears twice; each algorithm runs at most once")
        if algo in PRUNING_ALGORITHMS and any(a in PRUNING_ALGORITHMS for a in seen):
            raise ConfigError(f"{path}.algorithm: only one pruning algorithm per config; allowed values: quantization")
        if algo in PRUNING_ALGORITHMS and "quantization" in seen:
            raise ConfigError(f"{path}.algorithm: {algo!r} must come before quantization (pruning a quantized "
                              "model would lose the int8 scales); reorder the list")
        steps.append(_pruning_step(entry, path, algo) if algo in PRUNING_ALGORITHMS else
                     Step(path, algo, entry, _scope(entry.get("ignored_scopes"), f"{path}.ignored_scopes")))
    known = {f.name for f in fields(InputInfo)}
    return CompressionConfig(tuple(InputInfo(**{k: (tuple(v) if k == "sample_size" else v)
                                                for k, v in i.items() if k in known}) for i in info),
                             tuple(steps), raw)
