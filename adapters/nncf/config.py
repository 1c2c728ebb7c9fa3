"""NNCF-style configs: read as NNCF 2.x read them (JSON with comments), validated against
``schema.json`` (JSON Schema, as NNCF 2.x did), then turned into the steps of a compression. Every
error names its JSON path and what is allowed there; NNCF 2.x options are read by :mod:`.legacy`."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from mm_plugin.config_schema import check_required, defaults, fill_registries, read_json, validate
from mm_plugin.errors import ConfigError, MMError
from mm_plugin.flexhinm import GATES, PERMUTATIONS, FlexHiNMConfig, GradualConfig
from mm_plugin.flexhinm.config import PARTITION_SIGNALS
from mm_plugin.model import InputInfo, make_inputs
from mm_plugin.planning import NAMED_STRATEGIES, Rule, SparsitySchedule, list_allocations, list_signals
from mm_plugin.planning.rules import load_rules_at

from .legacy import (
    Note,
    accuracy_aware_notes,
    distillation_note,
    pruning_plan,
    quantization_options,
    root_notes,
)
from .scopes import Scopes, parse_scopes

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).with_name("schema.json")
PRUNING_ALGORITHMS = ("mix_and_match", "flexhinm")
_SAMPLE = re.compile(r"sample-(\d\d+)")


@cache
def schema() -> dict[str, Any]:
    """``schema.json`` with every ``x-registry`` enum filled from the plugin's registries."""
    return fill_registries(json.loads(SCHEMA_PATH.read_text()), {
        "signals": list_signals(), "allocations": list_allocations(), "strategies": list(NAMED_STRATEGIES),
        "permutations": PERMUTATIONS.names(), "gates": GATES.names(),
        "partition_signals": list(PARTITION_SIGNALS)})


# --- the validated config --------------------------------------------------------------------------
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
    schedule: SparsitySchedule | None = None  # NNCF 2.x's gradual schedule, or None: one shot
    structured: bool = False  # NNCF 2.x filter_pruning options: channels removed through Torch-Pruning
    gradual: GradualConfig | None = None  # flexhinm: 2:4 choices learned during fine-tuning; None: one shot
    total_steps: int = 0  # the learned schedule's budget in optimizer steps (``gradual``'s epochs x steps_per_epoch)


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
        return make_inputs(self.input_info, device, forward)


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
    gradual, total_steps = _gradual(options["gradual"], f"{path}.gradual") if "gradual" in options else (None, 0)
    rules = load_rules_at(options["rules"], f"{path}.rules") if "rules" in options else None
    scopes = parse_scopes(options, path)
    legacy = pruning_plan(options, path, algorithm)
    range_targets = tuple(options["range_targets"]) if "range_targets" in options else None
    step = PruningStep(path, algorithm, options, scopes, rules, range_targets, flexhinm, legacy.target,
                       legacy.target_path, legacy.schedule, legacy.structured, gradual, total_steps)
    return step, legacy.notes


def _gradual(options: Mapping[str, Any], path: str) -> tuple[GradualConfig, int]:
    """The ``gradual`` object: ``GradualConfig``'s fields and the budget it spans, in optimizer steps."""
    fields = dict(options)
    steps = fields.pop("epochs") * fields.pop("steps_per_epoch")
    try:
        return GradualConfig.from_dict(fields), steps
    except (MMError, TypeError, ValueError) as e:
        what = str(e).replace("GradualConfig.", "").replace("GradualConfig: ", "")
        raise ConfigError(f"{path}: {what}") from None


def _defaults(algorithm: str) -> dict[str, Any]:
    return defaults(schema(), schema()["$defs"][algorithm])


_REQUIRED_HINTS = {
    "input_info": 'describe the model\'s input, e.g. "input_info": {"sample_size": [1, 3, 224, 224]}',
    "compression": 'this config compresses nothing (NNCF 2.x\'s eval-only samples have no compression); add '
                   '"compression": {"algorithm": "mix_and_match", "target_sparsity": 0.5}',
}


def load_config(config: Mapping[str, Any] | str | os.PathLike, *, log_notes: bool = True) -> CompressionConfig:
    """Parse and validate a config (dict, path of a JSON file, or JSON text) without touching a model.
    NNCF 2.x options that are not honoured as NNCF 2.x did are logged once each, as WARNINGs (unless
    ``log_notes`` is false: ``NNCFConfig`` validates early and leaves them to ``create_compressed_model``)."""
    raw = read_json(config)
    check_required(raw, _REQUIRED_HINTS)
    validate(raw, schema())
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
        if algo == "quantization" and any(isinstance(s, PruningStep) and s.gradual is not None for s in steps):
            raise ConfigError(f"{path}: int8 calibration would run before the learned 2:4 choices exist (the "
                              "flexhinm step's 'gradual' learns them during fine-tuning); quantize the trained model "
                              "with a second config, or drop 'gradual' to prune once")
        if algo in PRUNING_ALGORITHMS:
            step, step_notes = _pruning_step(entry, path, algo)
        elif algo == "quantization":
            options, step_notes = quantization_options(entry, path, raw.get("target_device", "ANY"))
            step = Step(path, algo, options, parse_scopes(entry, path))
        else:
            step, step_notes = Step(path, algo, entry), [distillation_note(path)]
        steps.append(step)
        notes += step_notes
    notes += accuracy_aware_notes(raw, steps)
    for note in notes if log_notes else ():
        log.warning("%s", note)
    return CompressionConfig(InputInfo.parse(raw["input_info"]), tuple(steps), raw, tuple(notes))
