"""NNCF-style configs: validated against ``schema.json`` (JSON Schema, as NNCF 2.x did), then turned
into the steps of a compression. Every error names its JSON path and what is allowed there."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import torch

from mm_plugin.config_schema import json_type, merged, validate
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
        return self.options.get(key, _defaults(self.algorithm).get(key))

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
                raise ConfigError(f"{path}.{name}: expected an object of rule fields, got {json_type(fields_)}")
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
        raise ConfigError(f"{where}: the top level must be a JSON object, got {json_type(data)}")
    return data


def _defaults(algorithm: str) -> dict[str, Any]:
    return {k: v["default"] for k, v in merged(schema(), schema()["$defs"][algorithm], "properties").items()
            if "default" in v}


def load_config(config: Mapping[str, Any] | str | os.PathLike) -> CompressionConfig:
    """Parse and validate a config (dict, path of a JSON file, or JSON text) without touching a model."""
    raw = _read(config)
    validate(raw, schema())
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
