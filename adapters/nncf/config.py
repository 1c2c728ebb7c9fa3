"""NNCF-style configs: read as NNCF 2.x read them (JSON with comments), validated against
``schema.json`` (JSON Schema, as NNCF 2.x did), then turned into the steps of a compression. Every
error names its JSON path and what is allowed there; NNCF 2.x options are read by :mod:`.legacy`."""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import torch

from mm_plugin.config_schema import json_type, merged, validate
from mm_plugin.errors import ConfigError, MMError, RuleError
from mm_plugin.flexhinm import IMPORTANCES, PERMUTATIONS, FlexHiNMConfig
from mm_plugin.planning import NAMED_STRATEGIES, Rule, Schedule, list_allocations, list_signals, load_rules

from .legacy import Note, distillation_note, pruning_plan, quantization_options, root_notes
from .scopes import Scopes, parse_scopes

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).with_name("schema.json")
PRUNING_ALGORITHMS = ("mix_and_match", "flexhinm")
_SAMPLE = re.compile(r"sample-(\d\d+)")
#: JSON strings, then what NNCF 2.x's reader (jstyleson) also accepted: comments and trailing commas.
_COMMENTS = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.DOTALL)
_TRAILING_COMMAS = re.compile(r'"(?:\\.|[^"\\])*"|,(?=\s*[}\]])')


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
    keyword: str | None = None
    path: str = "input_info"

    def make(self, device: torch.device | str = "cpu") -> torch.Tensor:
        dtype = torch.float32 if self.type == "float" else torch.long
        if self.filler != "random":
            return (torch.ones if self.filler == "ones" else torch.zeros)(self.sample_size, dtype=dtype, device=device)
        gen = torch.Generator().manual_seed(0)
        if dtype == torch.long:
            return torch.randint(0, 2, self.sample_size, generator=gen).to(device)
        return torch.randn(self.sample_size, generator=gen).to(device)

    def describe(self) -> str:
        return f"{self.type} {list(self.sample_size)}" + (f" as {self.keyword}=" if self.keyword else "")


@dataclass(frozen=True)
class Step:
    """One compression step: its JSON path, algorithm, the options the schema accepted and its scopes."""

    path: str
    algorithm: str
    options: dict[str, Any]
    scopes: Scopes | None = None

    def get(self, key: str) -> Any:
        return self.options.get(key, _defaults(self.algorithm).get(key))


@dataclass(frozen=True)
class PruningStep(Step):
    rules: tuple[Rule, ...] | None = None
    range_targets: tuple[float, ...] | None = None  # None: derived from the target for the model at hand
    flexhinm: FlexHiNMConfig | None = None
    target: float | None = None  # the final global target (multiply-adds when structured); None: as planned
    target_path: str = ""
    schedule: Schedule | None = None  # NNCF 2.x's gradual schedule, or None: one shot
    structured: bool = False  # NNCF 2.x filter_pruning options: channels removed through Torch-Pruning


@dataclass(frozen=True)
class CompressionConfig:
    """A validated config: the inputs, the compression steps in order, and the NNCF 2.x options that
    are not honoured as NNCF 2.x did (each logged once)."""

    input_info: tuple[InputInfo, ...]
    steps: tuple[Step, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)
    notes: tuple[Note, ...] = ()

    def example_inputs(self, device: torch.device | str = "cpu",
                       forward: Callable | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The inputs ``input_info`` describes, in ``forward``'s positional order (a ``keyword`` input
        goes to the position of its parameter)."""
        tensors = [info.make(device) for info in self.input_info]
        if forward is not None and any(info.keyword for info in self.input_info):
            tensors = _by_position(self.input_info, tensors, forward)
        return tensors[0] if len(tensors) == 1 else tuple(tensors)


def _by_position(infos: tuple[InputInfo, ...], tensors: list[torch.Tensor], forward: Callable) -> list[torch.Tensor]:
    params = [p.name for p in inspect.signature(forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    ordered = [t for info, t in zip(infos, tensors) if not info.keyword]
    by_name = {info.keyword: (info, t) for info, t in zip(infos, tensors) if info.keyword}
    for name, (info, _) in by_name.items():
        if name not in params[len(ordered):]:
            taken = " (that position is taken by an input without keyword)" if name in params else ""
            raise ConfigError(f"{info.path}.keyword: {name!r} is not a free positional parameter of forward()"
                              f"{taken}; allowed values: {', '.join(params[len(ordered):]) or 'none'}")
    for name in params[len(ordered):]:
        if name not in by_name:
            break
        ordered.append(by_name.pop(name)[1])
    if by_name:
        info = next(iter(by_name.values()))[0]
        raise ConfigError(f"{info.path}.keyword: {info.keyword!r} comes after {params[len(ordered)]!r} in forward(), "
                          f"which has no input; add an input_info entry for {params[len(ordered)]!r}")
    return ordered


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


def _pruning_step(options: dict[str, Any], path: str, algorithm: str) -> tuple[PruningStep, tuple[Note, ...]]:
    strategy, samples = options.get("strategy", "balanced"), options.get("samples", 0)
    sample = _SAMPLE.fullmatch(strategy)
    if sample and int(sample.group(1)) >= samples:
        raise ConfigError(f"{path}.strategy: unknown strategy {strategy!r}; set {path}.samples above "
                          f"{int(sample.group(1))} to plan sampled strategies")
    flexhinm = None
    if algorithm == "flexhinm":
        try:
            flexhinm = FlexHiNMConfig(**options.get("flexhinm", {}))
        except (MMError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}.flexhinm: {str(e).replace('FlexHiNMConfig.', '')}") from None
    rules = _rules(options["rules"], f"{path}.rules") if "rules" in options else None
    scopes = parse_scopes(options, path)
    legacy = pruning_plan(options, path, algorithm)
    range_targets = tuple(options["range_targets"]) if "range_targets" in options else None
    step = PruningStep(path, algorithm, options, scopes, rules, range_targets, flexhinm, legacy.target,
                       legacy.target_path, legacy.schedule, legacy.structured)
    return step, legacy.notes


def strip_comments(text: str) -> str:
    """JSON text without ``//`` and ``/* */`` comments and trailing commas (strings untouched); a
    comment becomes blanks, so error positions stay where they were."""
    text = _COMMENTS.sub(lambda m: m[0] if m[0].startswith('"') else re.sub(r"[^\n]", " ", m[0]), text)
    return _TRAILING_COMMAS.sub(lambda m: m[0] if m[0].startswith('"') else " ", text)


def _read(config: Any) -> dict[str, Any]:
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


def _defaults(algorithm: str) -> dict[str, Any]:
    return {k: v["default"] for k, v in merged(schema(), schema()["$defs"][algorithm], "properties").items()
            if "default" in v}


_REQUIRED_HINTS = {
    "input_info": 'describe the model\'s input, e.g. "input_info": {"sample_size": [1, 3, 224, 224]}',
    "compression": 'this config compresses nothing (NNCF 2.x\'s eval-only samples have no compression); add '
                   '"compression": {"algorithm": "mix_and_match", "target_sparsity": 0.5}',
}


def _check_required(raw: dict[str, Any]) -> None:
    """A missing root key, with what to write (and the key meant, when one is misspelt)."""
    for key, hint in _REQUIRED_HINTS.items():
        if key not in raw:
            close = difflib.get_close_matches(key, [str(k) for k in raw], n=1)
            hint = f"did you mean {close[0]!r}?" if close else hint
            raise ConfigError(f"$.{key}: is required; {hint}")


def load_config(config: Mapping[str, Any] | str | os.PathLike) -> CompressionConfig:
    """Parse and validate a config (dict, path of a JSON file, or JSON text) without touching a model.
    NNCF 2.x options that are not honoured as NNCF 2.x did are logged once each, as WARNINGs."""
    raw = _read(config)
    _check_required(raw)
    validate(raw, schema())
    info = raw["input_info"] if isinstance(raw["input_info"], list) else [raw["input_info"]]
    comp = raw["compression"]
    entries = [(c, f"compression[{i}]") for i, c in enumerate(comp)] if isinstance(comp, list) else \
        [(comp, "compression")]
    steps: list[Step] = []
    notes = root_notes(raw)
    for entry, path in entries:
        algo, seen = entry["algorithm"], [s.algorithm for s in steps]
        if algo in seen:
            raise ConfigError(f"{path}.algorithm: {algo!r} appears twice; each algorithm runs at most once")
        if algo in PRUNING_ALGORITHMS and any(a in PRUNING_ALGORITHMS for a in seen):
            raise ConfigError(f"{path}.algorithm: only one pruning algorithm per config; allowed values: "
                              "quantization, knowledge_distillation")
        if algo in PRUNING_ALGORITHMS and "quantization" in seen:
            raise ConfigError(f"{path}.algorithm: {algo!r} must come before quantization (pruning a quantized "
                              "model would lose the int8 scales); reorder the list")
        if algo in PRUNING_ALGORITHMS:
            step, step_notes = _pruning_step(entry, path, algo)
        elif algo == "quantization":
            options, step_notes = quantization_options(entry, path, raw.get("target_device", "ANY"))
            step = Step(path, algo, options, parse_scopes(entry, path))
        else:
            step, step_notes = Step(path, algo, entry), [distillation_note(path)]
        steps.append(step)
        notes += step_notes
    for note in notes:
        log.warning("%s", note)
    paths = [f"input_info[{i}]" for i in range(len(info))] if isinstance(raw["input_info"], list) else ["input_info"]
    known = {f.name for f in fields(InputInfo)}
    inputs = tuple(InputInfo(**{k: (tuple(v) if k == "sample_size" else v) for k, v in i.items() if k in known},
                             path=p) for i, p in zip(info, paths))
    return CompressionConfig(inputs, tuple(steps), raw, tuple(notes))
